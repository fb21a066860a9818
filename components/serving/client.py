"""A small client of the Open Inference Protocol (KServe V2 REST) as `deblur serve` speaks it:
standard library, numpy and Pillow only, so the pipeline's servability check (in .venv), the
tests and the benchmark use it without kserve.

    c = V2Client("http://127.0.0.1:8080")
    c.live(); c.ready("deblur-icdpm"); c.metadata("deblur-icdpm")
    out, version = c.infer("deblur-icdpm", image_uint8_hw3, mode="json" | "binary" | "png")

mode: "json" sends the UINT8 [H, W, 3] tensor as JSON data and gets JSON back; "binary" sends
it with the binary tensor data extension and asks for a binary answer; "png" sends a PNG file
as a BYTES [1] tensor (binary) and gets a PNG back. HTTP errors raise V2Error with the status
and the server's one-line {"error": ...}.
"""
from __future__ import annotations

import base64
import io
import json
import struct
import urllib.error
import urllib.request
from typing import Any, Dict, Optional, Tuple

import numpy as np

HEADER = "Inference-Header-Content-Length"
MODES = ("json", "binary", "png", "png-json")


class V2Error(Exception):
    def __init__(self, status: int, error: str, body: bytes = b""):
        super().__init__(f"HTTP {status}: {error}")
        self.status = status
        self.error = error
        self.body = body


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _unpng(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _bytes_element(raw: bytes) -> bytes:
    """The first element of a serialized BYTES tensor (4-byte little-endian length + bytes)."""
    (n,) = struct.unpack_from("<I", raw, 0)
    return raw[4:4 + n]


class V2Client:
    def __init__(self, url: str, timeout: float = 600.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    # ------------------------------------------------------------------------ plumbing
    def request(self, method: str, path: str, body: Optional[bytes] = None,
                headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
        """(status, headers, body) of one request; HTTP errors raise V2Error."""
        req = urllib.request.Request(self.url + path, data=body, method=method,
                                     headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            data = e.read()
            try:
                error = json.loads(data).get("error", data.decode(errors="replace"))
            except (ValueError, AttributeError):
                error = data.decode(errors="replace")
            raise V2Error(e.code, str(error), data) from None

    def get_json(self, path: str) -> Dict[str, Any]:
        return json.loads(self.request("GET", path)[2])

    # ------------------------------------------------------------------------- the API
    def live(self) -> bool:
        try:
            return bool(self.get_json("/v2/health/live").get("live"))
        except (V2Error, OSError):
            return False

    def server_ready(self) -> bool:
        try:
            return bool(self.get_json("/v2/health/ready").get("ready"))
        except (V2Error, OSError):
            return False

    def ready(self, model: str, version: Optional[int] = None) -> bool:
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/ready"
        try:
            return bool(self.get_json(path).get("ready"))
        except (V2Error, OSError):
            return False

    def metadata(self, model: str, version: Optional[int] = None) -> Dict[str, Any]:
        return self.get_json(f"/v2/models/{model}" + (f"/versions/{version}" if version else ""))

    def infer_request(self, model: str, image: np.ndarray, mode: str = "json",
                      version: Optional[int] = None, seed: Optional[int] = None
                      ) -> Tuple[bytes, Dict[str, str], str]:
        """(body, headers, path) of an inference request (the benchmark reuses them)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        image = np.ascontiguousarray(image, np.uint8)
        params = {} if seed is None else {"seed": int(seed)}
        path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
        if mode == "json":
            req = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(image.shape),
                               "data": image.reshape(-1).tolist()}], "parameters": params}
            return json.dumps(req).encode(), {"Content-Type": "application/json"}, path
        if mode == "png-json":
            req = {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [1],
                               "data": [base64.b64encode(_png(image)).decode()]}],
                   "parameters": params}
            return json.dumps(req).encode(), {"Content-Type": "application/json"}, path
        if mode == "binary":
            raw, name, dtype, shape = image.tobytes(), "image", "UINT8", list(image.shape)
        else:  # png
            png = _png(image)
            raw, name, dtype, shape = struct.pack("<I", len(png)) + png, "image_bytes", "BYTES", [1]
        head = json.dumps({
            "inputs": [{"name": name, "datatype": dtype, "shape": shape,
                        "parameters": {"binary_data_size": len(raw)}}],
            "outputs": [{"name": name, "parameters": {"binary_data": True}}],
            "parameters": dict(params, binary_data_output=True)}).encode()
        return head + raw, {"Content-Type": "application/octet-stream",
                            HEADER: str(len(head))}, path

    @staticmethod
    def parse_infer(headers: Dict[str, str], body: bytes) -> Tuple[np.ndarray, str, Dict]:
        """(uint8 image, model_version, the response's JSON) of an inference answer."""
        n = headers.get(HEADER.lower())
        head = json.loads(body[:int(n)] if n is not None else body)
        raw = body[int(n):] if n is not None else b""
        out = head["outputs"][0]
        if out["datatype"] == "BYTES":
            if "data" in out:
                image = _unpng(base64.b64decode(out["data"][0]))
            else:
                image = _unpng(_bytes_element(raw[:out["parameters"]["binary_data_size"]]))
        else:
            shape = tuple(out["shape"])
            if "data" in out:
                image = np.asarray(out["data"], np.uint8).reshape(shape)
            else:
                image = np.frombuffer(raw[:out["parameters"]["binary_data_size"]],
                                      np.uint8).reshape(shape)
        return image, str(head.get("model_version")), head

    def infer(self, model: str, image: np.ndarray, mode: str = "json",
              version: Optional[int] = None, seed: Optional[int] = None
              ) -> Tuple[np.ndarray, str]:
        """(the deblurred uint8 [H, W, 3] image, the model_version that answered)."""
        body, headers, path = self.infer_request(model, image, mode, version, seed)
        _, rheaders, rbody = self.request("POST", path, body, headers)
        image, version_served, _ = self.parse_infer(rheaders, rbody)
        return image, version_served
