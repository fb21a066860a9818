"""The model registry on a local folder and on gs:// (fake-gcs-server on loopback), unmocked.

Concurrency and crashes are exercised with real processes: PUSHERS processes push at the same
moment (each imports, warms up, then waits for a shared "go" file), and a push is SIGKILLed
while it holds still inside its progress callback after BLOCK_AFTER files (the callback writes
a "blocked" file and sleeps, so the kill lands at the same point every time).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from components.registry import registry as R
from tests.gcs_emulator import bucket_fixture

REPO = Path(__file__).resolve().parents[2]
BUCKET = "deblur-registry-test"
PUSHERS = 6
BLOCK_AFTER = 2

PUSHER = r"""
import json, os, sys, time
from components.registry.registry import Registry

uri, name, src, started, go, blocked, block_after = sys.argv[1:8]
block_after = int(block_after)

def progress(done, total, rel):
    if block_after and done == block_after:
        open(blocked, "w").close()
        time.sleep(3600)  # SIGKILLed here

reg = Registry(uri, name)
reg.versions()  # imports and the first request happen before the race starts
open(started, "w").close()
while go != "-" and not os.path.exists(go):
    time.sleep(0.002)
version = reg.push(src, {"source": src}, progress=progress)
print(json.dumps({"version": version}))
"""


def make_source(root: Path, seed: int, kib: int = 256) -> Path:
    """A SavedModel-shaped folder: distinct random bytes per seed, an empty assets/."""
    rng = np.random.default_rng(seed)
    (root / "variables").mkdir(parents=True)
    (root / "assets").mkdir()
    (root / "saved_model.pb").write_bytes(rng.bytes(2048))
    (root / "variables" / "variables.index").write_bytes(rng.bytes(512))
    (root / "variables" / "variables.data-00000-of-00001").write_bytes(rng.bytes(kib * 1024))
    (root / "deblur.json").write_text(json.dumps({"seed": seed}))
    return root


def tree(root) -> dict:
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def check_version(reg: R.Registry, version: int, source: Path, empty_dirs=True) -> dict:
    """The version's folder holds exactly the source's files plus a manifest describing them
    (and the source's empty assets/, unless the source was on gs://, which has no folders)."""
    path = Path(reg.local_path(version))
    got, want = tree(path), tree(source)
    manifest = json.loads(got.pop(R.MANIFEST))
    assert got == want
    assert (path / "assets").is_dir() == empty_dirs
    assert manifest["version"] == version and manifest["model_name"] == reg.model_name
    assert manifest["files"] == {rel: {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
                                 for rel, b in want.items()}
    assert manifest == reg.show(version)
    assert manifest["registry"]["version_uri"] == reg.version_uri(version)
    return manifest


def spawn(uri, name, src, work: Path, tag: str, go="-", block_after=0) -> dict:
    files = {k: work / f"{tag}.{k}" for k in ("started", "blocked")}
    proc = subprocess.Popen(
        [sys.executable, "-c", PUSHER, uri, name, str(src), str(files["started"]), str(go),
         str(files["blocked"]), str(block_after)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)})
    return {"proc": proc, **files}


def wait_for(path: Path, procs, timeout=120.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"pusher exited with {p.returncode}: {p.stderr.read()}")
        assert time.monotonic() < deadline, f"timed out waiting for {path}"
        time.sleep(0.01)


def concurrent_pushes(uri: str, name: str, tmp: Path) -> None:
    reg = R.Registry(uri, name, cache_dir=str(tmp / "cache"))
    sources = [make_source(tmp / f"src{i}", seed=i) for i in range(PUSHERS)]
    go = tmp / "go"
    jobs = [spawn(uri, name, s, tmp, f"p{i}", go=go) for i, s in enumerate(sources)]
    procs = [j["proc"] for j in jobs]
    try:
        for j in jobs:
            wait_for(j["started"], procs)
        go.touch()  # all pushers are warm; they start pushing together
        outs = []
        for p in procs:
            out, err = p.communicate(timeout=180)
            assert p.returncode == 0, err
            outs.append(json.loads(out.strip().splitlines()[-1])["version"])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert sorted(outs) == list(range(1, PUSHERS + 1))  # distinct and consecutive
    assert reg.versions() == list(range(1, PUSHERS + 1))
    for i, (src, version) in enumerate(zip(sources, outs)):
        manifest = check_version(reg, version, src)
        assert manifest["source"] == str(src)
        assert json.loads(tree(reg.local_path(version))["deblur.json"]) == {"seed": i}


def killed_push(uri: str, name: str, tmp: Path) -> dict:
    """SIGKILLs a push after BLOCK_AFTER files; returns the job after it died."""
    src = make_source(tmp / "victim", seed=99)
    job = spawn(uri, name, src, tmp, "victim", block_after=BLOCK_AFTER)
    try:
        wait_for(job["blocked"], [job["proc"]])
        job["proc"].send_signal(signal.SIGKILL)
        job["proc"].wait(timeout=30)
    finally:
        if job["proc"].poll() is None:
            job["proc"].kill()
    assert job["proc"].returncode == -signal.SIGKILL
    return job


# -------------------------------------------------------------------------------- local
def test_local_concurrent_pushes_get_distinct_consecutive_complete_versions(tmp_path):
    concurrent_pushes(str(tmp_path / "registry"), "m", tmp_path)
    model = tmp_path / "registry" / "m"
    assert sorted(os.listdir(model)) == sorted(
        [".issued", ".staging"] + [str(v) for v in range(1, PUSHERS + 1)])
    assert os.listdir(model / ".staging") == []


def test_local_killed_push_leaves_nothing_visible_and_the_next_push_works(tmp_path):
    uri = str(tmp_path / "registry")
    job = killed_push(uri, "m", tmp_path)
    reg = R.Registry(uri, "m")
    model = tmp_path / "registry" / "m"
    assert reg.versions() == [] and reg.latest() is None
    # no numeric folder at all (TF Serving would see it); only the dead push's staging copy
    assert sorted(os.listdir(model)) == [".issued", ".staging"]
    (dead,) = os.listdir(model / ".staging")
    assert dead.startswith(f"{job['proc'].pid}@")
    assert len(tree(model / ".staging" / dead)) == BLOCK_AFTER

    src = make_source(tmp_path / "next", seed=5)
    assert reg.push(str(src), {"n": 1}) == 1
    check_version(reg, 1, src)
    assert os.listdir(model / ".staging") == []  # the dead push's copy was removed


def test_local_threads_race_for_versions(tmp_path):
    reg_uri = str(tmp_path / "registry")
    srcs = [make_source(tmp_path / f"s{i}", seed=i, kib=4) for i in range(4)]
    got, errors = [], []

    def worker(src):
        try:
            reg = R.Registry(reg_uri, "m")
            for _ in range(3):
                got.append((reg.push(str(src), {"source": str(src)}), src))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(s,)) for s in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(v for v, _ in got) == list(range(1, 13))
    reg = R.Registry(reg_uri, "m")
    for v, src in got:
        assert reg.show(v)["source"] == str(src)
        check_version(reg, v, src)


def test_local_versions_are_never_reused_and_latest_is_the_highest(tmp_path):
    reg = R.Registry(str(tmp_path / "registry"), "m")
    a, b = make_source(tmp_path / "a", 1, kib=1), make_source(tmp_path / "b", 2, kib=1)
    assert reg.push(str(a), {"k": "a"}) == 1
    assert reg.push(str(b), {"k": "b"}) == 2
    assert reg.latest()[0] == 2 and reg.latest()[1]["k"] == "b"
    shutil.rmtree(tmp_path / "registry" / "m" / "2")  # someone retires version 2 by hand
    assert reg.versions() == [1]
    assert reg.push(str(a), {"k": "a2"}) == 3
    assert reg.versions() == [1, 3]
    m = reg.show(3)
    assert m["created"].endswith("+00:00") and m["registry"]["uri"] == str(tmp_path / "registry")
    # the version folder is readable by other users (a server), unlike mkdtemp's 0700
    assert os.stat(tmp_path / "registry" / "m" / "3").st_mode & 0o055 == 0o055


def test_errors_are_one_line_registry_errors(tmp_path):
    reg = R.Registry(str(tmp_path / "registry"), "m")
    src = make_source(tmp_path / "src", 0, kib=1)
    with pytest.raises(R.RegistryError, match="holds no complete version"):
        reg.show(1)
    assert reg.latest() is None and reg.versions() == []
    with pytest.raises(R.RegistryError, match="holds no complete version"):
        R.load_latest(str(tmp_path / "registry"), "m")
    not_sm = tmp_path / "not_sm"
    not_sm.mkdir()
    (not_sm / "weights.h5").write_bytes(b"x")
    with pytest.raises(R.RegistryError, match="is not a SavedModel: it has no saved_model.pb"):
        reg.push(str(not_sm), {})
    with pytest.raises(R.RegistryError, match="is not a directory"):
        reg.push(str(tmp_path / "nowhere"), {})
    with pytest.raises(R.RegistryError, match="set by the registry"):
        reg.push(str(src), {"version": 7})
    with pytest.raises(R.RegistryError, match="not plain JSON"):
        reg.push(str(src), {"x": float("nan")})
    assert reg.versions() == []  # no failed push published anything
    assert reg.push(str(src), {}) == 1
    with pytest.raises(R.RegistryError, match=r"has no complete version 4 \(versions: 1\)"):
        reg.show(4)
    with pytest.raises(R.RegistryError, match="must be an integer"):
        reg.show("latest")
    for bad in ("12", ".hidden", "a/b", ""):
        with pytest.raises(R.RegistryError, match="model name"):
            R.Registry(str(tmp_path), bad)
    assert issubclass(R.RegistryError, ValueError)  # the CLI prints ValueErrors as one line
    assert R.version_ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"


def stale_once(reg, method: str, stale):
    """Makes reg.<method> answer `stale` on its first call: a read that another push has
    overtaken, the window the claim must close (rename / create-only precondition)."""
    real, calls = getattr(reg, method), []

    def wrapped(*a, **k):
        calls.append(1)
        return stale if len(calls) == 1 else real(*a, **k)

    setattr(reg, method, wrapped)
    return calls


def test_local_push_that_loses_the_rename_race_takes_the_next_version(tmp_path):
    uri = str(tmp_path / "registry")
    a, b = make_source(tmp_path / "a", 1, kib=1), make_source(tmp_path / "b", 2, kib=1)
    assert R.Registry(uri, "m").push(str(a), {"k": "a"}) == 1
    loser = R.Registry(uri, "m")
    calls = stale_once(loser, "_next_local_version", 1)  # it believes 1 is still free
    assert loser.push(str(b), {"k": "b"}) == 2
    assert len(calls) == 2  # the rename onto 1 failed and it re-read the folder
    check_version(loser, 1, a)
    assert check_version(loser, 2, b)["k"] == "b"  # its manifest names the version it got


# -------------------------------------------------------------------------------- gs://
gcs = bucket_fixture(BUCKET)


def _objects(emulator, prefix: str) -> list:
    return sorted(b.name[len(prefix):] for b in emulator.client.list_blobs(BUCKET, prefix=prefix))


def test_gcs_concurrent_pushes_get_distinct_consecutive_complete_versions(gcs, tmp_path):
    uri = f"gs://{BUCKET}/concurrent"
    concurrent_pushes(uri, "m", tmp_path)
    reg = R.Registry(uri, "m")
    assert reg.incomplete() == []
    objects = _objects(gcs, "concurrent/m/")
    assert [o for o in objects if o.startswith(R.CLAIMS)] == [
        f"{R.CLAIMS}/{v}" for v in sorted(range(1, PUSHERS + 1), key=str)]
    for v in range(1, PUSHERS + 1):  # the version prefix holds the model and the manifest only
        listed = {o.split("/", 1)[1] for o in objects if o.startswith(f"{v}/")}
        assert listed == set(reg.show(v)["files"]) | {R.MANIFEST}


def test_gcs_killed_push_leaves_nothing_visible_and_the_next_push_works(gcs, tmp_path):
    uri = f"gs://{BUCKET}/killed"
    killed_push(uri, "m", tmp_path)
    reg = R.Registry(uri, "m", cache_dir=str(tmp_path / "cache"))
    assert reg.versions() == [] and reg.latest() is None
    assert reg.incomplete() == [1]  # claimed, some files, no manifest
    assert _objects(gcs, "killed/m/") == [
        f"{R.CLAIMS}/1", "1/deblur.json", "1/variables/variables.data-00000-of-00001"]
    with pytest.raises(R.RegistryError, match="holds no complete version"):
        reg.show(1)

    src = make_source(tmp_path / "next", seed=5)
    assert reg.push(str(src), {"n": 1}) == 2  # the dead claim's number is not reused
    assert reg.versions() == [2] and reg.incomplete() == [1]
    assert reg.latest()[0] == 2
    check_version(reg, 2, src)
    assert not any(name.startswith(".download") for name in os.listdir(
        tmp_path / "cache" / BUCKET / "killed" / "m"))


def test_gcs_push_from_a_gs_model_dir_and_claim_conflicts(gcs, tmp_path):
    src = make_source(tmp_path / "src", seed=7, kib=8)
    bucket = gcs.client.bucket(BUCKET)
    for rel, data in tree(src).items():
        bucket.blob(f"models/run1/Format-Serving/{rel}").upload_from_string(data)
    uri = f"gs://{BUCKET}/from-gs"
    # a claim left by someone else at 1 (e.g. a push that died before uploading anything)
    bucket.blob(f"from-gs/m/{R.CLAIMS}/1").upload_from_string(b"{}")
    reg = R.Registry(uri, "m", cache_dir=str(tmp_path / "cache"))
    assert reg.push(f"gs://{BUCKET}/models/run1/Format-Serving", {"from": "gs"}) == 2
    assert check_version(reg, 2, src, empty_dirs=False)["from"] == "gs"
    # a claimant whose listing is stale tries 3, loses the precondition, takes 4
    other = make_source(tmp_path / "other", seed=8, kib=1)
    bucket.blob(f"from-gs/m/{R.CLAIMS}/3").upload_from_string(b"{}")
    calls = stale_once(reg, "_gcs_scan", ({2}, {2}, {1, 2}))
    assert reg.push(str(other), {}) == 4
    assert len(calls) == 2
    assert reg.versions() == [2, 4] and reg.incomplete() == [1, 3]
    # our own object after a retried upload counts as success; someone else's is a conflict
    data = b'{"mine": true}'
    assert reg._create_only(f"from-gs/m/{R.CLAIMS}/9", data=data)
    assert reg._create_only(f"from-gs/m/{R.CLAIMS}/9", data=data)
    assert not reg._create_only(f"from-gs/m/{R.CLAIMS}/9", data=b'{"theirs": true}')
    f1, f2 = src / "saved_model.pb", src / "deblur.json"
    md5 = R._hash_file(str(f1))[2]
    assert reg._create_only("from-gs/m/x/f", filename=str(f1), md5=md5)
    assert reg._create_only("from-gs/m/x/f", filename=str(f1), md5=md5)  # same bytes: ours
    assert not reg._create_only("from-gs/m/x/f", filename=str(f2), md5=R._hash_file(str(f2))[2])
    with pytest.raises(R.RegistryError, match="does not exist"):
        R.Registry("gs://no-such-bucket/x", "m").versions()


def test_gcs_large_files_use_resumable_uploads_and_the_cache_is_checked(gcs, tmp_path):
    # 9 MiB > google-cloud-storage's 8 MiB multipart limit: a resumable upload, as real
    # variables files are, still under the create-only precondition
    src = make_source(tmp_path / "big", seed=3, kib=9 * 1024)
    uri, cache = f"gs://{BUCKET}/big", str(tmp_path / "cache")
    reg = R.Registry(uri, "m", cache_dir=cache)
    assert reg.push(str(src), {}) == 1
    path = reg.local_path(1)
    check_version(reg, 1, src)
    assert reg.local_path(1) == path  # reused
    # the registry is recreated elsewhere under the same name: the cache must not serve v1
    for blob in gcs.client.list_blobs(BUCKET, prefix="big/"):
        blob.delete()
    assert reg.versions() == []
    assert reg.push(str(make_source(tmp_path / "other", seed=4, kib=1)), {}) == 1
    with pytest.raises(R.RegistryError, match="delete the cached copy"):
        reg.local_path(1)


# -------------------------------------------------------------------------------- consumers
TINY_MODEL = r"""
import sys, tensorflow as tf

class Scale(tf.Module):
    def __init__(self, k):
        self.k = tf.Variable(k)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
    def __call__(self, x):
        return x * self.k

for path, k in zip(sys.argv[1::2], sys.argv[2::2]):
    m = Scale(float(k))
    tf.saved_model.save(m, path, signatures={"serving_default": m.__call__})
"""


def test_load_latest_returns_a_callable_model_local_and_gcs(gcs, tmp_path):
    import tensorflow as tf

    a, b = tmp_path / "scale2", tmp_path / "scale3"
    subprocess.run([sys.executable, "-c", TINY_MODEL, str(a), "2", str(b), "3"], check=True,
                   env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    for uri in (str(tmp_path / "registry"), f"gs://{BUCKET}/load"):
        reg = R.Registry(uri, "tiny", cache_dir=str(tmp_path / "cache"))
        assert reg.push(str(a), {"k": 2}) == 1
        assert reg.push(str(b), {"k": 3}) == 2
        model, manifest = R.load_latest(uri, "tiny", cache_dir=str(tmp_path / "cache"))
        assert manifest["version"] == 2 and manifest["k"] == 3
        np.testing.assert_allclose(model(tf.constant([1.0, 2.0])).numpy(), [3.0, 6.0])
        out = model.signatures["serving_default"](tf.constant([1.0]))
        np.testing.assert_allclose(next(iter(out.values())).numpy(), [3.0])
