"""The DeblurRunCheck task, first of every compiled Kubeflow run: checks every run parameter with
the checks `deblur submit --param` makes (pipelines/run_params.py check_value: the type, then
what the config refuses), that every data source is a gs:// URI and, where the pod's
credentials can read it, that it holds objects. Never cached; a few seconds.

    python -m pipelines.kubeflow.check --executor-input '{{$}}'

Outputs:
  report    system.Markdown, on the run page: every parameter with its value, what it may be,
            and the verdict; the refused ones first, each naming the parameter and the allowed
            values.
  problems  output parameter: "" when every value is good, else the one-line refusal.
The task itself succeeds either way: KFP records the output artifacts of a task only when its
command exits 0 (backend/src/v2/component/launcher_v2.go: executeV2 returns before
uploadOutputArtifacts on a failed command, and publish() gets none), so a task that failed
could not show the report. DeblurInputFingerprint, the next task, takes `problems` and fails
at once, in that one line, before it lists anything (pipelines/kubeflow/fingerprint.py); nothing
after it starts.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pipelines import run_params

CONFIG_PARAM = "config"  # the compiled config (JSON), what the checks apply the values to
REPORT = "report"
PROBLEMS = "problems"


def local_path(uri: str) -> str:
    """Where KFP's launcher has a task write an output artifact before it uploads it
    (component.LocalPathForURI: gs://b/k -> /gcs/b/k, s3:// -> /s3/, minio:// -> /minio/);
    a plain path (the contract test's local pipeline root) is itself."""
    for scheme, mount in (("gs://", "/gcs/"), ("s3://", "/s3/"), ("minio://", "/minio/")):
        if uri.startswith(scheme):
            return mount + uri[len(scheme):]
    return uri


def check_sources_exist(sources: Sequence[Any], client=None) -> Tuple[Dict[int, str], List[str]]:
    """({index: problem}, notes): a gs:// root whose bucket does not exist or under which there
    is no object is a problem; one that the credentials cannot read is a note (not checked)."""
    problems: Dict[int, str] = {}
    notes: List[str] = []
    try:
        if client is None:
            from google.cloud import storage

            client = storage.Client()
    except Exception as e:  # noqa: BLE001 - no credentials here: say so, do not fail the run
        first = (str(e).strip().splitlines() or [""])[0][:200]
        return {}, [f"the data sources were not checked for existence: no GCS client "
                    f"({type(e).__name__}: {first})"]
    from google.api_core import exceptions as gexc

    for i, s in enumerate(sources):
        bucket, _, prefix = s.root[len("gs://"):].partition("/")
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        try:
            found = list(client.list_blobs(bucket, prefix=prefix, max_results=1))
        except gexc.NotFound:
            problems[i] = f"data_sources[{i}].root {s.root}: bucket {bucket} does not exist"
        except (gexc.Forbidden, gexc.Unauthorized) as e:
            notes.append(f"data_sources[{i}].root {s.root}: not checked, no read access "
                         f"({getattr(e, 'message', e)})")
        except Exception as e:  # noqa: BLE001 - credentials, network: not checked, say so
            first = (str(e).strip().splitlines() or [""])[0][:200]
            notes.append(f"data_sources[{i}].root {s.root}: not checked ({type(e).__name__}: "
                         f"{first})")
        else:
            if not found:
                problems[i] = (f"data_sources[{i}].root {s.root}: no object under it (missing "
                               f"or empty)")
    return problems, notes


def check(values: Dict[str, Any], config_dict: Optional[Dict[str, Any]],
          client=None) -> Tuple[Dict[str, str], List[str]]:
    """({parameter: problem}, notes) for the run parameters' values as the pod receives them."""
    problems = run_params.check_values(values, config_dict)
    notes: List[str] = []
    if "data_sources" in values and "data_sources" not in problems:
        sources = run_params.check_data_sources(values["data_sources"])
        missing, notes = check_sources_exist(sources, client)
        if missing:
            problems["data_sources"] = "; ".join(missing[i] for i in sorted(missing))
    return problems, notes


def _shown(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text if len(text) <= 300 else text[:297] + "..."


def one_line(problems: Dict[str, str]) -> str:
    return ("run parameters refused: " + "; ".join(problems[k] for k in sorted(problems))
            if problems else "")


def report(values: Dict[str, Any], problems: Dict[str, str], notes: List[str]) -> str:
    """The Markdown of the run page."""
    if problems:
        lines = [f"## Run parameters: {len(problems)} refused, the run stops here", ""]
        for name in sorted(problems):
            lines.append(f"- **{name}** = `{_shown(values.get(name))}`: {problems[name]}. "
                         f"Allowed: {run_params.allowed(name)}.")
    else:
        lines = ["## Run parameters: all good", ""]
    lines += ["", "| parameter | value | allowed | verdict |", "|---|---|---|---|"]
    for name in sorted(values):
        verdict = "**REFUSED**" if name in problems else "ok"
        value = _shown(values[name]).replace("|", "\\|")
        lines.append(f"| {name} | `{value}` | {run_params.allowed(name).replace('|', '/')} "
                     f"| {verdict} |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None, client=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.kubeflow.check",
                                description=__doc__.splitlines()[0])
    p.add_argument("--executor-input", required=True, help="KFP's {{$}}: the ExecutorInput JSON")
    args = p.parse_args(argv)
    ei = json.loads(args.executor_input)
    params = dict((ei.get("inputs") or {}).get("parameterValues") or {})
    config_text = params.pop(CONFIG_PARAM, None)
    config_dict = json.loads(config_text) if config_text else None
    if config_dict is not None:
        # a package compiled by an earlier release carries that release's spellings
        # (training.steps, training.overrides...), which its user cannot edit in the package
        from pipelines.config import respell

        config_dict = respell(config_dict)
    values = {k: v for k, v in params.items() if k in run_params.BY_NAME or k == run_params.CACHE}
    problems, notes = check(values, config_dict, client)
    line = one_line(problems)
    outputs = ei.get("outputs") or {}
    art = outputs["artifacts"][REPORT]["artifacts"][0]
    path = local_path(art["uri"])
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(report(values, problems, notes))
    out_param = (outputs.get("parameters") or {}).get(PROBLEMS, {}).get("outputFile")
    if out_param:
        os.makedirs(os.path.dirname(out_param) or ".", exist_ok=True)
        with open(out_param, "w") as f:
            f.write(line)
    if outputs.get("outputFile"):
        os.makedirs(os.path.dirname(outputs["outputFile"]) or ".", exist_ok=True)
        with open(outputs["outputFile"], "w") as f:
            json.dump({"parameterValues": {PROBLEMS: line}, "artifacts": {REPORT: {"artifacts": [
                {"metadata": {"display_name": "run parameters"}}]}}}, f)
    print(line or f"run parameters: all {len(values)} good"
          + (f" ({'; '.join(notes)})" if notes else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
