"""`deblur serve` over real HTTP: the server runs as a real process in .venv-serve (kserve 0.21,
TensorFlow 2.21) on 127.0.0.1, on a free port, serving a registry built here from the
repository's base model (models/local) with a cheap sampling setting.

The module's first test builds .venv-serve when it is missing (make serve-venv, a minute or
two, needs PyPI; once, serialised by a file lock). Waits are polls with generous bounds; no
assertion is on a duration. Every server is stopped by its context manager (and by itself when
this process dies: --parent-pid)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from components.registry.aliases import Aliases
from components.registry.registry import Registry
from components.serving import process
from components.serving.client import V2Client, V2Error

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_MODEL = os.path.join(REPO, "models", "local")
NAME = "deblur-icdpm"
# cheap settings (2-3 steps): the outputs are compared, not judged
SAMPLING_1 = {"sampler": "ddpm", "steps": 2, "max_noise": 0.5, "samples": 2}
SAMPLING_2 = {"sampler": "ddim", "steps": 3, "max_noise": 0.5, "samples": 1}
# images over TILE_ABOVE pixels are sampled in tiles (as `deblur predict --tile 32 --overlap 8`)
TILE, OVERLAP, TILE_ABOVE = 32, 8, 4096
SMALL, TILED = (37, 53), (48, 96)  # 1961 px, whole; 4608 px, in tiles
BOUND_S = 180  # generous bound of every wait (a loaded 2-core machine)


def _image(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape + (3,), dtype=np.uint8)


def _manifest(sampling):
    return {"sampling": sampling, "sampling_source": "test", "blessing": {"blessed": True}}


def _wait(predicate, what: str, bound: float = BOUND_S):
    deadline = time.monotonic() + bound
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise AssertionError(f"not within {bound} s: {what}")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Versions 1 and 2, and 3 damaged after its push (one flipped byte: only the SHA-256
    tells); production -> 1. A test that moves the alias moves it back to 1 before it ends,
    so the tests pass in any order (issue 38 item 7: they passed only in file order)."""
    root = str(tmp_path_factory.mktemp("registry"))
    reg = Registry(root)
    assert reg.push(BASE_MODEL, _manifest(SAMPLING_1)) == 1
    assert reg.push(BASE_MODEL, _manifest(SAMPLING_2)) == 2
    assert reg.push(BASE_MODEL, _manifest(SAMPLING_1)) == DAMAGED
    _flip_a_byte(os.path.join(root, NAME, str(DAMAGED)))
    assert reg.verify(DAMAGED, hashes=True)  # damaged
    Aliases(reg).move("production", 1, reason="test")
    return root


def _back_to_1(client, registry):
    Aliases(Registry(registry)).move("production", 1, reason="test: back to 1")
    _wait(lambda: client.metadata(NAME)["versions"] == ["1"], "the server serves version 1")


@pytest.fixture(scope="module")
def server(registry):
    with process.serve_process(registry, f"{NAME}@production", poll_seconds=0.5,
                               extra_args=["--tile", str(TILE), "--overlap", str(OVERLAP),
                                           "--tile-above", str(TILE_ABOVE)]) as handle:
        yield handle


@pytest.fixture(scope="module")
def client(server):
    return V2Client(server.url, timeout=300)


def _predict(registry, tmp_path, image, version, seed, tile=None):
    """`deblur predict` (in this venv: TensorFlow 2.16) on the same version, setting, seed."""
    from deblur import cli

    src, dst = tmp_path / f"in-{image.shape[0]}x{image.shape[1]}.png", tmp_path / "out.png"
    Image.fromarray(image).save(src)
    if dst.exists():
        dst.unlink()
    argv = ["predict", str(src), str(dst), "--model", registry, "--version", str(version),
            "--seed", str(seed), "--json"]
    if tile:
        argv += ["--tile", str(TILE), "--overlap", str(OVERLAP)]
    assert cli.main(argv) == 0
    return np.asarray(Image.open(dst).convert("RGB"))


# ------------------------------------------------------------------------------- health
def test_health_and_metadata(client, server):
    assert client.live() and client.server_ready() and client.ready(NAME)
    assert client.ready(NAME, 1) and not client.ready(NAME, 2)
    meta = client.metadata(NAME)
    assert meta["name"] == NAME and meta["versions"] == ["1"]
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {"image": "UINT8",
                                                                   "image_bytes": "BYTES"}
    params = meta["parameters"]
    assert params["model_version"] == 1 and params["alias"] == "production"
    assert params["sampling"] == SAMPLING_1 and params["sampling_key"] == "ddpm-T2-n0.5-K2"
    assert client.metadata(NAME, 1)["versions"] == ["1"]
    with pytest.raises(V2Error) as e:
        client.metadata("no-such-model")
    assert e.value.status == 404


# ----------------------------------------------------------------------------- inference
@pytest.mark.parametrize("shape,tiled", [(SMALL, False), (TILED, True)],
                         ids=["37x53", "48x96-tiled"])
def test_infer_json_binary_png_equal_deblur_predict(client, registry, tmp_path, shape, tiled):
    image = _image(shape, seed=shape[0])
    outs = {}
    for mode in ("json", "binary", "png", "png-json"):
        out, version = client.infer(NAME, image, mode=mode, version=1, seed=0)
        assert version == "1"
        assert out.shape == image.shape and out.dtype == np.uint8
        outs[mode] = out
    for mode, out in outs.items():
        assert np.array_equal(out, outs["json"]), mode  # one answer, however it travelled
    assert not np.array_equal(outs["json"], image)  # the model did something
    # the same version, setting and seed through `deblur predict`: identical, pixel for pixel
    expected = _predict(registry, tmp_path, image, version=1, seed=0, tile=tiled)
    assert np.array_equal(outs["json"], expected)
    # the seed is the request's: another seed samples another image (DDPM)
    other, _ = client.infer(NAME, image, mode="binary", version=1, seed=1)
    assert not np.array_equal(other, outs["json"])
    # the answer says it was tiled (or not)
    body, headers, path = client.infer_request(NAME, image, "json", seed=0)
    _, rh, rb = client.request("POST", path, body, headers)
    assert client.parse_infer(rh, rb)[2]["parameters"]["tiled"] is tiled


def test_binary_answer_only_when_asked(client):
    image = _image(SMALL, 5)
    body, headers, path = client.infer_request(NAME, image, "json", seed=0)
    _, rh, rb = client.request("POST", path, body, headers)
    assert "inference-header-content-length" not in rh
    assert json.loads(rb)["outputs"][0]["datatype"] == "UINT8"
    body, headers, path = client.infer_request(NAME, image, "binary", seed=0)
    _, rh, rb = client.request("POST", path, body, headers)
    n = int(rh["inference-header-content-length"])
    head = json.loads(rb[:n])
    assert head["model_version"] == "1" and "data" not in head["outputs"][0]
    assert len(rb) - n == image.size


def test_concurrent_requests_never_mix(client):
    images = [_image(SMALL, 100 + i) for i in range(6)]
    alone = [client.infer(NAME, im, mode="binary", seed=i)[0] for i, im in enumerate(images)]
    results, errors = [None] * len(images), []

    def one(i):
        try:
            results[i] = client.infer(NAME, images[i], mode="json" if i % 2 else "binary",
                                      seed=i)[0]
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(BOUND_S)
    assert not errors
    for i in range(len(images)):
        assert np.array_equal(results[i], alone[i]), i


# ------------------------------------------------------------------------------ bad input
def _bad_requests():
    J = {"Content-Type": "application/json"}
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40

    def uint8(shape, data, dtype="UINT8"):
        return json.dumps({"inputs": [{"name": "image", "datatype": dtype, "shape": shape,
                                       "data": data}]}).encode()

    def raw(name, dtype, shape, payload):
        head = json.dumps({"inputs": [{"name": name, "datatype": dtype, "shape": shape,
                                       "parameters": {"binary_data_size": len(payload)}}]}).encode()
        return head + payload, {"Content-Type": "application/octet-stream",
                                "Inference-Header-Content-Length": str(len(head))}

    import base64
    import struct
    return {
        "empty body": (b"", J, 400, "no body"),
        "not JSON": (b"this is not json", J, 400, "not JSON"),
        "bytes without the binary header": (png, {"Content-Type": "application/octet-stream"},
                                            400, "Inference-Header-Content-Length"),
        "no inputs": (json.dumps({"inputs": []}).encode(), J, 400, "expected one input"),
        "wrong dtype": (uint8([2, 2, 3], [0.5] * 12, "FP32"), J, 400, "is FP32"),
        "wrong rank": (uint8([4, 3], [0] * 12), J, 400, "rank 3"),
        "values out of range": (uint8([2, 2, 3], [300] * 12), J, 400, "0..255"),
        "too few values": (uint8([2, 2, 3], [0] * 11), J, 400, "11 values"),
        "too large": (uint8([2000, 2000, 3], [0] * 12), J, 413, "more than the limit"),
        "not an image (binary)": (*raw("image_bytes", "BYTES", [1],
                                       struct.pack("<I", len(png)) + png), 400,
                                  "not an image"),
        "not an image (JSON base64)": (json.dumps({"inputs": [{
            "name": "image_bytes", "datatype": "BYTES", "shape": [1],
            "data": [base64.b64encode(b"hello, not a picture").decode()]}]}).encode(), J, 400,
            "not an image"),
        "not base64": (json.dumps({"inputs": [{"name": "image_bytes", "datatype": "BYTES",
                                               "shape": [1], "data": ["!!not base64!!"]}]}).encode(),
                       J, 400, "base64"),
        "binary size mismatch": (*raw("image", "UINT8", [2, 2, 3], b"\x00" * 5), 400,
                                 "binary data of 5 bytes"),
        "bad seed": (json.dumps({"inputs": [{"name": "image", "datatype": "UINT8",
                                             "shape": [1, 1, 3], "data": [1, 2, 3]}],
                                 "parameters": {"seed": "x"}}).encode(), J, 400, "seed"),
    }


@pytest.mark.parametrize("case", list(_bad_requests()))
def test_bad_input_is_a_4xx_one_line_and_the_server_keeps_serving(client, case):
    body, headers, status, text = _bad_requests()[case]
    with pytest.raises(V2Error) as e:
        client.request("POST", f"/v2/models/{NAME}/infer", body, headers)
    assert e.value.status == status, e.value.body[:300]
    answer = json.loads(e.value.body)
    assert set(answer) == {"error"} and "\n" not in answer["error"], answer
    assert text in answer["error"], answer
    assert len(answer["error"]) < 400
    out, version = client.infer(NAME, _image((8, 8), 1), mode="binary")  # still serving
    assert out.shape == (8, 8, 3) and version in ("1", "2")


def test_unknown_version_is_404_naming_the_version_served(client):
    with pytest.raises(V2Error) as e:
        client.infer(NAME, _image((8, 8), 0), mode="json", version=7)
    assert e.value.status == 404 and "no version 7" in e.value.error
    assert "serves version" in e.value.error
    with pytest.raises(V2Error) as e:
        client.infer("no-such-model", _image((8, 8), 0))
    assert e.value.status == 404


# ------------------------------- alias moves (each moves production back to 1 at its end)
def test_an_alias_move_is_served_without_a_restart(client, server, registry):
    image = _image(SMALL, 7)
    assert client.infer(NAME, image, mode="binary")[1] == "1"
    Aliases(Registry(registry)).move("production", 2, reason="test: promote 2")
    _wait(lambda: client.metadata(NAME)["versions"] == ["2"], "the server serves version 2")
    out, version = client.infer(NAME, image, mode="binary", seed=0)
    assert version == "2" and server.proc.poll() is None  # the same process
    assert client.metadata(NAME)["parameters"]["sampling"] == SAMPLING_2
    with pytest.raises(V2Error) as e:
        client.infer(NAME, image, version=1)
    assert e.value.status == 404 and "serves version 2" in e.value.error
    _back_to_1(client, registry)


DAMAGED = 3  # the registry fixture's damaged version


def _flip_a_byte(version_dir: str) -> None:
    path = os.path.join(version_dir, "variables", "variables.data-00000-of-00001")
    with open(path, "r+b") as f:
        f.seek(os.path.getsize(path) // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))  # same size: only the SHA-256 tells


def test_a_damaged_target_is_refused_and_the_old_version_keeps_serving(client, server,
                                                                       registry, monkeypatch):
    reg = Registry(registry)
    # serving another version than the fixture's, so that "keeps serving" is not the default
    Aliases(reg).move("production", 2, reason="test: serve 2 first")
    _wait(lambda: client.metadata(NAME)["versions"] == ["2"], "the server serves version 2")
    # an alias is never moved onto a damaged version through the API; write the record as a
    # move made before the damage would have (the server must check for itself)
    monkeypatch.setattr(Aliases, "check_target", lambda self, v: int(v))
    Aliases(reg).move("production", DAMAGED, reason="test: a damaged target")
    monkeypatch.undo()
    _wait(lambda: "refused" in server.log()
          and f"version {DAMAGED}" in server.log().split("refused", 1)[1],
          f"the server logs the refusal of version {DAMAGED}")
    assert client.metadata(NAME)["versions"] == ["2"]
    assert client.infer(NAME, _image(SMALL, 8), mode="binary")[1] == "2"
    # and it keeps following the alias: moved to an intact version, served
    _back_to_1(client, registry)


def test_a_damaged_version_is_refused_at_start(registry, tmp_path, capsys):
    damaged = f"{NAME}/{DAMAGED}"  # the registry fixture's
    from deblur import cli

    assert cli.main(["serve", "--model", damaged, "--registry", registry]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("deblur: error: ") and err.count("\n") == 1 and "damaged" in err, err
    # the server itself refuses it too (one line, exit 2), before it binds a port
    with pytest.raises(process.ServeError) as e:
        with process.serve_process(registry, damaged, ready_timeout_s=BOUND_S):
            pass
    assert "damaged" in str(e.value) and "code 2" in str(e.value)


# ----------------------------------------------------------------- the command, the process
def _foreground(registry: str):
    """`deblur serve` on a free port, (process, port); another free port when a server of
    another test took this one between the probe and the bind (as serve_process does)."""
    for _ in range(3):
        port = process.free_port()
        proc = subprocess.Popen(
            [os.path.join(os.path.dirname(sys.executable), "deblur"), "serve", "--model",
             f"{NAME}/2", "--registry", registry, "--port", str(port), "--poll-seconds", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
        c = V2Client(f"http://127.0.0.1:{port}", timeout=5)
        if _wait(lambda: proc.poll() is not None or c.live(), "deblur serve binds or exits"):
            if proc.poll() is None:
                return proc, port
            out = proc.stdout.read().decode(errors="replace")
            if "address already in use" not in out.lower():
                raise AssertionError(f"deblur serve exited {proc.returncode}: {out[-2000:]}")
    raise AssertionError("no free port after 3 tries")


def test_deblur_serve_runs_in_the_foreground_and_stops_on_sigterm(registry):
    proc, port = _foreground(registry)
    try:
        c = V2Client(f"http://127.0.0.1:{port}", timeout=120)
        seen = []  # readiness until ready: no answer (not bound yet), 503 (loading), then 200

        def ready():
            try:
                status = c.request("GET", "/v2/health/ready")[0]
            except V2Error as e:
                status = e.status
            except OSError:
                status = None
            seen.append(status)
            return proc.poll() is not None or status == 200
        _wait(ready, "deblur serve gets ready")
        assert proc.poll() is None
        assert set(seen) <= {None, 503, 200} and seen[-1] == 200, seen
        assert c.infer(NAME, _image((8, 8), 3), mode="png")[1] == "2"
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        process.stop(proc)
    out = proc.stdout.read().decode(errors="replace")
    assert "is version 2 of 'deblur-icdpm'" in out, out[-2000:]


@pytest.mark.slow  # a server of its own (~10 s); the fast lane keeps the rest
def test_a_server_stops_when_its_parent_dies(registry, tmp_path):
    """serve_process's server polls its parent: a parent killed with SIGKILL (no clean-up at
    all) leaves no server behind."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import sys, time\n"
        "from components.serving.process import serve_process\n"
        f"with serve_process({registry!r}, {NAME + '/1'!r}, poll_seconds=0) as s:\n"
        "    print(s.pid, flush=True)\n"
        "    time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                              env=dict(os.environ, PYTHONPATH=REPO))
    child = None
    try:
        line = parent.stdout.readline().decode().strip()
        assert line.isdigit(), line
        child = int(line)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(30)

        def gone():
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return True
            with open(f"/proc/{child}/stat") as f:  # a zombie waiting for init counts as gone
                return f.read().split(") ", 1)[1].startswith("Z")
        _wait(gone, "the orphaned server stops by itself", bound=120)
    finally:
        if parent.poll() is None:
            parent.kill()
        if child is not None:
            try:
                os.kill(child, signal.SIGKILL)
            except ProcessLookupError:
                pass
