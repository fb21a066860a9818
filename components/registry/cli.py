"""`deblur registry ...`: what consumers and release managers see of the registry.

  list     one row per version: version, created, out-of-domain LPIPS, in-domain PSNR,
           sampling setting, the aliases naming it (--json: a list of those rows with the
           version's URI), DAMAGED with the reason for a version whose manifest is unreadable
           or of the wrong shape, or whose files do not match its manifest's sizes and SHA-256
           (a gs:// registry's files are checked when downloaded: the last line says what was
           checked), and INCOMPLETE for a numbered folder without a manifest
  show     the manifest of REF (NAME@ALIAS, @ALIAS, NAME/N) or --version N (default: newest)
  latest   the newest intact version and its URI; --fetch also downloads a gs:// version into
           the local cache and prints that folder (a local registry's folder is used in place)
  alias set NAME VERSION [--reason]   alias list
  promote VERSION --to NAME [--reason]
  rollback NAME [--reason]            back to the alias's previous target
  history [NAME]                      every move: time, user@host, from -> to, reason, run
  export-tf-serving-config [--out FILE] [--base-path PATH]   TF Serving's models.config
An empty registry, an unknown version, a refused alias move is a RegistryError (a ValueError):
deblur prints it as one line and exits 2. Only the standard library and google-cloud-storage
(for gs://) are imported here.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Optional

from components.registry.aliases import Aliases, Move, resolve_ref, tf_serving_config
from components.registry.registry import (DEFAULT_MODEL_NAME, Registry, RegistryError,
                                          version_ranges)

ACTIONS = {
    "list": "versions, oldest first, with their aliases",
    "show": "the manifest of a version (REF: NAME@ALIAS, @ALIAS, NAME/N)",
    "latest": "the newest intact version and its path",
    "alias": "set or list aliases (production, staging, ...)",
    "promote": "point an alias at a version (default alias: production)",
    "rollback": "point an alias back at its previous version",
    "history": "every alias move: when, who, from -> to, why, which run",
    "export-tf-serving-config": "a TF Serving models.config with version_labels from the aliases",
}


def _common(s: argparse.ArgumentParser) -> None:
    s.add_argument("--registry", default=None,
                   help="local folder or gs://bucket/prefix (default: the registry of the "
                        "pipeline config, runs/local/registry)")
    s.add_argument("--model", default=None,
                   help=f"model name (default: the config's, {DEFAULT_MODEL_NAME})")
    s.add_argument("--json", action="store_true")


def add_parser(sub, parents=()) -> argparse.ArgumentParser:
    """Adds `registry` to the deblur command's subparsers; `parents` are argparse parents of
    every action (the deblur command adds its --config/--set there, which name the default
    registry: resolving them is the caller's business, so that this module stays below the
    pipeline config)."""
    p = sub.add_parser("registry", help="list, show, fetch, alias and promote registry versions")
    rsub = p.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    for name, text in ACTIONS.items():
        s = rsub.add_parser(name, help=text, parents=[] if name == "alias" else list(parents))
        if name == "alias":
            asub = s.add_subparsers(dest="alias_command", required=True, metavar="set|list")
            a = asub.add_parser("set", help="point NAME at VERSION", parents=list(parents))
            a.add_argument("alias", metavar="NAME")
            a.add_argument("version", metavar="VERSION")
            a.add_argument("--reason", default=None)
            _common(a)
            a = asub.add_parser("list", help="every alias and the version it names",
                                parents=list(parents))
            _common(a)
            continue
        _common(s)
        if name == "show":
            s.add_argument("ref", nargs="?", default=None, metavar="REF",
                           help="NAME@ALIAS, @ALIAS, NAME@latest or NAME/N")
            s.add_argument("--version", type=int, default=None, help="default: the newest")
        if name == "latest":
            s.add_argument("--fetch", action="store_true",
                           help="download a gs:// version into the cache and print its folder")
            s.add_argument("--cache-dir", default=None,
                           help="default $DEBLUR_REGISTRY_CACHE or ~/.cache/deblur/registry")
        if name == "promote":
            s.add_argument("version", metavar="VERSION")
            s.add_argument("--to", default="production", metavar="NAME",
                           help="the alias to move (default production)")
            s.add_argument("--reason", default=None)
        if name == "rollback":
            s.add_argument("alias", metavar="NAME")
            s.add_argument("--reason", default=None)
        if name == "history":
            s.add_argument("alias", nargs="?", default=None, metavar="NAME")
        if name == "export-tf-serving-config":
            s.add_argument("--out", default=None, help="file to write (default: standard output)")
            s.add_argument("--base-path", default=None,
                           help="the model folder as TF Serving sees it (default: the "
                                "registry's own, e.g. when it mounts the registry elsewhere)")
    return p


def _metric(manifest: Dict[str, Any], domain: str, name: str) -> Optional[float]:
    metrics = (manifest.get("metrics") or {}).get(domain) or {}
    for key, value in metrics.items():
        if key.lower() == name:
            return value
    return None


def _setting(s: Optional[Dict[str, Any]]) -> str:
    if not s:
        return "-"
    parts = [str(s.get("sampler", "?")), f"T={s.get('steps', '?')}",
             f"max_noise={s.get('max_noise', '?')}", f"K={s.get('samples', '?')}"]
    return " ".join(parts)


def checked(reg: Registry) -> str:
    """What `list` checks of each version (the same digests predict and load_latest check)."""
    if reg.is_gcs:
        return ("the manifests only: a gs:// version's files are checked against their size "
                "and SHA-256 when downloaded (latest --fetch, predict, load_latest)")
    return "every file's size and SHA-256 against the version's manifest"


def rows(reg: Registry) -> List[Dict[str, Any]]:
    """One row per version; a damaged one (manifest unreadable or of the wrong shape, a file
    missing, of another size or, locally, of another SHA-256: what predict checks) is listed
    with its problem instead of failing the whole list, an incomplete one (a numbered folder
    without manifest) with what is known of it."""
    by_version: Dict[int, List[str]] = {}
    for alias, move in sorted(Aliases(reg).current().items()):
        by_version.setdefault(move.version, []).append(alias)
    out = []
    for v in reg.versions():
        problem = reg.verify(v, hashes=True)
        try:
            m = reg.show(v)
        except RegistryError:  # the manifest itself is damaged: the row has only the problem
            m = {}
        out.append({"version": v, "created": m.get("created"),
                    "out_lpips": _metric(m, "out", "lpips"), "in_psnr": _metric(m, "in", "psnr"),
                    "sampling": m.get("sampling"), "uri": reg.version_uri(v),
                    "aliases": by_version.get(v, []),
                    "status": "ok" if problem is None else f"damaged: {problem}"})
    for v in reg.incomplete():
        out.append({"version": v, "created": None, "out_lpips": None, "in_psnr": None,
                    "sampling": None, "uri": reg.version_uri(v), "aliases": [],
                    "status": f"incomplete: {reg.incomplete_text(v)}"})
    return sorted(out, key=lambda r: r["version"])


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _require_versions(reg: Registry) -> List[int]:
    versions = reg.versions()
    if not versions:
        raise RegistryError(f"registry {reg.uri} holds no complete version of model "
                            f"{reg.model_name!r}")
    return versions


def _move_text(m: Move) -> str:
    run = ""
    if m.run:
        run = f"  run {m.run.get('pipeline') or '?'}/{m.run.get('run_id') or '?'}"
    src = "-" if m.from_version is None else str(m.from_version)
    reason = f"  \"{m.reason}\"" if m.reason else ""
    return (f"{m.time}  {m.alias:<12} {src:>3} -> {m.version:<3} {m.action:<8} "
            f"{m.user}@{m.host}{run}{reason}")


def _status_text(status: str) -> str:
    if status == "ok":
        return ""
    kind, _, detail = status.partition(": ")
    return f"  {kind.upper()} ({detail})"


def run_alias_action(args, reg: Registry) -> int:
    """alias set/list, promote, rollback, history, export-tf-serving-config."""
    aliases = Aliases(reg)
    cmd = args.registry_command
    if cmd == "alias" and args.alias_command == "list":
        current = aliases.current()
        if args.json:
            print(json.dumps({a: m.to_json() for a, m in current.items()}, indent=2,
                             sort_keys=True))
        elif not current:
            print(f"{reg.model_uri}: no alias set (deblur registry promote VERSION --to NAME)")
        else:
            for a, m in sorted(current.items()):
                print(f"{reg.model_name}@{a}\t{m.version}\t{reg.version_uri(m.version)}")
        return 0
    if cmd in ("alias", "promote", "rollback"):
        if cmd == "rollback":
            move = aliases.rollback(args.alias, reason=args.reason)
        else:
            alias = args.alias if cmd == "alias" else args.to
            move = aliases.move(alias, args.version, action="set" if cmd == "alias" else "promote",
                                reason=args.reason)
        if args.json:
            print(json.dumps(move.to_json(), indent=2, sort_keys=True))
        else:
            src = "unset" if move.from_version is None else f"version {move.from_version}"
            print(f"{reg.model_name}@{move.alias}: {src} -> version {move.version} "
                  f"({reg.version_uri(move.version)})")
        return 0
    if cmd == "history":
        moves = aliases.history(args.alias)
        if args.json:
            print(json.dumps([m.to_json() for m in moves], indent=2, sort_keys=True))
        elif not moves:
            print(f"{reg.model_uri}: no alias moves yet")
        else:
            for m in moves:
                print(_move_text(m))
        return 0
    if cmd == "export-tf-serving-config":
        text = tf_serving_config(reg, args.base_path)
        if args.out:
            tmp = f"{args.out}.tmp-{os.getpid()}"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, args.out)  # a TF Serving polling --model_config_file never reads half
            print(f"wrote {args.out}")
        else:
            print(text, end="")
        return 0
    raise AssertionError(cmd)


def run(args) -> int:
    if not args.registry:
        raise RegistryError("no registry given: pass --registry URI")
    if args.registry_command == "show" and args.ref:
        if args.version is not None:
            raise RegistryError("pass REF or --version, not both")
        resolved = resolve_ref(args.registry, args.ref, args.model or DEFAULT_MODEL_NAME)
        print(json.dumps(resolved.manifest, indent=2, sort_keys=True))
        return 0
    reg = Registry(args.registry, args.model or DEFAULT_MODEL_NAME,
                   cache_dir=getattr(args, "cache_dir", None))
    if args.registry_command in ("alias", "promote", "rollback", "history",
                                 "export-tf-serving-config"):
        return run_alias_action(args, reg)
    table = rows(reg) if args.registry_command == "list" else None
    if table:  # incomplete folders only: still worth listing
        versions = reg.versions()
    else:
        versions = _require_versions(reg)
    if args.registry_command == "list":
        if args.json:
            print(json.dumps(table, indent=2, sort_keys=True))
            return 0
        print(f"{reg.model_uri}")
        print(f"{'version':>7}  {'created (UTC)':<25}  {'LPIPS out':>9}  {'PSNR in':>7}  setting")
        for r in table:
            names = "".join(f"  @{a}" for a in r["aliases"])
            print(f"{r['version']:>7}  {str(r['created']):<25}  {_fmt(r['out_lpips'], '.4f'):>9}  "
                  f"{_fmt(r['in_psnr'], '.2f'):>7}  {_setting(r['sampling'])}{names}"
                  + _status_text(r["status"]))
        print(f"checked: {checked(reg)}")
        return 0
    if args.registry_command == "show":
        version = versions[-1] if args.version is None else args.version
        print(json.dumps(reg.show(version), indent=2, sort_keys=True))
        return 0
    if args.registry_command == "latest":
        # the newest whole version (the digests predict checks); damaged ones are skipped
        # with a warning
        found = reg.latest(hashes=True)
        if found is None:
            raise RegistryError(f"registry {reg.uri}: every version of model "
                                f"{reg.model_name!r} is damaged ({version_ranges(versions)})")
        version, manifest = found
        path = reg.local_path(version) if args.fetch else None
        if args.json:
            print(json.dumps({"version": version, "uri": reg.version_uri(version),
                              "local_path": path, "created": manifest.get("created")},
                             indent=2, sort_keys=True))
        else:
            print(f"{version}\t{path or reg.version_uri(version)}")
        return 0
    raise AssertionError(args.registry_command)
