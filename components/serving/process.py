"""`deblur serve` as a real process in the serving venv: start it, wait until it is ready, stop
it. Standard library only, so .venv (the CLI, the pipeline's servability check, the tests) uses
it without kserve or TensorFlow.

    with serve_process(registry_uri, "deblur-icdpm@production") as server:
        V2Client(server.url).infer("deblur-icdpm", image)

The server binds 127.0.0.1 on a free port (unless told otherwise), is ready when
/v2/health/ready answers 200 (the model loaded and warmed up), and is stopped on exit:
SIGTERM, then SIGKILL after `stop_timeout_s`. It also stops by itself when the process that
started it is gone (it polls that pid once a second: --parent-pid), so a killed test or
benchmark leaves no server behind.

The serving venv (.venv-serve, requirements/serve.lock) is built on first use by
`make serve-venv` (ensure_serve_venv), with a progress line on stderr.
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Iterator, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVE_VENV = os.path.join(REPO, ".venv-serve")
SERVE_PYTHON = os.path.join(SERVE_VENV, "bin", "python")
STAMP = os.path.join(SERVE_VENV, ".stamp")
LOCK = os.path.join(REPO, "requirements", "serve.lock")


class ServeError(RuntimeError):
    """The server did not start (its one-line error, or the end of its log)."""


def serve_env_ready() -> bool:
    """.venv-serve is built and not older than requirements/serve.lock."""
    return (os.path.isfile(STAMP) and os.path.isfile(SERVE_PYTHON)
            and os.path.getmtime(STAMP) >= os.path.getmtime(LOCK))


def ensure_serve_venv(quiet: bool = False) -> str:
    """The serving venv's python, built first with `make serve-venv` when missing (a minute or
    two; needs PyPI). One-line ServeError when the build fails."""
    if serve_env_ready():
        return SERVE_PYTHON
    if not quiet:
        print("deblur serve: building the serving environment .venv-serve from "
              "requirements/serve.lock (make serve-venv; once, a minute or two) ...",
              file=sys.stderr, flush=True)
    t0 = time.time()
    # serialised between processes (two test workers, two shells): one builds, the other waits
    with open(os.path.join(REPO, ".venv-serve.lock"), "a") as lockf:
        import fcntl

        fcntl.flock(lockf, fcntl.LOCK_EX)
        try:
            if serve_env_ready():
                return SERVE_PYTHON
            proc = subprocess.run(["make", "-C", REPO, "serve-venv"], capture_output=True,
                                  text=True)
        finally:
            fcntl.flock(lockf, fcntl.LOCK_UN)
    if proc.returncode != 0 or not serve_env_ready():
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()
        raise ServeError("building .venv-serve failed (make serve-venv): "
                         f"{tail[-1] if tail else 'exit ' + str(proc.returncode)}")
    if not quiet:
        print(f"deblur serve: .venv-serve ready ({time.time() - t0:.0f} s)", file=sys.stderr,
              flush=True)
    return SERVE_PYTHON


def server_command(registry_uri: Optional[str], ref: str, *, python: str = SERVE_PYTHON,
                   host: str = "127.0.0.1", port: int = 8080,
                   poll_seconds: Optional[float] = None, max_pixels: Optional[int] = None,
                   extra: Optional[List[str]] = None) -> List[str]:
    cmd = [python, "-m", "components.serving.server", "--model", ref, "--host", host,
           "--port", str(port)]
    if registry_uri:
        cmd += ["--registry", registry_uri]
    if poll_seconds is not None:
        cmd += ["--poll-seconds", str(poll_seconds)]
    if max_pixels is not None:
        cmd += ["--max-pixels", str(max_pixels)]
    return cmd + list(extra or [])


def server_env() -> dict:
    """The environment of a server process: the repository on PYTHONPATH (the project's code
    is not installed in .venv-serve), TensorFlow's C++ start-up noise off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env.pop("PYTHONHOME", None)
    return env


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class ServerHandle:
    url: str
    pid: int
    proc: subprocess.Popen
    log_path: str

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/v2/health/ready", timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def stop(proc: subprocess.Popen, timeout_s: float = 20.0) -> Optional[int]:
    """SIGTERM, then SIGKILL after timeout_s; the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def _last_error(log_path: str) -> str:
    with open(log_path, errors="replace") as f:
        lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "deblur serve: error:" in ln:
            return ln.split("deblur serve: error:", 1)[1].strip()
        if "refused:" in ln:
            return ln.split("refused:", 1)[1].strip()
    return lines[-1] if lines else "no output"


@contextlib.contextmanager
def serve_process(registry_uri: Optional[str], ref: str, *, host: str = "127.0.0.1",
                  port: int = 0, poll_seconds: Optional[float] = None,
                  max_pixels: Optional[int] = None, ready_timeout_s: float = 300.0,
                  stop_timeout_s: float = 20.0, extra_args: Optional[List[str]] = None,
                  log_path: Optional[str] = None) -> Iterator[ServerHandle]:
    """Starts the server (in .venv-serve, built when missing) and yields a ServerHandle once
    /v2/health/ready answers; always stops it. port 0: a free port. ServeError (its one-line
    reason) when it exits or does not get ready within ready_timeout_s."""
    python = ensure_serve_venv()
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="deblur-serve-", suffix=".log")
        os.close(fd)
    attempts = 3 if port == 0 else 1  # a free port taken between the probe and the bind
    for attempt in range(attempts):
        chosen = port or free_port(host)
        cmd = server_command(registry_uri, ref, python=python, host=host, port=chosen,
                             poll_seconds=poll_seconds, max_pixels=max_pixels,
                             extra=list(extra_args or []) + ["--parent-pid", str(os.getpid())])
        with open(log_path, "ab") as logf:
            proc = subprocess.Popen(cmd, cwd=REPO, env=server_env(), stdout=logf,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        url = f"http://{host}:{chosen}"
        try:
            deadline = time.monotonic() + ready_timeout_s
            while not _ready(url):
                if proc.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise ServeError(f"the server did not get ready within {ready_timeout_s:g} s "
                                     f"(log: {log_path}): {_last_error(log_path)}")
                time.sleep(0.2)
            if proc.poll() is not None:
                text = _last_error(log_path)
                if "address already in use" in text.lower() and attempt + 1 < attempts:
                    continue
                raise ServeError(f"the server exited with code {proc.returncode}: {text}")
            handle = ServerHandle(url, proc.pid, proc, log_path)
        except BaseException:
            stop(proc, stop_timeout_s)
            raise
        try:
            yield handle
        finally:
            stop(proc, stop_timeout_s)
        return
