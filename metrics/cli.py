"""`deblur metrics A B [--json] [--net alex|vgg]`: PSNR, SSIM, LPIPS of image A against the
reference B, and NIQE of A (registered in deblur/cli.py; errors are ValueErrors, printed as
one line with exit code 2)."""
from __future__ import annotations

import json
import math
import os

import numpy as np


def add_arguments(p) -> None:
    p.add_argument("a", metavar="A", help="image to score (any format Pillow reads)")
    p.add_argument("b", metavar="B", help="sharp reference image of the same size")
    p.add_argument("--net", choices=("alex", "vgg"), default="alex", help="LPIPS backbone")
    p.add_argument("--json", action="store_true",
                   help="one JSON object with keys psnr, ssim, lpips, niqe (null where "
                        "undefined: psnr of identical images, niqe below 96x96)")


def read_rgb(path: str) -> np.ndarray:
    """An image file as uint8 [H, W, 3] RGB (grey and palette images are expanded to RGB)."""
    from PIL import Image, UnidentifiedImageError

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as im:
            if im.mode in ("I", "F") or im.mode.startswith("I;"):
                raise ValueError(f"{path}: {im.mode} ({'float' if im.mode == 'F' else '16/32-bit'}"
                                 f") images are not supported; the metrics are defined on 8-bit RGB")
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise ValueError(f"{path}: not an image file Pillow can read")


def _json_number(v: float):
    return v if math.isfinite(v) else None


def run(args) -> int:
    a, b = read_rgb(args.a), read_rgb(args.b)
    if a.shape != b.shape:
        raise ValueError(f"{args.a} is {a.shape[0]}x{a.shape[1]} and {args.b} is "
                         f"{b.shape[0]}x{b.shape[1]} (HxW): the images must have the same size")
    from metrics.api import default_lpips, image_metrics

    m = image_metrics(a, b, lpips_model=default_lpips(args.net))
    if args.json:
        print(json.dumps({k: _json_number(m[k]) for k in ("psnr", "ssim", "lpips", "niqe")}))
        return 0
    if math.isfinite(m["niqe"]):
        niqe = f"{m['niqe']:.4f}"
    elif min(a.shape[:2]) < 96:
        niqe = "n/a (needs at least one 96x96 block)"
    else:
        niqe = "n/a (featureless image)"
    print(f"{args.a} against reference {args.b} ({a.shape[0]}x{a.shape[1]} HxW)\n"
          f"  PSNR   {m['psnr']:.4f} dB\n"
          f"  SSIM   {m['ssim']:.4f}\n"
          f"  LPIPS  {m['lpips']:.4f} ({args.net}, v0.1)\n"
          f"  NIQE   {niqe}  (of A; lower is more natural)")
    return 0
