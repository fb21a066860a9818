"""`deblur`: the command line of the pipeline (SPEC section 9).

User mistakes (bad paths, bad options, a layout that does not match, too much quarantined)
end with one line `deblur: error: ...` on stderr and a non-zero exit code; tracebacks are
reserved for bugs. Heavy libraries (Beam, TensorFlow, TFX) are imported only by the commands
that need them.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from typing import List, Optional, Sequence

from core import artifacts  # the file names (no TensorFlow, no Beam)

EXIT_USAGE = 2  # bad arguments / inputs
EXIT_FAILED = 1  # the work ran and its result is not acceptable
EXIT_TERMINATED = 143  # SIGTERM ended the work (128 + 15, as a process killed by it)


class UserError(Exception):
    """A mistake the user can fix; printed as one line."""


def _quiet_libraries(verbose: bool) -> None:
    # 3 hides the C++ start-up noise of TensorFlow (CUDA plugin registration on a CPU machine);
    # Python exceptions still surface. --verbose shows everything.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if verbose else "3")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="apache_beam")
    if not verbose:
        logging.getLogger().setLevel(logging.WARNING)
        # "Couldn't find python-snappy": Beam then uses crcmod's C extension (5 MB in ~40 ms,
        # measured), which is not a bottleneck next to PNG decoding.
        logging.getLogger("apache_beam.io.tfrecordio").setLevel(logging.ERROR)


def _size(text: str):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW such as 256x256, got {text!r}")
    return h, w


# --------------------------------------------------------------------------------------------
def cmd_synth_data(args) -> int:
    from core import synth

    t0 = time.time()
    summary = synth.generate(args.out, pairs=args.pairs, size=args.size, seed=args.seed,
                             test_pairs=args.test_pairs, progress=True)
    print(json.dumps(summary, indent=2) if args.json else
          f"in-domain (GoPro layout): {summary['in_domain']['root']}  train {summary['in_domain']['train']}"
          f" / test {summary['in_domain']['test']} pairs\n"
          f"out-of-domain (RealBlur layout): {summary['out_of_domain']['root']}  train "
          f"{summary['out_of_domain']['train']} / test {summary['out_of_domain']['test']} pairs\n"
          f"done in {time.time() - t0:.1f} s")
    return 0


def _check_writable(path: str, flag: str) -> None:
    """A local output folder must be a folder (or creatable) in a place we may write: said in
    one line, before Beam or TensorFlow print a page of traceback about it."""
    if "://" in path:
        return
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise UserError(f"{flag} {path} is a file, not a folder")
    probe = full
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise UserError(f"{flag} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: no permission to write in {probe}")


def cmd_ingest(args, beam_args: List[str]) -> int:
    from components.ingest import beam_ingest as bi, sources

    subsets = None if args.split in (None, "", "all") else [s for s in args.split.split(",") if s]
    source = sources.IngestSource(layout=args.layout, root=args.root, subsets=subsets,
                             dataset=args.dataset, domain=args.domain, blur_kind=args.blur_kind,
                             variant=args.variant, span_pattern=args.span_pattern)
    options = sources.IngestOptions(max_quarantine_fraction=args.max_quarantine_fraction,
                               train_crop_size=args.crop_size, span_window=args.span_window)
    if args.workers > 1:
        beam_args = [f"--direct_num_workers={args.workers}",
                     "--direct_running_mode=multi_processing"] + beam_args
    _check_writable(args.out, "--out")
    from components.ingest.overwrite import clear_output

    clear_output(args.out, args.overwrite)
    t0 = time.time()
    print(f"listing {args.root} ({args.layout} layout)...", file=sys.stderr)
    try:
        summary = bi.run_ingest([source], args.out, options, beam_args, args.unit_store,
                                progress=lambda line: print(line, file=sys.stderr))
    except bi.IngestError as e:
        print(f"deblur: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(f"{summary['inputs']} inputs = {summary['written']} written + "
              f"{summary['quarantined']} quarantined in {time.time() - t0:.1f} s -> {args.out}"
              + (f" ({summary['processed']['inputs']} decoded now, "
                 f"{summary['reused']['inputs']} reused)" if summary["reused"]["units"] else ""))
        for split, c in summary["splits"].items():
            print(f"  {split}: {c['written']} examples in {c['num_shards']} shard(s), "
                  f"{c['quarantined']} quarantined")
        for reason, n in summary["quarantine_by_reason"].items():
            print(f"  quarantined {reason}: {n}  (see {summary['quarantine_file']})")
        for line in bi.unlabelled_lines(summary):
            print(f"  {line}")
    return 0


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
    """The experiment of `deblur train`: the preset (--experiment), its flags (--steps,
    --batch-size, --tpu, --strategy: shorthands of train.steps, train.global_batch_size,
    train.tpu + train.mixed_precision, train.strategy), then every --set SECTION.FIELD=VALUE
    (parsed as run-local's --set: VALUE is YAML; a --set wins over a flag), e.g. --set
    train.steps_per_loop=10 --set model.dropout=0.1: the paths of the pipeline config's
    training.SECTION.FIELD (docs/configuration.md)."""
    from pipelines.config import apply_overrides
    from trainer import experiments

    if args.config is not None:
        raise UserError(f"--config {args.config}: deblur train names its preset with "
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
                                f"names its preset with --experiment NAME")
            if new[1:2] and new[1] in TRAINER_SECTIONS:
                raise UserError(f"--set {path}: the pipeline config's spelling; deblur train "
                                f"takes --set {'.'.join(new[1:])}")
            raise UserError(f"--set {path}: a field of the pipeline config; deblur train takes "
                            f"the trainer's sections model, diffusion, data, train (e.g. --set "
                            f"train.steps=300)")
        if key == "experiment":
            raise UserError("--set experiment: deblur train names its preset with --experiment "
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
    _check_writable(args.out, "--out")
    t0 = time.time()
    warm = {}
    if args.warm_start:  # --steps more steps from the model's weights and step
        from trainer import warm_start

        if not os.path.exists(os.path.join(args.warm_start, artifacts.SAVED_MODEL_FILE)):
            raise UserError(f"--warm-start {args.warm_start}: no {artifacts.SAVED_MODEL_FILE} "
                            "there (give a SavedModel folder, e.g. a registry version)")
        record = warm_start.decide(args.out, "latest_blessed", exp.train.steps,
                                   lambda: warm_start.Parent(args.warm_start, args.warm_start))
        exp, warm = warm_start.training_arguments(exp, record)
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


class _ComponentProgress(logging.Filter):
    """Lets LocalDagRunner's 'Component X is running/finished' lines through as progress."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        if (msg.startswith("Component ") and msg.endswith(("is running.", "is finished."))) \
                or record.name == "deblur.progress":
            print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
            return False
        if "property_predicate is not supported" in msg:
            # TFX's channel resolver, on the Resolver's channels; LatestBlessedModelStrategy
            # checks `blessed` itself, so nothing is lost: not the user's concern
            return False
        return record.levelno >= logging.WARNING


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

    from pipelines import config as config_lib

    cfg = config_lib.load(args.config, args.set or ())
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
    _check_writable(args.out, "--out")  # before TensorFlow, which says it in 14 lines

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


def cmd_predict(args) -> int:
    import dataclasses

    from deblur import predict as pr

    pr.plan(args.input, args.output)  # a missing input or an unsafe output, before any loading
    spec = args.model
    if spec is None:
        from pipelines import config as config_lib

        cfg = config_lib.load(args.config, args.set or ())
        spec = cfg.registry.resolved_uri(cfg.runner.work_dir)
        model_name = args.model_name or cfg.registry.model_name
    else:
        model_name = args.model_name or "deblur-icdpm"
    from components.registry.aliases import looks_like_ref

    if looks_like_ref(spec) and not os.path.exists(spec):  # NAME@ALIAS: the config's registry
        if args.version is not None:
            raise UserError(f"--version does not apply to {spec}: the ref names the version")
        from pipelines import config as config_lib

        cfg = config_lib.load(args.config, args.set or ())
        model = pr.resolve_ref_model(cfg.registry.resolved_uri(cfg.runner.work_dir), spec,
                                     args.model_name or cfg.registry.model_name)
    else:
        model = pr.resolve_model(spec, model_name, args.version)
    changes = {k: v for k, v in (("sampler", args.sampler), ("steps", args.steps),
                                 ("max_noise", args.max_noise), ("samples", args.samples))
               if v is not None}
    setting = dataclasses.replace(model.setting, **changes)
    if not args.json:
        default = ""
        if not changes:
            default = (" (the export's default: no evaluation chose it; the registered copy "
                       "samples with the evaluator's choice)" if model.unevaluated
                       else " (its default)")
        print(f"model: {model.source}; sampling {setting.key}{default}", file=sys.stderr)
    records = pr.predict(args.input, args.output, model, setting, seed=args.seed,
                         progress=not args.json, tile=args.tile, overlap=args.overlap)
    if args.json:
        print(json.dumps({"model": model.source, "setting": setting.to_dict(),
                          "images": records}, indent=2))
    else:
        for r in records:
            print(f"{r['input']} -> {r['output']} ({r['size'][0]}x{r['size'][1]}, {r['seconds']} s)")
    return 0


def cmd_run_local(args) -> int:
    from pipelines import config as config_lib
    from pipelines import run_params

    t0 = time.time()  # the wall time the summary reports: data, pipeline, summary
    # --param NAME=VALUE: the Kubeflow run parameters' names, each the --set of its field
    params = run_params.parse(args.param or (), list(run_params.BY_NAME))
    cfg = config_lib.load(args.config, [*(args.set or ()), *run_params.as_overrides(params)])
    if args.work_dir:
        cfg.runner.work_dir = args.work_dir
    cfg.training.build_experiment()  # the whole config is valid before anything runs
    _check_writable(cfg.runner.work_dir, "runner.work_dir")
    from pipelines import local_runner, summary

    # LocalDagRunner's "Component X is running/finished" lines, as progress
    logging.getLogger().addFilter(_ComponentProgress())
    for h in logging.getLogger().handlers:
        h.addFilter(_ComponentProgress())
    logging.getLogger().setLevel(logging.INFO)
    logging.getLogger("tensorflow").setLevel(logging.WARNING)  # "Assets written to ..."
    try:
        s, out = local_runner.run_local(cfg, started=t0)
    except local_runner.LocalRunError as e:
        raise UserError(str(e)) from None
    finally:
        logging.getLogger().setLevel(logging.WARNING)
    print(summary.format_summary(s))
    print(f"summary written to {out}")
    return 0


def cmd_registry(args) -> int:
    from components.registry import cli as registry_cli

    if args.registry is None or args.model is None:  # the registry of the pipeline config
        from pipelines import config as config_lib

        cfg = config_lib.load(args.config, args.set or ())
        args.registry = args.registry or cfg.registry.resolved_uri(cfg.runner.work_dir)
        args.model = args.model or cfg.registry.model_name
    return registry_cli.run(args)


def cmd_serve(args) -> int:
    """Resolves the ref here (a bad one is one line, exit 2, before anything starts), builds
    .venv-serve when missing, then becomes the server (exec): foreground, Ctrl-C or SIGTERM
    stops it. components/serving/server.py is the server, docs/serving.md the guide."""
    from components.registry.aliases import resolve_ref
    from components.serving import process

    registry, model_name = args.registry, "deblur-icdpm"
    if registry is None or args.config or args.set:
        from pipelines import config as config_lib

        cfg = config_lib.load(args.config, args.set or ())
        registry = registry or cfg.registry.resolved_uri(cfg.runner.work_dir)
        model_name = cfg.registry.model_name
    resolved = resolve_ref(registry, args.model, default_model=model_name)
    try:
        python = process.ensure_serve_venv()
    except process.ServeError as e:
        raise UserError(str(e)) from None
    cmd = process.server_command(registry, args.model, python=python, host=args.host,
                                 port=args.port, poll_seconds=args.poll_seconds,
                                 max_pixels=args.max_pixels,
                                 extra=["--default-model", model_name])
    name = resolved.registry.model_name
    print(f"deblur serve: {args.model} is version {resolved.version} of {name!r}; serving "
          f"http://{args.host}:{args.port}/v2/models/{name} (Ctrl-C stops it)",
          file=sys.stderr, flush=True)
    os.execve(python, cmd, process.server_env())
    return 0  # not reached


# --------------------------------------------------------------------------------------------
def _config_arguments(parser: argparse.ArgumentParser, text: str) -> argparse.ArgumentParser:
    parser.add_argument("--config", default=None, help=text)
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config field, e.g. --set training.train.steps=300 "
                             "(repeatable)")
    return parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="deblur", description=__doc__.splitlines()[0])
    p.add_argument("--verbose", action="store_true", help="library logs at INFO")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("synth-data", help="write the synthetic in- and out-of-domain data sets")
    s.add_argument("out")
    s.add_argument("--pairs", type=int, default=8, help="in-domain training pairs")
    s.add_argument("--test-pairs", type=int, default=None,
                   help="in-domain and out-of-domain test pairs (default max(2, pairs/2))")
    s.add_argument("--size", type=_size, default=(256, 256), help="HxW (default 256x256)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--json", action="store_true")

    from components.ingest.layouts import BLUR_KINDS, DEFAULT_BLUR_KIND, LAYOUTS, REALBLUR_VARIANTS

    s = sub.add_parser("ingest", help="Beam ingest of a paired dataset into sharded TFRecords",
                       epilog="Arguments after a lone '--' go to Beam, e.g. "
                              "-- --runner=DataflowRunner --project=P --region=R "
                              "--temp_location=gs://B/tmp")
    s.add_argument("--layout", required=True, choices=LAYOUTS)
    s.add_argument("--root", required=True, help="dataset root: local path or gs:// URI")
    s.add_argument("--out", required=True, help="output dir (local or gs://)")
    s.add_argument("--split", default=None,
                   help="subset(s) to ingest, comma-separated (train,test,val; reds: val300 = "
                        "frames 9, 19, ..., 99 of every val clip); default every subset with "
                        "pairs (blurry-only subsets such as REDS's test are skipped and counted)")
    s.add_argument("--dataset", default=None, help="dataset name stored in each example")
    s.add_argument("--domain", choices=("in", "out"), default=None,
                   help="default: in for gopro/folder, out for the others")
    s.add_argument("--blur-kind", default=DEFAULT_BLUR_KIND,
                   choices=sorted({k for kinds in BLUR_KINDS.values() for k in kinds}),
                   help="which blurry frames: gopro blur|blur_gamma, reds blur|blur_jpeg "
                        "(the JPEG track); default blur")
    s.add_argument("--variant", default=None, choices=REALBLUR_VARIANTS,
                   help="realblur: RealBlur-J or RealBlur-R (required when the root holds both)")
    s.add_argument("--span-pattern", default=None,
                   help="the root holds one layout per span folder, e.g. 'span-{SPAN}' or "
                        "'{YYYY}-{MM}-{DD}' (TFX's span tokens)")
    s.add_argument("--span-window", type=int, default=0,
                   help="ingest only the latest N spans (default 0: all)")
    s.add_argument("--unit-store", default=None,
                   help="a folder (local or gs://) keeping each ingested source/span under its "
                        "fingerprint: unchanged ones are reused instead of decoded again")
    s.add_argument("--max-quarantine-fraction", type=float, default=0.05)
    s.add_argument("--crop-size", type=int, default=128,
                   help="training crop; smaller images in a train split are quarantined")
    s.add_argument("--workers", type=int, default=1, help="DirectRunner worker processes")
    s.add_argument("--overwrite", action="store_true")
    s.add_argument("--json", action="store_true")

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
                   help="the preset (training.experiment in the pipeline config): tiny, local, "
                        "icDPM-S, icDPM-L, S+Guide-S, S+Guide-L, L+Guide-S, L+Guide-L")
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
                        "version folder) and train --steps more steps")

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
    _config_arguments(s, "pipeline config: its evaluation and gate sections")
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
    _config_arguments(s, "pipeline config: its evaluation section chooses splits and images")
    s.add_argument("--max-images", type=int, default=None,
                   help="images per split (default: the evaluator's)")
    s.add_argument("--splits", default=None, help="comma-separated (default: all but train)")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("predict", help="deblur an image (or a folder of images) with a SavedModel "
                                       "or the newest registered model")
    s.add_argument("input", help="an image file Pillow reads, or a folder of them")
    s.add_argument("output", help="the output PNG (a folder when IN is a folder)")
    s.add_argument("--model", default=None,
                   help="a SavedModel folder, a registry URI (local folder or gs://), or a "
                        "model ref NAME@ALIAS / @ALIAS / NAME@latest (in the config's registry, "
                        "or URI/NAME@ALIAS); default the registry of the pipeline config "
                        "(runs/local/registry)")
    s.add_argument("--model-name", default=None, help="the registry's model (deblur-icdpm)")
    s.add_argument("--version", type=int, default=None, help="registry version (default newest)")
    _config_arguments(s, "pipeline config naming the registry")
    s.add_argument("--steps", type=int, default=None, help="T (default: the model's setting)")
    s.add_argument("--max-noise", type=float, default=None, help="1 - alpha_T in (0, 1]")
    s.add_argument("--samples", type=int, default=None, help="K: average K samples (SA)")
    s.add_argument("--sampler", choices=("ddpm", "ddim"), default=None)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--tile", type=int, default=None,
                   help="sample in overlapping tiles of this many pixels (a multiple of the "
                        "UNet's, e.g. 256) for images too large for one pass")
    s.add_argument("--overlap", type=int, default=32, help="tile overlap in pixels")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("serve", help="serve a registry version on the Open Inference Protocol "
                                     "(KServe V2 REST; docs/serving.md)")
    s.add_argument("--model", required=True, metavar="REF",
                   help="NAME@ALIAS, @ALIAS, NAME/N or NAME (its newest intact version); an "
                        "alias is followed when it moves")
    s.add_argument("--registry", default=None,
                   help="registry URI (local folder or gs://); default the pipeline config's")
    _config_arguments(s, "pipeline config naming the registry")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--poll-seconds", type=float, default=None,
                   help="how often the alias is resolved again (default 5; 0: never)")
    s.add_argument("--max-pixels", type=int, default=None,
                   help="largest image answered, in pixels (default 1920*1080)")

    s = sub.add_parser("run-local", help="the whole pipeline with LocalDagRunner + SQLite MLMD")
    _config_arguments(s, "JSON or YAML config (pipelines/config.py)")
    s.add_argument("--work-dir", default=None, help="overrides runner.work_dir")
    s.add_argument("--param", action="append", metavar="NAME=VALUE",
                   help="a run parameter, named as on Kubeflow (pipelines/run_params.py), e.g. "
                        "--param train_steps=300 (repeatable)")

    from pipelines.kubeflow import cli as kubeflow_cli

    kubeflow_cli.add_parsers(sub)  # compile, submit, pipeline upload, schedule, runs

    from components.registry import cli as registry_cli

    registry_cli.add_parser(sub, parents=[_config_arguments(
        argparse.ArgumentParser(add_help=False), "pipeline config naming the registry")])
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    beam_args: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, beam_args = argv[:i], argv[i + 1 :]
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.verbose)
    try:
        if args.command == "synth-data":
            return cmd_synth_data(args)
        if args.command == "ingest":
            return cmd_ingest(args, beam_args)
        if args.command == "run-local":
            return cmd_run_local(args)
        if args.command == "model-stats":
            return cmd_model_stats(args)
        if args.command == "train":
            return cmd_train(args)
        if args.command in ("compile", "submit", "pipeline", "schedule", "runs"):
            from pipelines.kubeflow import cli as kubeflow_cli

            return kubeflow_cli.run(args)
        if args.command == "registry":
            return cmd_registry(args)
        if args.command == "evaluate":
            return cmd_evaluate(args)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "domain-gap":
            return cmd_domain_gap(args)
        if args.command == "metrics":
            from metrics.cli import run as cmd_metrics

            return cmd_metrics(args)
        if args.command == "fid":
            from metrics.cli import run_fid

            return run_fid(args)
    except (UserError, ValueError, FileNotFoundError) as e:
        # LayoutError and ConfigError are ValueErrors too. --verbose keeps the traceback.
        if args.verbose:
            raise
        print(f"deblur: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (PermissionError, NotADirectoryError, IsADirectoryError, FileExistsError) as e:
        if args.verbose:
            raise
        print(f"deblur: error: {e.filename or ''}: {e.strerror or e}".lstrip(": "),
              file=sys.stderr)
        return EXIT_USAGE
    except RuntimeError as e:
        # The work ran and stopped on its own rule (quarantine bound, data anomalies, a
        # non-finite training step, a lost or missing training worker, SIGTERM).
        names = {c.__name__ for c in type(e).__mro__}
        if not names & {"IngestError", "DataValidationError", "TrainingStopped"} \
                or args.verbose:
            raise
        print(f"deblur: error: {e}", file=sys.stderr)
        return EXIT_TERMINATED if "TrainingTerminated" in names else EXIT_FAILED
    except KeyboardInterrupt:
        print("deblur: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - TensorFlow's file errors, without importing it
        # tf.errors.PermissionDeniedError (an output folder that turned read-only, a gs://
        # bucket without write access) is a user's mistake too: one line
        if type(e).__name__ != "PermissionDeniedError" or args.verbose:
            raise
        text = (getattr(e, "message", None) or str(e)).strip()
        print(f"deblur: error: {text.splitlines()[0] if text else type(e).__name__}",
              file=sys.stderr)
        return EXIT_USAGE
    raise AssertionError(args.command)


if __name__ == "__main__":
    sys.exit(main())
