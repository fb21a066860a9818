"""Kubeflow Pipelines: compile create_pipeline(config) to a KFP v2 spec, submit runs.

    compile_pipeline(config, "deblur-icdpm.json")
        -> deblur-icdpm.json  TFX KubeflowV2DagRunner's PipelineJob (pipelineSpec + runtimeConfig)
        -> deblur-icdpm.yaml  the KFP package: the same pipelineSpec with defaultPipelineRoot, plus
                              a Kubernetes PlatformSpec document with the node selectors
    submit(config, spec_file, host, schedule="0 0 3 * * 1")   # kfp.Client: a run or a cron run

The pipeline is the same pure create_pipeline() the local runner uses, built from a copy of the
config with runner.orchestrator = "kubeflow" (component placement, pipelines/kubeflow/placement.py), the
Dataflow Beam arguments of config.kubeflow, and the schema path as seen inside the image.
Compiling adds the run parameters of pipelines/run_params.py (root input parameters with the
config's values as defaults: runtimeConfig.parameterValues of the PipelineJob, defaultValue in
the root inputDefinitions of both documents) and makes every task's command
pipelines/kubeflow/entrypoint.py, TFX's entrypoint with what the open-source KFP v2 launcher needs.

KFP facts this relies on (kfp SDK 2.5.0 sources here; KFP backend sources at tag 2.0.5):
- the backend accepts only pipeline specs of schemaVersion 2.1.0, so the runner compiles with
  use_pipeline_spec_2_1=True (TFX's default, 2.0.0, is what Vertex AI takes);
- kfp.Client reads a package (.yaml/.zip/.tar.gz) holding a PipelineSpec, optionally followed by
  a PlatformSpec document; TFX's PipelineJob JSON wraps the spec, hence the .yaml package;
- a ResourceSpec accelerator becomes `resources.limits[<type>] = <count>` on the pod; node
  selectors exist only in the Kubernetes PlatformSpec (tolerations only from backend 2.1);
- recurring runs: the backend parses the cron with robfig/cron v1.2.0 `cron.Parse`, which reads
  6 fields, seconds first, and also accepts 5 fields as seconds..month: a standard 5-field
  crontab line is accepted and means something else, so validate_cron() demands 6 fields.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pipelines import run_params
from pipelines.kubeflow import placement
from pipelines.config import REPO_ROOT, ConfigError, PipelineConfig

DEFAULT_OUT = "deblur-icdpm.json"
# every task's container command (the image's python; infra/Dockerfile installs the package)
ENTRYPOINT = ["python", "-m", "pipelines.kubeflow.entrypoint"]


class SubmitError(ValueError):
    """The KFP API could not be reached or refused the request (one line for the CLI)."""


# ---- config ---------------------------------------------------------------------------------
def check_config(config: PipelineConfig) -> None:
    """Everything a Kubeflow run needs that has no usable default, named in one ConfigError."""
    problems = list(config.kubeflow.missing())
    if not config.data.sources:
        problems.append("data.sources (gs:// dataset roots; the synthetic default is generated "
                        "on this machine, which the cluster cannot read)")
    else:
        local = [s.root for s in config.data.sources if not s.root.startswith("gs://")]
        if local:
            problems.append(f"data.sources roots on gs:// (the pods cannot read "
                            f"{', '.join(local)})")
    if not (config.registry.uri or "").startswith("gs://"):
        problems.append("registry.uri on gs:// (where the pusher registers blessed models; the "
                        "local default is on this machine)")
    if problems:
        raise ConfigError("the Kubeflow pipeline needs: " + "; ".join(problems))


def _image_path(path: str, image_repo_root: str) -> str:
    """A path of this checkout as seen in the image (infra/Dockerfile copies the repo there)."""
    if path.startswith("gs://"):
        return path
    rel = os.path.relpath(os.path.abspath(path), REPO_ROOT)
    if rel.startswith(".."):
        raise ConfigError(f"validation.schema_path {path} is outside the repository, so not in "
                          f"the image; put it in the repository or on gs://")
    return f"{image_repo_root.rstrip('/')}/{rel}"


def kubeflow_config(config: PipelineConfig) -> PipelineConfig:
    """The copy create_pipeline sees on Kubeflow."""
    check_config(config)
    cfg = copy.deepcopy(config)
    kf = cfg.kubeflow
    cfg.runner.orchestrator = "kubeflow"
    cfg.runner.pipeline_root = kf.pipeline_root
    cfg.runner.beam_args = kf.beam_args()
    cfg.validation.schema_path = _image_path(cfg.validation.schema_path, kf.image_repo_root)
    return cfg


# ---- compile --------------------------------------------------------------------------------
def package_path(spec_file: str) -> str:
    return os.path.splitext(spec_file)[0] + ".yaml"


def compile_pipeline(config: PipelineConfig, out_file: str = DEFAULT_OUT) -> str:
    """Writes the PipelineJob JSON to out_file and the KFP package beside it; returns out_file."""
    if not out_file.endswith(".json"):
        raise ConfigError(f"--out {out_file}: the compiled spec is a .json file (the KFP package "
                          f"is written beside it as .yaml)")
    cfg = kubeflow_config(config)  # config errors before the ~20 s of importing TFX
    from tfx.orchestration.kubeflow.v2 import kubeflow_v2_dag_runner as v2
    from tfx.orchestration.kubeflow.v2 import pipeline_builder

    from pipelines.pipeline import create_pipeline

    kf = cfg.kubeflow
    pipeline = create_pipeline(cfg, metadata_connection_config=None,
                               pipeline_root=kf.pipeline_root,
                               input_fingerprint=FINGERPRINT_PLACEHOLDER, placement=placement)
    defaults = run_params.attach(pipeline.components)
    images = {c.id: kf.image_for(c.id) for c in pipeline.components}
    runner = v2.KubeflowV2DagRunner(
        v2.KubeflowV2DagRunnerConfig(
            display_name=cfg.runner.pipeline_name,
            # a map: per component id, and "default" for the rest
            default_image={**{k: v for k, v in images.items() if v != kf.image},
                           pipeline_builder.DEFAULT_IMAGE_PATH_KEY: kf.image},
            default_commands=list(ENTRYPOINT),
            use_pipeline_spec_2_1=True),  # KFP backend 2.0.x takes schemaVersion 2.1.0 only
        output_dir=os.path.dirname(os.path.abspath(out_file)),
        output_filename=os.path.basename(out_file))
    job = runner.run(pipeline, parameter_values=defaults, write_out=True)
    add_parameter_defaults(job)
    add_input_fingerprint_task(job, kf.image_for(INGEST_TASK))
    add_run_check_task(job, kf.image, cfg.to_dict())
    never_cached(job, NEVER_CACHED)
    add_trainer_retry_policy(job, kf.trainer_max_retries)
    with open(out_file, "w") as f:  # the runner's file, with the retry policy added
        json.dump(job, f, indent=2, sort_keys=True)
    write_package(job, cfg, package_path(out_file))
    return out_file


def add_parameter_defaults(job: Dict[str, Any]) -> None:
    """The defaults of runtimeConfig.parameterValues also as the root input parameters'
    defaultValue (TFX writes only their type): what the KFP UI's run form shows for a pipeline
    uploaded as a package, and what the driver falls back to when a run sets none."""
    values = (job.get("runtimeConfig") or {}).get("parameterValues") or {}
    params = job["pipelineSpec"]["root"].get("inputDefinitions", {}).get("parameters", {})
    for name, spec in params.items():
        if name in values:
            if spec.get("parameterType") == "NUMBER_INTEGER":  # TFX writes 1000000.0
                values[name] = int(values[name])
            spec["defaultValue"] = values[name]
            spec["isOptional"] = True
        if name in run_params.BY_NAME:
            spec["description"] = run_params.BY_NAME[name].help


def parameter_types(spec: Dict[str, Any]) -> Dict[str, str]:
    """{name: parameterType} of a compiled pipeline spec's run parameters."""
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {k: v.get("parameterType", "STRING") for k, v in params.items()}


_PTYPES = {"NUMBER_INTEGER": int, "NUMBER_DOUBLE": float, "STRING": str}


def run_arguments(config: PipelineConfig, spec: Dict[str, Any],
                  values: Dict[str, str]) -> Dict[str, Any]:
    """`--param NAME=VALUE` texts as typed run arguments of this spec. A name the spec does not
    have, a value of the wrong type, or one the config refuses (train_steps 0, a negative
    LPIPS threshold, data_sources that are not a non-empty JSON list of gs:// sources...) is a
    one-line ConfigError, before anything is sent: the checks of the run's DeblurRunCheck task
    (run_params.check_value), which also meets the values typed in the KFP UI."""
    types = parameter_types(spec)
    known = sorted(types)
    args = {}
    config_dict = config.to_dict()
    for name, text in values.items():
        if name not in types:
            raise run_params.unknown(name, known)
        try:
            args[name] = run_params.check_value(name, text, config_dict,
                                                _PTYPES.get(types[name], str))
        except ConfigError as e:
            raise ConfigError(f"--param {e}") from None
    return args


INGEST_TASK = "DeblurIngest"
FINGERPRINT_TASK = "DeblurInputFingerprint"
# create_pipeline's input_fingerprint on Kubeflow: replaced by the fingerprint task's output
FINGERPRINT_PLACEHOLDER = "computed in the run by the DeblurInputFingerprint task"
FINGERPRINT_COMMAND = ["python", "-m", "pipelines.kubeflow.fingerprint"]


def add_input_fingerprint_task(job: Dict[str, Any], image: str) -> None:
    """A task before DeblurIngest that lists its sources and outputs their fingerprint
    (pipelines/kubeflow/fingerprint.py); DeblurIngest's `input_fingerprint` input parameter becomes
    that output parameter. KFP's cache key holds parameter values, not the files under a
    gs:// root, so this is what makes the ingest's key change exactly when the data do. The
    task is never cached; it runs in every run, recurring and UI-started ones included, where
    a fingerprint computed by `deblur submit` would be frozen into the schedule."""
    spec = job["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    ingest = tasks[INGEST_TASK]
    params = ingest["inputs"]["parameters"]
    current = params.get("input_fingerprint", {}).get("runtimeValue", {}).get("constant")
    if current != FINGERPRINT_PLACEHOLDER:
        raise ValueError(f"{INGEST_TASK}'s input_fingerprint is {current!r}, not the placeholder "
                         f"create_pipeline was given: the TFX compiler changed how it writes "
                         f"exec properties")
    # the same sources and options as the ingest: constants, or run parameters
    names = [n for n in ("sources", "options", "data_sources") if n in params]
    definitions = spec["components"][ingest["componentRef"]["name"]]["inputDefinitions"][
        "parameters"]
    label = f"{FINGERPRINT_TASK}_executor"
    spec["components"][FINGERPRINT_TASK] = {
        "executorLabel": label,
        "inputDefinitions": {"parameters": {n: copy.deepcopy(definitions[n]) for n in names}},
        "outputDefinitions": {"parameters": {"fingerprint": {"parameterType": "STRING"}}},
    }
    args = ["--sources", "{{$.inputs.parameters['sources']}}",
            "--options", "{{$.inputs.parameters['options']}}"]
    if "data_sources" in names:
        args += ["--data-sources", "{{$.inputs.parameters['data_sources']}}"]
    args += ["--fingerprint-file", "{{$.outputs.parameters['fingerprint'].output_file}}"]
    spec["deploymentSpec"]["executors"][label] = {"container": {
        "image": image, "command": list(FINGERPRINT_COMMAND), "args": args,
        # a listing: small next to the ingest's pod, which launches the Dataflow job
        "resources": {"cpuLimit": 1.0, "memoryLimit": 2.0}}}
    tasks[FINGERPRINT_TASK] = {
        "taskInfo": {"name": FINGERPRINT_TASK},
        "componentRef": {"name": FINGERPRINT_TASK},
        "inputs": {"parameters": {n: copy.deepcopy(params[n]) for n in names}},
        # enableCache unset is false (proto3), as the KFP API sends it back: never cached
        "cachingOptions": {},
    }
    params["input_fingerprint"] = {"taskOutputParameter": {
        "producerTask": FINGERPRINT_TASK, "outputParameterKey": "fingerprint"}}
    ingest["dependentTasks"] = sorted(set(ingest.get("dependentTasks", [])) | {FINGERPRINT_TASK})


CHECK_TASK = "DeblurRunCheck"
CHECK_COMMAND = ["python", "-m", "pipelines.kubeflow.check"]
# tasks that report on this run, so must run in every run (the summary reads the others')
NEVER_CACHED = ("RunSummary",)


def add_run_check_task(job: Dict[str, Any], image: str, config_dict: Dict[str, Any]) -> None:
    """The `cache` run parameter (on/off), and a first task that checks every run parameter
    (pipelines/kubeflow/check.py) with the compiled config as a constant: its `report` Markdown is
    on the run page, and its `problems` output goes to DeblurInputFingerprint, which fails in
    that one line when it is not empty (a failed task's outputs are not recorded by KFP, so the
    check itself succeeds). Never cached, like the fingerprint task it precedes."""
    spec = job["pipelineSpec"]
    root_params = spec["root"].setdefault("inputDefinitions", {}).setdefault("parameters", {})
    root_params[run_params.CACHE] = {"parameterType": "STRING", "defaultValue": "on",
                                     "isOptional": True, "description": run_params.CACHE_HELP}
    job.setdefault("runtimeConfig", {}).setdefault("parameterValues", {})[run_params.CACHE] = "on"
    tasks = spec["root"]["dag"]["tasks"]
    label = f"{CHECK_TASK}_executor"
    from pipelines.kubeflow import check as kfp_check

    spec["components"][CHECK_TASK] = {
        "executorLabel": label,
        "inputDefinitions": {"parameters": {
            **{n: {"parameterType": d.get("parameterType", "STRING")}
               for n, d in root_params.items()},
            kfp_check.CONFIG_PARAM: {"parameterType": "STRING"}}},
        "outputDefinitions": {
            "artifacts": {kfp_check.REPORT: {"artifactType": {
                "schemaTitle": "system.Markdown", "schemaVersion": "0.0.1"}}},
            "parameters": {kfp_check.PROBLEMS: {"parameterType": "STRING"}}},
    }
    spec["deploymentSpec"]["executors"][label] = {"container": {
        "image": image, "command": list(CHECK_COMMAND), "args": ["--executor-input", "{{$}}"],
        "resources": {"cpuLimit": 1.0, "memoryLimit": 2.0}}}
    tasks[CHECK_TASK] = {
        "taskInfo": {"name": CHECK_TASK},
        "componentRef": {"name": CHECK_TASK},
        "inputs": {"parameters": {
            **{n: {"componentInputParameter": n} for n in root_params},
            kfp_check.CONFIG_PARAM: {"runtimeValue": {
                "constant": json.dumps(config_dict, sort_keys=True)}}}},
        "cachingOptions": {},
    }
    fp = tasks[FINGERPRINT_TASK]
    fp["inputs"]["parameters"][kfp_check.PROBLEMS] = {"taskOutputParameter": {
        "producerTask": CHECK_TASK, "outputParameterKey": kfp_check.PROBLEMS}}
    fp["inputs"]["parameters"][run_params.CACHE] = {"componentInputParameter": run_params.CACHE}
    fp["dependentTasks"] = sorted(set(fp.get("dependentTasks", [])) | {CHECK_TASK})
    comp = spec["components"][FINGERPRINT_TASK]
    comp["inputDefinitions"]["parameters"].update({
        kfp_check.PROBLEMS: {"parameterType": "STRING"},
        run_params.CACHE: {"parameterType": "STRING"}})
    executor = spec["deploymentSpec"]["executors"][comp["executorLabel"]]["container"]
    executor["args"] += ["--problems", f"{{{{$.inputs.parameters['{kfp_check.PROBLEMS}']}}}}",
                         "--cache", f"{{{{$.inputs.parameters['{run_params.CACHE}']}}}}"]


def never_cached(job: Dict[str, Any], names) -> None:
    for name in names:
        task = job["pipelineSpec"]["root"]["dag"]["tasks"].get(name)
        if task is not None:
            task["cachingOptions"] = {}


def add_trainer_retry_policy(job: Dict[str, Any], max_retries: int) -> None:
    """PipelineTaskSpec.retryPolicy on the Trainer task (TFX's compiler sets none): a retried
    pod resumes from the checkpoints in its ModelRun folder. Vertex AI Pipelines honours it;
    on open-source KFP it needs a backend whose Argo compiler reads retryPolicy."""
    if max_retries:
        job["pipelineSpec"]["root"]["dag"]["tasks"]["Trainer"]["retryPolicy"] = {
            "maxRetryCount": max_retries, "backoffDuration": "60s", "backoffFactor": 2.0,
            "backoffMaxDuration": "3600s"}


def platform_spec(job: Dict[str, Any], config: PipelineConfig) -> Optional[Dict[str, Any]]:
    """The Kubernetes PlatformSpec (kfp-kubernetes format) with each placed task's node selector,
    keyed by its executor label; None when no placed component has one."""
    spec = job["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    executors = {}
    for cid, r in placement.placed_resources(config, list(tasks)).items():
        if not r.node_selector:
            continue
        label = spec["components"][tasks[cid]["componentRef"]["name"]]["executorLabel"]
        executors[label] = {"nodeSelector": {"labels": dict(r.node_selector)}}
    if not executors:
        return None
    return {"platforms": {"kubernetes": {"deploymentSpec": {"executors": executors}}}}


def write_package(job: Dict[str, Any], config: PipelineConfig, path: str) -> str:
    import yaml

    spec = copy.deepcopy(job["pipelineSpec"])
    # Runs started from the KFP UI (no runtime pipeline root) write here too, not to MinIO.
    spec["defaultPipelineRoot"] = config.kubeflow.pipeline_root
    docs = [spec]
    plat = platform_spec(job, config)
    if plat:
        docs.append(plat)
    with open(path, "w") as f:
        f.write(f"# KFP package of {spec['pipelineInfo']['name']}: the pipeline spec compiled by "
                f"TFX {spec.get('sdkVersion', '')}\n# and a Kubernetes platform spec with the "
                f"node selectors (pipelines/kubeflow/runner.py)\n")
        yaml.safe_dump_all(docs, f, sort_keys=True)
    return path


def load_job(spec_file: str) -> Dict[str, Any]:
    with open(spec_file) as f:
        job = json.load(f)
    if "pipelineSpec" not in job:
        raise ConfigError(f"{spec_file} is not a PipelineJob compiled by `deblur compile`")
    return job


def _topological(tasks: Dict[str, Any]) -> List[str]:
    done: List[str] = []
    left = dict(tasks)
    while left:
        ready = sorted(n for n, t in left.items()
                       if all(d in done for d in t.get("dependentTasks", [])))
        if not ready:  # a cycle cannot come out of TFX; keep the rest rather than loop
            ready = sorted(left)
        done += ready
        for n in ready:
            left.pop(n)
    return done


def describe(job: Dict[str, Any], config: Optional[PipelineConfig] = None) -> List[Dict[str, Any]]:
    """One entry per task, dependencies first: name, dependencies, image, resources, node
    selector, Beam runner, Vertex machine (from the Trainer's custom_config)."""
    spec = job["pipelineSpec"]
    tasks = spec["root"]["dag"]["tasks"]
    plat = (platform_spec(job, config) if config is not None else None) or {}
    selectors = plat.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get(
        "executors", {})
    out = []
    for name in _topological(tasks):
        task = tasks[name]
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        executor = spec["deploymentSpec"]["executors"][label]
        container = executor.get("container", {})
        args = container.get("args", [])
        runner = next((a.split("=", 1)[1] for a in args if a.startswith("--runner=")), None)
        entry = {"name": name, "kind": next(iter(executor), None),
                 "depends_on": sorted(task.get("dependentTasks", [])),
                 "image": container.get("image"), "resources": container.get("resources", {}),
                 "node_selector":
                     selectors.get(label, {}).get("nodeSelector", {}).get("labels", {}),
                 "beam_runner": runner}
        custom = task.get("inputs", {}).get("parameters", {}).get("custom_config", {})
        constant = custom.get("runtimeValue", {}).get("constant")
        if constant:
            cc = json.loads(constant)
            job_args = cc.get("ai_platform_training_args")
            if job_args:
                entry["vertex_job"] = job_args["job_spec"]["worker_pool_specs"][0]["machine_spec"]
            if cc.get("tpu"):
                entry["tpu"] = cc["tpu"]
        out.append(entry)
    return out


def unsupported_on_kfp(entries: List[Dict[str, Any]]) -> List[str]:
    """Tasks whose executor is neither a container nor an importer: TFX compiles a Resolver node
    (e.g. LatestBlessedModelStrategy) to a `resolver` executor, which Vertex AI Pipelines runs
    and the open-source KFP backend does not ("non-container and non-importer executor not
    implemented" in backend/src/v2/compiler/visitor.go, tags 2.0.5 to master)."""
    return [e["name"] for e in entries if e["kind"] not in ("container", "importer")]


def format_tasks(entries: List[Dict[str, Any]]) -> str:
    lines = []
    for e in entries:
        if e["kind"] != "container":
            deps = ", ".join(e["depends_on"]) or "-"
            lines.append(f"  {e['name']:18s} after {deps}")
            lines.append(f"  {'':18s} {e['kind']} executor (no pod)")
            continue
        extra = []
        res = e["resources"]
        if res:
            acc = res.get("accelerator")
            parts = [f"cpu {res['cpuLimit']:g}" if "cpuLimit" in res else "",
                     f"memory {res['memoryLimit']:g}G" if "memoryLimit" in res else "",
                     f"{acc['type']} x{acc['count']}" if acc else ""]
            extra.append("resources: " + ", ".join(p for p in parts if p))
        if e["node_selector"]:
            extra.append("nodes: " + ", ".join(f"{k}={v}" for k, v in e["node_selector"].items()))
        if e.get("vertex_job"):
            extra.append("Vertex AI CustomJob: " + ", ".join(
                f"{k}={v}" for k, v in e["vertex_job"].items()))
        if e.get("tpu"):
            extra.append(f"TPU strategy ({e['tpu']})")
        if e["beam_runner"] == "DataflowRunner" and e["name"] in ("DeblurIngest", "StatisticsGen"):
            extra.append("Beam on Dataflow")
        deps = ", ".join(e["depends_on"]) or "-"
        lines.append(f"  {e['name']:18s} after {deps}")
        lines.append(f"  {'':18s} image {e['image']}" + "".join(f"; {x}" for x in extra))
    return "\n".join(lines)


# ---- cron -----------------------------------------------------------------------------------
_DESCRIPTORS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")
_MONTHS = {m: i + 1 for i, m in enumerate(
    "jan feb mar apr may jun jul aug sep oct nov dec".split())}
_DAYS = {d: i for i, d in enumerate("sun mon tue wed thu fri sat".split())}
_FIELDS = (("second", 0, 59, None), ("minute", 0, 59, None), ("hour", 0, 23, None),
           ("day of month", 1, 31, None), ("month", 1, 12, _MONTHS), ("day of week", 0, 6, _DAYS))


def validate_cron(expr: str) -> str:
    """KFP's cron (robfig/cron v1.2.0 cron.Parse): 6 fields `sec min hour dom month dow`, each
    `*`, `?`, N, N-M, with /step and comma lists, month and day names; or @daily, @every 6h...
    A 5-field crontab line is refused: KFP would read it seconds-first (see the module doc)."""
    expr = (expr or "").strip()
    if not expr:
        raise ValueError("empty --schedule")
    if expr.startswith("@"):
        if expr in _DESCRIPTORS:
            return expr
        if re.fullmatch(r"@every ((\d+(\.\d+)?)(ns|us|µs|ms|s|m|h))+", expr):
            return expr
        raise ValueError(f"--schedule {expr!r}: unknown descriptor; use one of "
                         f"{', '.join(_DESCRIPTORS)} or '@every <duration>' such as '@every 24h'")
    fields = expr.split()
    if len(fields) == 5:
        raise ValueError(
            f"--schedule {expr!r} has 5 fields: KFP's cron has 6, seconds first, and would read "
            f"this one as 'second minute hour day-of-month month'; write '0 {expr}'")
    if len(fields) != 6:
        raise ValueError(f"--schedule {expr!r}: KFP's cron has 6 fields "
                         f"(second minute hour day-of-month month day-of-week), got {len(fields)}")
    for text, (name, lo, hi, names) in zip(fields, _FIELDS):
        for part in text.split(","):
            _check_cron_range(part, name, lo, hi, names, expr)
    return expr


def _check_cron_range(part, name, lo, hi, names, expr) -> None:
    def bad(why):
        return ValueError(f"--schedule {expr!r}: {name} {part!r}: {why}")

    def value(tok):
        if names and tok.lower() in names:
            return names[tok.lower()]
        if not tok.isdigit():
            raise bad(f"{tok!r} is not a number" + (" or a name" if names else ""))
        return int(tok)

    range_step = part.split("/")
    if len(range_step) > 2:
        raise bad("too many slashes")
    low_high = range_step[0].split("-")
    if low_high[0] in ("*", "?"):
        if len(low_high) > 1:
            raise bad("a range cannot start with * or ?")
        start, end = lo, hi
    else:
        if len(low_high) > 2:
            raise bad("too many hyphens")
        start = value(low_high[0])
        end = value(low_high[1]) if len(low_high) == 2 else start
        if len(range_step) == 2 and len(low_high) == 1:
            end = hi  # N/step means N-max/step
    if len(range_step) == 2:
        if not range_step[1].isdigit() or int(range_step[1]) < 1:
            raise bad("the step must be a positive number")
    if start < lo or end > hi or start > end:
        raise bad(f"outside {lo}-{hi}" if start <= end else "start after end")


# ---- submit ---------------------------------------------------------------------------------
class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # a 3xx is answered, not followed
        return None


def _not_the_api(host: str, answered: str, where: str) -> "SubmitError":
    return SubmitError(f"KFP at {host} answered {answered} on {where}, not the KFP API's JSON "
                       f"(a login page, or the wrong port?)")


def _looks_html(content_type: Optional[str], text) -> bool:
    if isinstance(text, bytes):
        text = text[:200].decode("utf-8", "replace")
    head = (text or "")[:200].lstrip().lower()
    return "html" in (content_type or "").lower() or head.startswith(("<!doctype", "<html", "<"))


def check_answer(host: str, where: str, content_type: Optional[str], text) -> None:
    """One place for what the KFP API answers: JSON. An HTML page (an auth proxy's login page,
    the UI or another service behind a wrong port-forward) or any other non-JSON body is
    refused in one line, before kfp_server_api reads it into an empty model."""
    if _looks_html(content_type, text):
        raise _not_the_api(host, "HTML", where)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if not (text or "").strip():
        return  # an empty body (e.g. enable/disable) carries nothing to read
    try:
        json.loads(text)
    except ValueError:
        raise _not_the_api(host, f"{(content_type or 'no content type').split(';')[0]} "
                                 f"that is not JSON", where) from None


def _check_host(host: str) -> str:
    host = host.rstrip("/")
    if not re.match(r"https?://", host):
        raise SubmitError(f"--host {host}: give the KFP API URL with http:// or https://, "
                          f"e.g. http://localhost:8080 after `kubectl port-forward`")
    url = f"{host}/apis/v2beta1/healthz"
    where = "GET /apis/v2beta1/healthz"
    try:
        with urllib.request.build_opener(_NoRedirect).open(url, timeout=10) as r:
            check_answer(host, where, r.headers.get("Content-Type"), r.read())
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400:
            raise _not_the_api(host, f"a redirect ({e.code}) to "
                                     f"{e.headers.get('Location') or 'nowhere'}", where) from e
        raise SubmitError(f"KFP at {host} answered {e.code} {e.reason} on {url}") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise SubmitError(f"cannot reach the KFP API at {host}: {reason}") from e
    return host


def _package_for(spec_file: str, config: PipelineConfig) -> Tuple[str, Dict[str, Any], bool]:
    """(package path, PipelineJob dict or {}, temporary?) for a .json spec or a .yaml package."""
    if spec_file.endswith((".yaml", ".yml")):
        return spec_file, {}, False
    job = load_job(spec_file)
    fd, tmp = tempfile.mkstemp(suffix=".yaml", prefix="deblur-kfp-")
    os.close(fd)
    write_package(job, config, tmp)
    return tmp, job, True


def _package_spec(package: str) -> Dict[str, Any]:
    import yaml

    with open(package) as f:
        docs = list(yaml.safe_load_all(f))
    if not docs or not isinstance(docs[0], dict) or "root" not in docs[0]:
        raise ConfigError(f"{package} is not a KFP package written by `deblur compile`")
    return docs[0]


# ---- pipeline versions, runs, schedules --------------------------------------------------------
def project_version() -> str:
    """The project's version (pyproject.toml's, as installed)."""
    try:
        from importlib.metadata import version

        return version("deblur-pipeline")
    except Exception:  # noqa: BLE001 - not installed: read pyproject.toml
        with open(os.path.join(REPO_ROOT, "pyproject.toml")) as f:
            m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        return m.group(1) if m else "0"


def git_commit(repo: str = REPO_ROOT) -> Tuple[Optional[str], bool]:
    """(short commit, work tree has uncommitted changes) of the checkout; (None, False) outside
    git."""
    import subprocess

    try:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", "--short=10", "HEAD"],
                                capture_output=True, text=True, timeout=20, check=True).stdout
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit.strip() or None, bool(dirty.strip())


def file_digest(path: str) -> str:
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def version_name(package: str, commit: Optional[str] = None, dirty: bool = False) -> str:
    """<project version>-<git commit> of the code the package was compiled from; a work tree
    with uncommitted changes adds -dirty-<first 8 of the package's SHA-256>, and outside git
    the digest stands for the commit."""
    digest = file_digest(package)[:8]
    base = project_version()
    if commit is None:
        return f"{base}-{digest}"
    return f"{base}-{commit}" + (f"-dirty-{digest}" if dirty else "")


_DIGEST_RE = re.compile(r"package sha256:([0-9a-f]{64})")


def _api_errors():
    import kfp_server_api
    import urllib3

    return kfp_server_api, urllib3


@contextlib.contextmanager
def _kfp(host: str):
    """A kfp.Client for `host`, with the API's refusals and transport errors as one line."""
    kfp_server_api, urllib3 = _api_errors()
    import kfp

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # kfp prints its own links
            client = kfp.Client(host=host)
            _check_every_answer(client, host)
            yield client
    except kfp_server_api.ApiException as e:
        body = (e.body or b"").decode() if isinstance(e.body, bytes) else (e.body or "")
        text = body.strip()
        if text and _looks_html((e.headers or {}).get("Content-Type"), text):
            raise _not_the_api(host, f"{e.status} {e.reason} with HTML",
                               "a request of kfp.Client") from e
        try:
            text = json.loads(text).get("error") or json.loads(text).get("message") or text
        except (ValueError, AttributeError):
            pass
        raise SubmitError(f"KFP at {host} refused the request: {e.status} {e.reason}"
                          f"{': ' + str(text).splitlines()[0][:300] if text else ''}") from e
    except (urllib3.exceptions.HTTPError, TimeoutError, OSError) as e:
        raise SubmitError(f"KFP at {host}: {e}") from e


def _check_every_answer(client, host: str) -> None:
    """Every response the client's kfp_server_api.ApiClient reads goes through check_answer
    (urllib3 follows a redirect to a login page: its HTML is caught here)."""
    api = client._healthz_api.api_client
    read = api.deserialize

    def deserialize(response, response_type):
        resp = getattr(response, "urllib3_response", None)
        url = getattr(resp, "geturl", lambda: None)() if resp is not None else None
        path = urllib.parse.urlsplit(url).path if url else ""
        check_answer(host, f"a request of kfp.Client{' (' + path + ')' if path else ''}",
                     response.getheader("content-type"), response.data)
        return read(response, response_type)

    api.deserialize = deserialize


def _host(config: PipelineConfig, host: Optional[str]) -> str:
    host = host or config.kubeflow.host
    if not host:
        raise ConfigError("no KFP host: pass --host URL or set kubeflow.host")
    return _check_host(host)


def _load_spec(spec_file: str) -> Dict[str, Any]:
    if not os.path.exists(spec_file):
        raise ConfigError(f"spec file {spec_file} does not exist")
    if spec_file.endswith((".yaml", ".yml")):
        return _package_spec(spec_file)
    return load_job(spec_file)["pipelineSpec"]


def compiled_defaults(spec: Dict[str, Any]) -> Dict[str, Any]:
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {k: v["defaultValue"] for k, v in params.items() if "defaultValue" in v}


def _upload(client, config: PipelineConfig, package: str,
            name_override: Optional[str] = None) -> Dict[str, Any]:
    """Registers `package` as a version of the pipeline (created when missing); a version of
    that name holding the same package (SHA-256 in its description) is reused."""
    import kfp_server_api

    name = config.runner.pipeline_name
    commit, dirty = git_commit()
    vname = name_override or version_name(package, commit, dirty)
    digest = file_digest(package)
    pipeline_id = client.get_pipeline_id(name)
    created_pipeline = False
    if pipeline_id is None:
        # an empty pipeline, then our version: upload_pipeline would add a first version named
        # like the pipeline itself
        p = client._pipelines_api.create_pipeline(body=kfp_server_api.V2beta1Pipeline(
            display_name=name, description=f"{name}: deblurring diffusion model, retrained by "
                                           f"deblur-pipeline (deblur pipeline upload)"))
        pipeline_id, created_pipeline = p.pipeline_id, True
    found = client.list_pipeline_versions(pipeline_id=pipeline_id, page_size=2, filter=json.dumps(
        {"predicates": [{"operation": "EQUALS", "key": "display_name", "stringValue": vname}]}))
    existing = (found.pipeline_versions or []) if found is not None else []
    if existing:
        v = existing[0]
        m = _DIGEST_RE.search(v.description or "")
        if not m or m.group(1) != digest:
            raise SubmitError(
                f"pipeline {name} already has a version {vname} with another package (its "
                f"description: {(v.description or '')[:120]!r}); commit the change that made "
                f"it differ, or name the version with --version-name")
        return {"pipeline_id": pipeline_id, "version_id": v.pipeline_version_id,
                "version_name": vname, "created": False, "created_pipeline": created_pipeline,
                "digest": digest}
    description = (f"deblur-pipeline {project_version()}, commit {commit or 'unknown'}"
                   f"{' with uncommitted changes' if dirty else ''}; package sha256:{digest}")
    v = client.upload_pipeline_version(package, vname, pipeline_id=pipeline_id,
                                       description=description)
    return {"pipeline_id": pipeline_id, "version_id": v.pipeline_version_id,
            "version_name": vname, "created": True, "created_pipeline": created_pipeline,
            "digest": digest}


def upload(config: PipelineConfig, spec_file: str, host: Optional[str],
           version: Optional[str] = None) -> Dict[str, Any]:
    """`deblur pipeline upload`: the compiled package as a new version of the KFP pipeline named
    runner.pipeline_name (the UI's Pipelines page lists it and its versions; a run started
    there takes the version's spec and parameter defaults)."""
    _load_spec(spec_file)
    host = _host(config, host)
    package, _, temporary = _package_for(spec_file, config)
    try:
        with _kfp(host) as client:
            r = _upload(client, config, package, version)
    finally:
        if temporary:
            os.unlink(package)
    r.update(host=host, pipeline=config.runner.pipeline_name,
             url=f"{host}/#/pipelines/details/{r['pipeline_id']}/version/{r['version_id']}")
    return r


def default_run_name(pipeline: str, version: str, changed: Dict[str, Any]) -> str:
    """The pipeline, its version and the parameters that differ from the compiled defaults (a
    long data_sources as its length), e.g. 'deblur-icdpm 0.1.0-ab12cd34ef train_steps=5000'."""
    parts = []
    for k in sorted(changed):
        v = changed[k]
        text = v if isinstance(v, str) else json.dumps(v)
        if k == "data_sources":
            try:
                text = f"{len(json.loads(v))} source(s)"
            except (TypeError, ValueError):
                pass
        parts.append(f"{k}={text}" if len(text) <= 40 else f"{k}={text[:37]}...")
    return " ".join([pipeline, version] + parts)


def submit(config: PipelineConfig, spec_file: str, host: Optional[str],
           schedule: Optional[str] = None, experiment: Optional[str] = None,
           run_name: Optional[str] = None, params: Optional[Dict[str, str]] = None,
           no_cache: bool = False, pin_version: bool = False,
           version: Optional[str] = None) -> Dict[str, Any]:
    """Registers the package as a pipeline version (or reuses the same one), then creates a run
    of that version, or with a cron `schedule` a recurring run, in `experiment` (created when
    missing), with `params` ({run parameter: value text}, `--param`) over the compiled defaults.

    A run is sent every parameter's value (the compiled defaults with `params` over them). A
    recurring run references the pipeline without a version, so each of its runs takes the
    pipeline's newest version (KFP backend >= 2.5.0; infra/README.md), and only `params`, so
    that the newest version's defaults fill the rest; `pin_version` pins it to this version
    (KFP's API cannot move a recurring run to another version: delete it and submit again).
    `no_cache`: the run parameter cache=off (its ingest, and everything after it, runs again).
    Returns ids and UI links."""
    kf = config.kubeflow
    if schedule is not None:
        schedule = validate_cron(schedule)
    if not kf.pipeline_root:
        raise ConfigError("kubeflow.pipeline_root is not set (gs://BUCKET/pipeline_root)")
    spec = _load_spec(spec_file)
    values = dict(params or {})
    if no_cache:
        if run_params.CACHE not in parameter_types(spec):
            raise ConfigError(f"--no-cache: {spec_file} has no `{run_params.CACHE}` run "
                              f"parameter; compile it again with this version of deblur")
        values[run_params.CACHE] = "off"
    overrides = run_arguments(config, spec, values)  # before any request
    host = _host(config, host)
    experiment = experiment or kf.kfp_experiment
    name = config.runner.pipeline_name
    defaults = compiled_defaults(spec)
    changed = {k: v for k, v in overrides.items() if defaults.get(k) != v}
    package, _, temporary = _package_for(spec_file, config)
    result: Dict[str, Any] = {"host": host, "experiment": experiment,
                              "pipeline_root": kf.pipeline_root}
    try:
        with _kfp(host) as client:
            ver = _upload(client, config, package, version)
            result["pipeline_version"] = ver
            exp = client.create_experiment(name=experiment)
            result["experiment_id"] = exp.experiment_id
            if schedule:
                result["parameters"] = overrides
                result.update(_create_schedule(
                    client, config, exp.experiment_id, ver, schedule, overrides, pin_version,
                    run_name or default_run_name(
                        name, ver["version_name"] if pin_version else "(newest version)",
                        changed) + f" {schedule}"))
                result["url"] = f"{host}/#/recurringrun/details/{result['id']}"
            else:
                result["parameters"] = {**defaults, **overrides}
                run = client.run_pipeline(
                    experiment_id=exp.experiment_id,
                    job_name=run_name or default_run_name(name, ver["version_name"], changed),
                    params=result["parameters"], pipeline_id=ver["pipeline_id"],
                    version_id=ver["version_id"], pipeline_root=kf.pipeline_root,
                    service_account=kf.service_account)
                result.update(kind="run", id=run.run_id, name=run.display_name,
                              url=f"{host}/#/runs/details/{run.run_id}")
    finally:
        if temporary:
            os.unlink(package)
    return result


def _create_schedule(client, config: PipelineConfig, experiment_id: str, ver: Dict[str, Any],
                     schedule: str, params: Dict[str, Any], pin_version: bool,
                     name: str) -> Dict[str, Any]:
    import kfp_server_api

    kf = config.kubeflow
    body = kfp_server_api.V2beta1RecurringRun(
        experiment_id=experiment_id, display_name=name,
        description=f"scheduled retraining of {config.runner.pipeline_name}"
                    + (f", version {ver['version_name']}" if pin_version
                       else ", the pipeline's newest version at each run"),
        mode=kfp_server_api.RecurringRunMode.ENABLE,
        pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
            pipeline_id=ver["pipeline_id"],
            pipeline_version_id=ver["version_id"] if pin_version else None),
        runtime_config=kfp_server_api.V2beta1RuntimeConfig(pipeline_root=kf.pipeline_root,
                                                           parameters=params),
        trigger=kfp_server_api.V2beta1Trigger(
            cron_schedule=kfp_server_api.V2beta1CronSchedule(cron=schedule)),
        max_concurrency=1, no_catchup=True, service_account=kf.service_account)
    rr = client._recurring_run_api.create_recurring_run(body=body)
    return {"kind": "recurring_run", "id": rr.recurring_run_id, "schedule": schedule,
            "name": rr.display_name, "follows": "pinned" if pin_version else "newest"}


SCHEDULE_ACTIONS = ("list", "pause", "resume", "delete")


def schedules(config: PipelineConfig, host: Optional[str], action: str = "list",
              ids: Sequence[str] = (), experiment: Optional[str] = None,
              all_experiments: bool = False) -> Dict[str, Any]:
    """`deblur schedule list|pause|resume|delete`: the recurring runs of the config's
    experiment (list), or the named ones (pause = disable, resume = enable, delete)."""
    if action not in SCHEDULE_ACTIONS:
        raise ConfigError(f"schedule {action}: expected one of {', '.join(SCHEDULE_ACTIONS)}")
    if action != "list" and not ids:
        raise ConfigError(f"schedule {action}: name the recurring run id(s) (deblur schedule "
                          f"list shows them)")
    host = _host(config, host)
    experiment = experiment or config.kubeflow.kfp_experiment
    out: Dict[str, Any] = {"host": host, "action": action, "experiment": experiment}
    with _kfp(host) as client:
        if action == "list":
            experiment_id = None
            if not all_experiments:
                experiment_id = _experiment_id(client, experiment)
                if experiment_id is None:
                    out["schedules"] = []
                    return out
            rows, token = [], ""
            while True:
                r = client.list_recurring_runs(page_token=token, page_size=100,
                                               experiment_id=experiment_id,
                                               sort_by="created_at desc")
                rows += r.recurring_runs or []
                token = r.next_page_token or ""
                if not token:
                    break
            out["schedules"] = [_schedule_row(client, rr) for rr in rows]
            return out
        done = []
        for rid in ids:
            if action == "pause":
                client.disable_recurring_run(rid)
            elif action == "resume":
                client.enable_recurring_run(rid)
            else:
                client.delete_recurring_run(rid)
            done.append(rid)
        out["ids"] = done
        if action != "delete":
            out["schedules"] = [_schedule_row(client, client.get_recurring_run(rid))
                                for rid in done]
    return out


def _experiment_id(client, name: str) -> Optional[str]:
    r = client.list_experiments(page_size=2, filter=json.dumps({"predicates": [{
        "operation": "EQUALS", "key": "display_name", "stringValue": name}]}))
    exps = r.experiments or []
    return exps[0].experiment_id if exps else None


def _schedule_row(client, rr) -> Dict[str, Any]:
    ref = rr.pipeline_version_reference
    trigger = rr.trigger
    cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else None
    every = (trigger.periodic_schedule.interval_second
             if trigger and trigger.periodic_schedule else None)
    version = None
    if ref is not None and ref.pipeline_version_id:
        try:
            version = client.get_pipeline_version(ref.pipeline_id,
                                                  ref.pipeline_version_id).display_name
        except Exception:  # noqa: BLE001 - a deleted version: show its id
            version = ref.pipeline_version_id
    return {"id": rr.recurring_run_id, "name": rr.display_name,
            "status": rr.status, "mode": rr.mode,
            "schedule": cron or (f"every {every} s" if every else None),
            "version": version if version else (
                "the pipeline's newest" if ref is not None and ref.pipeline_id
                else "inline spec (frozen at creation)"),
            "parameters": dict((rr.runtime_config.parameters or {})
                               if rr.runtime_config else {})}
