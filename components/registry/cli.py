"""`deblur registry {list,show,latest}`: what consumers see of the registry.

  list    one row per complete version: version, created, out-of-domain LPIPS, in-domain
          PSNR, sampling setting (--json: a list of those rows with the version's URI), and
          DAMAGED with the reason for a version whose files do not match their manifest's sizes
          and SHA-256 (a gs:// registry's files are checked when downloaded: the last line
          says what was checked)
  show    the manifest of --version N (default: the newest)
  latest  the newest version and its URI; --fetch also downloads a gs:// version into the
          local cache and prints that folder (a local registry's folder is used in place)
An empty registry or an unknown version is a RegistryError (a ValueError): deblur prints it
as one line and exits 2. Only the standard library and google-cloud-storage (for gs://) are
imported here.
"""
from __future__ import annotations

import argparse
import json
from typing import Any, Dict, List, Optional

from components.registry.registry import (DEFAULT_MODEL_NAME, Registry, RegistryError,
                                          version_ranges)


def add_parser(sub, parents=()) -> argparse.ArgumentParser:
    """Adds `registry` to the deblur command's subparsers; `parents` are argparse parents of
    every action (the deblur command adds its --config/--set there, which name the default
    registry: resolving them is the caller's business, so that this module stays below the
    pipeline config)."""
    p = sub.add_parser("registry", help="list, show and fetch versions of the model registry")
    rsub = p.add_subparsers(dest="registry_command", required=True, metavar="ACTION")
    for name, text in (("list", "complete versions, oldest first"),
                       ("show", "the manifest of a version"),
                       ("latest", "the newest version and its path")):
        s = rsub.add_parser(name, help=text, parents=list(parents))
        s.add_argument("--registry", default=None,
                       help="local folder or gs://bucket/prefix (default: the registry of the "
                            "pipeline config, runs/local/registry)")
        s.add_argument("--model", default=None,
                       help=f"model name (default: the config's, {DEFAULT_MODEL_NAME})")
        s.add_argument("--json", action="store_true")
        if name == "show":
            s.add_argument("--version", type=int, default=None, help="default: the newest")
        if name == "latest":
            s.add_argument("--fetch", action="store_true",
                           help="download a gs:// version into the cache and print its folder")
            s.add_argument("--cache-dir", default=None,
                           help="default $DEBLUR_REGISTRY_CACHE or ~/.cache/deblur/registry")
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
    """One row per complete version; a damaged one (manifest unreadable, a file missing, of
    another size or, locally, of another SHA-256: what predict checks) is listed with its
    problem instead of failing the whole list."""
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
                    "status": "ok" if problem is None else f"damaged: {problem}"})
    return out


def _fmt(value: Optional[float], spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _require_versions(reg: Registry) -> List[int]:
    versions = reg.versions()
    if not versions:
        raise RegistryError(f"registry {reg.uri} holds no complete version of model "
                            f"{reg.model_name!r}")
    return versions


def run(args) -> int:
    if not args.registry:
        raise RegistryError("no registry given: pass --registry URI")
    reg = Registry(args.registry, args.model or DEFAULT_MODEL_NAME,
                   cache_dir=getattr(args, "cache_dir", None))
    versions = _require_versions(reg)
    if args.registry_command == "list":
        table = rows(reg)
        if args.json:
            print(json.dumps(table, indent=2, sort_keys=True))
            return 0
        print(f"{reg.model_uri}")
        print(f"{'version':>7}  {'created (UTC)':<25}  {'LPIPS out':>9}  {'PSNR in':>7}  setting")
        for r in table:
            print(f"{r['version']:>7}  {str(r['created']):<25}  {_fmt(r['out_lpips'], '.4f'):>9}  "
                  f"{_fmt(r['in_psnr'], '.2f'):>7}  {_setting(r['sampling'])}"
                  + ("" if r["status"] == "ok" else f"  DAMAGED ({r['status'][len('damaged: '):]})"))
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
