"""`deblur metrics A B [--json] [--net alex|vgg]`: PSNR, SSIM, LPIPS of image A against the
reference B, and NIQE of A; `deblur fid DIR_A DIR_B [--json]`: FID and KID between two folders
of images (registered in deblur/cli.py; errors are ValueErrors, printed as one line with exit
code 2)."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from core.artifacts import IMAGE_EXTENSIONS


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


# ---- deblur fid ------------------------------------------------------------------------------
def add_fid_arguments(p) -> None:
    p.add_argument("dir_a", metavar="DIR_A", help="a folder of images (not searched recursively)")
    p.add_argument("dir_b", metavar="DIR_B", help="another folder of images")
    p.add_argument("--batch-size", type=int, default=16, help="images per Inception batch")
    p.add_argument("--json", action="store_true",
                   help='one JSON object {"fid", "kid", "n_a", "n_b"}')


def image_files(folder: str):
    """The image files of a folder (by extension), sorted by name."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a folder")
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_EXTENSIONS)
                   and os.path.isfile(os.path.join(folder, f)))
    if len(files) < 2:
        raise ValueError(f"{folder} holds {len(files)} image(s); FID and KID need at least 2 "
                         f"per folder ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def run_fid(args) -> int:
    files = {k: image_files(getattr(args, k)) for k in ("dir_a", "dir_b")}
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    from metrics.fid import fid_kid
    from metrics.inception import InceptionFeatures

    net = InceptionFeatures(batch_size=args.batch_size)
    bar = None
    if not args.json:
        from tqdm import tqdm

        bar = tqdm(total=sum(len(f) for f in files.values()), desc="Inception features",
                   unit="img")
    try:
        feats = {k: net((read_rgb(f) for f in fs), progress=bar.update if bar else None)
                 for k, fs in files.items()}
    finally:
        if bar is not None:
            bar.close()
    m = fid_kid(feats["dir_a"], feats["dir_b"])
    if args.json:
        print(json.dumps({"fid": m["fid"], "kid": m["kid"], "n_a": m["n_a"], "n_b": m["n_b"]}))
        return 0
    print(f"{args.dir_a} ({m['n_a']} images) against {args.dir_b} ({m['n_b']} images)\n"
          f"  FID  {m['fid']:.4f}\n"
          f"  KID  {m['kid']:.6f}\n"
          f"  (FID Inception-v3, TF 2015-12-05 weights; images resized to 299x299 with "
          f"Pillow's bicubic filter. FID is biased at small counts: compare FIDs only at equal "
          f"counts; KID is unbiased)")
    return 0
