"""`deblur predict IN OUT`: deblur any image with a SavedModel or the registry's latest version.

--model accepts
  a SavedModel folder (saved_model.pb), or a Trainer Model artifact folder (Format-Serving/)
      sampling defaults: the export's deblur.json (default_sampling)
  a registry URI (a local folder or gs://bucket/prefix holding <model-name>/<version>/)
      the newest complete version (or --version N); sampling defaults: the manifest's
      setting, the one the evaluator chose by out-of-domain LPIPS
--steps / --max-noise / --samples / --sampler override the defaults. IN may be a file or a
folder (every image in it; OUT is then a folder). Only TensorFlow and the SavedModel are
needed: the model's own code is not imported.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import List, Optional, Tuple

import numpy as np

from core.artifacts import IMAGE_EXTENSIONS, model_info_path
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
        if tf.io.gfile.exists(os.path.join(d, "saved_model.pb")):
            return d
    return None


def resolve_model(spec: str, model_name: str, version: Optional[int] = None) -> ResolvedModel:
    """A SavedModel folder, a Model artifact folder, or a registry URI -> ResolvedModel."""
    import tensorflow as tf

    d = saved_model_dir(spec)
    if d is not None:
        from components.registry.registry import verify_folder

        # a registry version folder given as a plain path: checked against its manifest as
        # the registry checks it (a same-size bit flip too), before TensorFlow reads it
        problem = verify_folder(d)
        if problem:
            raise ValueError(f"{problem}; use another --version or --model")
        info = model_info_path(d)
        setting, chosen_by = None, None
        if tf.io.gfile.exists(info):
            with tf.io.gfile.GFile(info) as f:
                described = json.load(f)
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


HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_rgb(path: str) -> np.ndarray:
    """uint8 RGB. 16-bit greyscale PNGs (Pillow modes I;16 and I) are scaled to 8 bits
    (v / 257, rounded: 65535 -> 255), not clipped, which would turn them white."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            if im.mode in HIGH_BIT_MODES:
                a = np.asarray(im).astype(np.float64)
                if a.min() < 0 or a.max() > 65535:
                    raise ValueError(f"{path}: {im.mode} values outside 0..65535 are not an "
                                     "image this command reads")
                return np.repeat(np.round(a / 257.0).astype(np.uint8)[..., None], 3, axis=-1)
            if im.mode == "F":
                raise ValueError(f"{path}: floating-point images (mode F) are not supported; "
                                 "convert it to 8-bit RGB")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{path}: not an image Pillow can read ({e})") from None


def _save(image: np.ndarray, path: str) -> None:
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(image).save(path)


def predict(src: str, dst: str, model: ResolvedModel, setting: SamplingSetting, seed: int = 0,
            progress: bool = True, tile: Optional[int] = None, overlap: int = 32) -> List[dict]:
    """Deblurs src (file or folder) into dst (see plan()); returns one record per image.

    tile: sample in overlapping tiles of this size (trainer.sampling.sample_tiled, for images
    too large for one pass); the progress bar then ticks per step."""
    import tensorflow as tf
    from tqdm import tqdm

    from trainer.sampling import NonFiniteOutput, call_deblur_batch

    pairs = plan(src, dst)
    loaded = load_saved_model(model)
    if not hasattr(loaded, "deblur_batch"):
        raise ValueError(f"{model.path} is not a deblurring SavedModel of trainer/export.py")
    if tile:
        from trainer.sampling import SavedModelDenoiser, sample_tiled

        denoiser = SavedModelDenoiser(loaded)
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
            if tile:
                start = bar.n
                result = sample_tiled(denoiser, image, setting, tile=tile, overlap=overlap,
                                      seed=seed,
                                      progress=lambda done: bar.update(start + done - bar.n))
            else:
                total = np.zeros(image.shape, np.float64)
                for k in range(setting.samples):  # SA: the mean of K samples, one at a time
                    try:
                        out = call_deblur_batch(loaded, image[None], setting, (seed, k), samples=1)
                    except NonFiniteOutput:
                        raise ValueError(f"{model.source}: {NON_FINITE_OUTPUT} on {src_path}; "
                                         "nothing written (was its training diverged?)") from None
                    total += out[0]
                    bar.update(1)
                result = np.clip(np.round(total / setting.samples), 0, 255).astype(np.uint8)
            _save(result, dst_path)
            records.append({"input": src_path, "output": dst_path, "size": list(image.shape[:2]),
                            "seconds": round(time.time() - t0, 2)})
    finally:
        bar.close()
    return records
