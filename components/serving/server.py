"""`deblur serve`'s server: a registry version on the Open Inference Protocol (KServe V2 REST)
with kserve's Python model server (kserve.Model + kserve.ModelServer, the runtime a KServe
InferenceService runs for a custom predictor). Runs in the serving venv .venv-serve (kserve
0.21, TensorFlow 2.21, protobuf 6):

    python -m components.serving.server --registry URI --model NAME@ALIAS|@ALIAS|NAME/N|NAME \\
        [--host 127.0.0.1] [--port 8080] [--poll-seconds 5] [--max-pixels N] \\
        [--tile 256 --overlap 32 --tile-above N] [--threads 2] [--parent-pid PID]

Endpoints (docs/serving.md has the request and response shapes):
    GET  /v2/health/live, /v2/health/ready (503 until the model is loaded)
    GET  /v2/models/{name}[/versions/{N}]          metadata: inputs, outputs, the version
                                                   served, its sampling setting
    GET  /v2/models/{name}[/versions/{N}]/ready
    POST /v2/models/{name}[/versions/{N}]/infer    a UINT8 [H, W, 3] tensor "image" (JSON data
         or the binary tensor data extension), or an encoded PNG/JPEG as a BYTES [1] tensor
         "image_bytes" (binary, or base64 text in JSON); the answer comes back the same way
         (binary when binary_data_output / an output's binary_data asks) with model_version.
         parameters.seed (default 0) seeds the sampler as `deblur predict --seed`.

What kserve 0.21 provides and is used as is: the routes and their JSON models
(protocol/rest/v2_endpoints.py), the binary tensor extension in both directions
(InferRequest.from_bytes, InferResponse.to_rest with Inference-Header-Content-Length), its
error handlers (InvalidInput -> 400, ModelNotFound -> 404, ModelNotReady -> 503, each
{"error": "..."}). What it lacks, added through its extension points, each marked
"kserve lacks" below: model versions (its V2 endpoints answer 501 for /versions/{N}/...),
metadata beyond name/inputs/outputs (the version and the sampling setting), server readiness
that waits for the model (its DataPlane.ready is always true for a predictor), a host to bind
(its RESTServer binds 0.0.0.0), and a one-line 400 for a body FastAPI cannot parse (its
default is a 422 with a list of pydantic errors).

The version served: resolved from the ref by components.registry.aliases.resolve_ref (a
complete version whose files match its manifest: sizes and SHA-256; for an alias, blessed),
loaded from the folder resolve_ref checked (a gs:// version downloaded and checked). Every
--poll-seconds the ref is resolved again; when it names another version (an alias moved, a new
latest) that version is loaded and warmed up in the background and swapped in atomically: a
request works on the one version it started with, from its input check to its answer. A target
that does not resolve (damaged, unblessed, missing) is refused with one log line and the
version being served keeps serving. Output for a version, setting and seed is that of
`deblur predict` (components/serving/runtime.py, one copy).
"""
# no `from __future__ import annotations`: FastAPI reads the route functions' annotations, and
# those name classes imported inside build_app()

import argparse
import asyncio
import base64
import binascii
import concurrent.futures
import contextvars
import dataclasses
import logging
import os
import signal
import struct
import sys
import threading
import time
from typing import Any, Dict, List, Optional

import numpy as np

from components.registry.registry import RegistryError
from components.serving import runtime

# Defaults, documented in docs/serving.md ("Limits").
# 1920x1080 (Full HD, 2.07 MP): the largest image answered. The paper's data are 1280x720
# (GoPro) and ~680x770 (RealBlur); an answer's time grows with the pixels (1280x720 at the
# local model's registered setting takes minutes on 2 cores, benchmarks/results/
# serve_bench.md) and a JSON tensor of 1920x1080x3 is already ~25 MB of text.
DEFAULT_MAX_PIXELS = 1920 * 1080
# Larger images than this are sampled in 256-px tiles with 32 px of overlap, exactly as
# `deblur predict --tile 256 --overlap 32` (memory: one tile's activations instead of the
# whole image's); up to it, whole, as `deblur predict` without --tile.
DEFAULT_TILE_ABOVE = 1280 * 720
DEFAULT_TILE, DEFAULT_OVERLAP = 256, 32
DEFAULT_POLL_SECONDS = 5.0
DEFAULT_THREADS = 2  # concurrent inferences: the two cores of these machines

IMAGE, IMAGE_BYTES = "image", "image_bytes"
EXIT_USAGE = 2

log = logging.getLogger("deblur.serve")

# the version a request named (/versions/{N}/infer), for the model's predict (same task)
_REQUESTED_VERSION: contextvars.ContextVar[Optional[int]] = contextvars.ContextVar(
    "deblur_requested_version", default=None)


class TooLarge(Exception):
    """An image over --max-pixels: 413, one line."""


class VersionNotServed(Exception):
    """A request for a version other than the one served: 404."""

    def __init__(self, model: str, asked: str, served: Optional[int]):
        self.text = (f"model {model!r} has no version {asked} here: this server serves version "
                     f"{served}" if served is not None else
                     f"model {model!r} has no version {asked} here: no version is loaded yet")

    def __str__(self) -> str:
        return self.text


@dataclasses.dataclass(frozen=True)
class Served:
    """One loaded version: swapped as a whole, never changed in place."""
    version: int
    loaded: Any  # the tf.saved_model.load result
    setting: Any  # trainer.setting.SamplingSetting: the manifest's `sampling`
    manifest: Dict[str, Any]
    alias: Optional[str]
    path: str
    loaded_at: float


def _one_line(e: BaseException) -> str:
    text = (getattr(e, "message", None) or str(e) or type(e).__name__).strip()
    return text.splitlines()[0] if text else type(e).__name__


class VersionSource:
    """Resolves the ref (--model) against the registry and loads versions."""

    def __init__(self, registry_uri: Optional[str], ref: str, default_model: str):
        from components.registry.aliases import parse_ref

        self.registry_uri = registry_uri
        self.ref = ref
        self.default_model = default_model
        self.model_name = parse_ref(ref, default_model).model_name

    def resolve(self):
        from components.registry.aliases import resolve_ref

        return resolve_ref(self.registry_uri, self.ref, default_model=self.default_model)

    def peek(self) -> Optional[int]:
        """The version the ref names now, unchecked (one read of the alias): the poll hashes a
        version's files (resolve) only when this differs from the version served."""
        from components.registry.aliases import peek_ref

        return peek_ref(self.registry_uri, self.ref, default_model=self.default_model)

    def load(self, resolved) -> Served:
        """The SavedModel of a resolved version, warmed up: its files checked by resolve_ref (a
        gs:// one downloaded and checked), loaded, and run once on a small image so that a
        version that does not run is refused before any request reaches it."""
        import tensorflow as tf

        from trainer.setting import SamplingSetting

        path = resolved.path
        loaded = tf.saved_model.load(path)
        runtime.check_deblur_model(loaded, f"version {resolved.version} ({path})")
        # the registered setting, as `deblur predict` takes it (deblur/predict.py)
        sampling = resolved.manifest.get("sampling")
        setting = SamplingSetting.from_dict(sampling) if sampling else SamplingSetting()
        warm = SamplingSetting(setting.sampler, 1, setting.max_noise, 1)
        runtime.deblur_image(loaded, np.zeros((16, 16, 3), np.uint8), warm)
        return Served(resolved.version, loaded, setting, resolved.manifest, resolved.alias,
                      path, time.time())


def make_model(source: VersionSource, *, max_pixels: int, tile: int, overlap: int,
               tile_above: int, threads: int, poll_seconds: float):
    import kserve
    from kserve.errors import InferenceError, InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class _DeblurModel(kserve.Model):
        """One registry model; the version it serves may change between requests."""

        def __init__(self):
            super().__init__(source.model_name)
            self.ready = False
            self.served: Optional[Served] = None
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="deblur-infer")
            self._stop = threading.Event()
            self._last_problem: Optional[str] = None
            self.failed: Optional[str] = None  # the first load failed: the process exits

        # ------------------------------------------------------------------- loading
        def load_first(self, resolved) -> None:
            """The first version (in the background: until it is loaded, readiness is 503)."""
            try:
                self.served = source.load(resolved)
            except Exception as e:  # noqa: BLE001 - any failure to load is the same refusal
                self.failed = (f"version {resolved.version} of {source.model_name!r} does not "
                               f"load: {_one_line(e)}")
                log.error("refused: %s", self.failed)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            self.ready = True
            log.info("serving version %s of %r (%s), sampling %s", self.served.version,
                     source.model_name, source.ref, self.served.setting.key)
            if poll_seconds > 0:
                threading.Thread(target=self._watch, name="deblur-watch", daemon=True).start()

        def _watch(self) -> None:
            while not self._stop.wait(poll_seconds):
                try:
                    self.poll_once()
                except Exception as e:  # noqa: BLE001 - the watcher never dies
                    log.error("watch: %s", _one_line(e))

        def poll_once(self) -> None:
            current = self.served
            try:
                # nothing moved: no hashing of the served version's files every poll (a
                # large model's SHA-256 would keep a core busy); what is served is in memory
                if source.peek() == current.version and self._last_problem is None:
                    return
                resolved = source.resolve()
            except RegistryError as e:
                self._note(f"{source.ref} does not resolve to a servable version ({e}); "
                           f"still serving version {current.version}")
                return
            if resolved.version == current.version:
                self._last_problem = None
                return
            try:
                new = source.load(resolved)
            except Exception as e:  # noqa: BLE001
                self._note(f"refused version {resolved.version} of {source.model_name!r} "
                           f"({_one_line(e)}); still serving version {current.version}")
                return
            self.served = new  # one reference assignment: requests hold their own snapshot
            self._last_problem = None
            log.info("switched %s from version %s to version %s, sampling %s", source.ref,
                     current.version, new.version, new.setting.key)

        def _note(self, problem: str) -> None:
            if problem != self._last_problem:  # once per distinct problem, not every poll
                log.warning("refused: %s", problem)
                self._last_problem = problem

        def stop(self):
            self._stop.set()
            self._pool.shutdown(wait=False, cancel_futures=True)
            super().stop()

        # ------------------------------------------------------------------ metadata
        def get_input_types(self) -> List[Dict]:
            return [{"name": IMAGE, "datatype": "UINT8", "shape": [-1, -1, 3]},
                    {"name": IMAGE_BYTES, "datatype": "BYTES", "shape": [1]}]

        def get_output_types(self) -> List[Dict]:
            return [{"name": IMAGE, "datatype": "UINT8", "shape": [-1, -1, 3]},
                    {"name": IMAGE_BYTES, "datatype": "BYTES", "shape": [1]}]

        def metadata(self, served: Served) -> Dict[str, Any]:
            return {
                "name": self.name, "versions": [str(served.version)],
                "platform": "tensorflow_savedmodel",
                "inputs": self.get_input_types(), "outputs": self.get_output_types(),
                # kserve lacks: the V2 metadata has no place for these (parameters, as the
                # V2 protocol's requests and responses have)
                "parameters": {
                    "model_version": served.version, "ref": source.ref, "alias": served.alias,
                    "sampling": served.setting.to_dict(), "sampling_key": served.setting.key,
                    "sampling_source": served.manifest.get("sampling_source"),
                    "version_uri": (served.manifest.get("registry") or {}).get("version_uri"),
                    "created": served.manifest.get("created"),
                    "max_pixels": max_pixels, "tile": tile, "overlap": overlap,
                    "tile_above": tile_above, "poll_seconds": poll_seconds,
                    "input_note": f"send one input: {IMAGE} (UINT8 [H, W, 3]) or {IMAGE_BYTES} "
                                  "(BYTES [1]: a PNG or JPEG file; base64 text in JSON)",
                },
            }

        # ------------------------------------------------------------------ inference
        def _image(self, request: InferRequest):
            """(uint8 image, input name) of a request, or InvalidInput (400) in one line."""
            if len(request.inputs) != 1:
                raise InvalidInput(f"expected one input, {IMAGE} (UINT8 [H, W, 3]) or "
                                   f"{IMAGE_BYTES} (BYTES [1]); got {len(request.inputs)}")
            inp = request.inputs[0]
            shape = [int(v) for v in (inp.shape or [])]
            if inp.datatype == "BYTES":
                if shape != [1]:
                    raise InvalidInput(f"a BYTES input holds one encoded image: shape [1], got "
                                       f"{shape}")
                try:
                    value = inp.as_numpy().reshape(-1)
                except (ValueError, TypeError, struct.error) as e:
                    raise InvalidInput(f"input {inp.name!r}: {_one_line(e)}") from None
                if value.size != 1:
                    raise InvalidInput(f"a BYTES input holds one encoded image, got {value.size}")
                data = value[0]
                if isinstance(data, str):  # JSON: base64 text
                    try:
                        data = base64.b64decode(data, validate=True)
                    except (binascii.Error, ValueError):
                        raise InvalidInput(f"input {inp.name!r}: in JSON an encoded image is "
                                           "base64 text, and this is not") from None
                if not data:
                    raise InvalidInput(f"input {inp.name!r} is empty")
                try:
                    return runtime.decode_rgb(bytes(data), f"input {inp.name!r}",
                                              max_pixels=max_pixels), IMAGE_BYTES
                except runtime.ImageError as e:
                    if "more than the limit" in str(e):
                        raise TooLarge(str(e)) from None
                    raise InvalidInput(str(e)) from None
            if inp.datatype != "UINT8":
                raise InvalidInput(f"input {inp.name!r} is {inp.datatype}: send UINT8 [H, W, 3] "
                                   "RGB pixels, or an encoded image as BYTES [1]")
            if len(shape) != 3 or shape[2] != 3 or min(shape) < 1:
                raise InvalidInput(f"input {inp.name!r} has shape {shape}: expected [H, W, 3] "
                                   "(RGB; rank 3)")
            if shape[0] * shape[1] > max_pixels:
                raise TooLarge(f"input {inp.name!r} is {shape[1]}x{shape[0]} = "
                                f"{shape[0] * shape[1]} pixels, more than the limit of "
                                f"{max_pixels}")
            raw = getattr(inp, "_raw_data", None)
            n = shape[0] * shape[1] * 3
            if raw is not None and len(raw) != n:
                raise InvalidInput(f"input {inp.name!r}: binary data of {len(raw)} bytes for "
                                   f"shape {shape} ({n} bytes)")
            if raw is None:
                data = inp.data
                if not isinstance(data, (list, np.ndarray)) or len(data) != n:
                    count = len(data) if isinstance(data, (list, np.ndarray)) else 0
                    raise InvalidInput(f"input {inp.name!r}: {count} values for shape {shape} "
                                       f"({n} values)")
                try:
                    arr = np.asarray(data)
                except (ValueError, TypeError):
                    raise InvalidInput(f"input {inp.name!r}: data is not a flat list of "
                                       "numbers") from None
                if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or (
                        arr.size and (arr.min() < 0 or arr.max() > 255)):
                    raise InvalidInput(f"input {inp.name!r}: UINT8 data must be integers "
                                       "0..255 in a flat list")
                return arr.astype(np.uint8).reshape(shape), IMAGE
            return np.frombuffer(raw, np.uint8).reshape(shape), IMAGE

        async def predict(self, payload, headers=None, response_headers=None):
            served = self.served  # this request's version, from its check to its answer
            if served is None or not self.ready:
                from kserve.errors import ModelNotReady

                raise ModelNotReady(self.name)
            asked = _REQUESTED_VERSION.get()
            if asked is not None and asked != served.version:
                raise VersionNotServed(self.name, str(asked), served.version)
            if not isinstance(payload, InferRequest):
                raise InvalidInput("expected a V2 inference request")
            image, kind = self._image(payload)
            params = payload.parameters or {}
            seed = params.get("seed", 0)
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
                raise InvalidInput(f"parameters.seed must be a non-negative integer, got {seed!r}")
            use_tile = tile if image.shape[0] * image.shape[1] > tile_above else None
            loop = asyncio.get_running_loop()
            try:
                out = await loop.run_in_executor(
                    self._pool, lambda: runtime.deblur_image(
                        served.loaded, image, served.setting, seed=seed, tile=use_tile,
                        overlap=overlap))
            except ValueError as e:  # NonFiniteOutput
                raise InferenceError(f"version {served.version}: {_one_line(e)}") from None
            if kind == IMAGE_BYTES:
                png = runtime.encode_png(out)
                binary = payload.use_binary_outputs or _asks_binary(payload, IMAGE_BYTES)
                value = png if binary else base64.b64encode(png)
                output = InferOutput(IMAGE_BYTES, [1], "BYTES")
                output.set_data_from_numpy(np.array([value], dtype=np.object_), binary_data=binary)
            else:
                output = InferOutput(IMAGE, list(out.shape), "UINT8")
                # held as raw bytes: kserve's to_rest makes JSON data of them only when the
                # answer is JSON (a Python list of H*W*3 ints costs ~30 ms at 256x256)
                output.set_data_from_numpy(out, binary_data=True)
            return InferResponse(
                response_id=payload.id or "", model_name=self.name,
                model_version=str(served.version), infer_outputs=[output],
                parameters={"seed": seed, "sampling": served.setting.key,
                            "tiled": bool(use_tile)},
                use_binary_outputs=payload.use_binary_outputs,
                requested_outputs=payload.request_outputs)

    return _DeblurModel()


def _asks_binary(request, name: str) -> bool:
    for out in request.request_outputs or []:
        if out.name == name and out.binary_data:
            return True
    return False


def decode_request(body: bytes, headers: Dict[str, str], model_name: str):
    """The InferRequest of an inference request's body: the binary tensor data extension when
    the Inference-Header-Content-Length header is there, else JSON.

    kserve lacks: its route has FastAPI parse the JSON (the standard library's json, then
    pydantic) and answers a body it cannot parse with a 422 and a list of pydantic errors; here
    orjson parses it, and every problem is a one-line 400 (InvalidInput)."""
    import orjson
    import pydantic
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferRequest
    from kserve.protocol.rest.v2_datamodels import InferenceRequest

    if "inference-header-content-length" in headers:
        return decode_binary(body, headers, model_name)
    if not body:
        raise InvalidInput("bad request: the request has no body: send a V2 inference request "
                           "(JSON, or the binary tensor data extension)")
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        if body[:1] not in b"{[ \t\r\n":
            raise InvalidInput("bad request: the body is not JSON, and a binary body needs the "
                               "binary tensor data extension's Inference-Header-Content-Length "
                               "header") from None
        raise InvalidInput(f"bad request: the body is not JSON: {_one_line(e)[:200]}") from None
    try:
        request = InferenceRequest.model_validate(parsed)
    except pydantic.ValidationError as e:
        first = e.errors()[0] if e.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise InvalidInput(f"bad request: {where or 'the request'}: "
                           f"{first.get('msg', 'not a V2 inference request')}") from None
    return InferRequest.from_inference_request(request, model_name)


def decode_binary(body: bytes, headers: Dict[str, str], model_name: str):
    """An InferRequest of a request with the binary tensor data extension (a JSON header of
    Inference-Header-Content-Length bytes, then each input's bytes).

    kserve lacks: its InferRequest.from_bytes turns every binary input into JSON-style data
    (a BYTES input into UTF-8 text, which a PNG file is not: a 500; a UINT8 input into a Python
    list of ints). Here each input keeps its raw bytes, as InferInput holds them."""
    import orjson
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput

    length = headers.get("inference-header-content-length")
    if length is None:
        raise InvalidInput("a body that is not JSON needs the binary tensor data extension's "
                           "Inference-Header-Content-Length header (or send JSON)")
    try:
        n = int(length)
        head = orjson.loads(body[:n])
        if not isinstance(head, dict) or not isinstance(head.get("inputs"), list):
            raise ValueError("no inputs list")
    except (ValueError, orjson.JSONDecodeError) as e:
        raise InvalidInput(f"the JSON header of the binary request does not parse: "
                           f"{_one_line(e)[:200]}") from None
    start, inputs = n, []
    for spec in head["inputs"]:
        if not isinstance(spec, dict) or not {"name", "datatype", "shape"} <= set(spec):
            raise InvalidInput("each input needs a name, a datatype and a shape")
        params = spec.get("parameters") or {}
        inp = InferInput(name=spec["name"], shape=spec["shape"], datatype=spec["datatype"],
                         parameters=params)
        if spec.get("data") is not None:
            inp.data = spec["data"]
        elif isinstance(params.get("binary_data_size"), int):
            end = start + params["binary_data_size"]
            if end > len(body):
                raise InvalidInput(f"input {spec['name']!r}: binary_data_size "
                                   f"{params['binary_data_size']} runs past the body's end")
            inp._raw_data = body[start:end]
            start = end
        else:
            raise InvalidInput(f"input {spec['name']!r} has neither data nor binary_data_size")
        inputs.append(inp)
    outputs = [RequestedOutput(name=o.get("name"), parameters=o.get("parameters"))
               for o in head.get("outputs") or [] if isinstance(o, dict)]
    return InferRequest(model_name=model_name, infer_inputs=inputs, request_id=head.get("id"),
                        parameters=head.get("parameters"), request_outputs=outputs or None)


# -------------------------------------------------------------------------- the server
def build_app(model, dataplane) -> None:
    """kserve lacks: routes and handlers added to kserve's FastAPI app (kserve.model_server.app,
    the app its RESTServer serves) before the server starts, so they match before kserve's own
    routes of the same paths: versions, rich metadata, one-line 400s."""
    from fastapi import Request, Response
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.errors import ModelNotFound, ModelNotReady
    from kserve.model_server import app
    import orjson
    from kserve.protocol.rest.v2_datamodels import InferenceResponse
    from kserve.protocol.rest.v2_endpoints import V2Endpoints

    endpoints = V2Endpoints(dataplane)

    def served_or_raise(model_name: str, version: Optional[str] = None) -> Served:
        if model_name != model.name:
            raise ModelNotFound(model_name)
        served = model.served
        if served is None or not model.ready:
            raise ModelNotReady(model_name)
        if version is not None and version != str(served.version):
            raise VersionNotServed(model_name, version, served.version)
        return served

    async def metadata(model_name: str, model_version: Optional[str] = None):
        return model.metadata(served_or_raise(model_name, model_version))

    async def ready(model_name: str, model_version: Optional[str] = None):
        served_or_raise(model_name, model_version)
        return {"name": model_name, "ready": True}

    async def infer(raw_request: Request, raw_response: Response, model_name: str,
                    model_version: Optional[str] = None):
        served_or_raise(model_name, model_version)
        if model_version is not None:
            # the model's predict checks it again on its own snapshot: a switch between this
            # check and the inference is a 404 too, never an answer from another version
            _REQUESTED_VERSION.set(int(model_version))
        headers = dict(raw_request.headers)
        request = decode_request(await raw_request.body(), headers, model_name)
        # kserve's own handler from here (an InferRequest passes its decode untouched)
        res = await endpoints.infer(raw_request, raw_response, model_name, request)
        if isinstance(res, InferenceResponse):
            # kserve lacks: FastAPI would encode its answer with jsonable_encoder, element by
            # element (0.3 s for a 256x256 UINT8 tensor in JSON); orjson takes 6 ms
            return Response(orjson.dumps(res.model_dump(exclude_none=True)),
                            media_type="application/json", headers=dict(raw_response.headers))
        return res

    for path, fn in (("/v2/models/{model_name}", metadata),
                     ("/v2/models/{model_name}/versions/{model_version}", metadata),
                     ("/v2/models/{model_name}/versions/{model_version}/ready", ready)):
        app.add_api_route(path, fn, methods=["GET"])
    for path in ("/v2/models/{model_name}/infer",
                 "/v2/models/{model_name}/versions/{model_version}/infer"):
        app.add_api_route(path, infer, methods=["POST"], response_model=None)

    async def not_served(_, exc: VersionNotServed):
        return JSONResponse(status_code=404, content={"error": str(exc)})

    async def bad_body(_, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        text = first.get("msg", "invalid request")
        if first.get("type") == "missing" and not where:
            text = "the request has no body: send a V2 inference request (JSON)"
        elif first.get("type") in ("json_invalid",):
            text = f"the body is not JSON: {first.get('ctx', {}).get('error', text)}"
        elif where:
            text = f"{where}: {text}"
        return JSONResponse(status_code=400, content={"error": f"bad request: {text}"})

    async def too_large(_, exc):
        return JSONResponse(status_code=413, content={"error": str(exc)})

    app.add_exception_handler(VersionNotServed, not_served)
    app.add_exception_handler(RequestValidationError, bad_body)
    app.add_exception_handler(TooLarge, too_large)


def _watch_parent(parent_pid: int) -> None:
    """The server stops when the process that started it is gone (serve_process: a test or a
    benchmark killed with SIGKILL leaves no server behind). Polls once a second."""
    def loop():
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                log.warning("parent process %d is gone: stopping", parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
                os._exit(1)
            except PermissionError:
                pass
            if os.getppid() != parent_pid and os.getppid() == 1:
                log.warning("parent process %d is gone (re-parented): stopping", parent_pid)
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
                os._exit(1)

    threading.Thread(target=loop, name="deblur-parent-watch", daemon=True).start()


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m components.serving.server",
                                description=__doc__.splitlines()[0])
    p.add_argument("--registry", default=None, help="registry URI (local folder or gs://)")
    p.add_argument("--model", required=True, help="NAME@ALIAS, @ALIAS, NAME/N or NAME (latest)")
    p.add_argument("--default-model", default="deblur-icdpm", help="the model of @ALIAS")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--poll-seconds", type=float, default=DEFAULT_POLL_SECONDS,
                   help="how often the ref is resolved again (0: never)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS)
    p.add_argument("--tile", type=int, default=DEFAULT_TILE)
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    p.add_argument("--tile-above", type=int, default=DEFAULT_TILE_ABOVE,
                   help="images with more pixels are sampled in tiles")
    p.add_argument("--threads", type=int, default=DEFAULT_THREADS,
                   help="inferences run at once (the rest wait)")
    p.add_argument("--grace-seconds", type=int, default=5,
                   help="on SIGTERM, how long requests in flight may finish")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="stop when this process is gone (set by serve_process)")
    args = p.parse_args(argv)
    for name in ("max_pixels", "tile", "threads"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    return args


def _fail(text: str) -> int:
    print(f"deblur serve: error: {text}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(argv=None) -> int:
    args = parse_args(argv)
    # kserve parses sys.argv when imported (kserve.model_server): give it none of ours
    sys.argv = sys.argv[:1]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s deblur-serve %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    if args.parent_pid:
        _watch_parent(args.parent_pid)
    try:
        source = VersionSource(args.registry, args.model, args.default_model)
        resolved = source.resolve()  # a bad ref, a damaged version: one line, before serving
    except RegistryError as e:
        return _fail(str(e))

    import kserve
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.rest.server import RESTServer

    class _ReadyDataPlane(DataPlane):
        async def ready(self) -> bool:
            # kserve lacks: its server readiness is always true for a predictor; ours is
            # false (503) until every registered model is loaded
            models = list(self.model_registry.get_models().values())
            return bool(models) and all(m.ready for m in models)

    class _Server(kserve.ModelServer):
        def __init__(self, host: str, **kw):
            super().__init__(**kw)
            self.host = host
            self.dataplane = _ReadyDataPlane(model_registry=self.registered_models)

        def start(self, models) -> None:
            # kserve's ModelServer.start, less gRPC and multi-process, with the host to bind
            # (kserve lacks: its RESTServer binds 0.0.0.0 unconditionally). The models are
            # registered before they are loaded, so the endpoints answer 503 until then
            # (kserve's own start refuses models that are not ready yet).
            for m in models:
                self.register_model(m)
                m.enable_latency_logging = self.enable_latency_logging
            self._rest_server = RESTServer(
                FASTAPI_APP_IMPORT_STRING, self.dataplane, self.model_repository_extension,
                self.http_port, access_log_format=self.access_log_format, workers=1,
                grace_period=self.grace_period, event_loop=self.event_loop,
                timeout_keep_alive=self.timeout_keep_alive)
            self._rest_server.config.host = self.host
            self.servers.append(self._rest_server.start())
            self.setup_event_loop()
            self.register_signal_handler()
            asyncio.run(self._serve())

    model = make_model(source, max_pixels=args.max_pixels, tile=args.tile, overlap=args.overlap,
                       tile_above=args.tile_above, threads=args.threads,
                       poll_seconds=args.poll_seconds)
    server = _Server(args.host, http_port=args.port, enable_grpc=False,
                     enable_latency_logging=False, grace_period=args.grace_seconds)
    logging.getLogger("kserve.trace").setLevel(logging.WARNING)  # two lines per request
    build_app(model, server.dataplane)
    threading.Thread(target=model.load_first, args=(resolved,), name="deblur-load",
                     daemon=True).start()
    log.info("listening on http://%s:%d/v2/models/%s (version %s of %s, loading)", args.host,
             args.port, model.name, resolved.version, args.model)
    server.start([model])
    if model.failed:
        return _fail(model.failed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
