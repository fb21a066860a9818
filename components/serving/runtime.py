"""Deblurring one image with an exported SavedModel: the one copy `deblur predict` and
`deblur serve` share, so that a served answer equals predict's for the same version, setting
and seed.

    loaded = tf.saved_model.load(version_folder)
    out = deblur_image(loaded, image_uint8_hw3, setting, seed=0)              # whole image
    out = deblur_image(loaded, image, setting, seed=0, tile=256, overlap=32)  # in tiles

Untiled: the mean of K = setting.samples samples, sample k drawn by the SavedModel's
`deblur_batch` with the seed [seed, k] (one sample at a time: the K chains of one call would
hold K images' activations at once), rounded to uint8. Tiled: trainer.sampling.sample_tiled on
the SavedModel's `guide_features` / `predict_noise` (one chain, noise predicted tile by tile).

Imports: numpy, Pillow, TensorFlow (lazily) and trainer.sampling / trainer.setting (TensorFlow
only, no TFX, no Keras model code), so it runs in the serving venv .venv-serve (TensorFlow
2.21, protobuf 6) as well as in .venv.
"""
from __future__ import annotations

import io
from typing import Callable, Optional, Union

import numpy as np

from trainer.setting import NON_FINITE_OUTPUT, SamplingSetting

# Pillow modes of 16-bit greyscale images (scaled to 8 bits, not clipped)
HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class ImageError(ValueError):
    """Bytes or a file that are not an image this project reads (one line)."""


def decode_rgb(source: Union[str, bytes], name: Optional[str] = None,
               max_pixels: Optional[int] = None) -> np.ndarray:
    """uint8 RGB (H, W, 3) of an image file (a path) or of encoded bytes (PNG, JPEG, ...).

    16-bit greyscale (Pillow modes I;16 and I) is scaled to 8 bits (v / 257, rounded: 65535
    -> 255), not clipped, which would turn it white. max_pixels: refused (ImageError) from the
    header alone, before the pixels are decoded."""
    from PIL import Image, UnidentifiedImageError

    name = name or (source if isinstance(source, str) else "the image")
    fp = source if isinstance(source, str) else io.BytesIO(source)
    try:
        with Image.open(fp) as im:
            if max_pixels is not None and im.width * im.height > max_pixels:
                raise ImageError(f"{name} is {im.width}x{im.height} = {im.width * im.height} "
                                 f"pixels, more than the limit of {max_pixels}")
            if im.mode in HIGH_BIT_MODES:
                a = np.asarray(im).astype(np.float64)
                if a.min() < 0 or a.max() > 65535:
                    raise ImageError(f"{name}: {im.mode} values outside 0..65535 are not an "
                                     "image this command reads")
                return np.repeat(np.round(a / 257.0).astype(np.uint8)[..., None], 3, axis=-1)
            if im.mode == "F":
                raise ImageError(f"{name}: floating-point images (mode F) are not supported; "
                                 "convert it to 8-bit RGB")
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        if isinstance(source, bytes):  # Pillow's text names a BytesIO object: not useful
            raise ImageError(f"{name}: not an image Pillow can read (PNG, JPEG, ...; "
                             f"{len(source)} bytes starting {source[:8]!r})") from None
        raise ImageError(f"{name}: not an image Pillow can read ({e})") from None


def encode_png(image: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def check_deblur_model(loaded, where: str) -> None:
    if not hasattr(loaded, "deblur_batch"):
        raise ValueError(f"{where} is not a deblurring SavedModel of trainer/export.py")


def deblur_image(loaded, image: np.ndarray, setting: SamplingSetting, *, seed: int = 0,
                 tile: Optional[int] = None, overlap: int = 32,
                 progress: Optional[Callable[[int], None]] = None) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (H, W, 3) through a loaded SavedModel at `setting`.

    progress(done): after each sample (untiled: K in all) or each step (tiled: K * T).
    Raises trainer.sampling.NonFiniteOutput (a ValueError) when the model's output is not
    finite. Thread-safe: concurrent calls on one loaded model share nothing but the model."""
    from trainer.sampling import NonFiniteOutput, call_deblur_batch

    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    if tile:
        from trainer.sampling import SavedModelDenoiser, sample_tiled

        try:
            return sample_tiled(SavedModelDenoiser(loaded), image, setting, tile=tile,
                                overlap=overlap, seed=seed, progress=progress)
        except ValueError as e:
            if NON_FINITE_OUTPUT in str(e):
                raise NonFiniteOutput(NON_FINITE_OUTPUT) from None
            raise
    total = np.zeros(image.shape, np.float64)
    for k in range(int(setting.samples)):  # SA: the mean of K samples, one at a time
        total += call_deblur_batch(loaded, image[None], setting, (seed, k), samples=1)[0]
        if progress is not None:
            progress(k + 1)
    return np.clip(np.round(total / setting.samples), 0, 255).astype(np.uint8)
