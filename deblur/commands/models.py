"""`deblur predict`, `deblur registry` and `deblur serve`: using a trained model."""
from __future__ import annotations

import argparse
import json
import os
import sys

from deblur.common import UserError, config_arguments, load_config



def cmd_predict(args) -> int:
    import dataclasses

    from deblur import predict as pr

    pr.plan(args.input, args.output)  # a missing input or an unsafe output, before any loading
    spec = args.model
    if spec is None:
        cfg = load_config(args)
        spec = cfg.registry.resolved_uri(cfg.runner.work_dir)
        model_name = args.model_name or cfg.registry.model_name
    else:
        model_name = args.model_name or "deblur-icdpm"
    from components.registry.aliases import looks_like_ref

    if looks_like_ref(spec) and not os.path.exists(spec):  # NAME@ALIAS: the config's registry
        if args.version is not None:
            raise UserError(f"--version does not apply to {spec}: the ref names the version")
        cfg = load_config(args)
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


def cmd_registry(args) -> int:
    from components.registry import cli as registry_cli

    if args.registry is None or args.model is None:  # the registry of the pipeline config
        cfg = load_config(args)
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
        cfg = load_config(args)
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


def add_parsers(sub) -> None:
    """predict, serve and registry (components/registry/cli.py's arguments)."""
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
    config_arguments(s, "pipeline config naming the registry")
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
    config_arguments(s, "pipeline config naming the registry")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--poll-seconds", type=float, default=None,
                   help="how often the alias is resolved again (default 5; 0: never)")
    s.add_argument("--max-pixels", type=int, default=None,
                   help="largest image answered, in pixels (default 1920*1080)")

    from components.registry import cli as registry_cli

    registry_cli.add_parser(sub, parents=[config_arguments(
        argparse.ArgumentParser(add_help=False), "pipeline config naming the registry")])


COMMANDS = {"predict": cmd_predict, "registry": cmd_registry, "serve": cmd_serve}
