"""`deblur evaluate`, `deblur domain-gap`, and the metrics/ commands `metrics` and `fid`."""
from __future__ import annotations

import argparse
import json
import os

from core import artifacts
from deblur.common import UserError, check_writable, config_arguments, load_config



def _setting(text: str):
    """sampler:steps:max_noise[:samples], e.g. ddpm:20:0.5 or ddim:50:1.0:4"""
    from trainer.setting import SamplingSetting

    parts = text.split(":")
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"expected sampler:steps:max_noise[:samples], got {text!r}")
    try:
        return SamplingSetting(parts[0], int(parts[1]), float(parts[2]),
                               int(parts[3]) if len(parts) == 4 else 1).to_dict()
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {e}")


def _saved_model_dir(path: str) -> str:
    """A SavedModel folder, or a TFX Model artifact folder holding Format-Serving/."""
    from deblur.predict import saved_model_dir

    d = saved_model_dir(path)
    if d is not None:
        return d
    raise UserError(f"{path} holds no SavedModel ({artifacts.SAVED_MODEL_FILE}, or "
                    f"Format-Serving/{artifacts.SAVED_MODEL_FILE})")


def _evaluation_config(args):
    """(pipeline config, its evaluation section with --setting / --max-images / --splits) of
    `deblur evaluate` and `deblur domain-gap`; --examples must be a folder."""
    import dataclasses

    cfg = load_config(args)
    changes = {}
    if getattr(args, "setting", None):
        changes["grid"] = args.setting
    if args.max_images is not None:
        changes["max_images_per_split"] = args.max_images
    if args.splits:
        changes["splits"] = args.splits.split(",")
    if getattr(args, "validation_splits", None) is not None:
        changes["validation_splits"] = [v for v in args.validation_splits.split(",") if v]
    # the split left out when --splits is not given: the one training trains on
    changes["train_split"] = cfg.training.build_experiment().data.train_split
    if not os.path.isdir(args.examples) and "://" not in args.examples:
        raise UserError(f"--examples {args.examples} is not a directory")
    return cfg, dataclasses.replace(cfg.evaluation, **changes)


def cmd_evaluate(args) -> int:
    import dataclasses

    cfg, eval_cfg = _evaluation_config(args)
    check_writable(args.out, "--out")  # before TensorFlow, which says it in 14 lines

    from components.evaluator import evaluate as ev

    gate = cfg.gate if args.ood_lpips_max is None else dataclasses.replace(
        cfg.gate, ood_lpips_max=args.ood_lpips_max)
    result = ev.evaluate(_saved_model_dir(args.model), args.examples, args.out, eval_cfg,
                         baseline_dir=_saved_model_dir(args.baseline) if args.baseline else None,
                         gate=gate, progress=not args.json)
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(ev.format_result(result))
        print(f"written to {args.out} ({artifacts.EVALUATION_FILE}, {artifacts.BLESSING_FILE}, "
              f"{artifacts.DOMAIN_GAP_FILE}, perception_distortion.png, samples/)")
    return 0


def cmd_domain_gap(args) -> int:
    from components.evaluator import domain_gap as dg
    from components.evaluator import evaluate as ev

    _, eval_cfg = _evaluation_config(args)
    gap = ev.domain_gap_report(_saved_model_dir(args.model), args.examples, eval_cfg)
    if args.json:
        print(json.dumps(gap, indent=2, sort_keys=True))
    else:
        print("\n".join(dg.format_domain_gap(gap, indent="")))
        print(gap.get("note", ""))
    return 0


def _metrics(args) -> int:
    from metrics.cli import run

    return run(args)


def _fid(args) -> int:
    from metrics.cli import run_fid

    return run_fid(args)


def add_parsers(sub) -> None:
    """metrics, fid, evaluate and domain-gap."""
    from metrics.cli import add_arguments as add_metrics_arguments
    s = sub.add_parser("metrics", help="PSNR, SSIM, LPIPS of image A against reference B, "
                                       "and NIQE of A")
    add_metrics_arguments(s)

    from metrics.cli import add_fid_arguments
    s = sub.add_parser("fid", help="FID and KID between two folders of images (the FID "
                                   "Inception-v3 with its real weights)")
    add_fid_arguments(s)

    s = sub.add_parser("evaluate", help="sample a trained model on the evaluation splits, score "
                                        "and gate it (the DeblurEvaluator's library function)")
    s.add_argument("--model", required=True, help="a SavedModel (or a Model artifact folder)")
    s.add_argument("--examples", required=True, help="an ingest output folder (Split-<split>/*.gz)")
    s.add_argument("--out", required=True,
                   help=f"{artifacts.EVALUATION_FILE}, {artifacts.BLESSING_FILE}, plot, samples")
    s.add_argument("--baseline", default=None, help="the blessed model to compare against")
    config_arguments(s, "pipeline config: its evaluation and gate sections")
    s.add_argument("--setting", action="append", type=_setting, default=None,
                   help="sampler:steps:max_noise[:samples] (repeat for a grid), e.g. ddpm:20:0.5")
    s.add_argument("--max-images", type=int, default=None, help="images per split")
    s.add_argument("--splits", default=None, help="the test splits, comma-separated (default: "
                                                   "all but train and the validation splits)")
    s.add_argument("--validation-splits", default=None,
                   help="the splits the setting is chosen on, comma-separated (default: val and "
                        "val_*; '' for none: the test splits choose, an optimistic verdict)")
    s.add_argument("--ood-lpips-max", type=float, default=None, help="the gate's threshold")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("domain-gap", help="the paper's Table 1: FID/KID between in- and "
                                          "out-of-domain blurry inputs per scale, of the gray "
                                          "pyramid and of the model's guidance regressions R_k")
    s.add_argument("--model", required=True, help="a SavedModel (or a Model artifact folder)")
    s.add_argument("--examples", required=True, help="an ingest output folder (Split-<split>/*.gz)")
    config_arguments(s, "pipeline config: its evaluation section chooses splits and images")
    s.add_argument("--max-images", type=int, default=None,
                   help="images per split (default: the evaluator's)")
    s.add_argument("--splits", default=None, help="comma-separated (default: all but train)")
    s.add_argument("--json", action="store_true")


COMMANDS = {"evaluate": cmd_evaluate, "domain-gap": cmd_domain_gap, "metrics": _metrics, "fid": _fid}
