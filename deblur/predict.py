"""`deblur predict IN OUT`: deblur any image with a SavedModel or the registry's latest version.

--model accepts
  a SavedModel folder (saved_model.pb), or a Trainer Model artifact folder (Format-Serving/)
      sampling defaults: the export's deblur.json (default_sampling)
  a registry URI (a local folder or gs://bucket/prefix holding <model-name>/<version>/)
      the newest complete version (or --version N); sampling defaults: the manifest's
      setting, the one the evaluator chose by out-of-domain LPIPS
--steps / --max-noise / --samples / --sampler override the defaults. IN may be a file or a
folder (every image in it; OUT is then a folder). Only TensorFlow and the SavedModel are
needed: the model's own code is not imported. An image with transparency keeps it: the model
deblurs the RGB and the alpha channel goes back unchanged into a PNG (TIFF, WebP) output; a
JPEG output cannot hold it, which is said in one line. --version applies to a registry only.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from typing import List, Optional, Tuple

import numpy as np

from components.serving import runtime
from core.artifacts import IMAGE_EXTENSIONS, SAVED_MODEL_FILE, model_info_path
from trainer.setting import EXPORT_DEFAULT, NON_FINITE_OUTPUT, SamplingSetting



@dataclasses.dataclass
class ResolvedModel:
    path: str  # local SavedModel folder
    setting: SamplingSetting  # the defaults before CLI overrides
    source: str  # what was loaded, for the user
    # the setting is the export's default: no evaluation chose it (a Trainer's output)
    unevaluated: bool = False


def _setting_from(d: Optional[dict]) -> Optional[SamplingSetting]:
    if not d:
        return None
    return SamplingSetting.from_dict(d)


def saved_model_dir(path: str) -> Optional[str]:
    """path itself or its Format-Serving/ (a TFX Model artifact) when it holds a SavedModel."""
    import tensorflow as tf

    for d in (path, os.path.join(path, "Format-Serving")):
        if tf.io.gfile.exists(os.path.join(d, SAVED_MODEL_FILE)):
            return d
    return None


def resolve_model(spec: str, model_name: str, version: Optional[int] = None) -> ResolvedModel:
    """A SavedModel folder, a Model artifact folder, or a registry URI -> ResolvedModel."""
    import tensorflow as tf

    d = saved_model_dir(spec)
    if d is not None and version is not None:  # it was silently ignored
        raise ValueError(f"--version {version} applies to a registry; {spec} is a SavedModel "
                         f"folder: drop --version, or give the registry as --model")
    if d is not None:
        from components.registry.registry import verify_folder

        # a registry version folder given as a plain path: checked against its manifest as
        # the registry checks it (a same-size bit flip too), before TensorFlow reads it
        problem = verify_folder(d)
        if problem:
            raise ValueError(f"{problem}; use another --version or --model")
        from trainer.export import read_model_info  # names a deblur.json that is not JSON

        described = read_model_info(d)
        setting = _setting_from(described.get("default_sampling"))
        chosen_by = described.get("sampling_chosen_by")
        return ResolvedModel(d, setting or SamplingSetting(), f"SavedModel {d}",
                             unevaluated=chosen_by == EXPORT_DEFAULT)
    from components.registry.registry import Registry

    registry = Registry(spec, model_name)
    if version is None:
        latest = registry.latest(hashes=True)  # damaged versions skipped, with a warning
        if latest is None:
            raise ValueError(f"{spec} is neither a SavedModel nor a registry with versions of "
                             f"{model_name!r}")
        version, manifest = latest
    else:
        manifest = registry.show(version)
    setting = _setting_from(manifest.get("sampling")) or SamplingSetting()
    return ResolvedModel(registry.local_path(version), setting,
                         f"registry {registry.version_uri(version)} (version {version})")


def resolve_ref_model(registry_uri: str, ref: str, model_name: str) -> ResolvedModel:
    """A registry model ref (NAME@ALIAS, @ALIAS, NAME@latest, NAME/N, optionally after a
    registry URI: components/registry/aliases.py) -> ResolvedModel, checked as an alias target
    is (complete, files matching the manifest, blessed), sampling with the registered setting."""
    from components.registry.aliases import resolve_ref

    resolved = resolve_ref(registry_uri, ref, default_model=model_name)
    reg, version = resolved.registry, resolved.version
    setting = _setting_from(resolved.manifest.get("sampling")) or SamplingSetting()
    named = f"{reg.model_name}@{resolved.alias}, " if resolved.alias else ""
    return ResolvedModel(resolved.path, setting,
                         f"registry {reg.version_uri(version)} ({named}version {version})")


def load_saved_model(model: ResolvedModel):
    """tf.saved_model.load, or a one-line ValueError naming the model when it does not load
    (a damaged or partial SavedModel: TensorFlow's own error is a page of traceback)."""
    import tensorflow as tf

    try:
        return tf.saved_model.load(model.path)
    except (tf.errors.OpError, OSError, ValueError, KeyError, IndexError) as e:
        text = getattr(e, "message", None) or str(e) or type(e).__name__
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
        raise ValueError(f"{model.source} does not load ({type(e).__name__}: "
                         f"{first[:300]})") from None


def plan(src: str, dst: str) -> List[Tuple[str, str]]:
    """(input, output) paths for `deblur predict IN OUT`, checked before any model is loaded:
    IN exists; an output is never an input (IN itself, or the folder IN when OUT is IN); two
    inputs never share an output (x.jpg and x.png -> OUT/x.png); a single image into an
    existing folder goes to OUT/<name>.png; an output file name has an extension Pillow writes."""
    if os.path.isdir(src):
        names = sorted(n for n in os.listdir(src) if n.lower().endswith(IMAGE_EXTENSIONS)
                       and os.path.isfile(os.path.join(src, n)))
        if not names:
            raise ValueError(f"{src} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        if os.path.exists(dst) and not os.path.isdir(dst):
            raise ValueError(f"IN is a folder, so OUT must be a folder; {dst} is a file")
        if os.path.isdir(dst) and os.path.samefile(src, dst):
            raise ValueError(f"OUT {dst} is the input folder: the outputs would replace the "
                             "inputs; choose another folder")
        pairs = [(os.path.join(src, n), os.path.join(dst, os.path.splitext(n)[0] + ".png"))
                 for n in names]
        by_output = {}
        for i, o in pairs:
            by_output.setdefault(o, []).append(os.path.basename(i))
        clash = next((v for v in by_output.values() if len(v) > 1), None)
        if clash:
            raise ValueError(f"{' and '.join(clash)} in {src} would both be written to "
                             f"{os.path.splitext(clash[0])[0]}.png; rename one of them")
    else:
        if not os.path.exists(src):
            raise ValueError(f"{src} does not exist")
        if not os.path.isfile(src):
            raise ValueError(f"{src} is not a file or a folder")
        if os.path.isdir(dst):
            dst = os.path.join(dst, os.path.splitext(os.path.basename(src))[0] + ".png")
        pairs = [(src, dst)]
    for i, o in pairs:
        if os.path.exists(o) and os.path.samefile(i, o):
            raise ValueError(f"OUT {o} is the input image: it would be overwritten; choose "
                             "another output path")
        if not o.lower().endswith(IMAGE_EXTENSIONS):
            raise ValueError(f"OUT {o} has no image file extension ({', '.join(IMAGE_EXTENSIONS)})")
    return pairs


def read_rgb(path: str) -> np.ndarray:
    """uint8 RGB (components/serving/runtime.py's decode_rgb, which `deblur serve` uses too).
    16-bit greyscale PNGs (Pillow modes I;16 and I) are scaled to 8 bits (v / 257, rounded:
    65535 -> 255), not clipped, which would turn them white."""
    return runtime.decode_rgb(path)


ALPHA_EXTENSIONS = (".png", ".tif", ".tiff", ".webp")  # outputs that keep an alpha channel


def read_alpha(path: str) -> Optional[np.ndarray]:
    """The transparency of an image that has one (RGBA, LA, PA, or a palette / grey / RGB
    image with a transparent colour) as uint8 (H, W); None for an opaque image. The model
    deblurs the RGB; the alpha goes back unchanged into the output."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
            return np.array(im.convert("RGBA"))[..., 3]
    return None


def _save(image: np.ndarray, path: str, alpha: Optional[np.ndarray] = None) -> Optional[str]:
    """Writes image (with alpha as its 4th channel when given and the format keeps one);
    returns what happened to the alpha (None: there was none)."""
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if alpha is None:
        Image.fromarray(image).save(path)
        return None
    if path.lower().endswith(ALPHA_EXTENSIONS):
        Image.fromarray(np.dstack([image, alpha]), "RGBA").save(path)
        return "kept"
    Image.fromarray(image).save(path)
    return (f"dropped: {os.path.splitext(path)[1]} has no alpha channel (write "
            f"{', '.join(ALPHA_EXTENSIONS)} to keep it)")


def predict(src: str, dst: str, model: ResolvedModel, setting: SamplingSetting, seed: int = 0,
            progress: bool = True, tile: Optional[int] = None, overlap: int = 32) -> List[dict]:
    """Deblurs src (file or folder) into dst (see plan()); returns one record per image.

    tile: sample in overlapping tiles of this size (trainer.sampling.sample_tiled, for images
    too large for one pass); the progress bar then ticks per step."""
    from tqdm import tqdm

    from trainer.sampling import NonFiniteOutput

    pairs = plan(src, dst)
    loaded = load_saved_model(model)
    runtime.check_deblur_model(loaded, model.path)
    if tile:
        from trainer.sampling import SavedModelDenoiser

        SavedModelDenoiser(loaded)  # an export without the tiling functions: one line, first
        bar = tqdm(total=len(pairs) * setting.samples * setting.steps, unit="step",
                   disable=not progress, desc=f"deblur tiled {tile}px ({setting.key})")
    else:
        # One tick per sample of each image: the T steps of a sample run inside the
        # SavedModel's compiled loop, which reports nothing until it ends.
        bar = tqdm(total=len(pairs) * setting.samples, unit="sample", disable=not progress,
                   desc=f"deblur ({setting.key})")
    records = []
    try:
        for src_path, dst_path in pairs:
            image = read_rgb(src_path)
            t0 = time.time()
            start = bar.n
            try:
                # the same function `deblur serve` answers with (components/serving/runtime.py)
                result = runtime.deblur_image(loaded, image, setting, seed=seed, tile=tile,
                                              overlap=overlap,
                                              progress=lambda done: bar.update(start + done - bar.n))
            except NonFiniteOutput:
                raise ValueError(f"{model.source}: {NON_FINITE_OUTPUT} on {src_path}; "
                                 "nothing written (was its training diverged?)") from None
            alpha = _save(result, dst_path, read_alpha(src_path))
            records.append({"input": src_path, "output": dst_path, "size": list(image.shape[:2]),
                            "seconds": round(time.time() - t0, 2)})
            if alpha:
                records[-1]["alpha"] = alpha
                if alpha != "kept":
                    print(f"deblur: {src_path}: its alpha channel was {alpha}", file=sys.stderr)
    finally:
        bar.close()
    return records
