"""`deblur model-stats` and `deblur train` (trainer/train.py under tf.distribute)."""
from __future__ import annotations

import argparse
import json
import os
import time

from core import artifacts
from deblur.common import UserError, check_writable



def cmd_model_stats(args) -> int:
    from trainer.flops import model_stats_main

    r = model_stats_main(args.diffusion, args.guide, args.height, args.width)
    if args.json:
        print(json.dumps({k: v for k, v in r.items() if k != "breakdown"}, sort_keys=True))
        return 0
    print(f"{r['config']} at {r['height']}x{r['width']}x3, one denoising step (guidance included)")
    print(f"  params {r['params'] / 1e6:8.2f} M   (paper {r['paper_params'] / 1e6:.0f} M, "
          f"{r['params_vs_paper']:+.1%})")
    print(f"  FLOPs  {r['flops'] / 1e9:8.0f} G   (paper {r['paper_flops_at_size'] / 1e9:.0f} G at "
          f"this size, {r['flops_vs_paper']:+.1%}; FLOPs = 2 x multiply-adds of conv/dense)")
    return 0


def train_experiment(args):
    """The experiment of `deblur train`: the named experiment (--experiment), its flags (--steps,
    --batch-size, --tpu, --strategy: shorthands of train.steps, train.global_batch_size,
    train.tpu + train.mixed_precision, train.strategy), then every --set SECTION.FIELD=VALUE
    (parsed as run-local's --set: VALUE is YAML; a --set wins over a flag), e.g. --set
    train.steps_per_loop=10 --set model.dropout=0.1: the paths of the pipeline config's
    training.SECTION.FIELD (docs/configuration.md)."""
    from pipelines.config import apply_overrides
    from trainer import experiments

    if args.config is not None:
        raise UserError(f"--config {args.config}: deblur train names its experiment with "
                        f"--experiment {args.config} (training.experiment in the pipeline "
                        f"config); --config is a pipeline config file in the other commands")
    flags = {}  # 0 is not "unset": TrainConfig refuses it in one line
    if args.steps is not None:
        flags["steps"] = args.steps
    if args.batch_size is not None:
        flags["global_batch_size"] = args.batch_size
    if args.tpu:
        flags.update(tpu=args.tpu, mixed_precision="bfloat16")
    if args.strategy:
        flags["strategy"] = args.strategy
    sections = apply_overrides({"train": flags} if flags else {}, args.set or ())
    _check_trainer_sets(sections)
    return experiments.get(args.experiment, **sections)


def _check_trainer_sets(sections: dict) -> None:
    """A --set whose first part is not a trainer section, said with the spelling that works
    here: the pipeline config's training.train.steps (or its old training.steps) ->
    train.steps, a bare steps -> train.steps, experiment -> --experiment."""
    from pipelines.config import TRAINER_SECTIONS, old_spellings, trainer_section_of

    for key, value in sections.items():
        if key in TRAINER_SECTIONS or key == "name":
            continue
        if key == "training":  # the pipeline config's spelling, prefix and all
            path, node = "training", value
            while isinstance(node, dict) and node:
                first = next(iter(node))
                path, node = f"{path}.{first}", node[first]
            new = dict(old_spellings({"training": value})).get(path, path).split(".")
            if new[1:2] == ["experiment"]:
                raise UserError(f"--set {path}: the pipeline config's spelling; deblur train "
                                f"names its experiment with --experiment NAME")
            if new[1:2] and new[1] in TRAINER_SECTIONS:
                raise UserError(f"--set {path}: the pipeline config's spelling; deblur train "
                                f"takes --set {'.'.join(new[1:])}")
            raise UserError(f"--set {path}: a field of the pipeline config; deblur train takes "
                            f"the trainer's sections model, diffusion, data, train (e.g. --set "
                            f"train.steps=300)")
        if key == "experiment":
            raise UserError("--set experiment: deblur train names its experiment with --experiment "
                            "NAME (training.experiment in the pipeline config)")
        section = trainer_section_of(key)
        if section:
            raise UserError(f"--set {key}: a field of the {section} section: --set "
                            f"{section}.{key}")


def cmd_train(args) -> int:
    from trainer import train

    exp = train_experiment(args)
    if not os.path.isdir(args.examples) and not args.examples.startswith("gs://"):
        raise UserError(f"--examples {args.examples} is not a directory")
    check_writable(args.out, "--out")
    t0 = time.time()
    warm = {}
    if args.warm_start:  # train.steps more steps from the model's weights and step
        from trainer import warm_start

        if not os.path.exists(os.path.join(args.warm_start, artifacts.SAVED_MODEL_FILE)):
            raise UserError(f"--warm-start {args.warm_start}: no {artifacts.SAVED_MODEL_FILE} "
                            "there (give a SavedModel folder, e.g. a registry version)")
        prepared = warm_start.prepare(
            exp, args.out, mode="latest_blessed",
            find_parent=lambda: warm_start.Parent(args.warm_start, args.warm_start),
            write=train.is_chief_task(),  # the chief writes warm_start.json, as in the Trainer
            instead="deblur train without --warm-start starts from random weights")
        exp, warm = prepared.exp, prepared.train_kwargs
    result = train.train(exp, args.examples, args.out, progress=True, **warm)
    last = result["history"][-1] if result["history"] else {}
    skipped = f"; {result['skipped']} non-finite batch(es) skipped" if result["skipped"] else ""
    print(f"trained {exp.name} to step {result['step']} in {time.time() - t0:.0f} s; "
          f"loss {last.get('loss', float('nan')):.4f} (dpm {last.get('loss_dpm', float('nan')):.4f}, "
          f"guidance {last.get('loss_guidance', float('nan')):.4f}){skipped}")
    if result["chief"]:
        print(f"  {args.out}/{artifacts.SAVED_MODEL_DIR}, {args.out}/{artifacts.CHECKPOINTS_DIR}, "
              f"{args.out}/{artifacts.TENSORBOARD_DIR}")
    else:
        print(f"  this worker is not the chief: the chief wrote {args.out}")
    return 0


def add_parsers(sub) -> None:
    """model-stats and train."""
    s = sub.add_parser("model-stats", help="parameters and FLOPs of a model size (paper Table 11)")
    s.add_argument("--diffusion", required=True, help="S or L")
    s.add_argument("--guide", required=True, help="none, S or L")
    s.add_argument("--height", type=int, default=720)
    s.add_argument("--width", type=int, default=1280)
    s.add_argument("--json", action="store_true", help='one JSON object with "params" and "flops"')

    s = sub.add_parser("train", help="train the guided icDPM on ingested examples")
    s.add_argument("--examples", required=True, help="an ingest output folder (Split-<split>/*.gz)")
    s.add_argument("--out", required=True,
                   help=f"{artifacts.CHECKPOINTS_DIR}, {artifacts.TENSORBOARD_DIR}, "
                        f"{artifacts.SAVED_MODEL_DIR} go here; re-running resumes from its "
                        "checkpoints")
    s.add_argument("--experiment", default="tiny",
                   help="the experiment (training.experiment in the pipeline config; "
                        "trainer/experiments.py): tiny, local, local-finetune, icDPM-S, "
                        "icDPM-L, S+Guide-S, S+Guide-L, L+Guide-S, L+Guide-L")
    s.add_argument("--config", default=None, help=argparse.SUPPRESS)  # now --experiment
    s.add_argument("--steps", type=int, default=None, help="= --set train.steps=N")
    s.add_argument("--batch-size", type=int, default=None,
                   help="= --set train.global_batch_size=B")
    s.add_argument("--strategy", choices=("auto", "default", "mirrored", "multi_worker"),
                   default=None, help="= --set train.strategy=S; auto: multi_worker when "
                                      "TF_CONFIG names several workers, mirrored over several "
                                      "GPUs, else default")
    s.add_argument("--tpu", default=None, help="TPU name or grpc:// address (TPUStrategy, "
                                               "bfloat16): --set train.tpu=NAME, and "
                                               "train.mixed_precision=bfloat16")
    s.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE",
                   help="an experiment field, e.g. --set train.steps_per_loop=10 (sections: "
                        "model, diffusion, data, train; the pipeline config's training.SECTION."
                        "FIELD; repeatable)")
    s.add_argument("--warm-start", default=None, metavar="SAVED_MODEL",
                   help="start from this exported model's weights and step (e.g. a registry "
                        "version folder) and train train.steps (--steps) steps beyond its step")


COMMANDS = {"model-stats": cmd_model_stats, "train": cmd_train}
