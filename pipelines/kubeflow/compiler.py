"""Kubeflow Pipelines: compile create_pipeline(config) to a KFP v2 spec and its KFP package.

    compile_pipeline(config, "deblur-icdpm.json")
        -> deblur-icdpm.json  TFX KubeflowV2DagRunner's PipelineJob (pipelineSpec + runtimeConfig)
        -> deblur-icdpm.yaml  the KFP package: the same pipelineSpec with defaultPipelineRoot, plus
                              a Kubernetes PlatformSpec document with the node selectors

(pipelines/kubeflow/client.py sends it to KFP; cron.py checks a schedule's cron.)

The pipeline is the same pure create_pipeline() the local runner uses, built from a copy of the
config with runner.orchestrator = "kubeflow" (component placement, pipelines/kubeflow/placement.py), the
Dataflow Beam arguments of the kubeflow section, and the schema path as seen inside the image.
Compiling adds the run parameters of pipelines/run_params.py (root input parameters with the
config's values as defaults: runtimeConfig.parameterValues of the PipelineJob, defaultValue in
the root inputDefinitions of both documents) and makes every task's command
pipelines/kubeflow/entrypoint.py, TFX's entrypoint with what the open-source KFP v2 launcher needs.
With TFX's exit handler the pipeline's tasks are in the sub-DAG tfx-dag (dag_tasks(), which every
post-processing step edits) and the exit task RunEnd runs after it whatever its outcome
(add_exit_task); cache=off gives every cached task a new cache key (add_cache_salt).

KFP facts this relies on (kfp SDK 2.5.0 sources here; KFP backend sources at tag 2.0.5):
- the backend accepts only pipeline specs of schemaVersion 2.1.0, so the runner compiles with
  use_pipeline_spec_2_1=True (TFX's default, 2.0.0, is what Vertex AI takes);
- kfp.Client reads a package (.yaml/.zip/.tar.gz) holding a PipelineSpec, optionally followed by
  a PlatformSpec document; TFX's PipelineJob JSON wraps the spec, hence the .yaml package;
- a ResourceSpec accelerator becomes `resources.limits[<type>] = <count>` on the pod; node
  selectors exist only in the Kubernetes PlatformSpec (tolerations only from backend 2.1).
"""
from __future__ import annotations

import copy
import json
import os
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from pipelines import run_params
from pipelines.config import REPO_ROOT, ConfigError, PipelineConfig
from pipelines.kubeflow import placement
from pipelines.kubeflow.config import kubeflow_section

DEFAULT_OUT = "deblur-icdpm.json"
# every task's container command (the image's python; infra/Dockerfile installs the package)
ENTRYPOINT = ["python", "-m", "pipelines.kubeflow.entrypoint"]

# ---- config ---------------------------------------------------------------------------------
def check_config(config: PipelineConfig) -> None:
    """Everything a Kubeflow run needs that has no usable default, named in one ConfigError."""
    problems = list(kubeflow_section(config).missing())
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
    kf = kubeflow_section(cfg)
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

    kf = kubeflow_section(cfg)
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
    from pipelines.kubeflow.run_end import RunEnd

    # the exit task: every other task goes into the sub-DAG tfx-dag (add_exit_task)
    runner.set_exit_handler(RunEnd())
    job = runner.run(pipeline, parameter_values=defaults, write_out=True)
    add_parameter_defaults(job)
    add_input_fingerprint_task(job, kf.image_for(INGEST_TASK))
    add_run_check_task(job, kf.image, cfg.to_dict())
    never_cached(job, NEVER_CACHED)
    add_cache_salt(job)
    add_trainer_retry_policy(job, kf.trainer_max_retries)
    add_exit_task(job)
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


# ---- the DAG ----------------------------------------------------------------------------------
# TFX's exit handler (KubeflowV2DagRunner.set_exit_handler) puts every task of the pipeline in
# a sub-DAG of this name, a component of the spec, and the exit task at the root after it
TFX_DAG = "tfx-dag"
EXIT_TASK = "RunEnd"


def dag_tasks(spec: Dict[str, Any]) -> Dict[str, Any]:
    """{name: PipelineTaskSpec} of the pipeline's tasks: the sub-DAG tfx-dag's with an exit
    handler, else the root DAG's. Every post-processing step edits these."""
    sub = spec["components"].get(TFX_DAG, {}).get("dag")
    return sub["tasks"] if sub is not None else spec["root"]["dag"]["tasks"]


def exit_tasks(spec: Dict[str, Any]) -> Dict[str, Any]:
    """{name: PipelineTaskSpec} of the root tasks that run after tfx-dag whatever its outcome."""
    if TFX_DAG not in spec["components"]:
        return {}
    return {k: v for k, v in spec["root"]["dag"]["tasks"].items() if k != TFX_DAG}


def all_tasks(spec: Dict[str, Any]) -> Dict[str, Any]:
    """Every task that runs a container: the DAG's, then the exit tasks."""
    return {**dag_tasks(spec), **exit_tasks(spec)}


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
    tasks = dag_tasks(spec)
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
    tasks = dag_tasks(spec)
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
        task = all_tasks(job["pipelineSpec"]).get(name)
        if task is not None:
            task["cachingOptions"] = {}


def cache_dependent(tasks: Dict[str, Any]) -> List[str]:
    """The tasks whose cache key changes with the `cache` run parameter: it is one of their
    input parameters, or an input comes from a task that is (an output parameter, or an
    output artifact, whose ML Metadata id is in the key). A task after another only through
    dependentTasks is not: KFP's cache key holds the inputs only (backend/src/v2/cacheutils
    GenerateCacheKey: input parameter values, input artifact names, output specs, command,
    image)."""
    out: List[str] = []
    for name in _topological(tasks):
        inputs = tasks[name].get("inputs", {})
        producers = [p["taskOutputParameter"]["producerTask"]
                     for p in inputs.get("parameters", {}).values() if "taskOutputParameter" in p]
        producers += [a["taskOutputArtifact"]["producerTask"]
                      for a in inputs.get("artifacts", {}).values() if "taskOutputArtifact" in a]
        if any(p.get("componentInputParameter") == run_params.CACHE
               for p in inputs.get("parameters", {}).values()) or set(producers) & set(out):
            out.append(name)
    return out


def add_cache_salt(job: Dict[str, Any]) -> None:
    """cache=off gives every cached task a new cache key, not only DeblurIngest and what reads
    its Examples: DeblurInputFingerprint also outputs `cache_salt` ("" when cache=on, so keys
    stay the same from run to run; its fresh nonce when off), and each cached task that does
    not already depend on `cache` through its inputs (cache_dependent: ImportSchemaGen, which
    has no upstream) takes it as an extra input parameter, whose value is part of KFP's cache
    key. pipelines/kubeflow/entrypoint.py (rule 7) removes it before TFX sees the exec
    properties. The `cache` parameter typed in the KFP UI's form and `deblur submit
    --no-cache` are the same run parameter."""
    spec = job["pipelineSpec"]
    tasks = dag_tasks(spec)
    comp = spec["components"][FINGERPRINT_TASK]
    comp["outputDefinitions"]["parameters"][run_params.CACHE_SALT] = {"parameterType": "STRING"}
    executor = spec["deploymentSpec"]["executors"][comp["executorLabel"]]["container"]
    executor["args"] += ["--cache-salt-file",
                         f"{{{{$.outputs.parameters['{run_params.CACHE_SALT}'].output_file}}}}"]
    salted = set(cache_dependent(tasks))
    for name in _topological(tasks):
        task = tasks[name]
        if name in salted or not task.get("cachingOptions", {}).get("enableCache"):
            continue
        task.setdefault("inputs", {}).setdefault("parameters", {})[run_params.CACHE_SALT] = {
            "taskOutputParameter": {"producerTask": FINGERPRINT_TASK,
                                    "outputParameterKey": run_params.CACHE_SALT}}
        task["dependentTasks"] = sorted(set(task.get("dependentTasks", [])) | {FINGERPRINT_TASK})
        spec["components"][task["componentRef"]["name"]].setdefault(
            "inputDefinitions", {}).setdefault("parameters", {})[run_params.CACHE_SALT] = {
            "parameterType": "STRING"}
        salted = set(cache_dependent(tasks))


def add_exit_task(job: Dict[str, Any]) -> None:
    """The exit task RunEnd (pipelines/kubeflow/run_end.py) that TFX's exit handler put at the
    root, after the sub-DAG tfx-dag with triggerPolicy ALL_UPSTREAM_TASKS_COMPLETED, gets the
    DAG's task graph as its `tasks` constant; and the run parameters reach the tasks inside
    tfx-dag. TFX compiles their componentInputParameter as in a flat pipeline, but gives
    tfx-dag no inputs: KFP's driver resolves a componentInputParameter from the parent DAG's
    own inputs ("parent DAG does not have input parameter"), so the tfx-dag component gets the
    root's parameters as its inputDefinitions and its task passes each root parameter (what
    the KFP SDK compiles for a dsl.ExitHandler). Never cached (TFX sets no cachingOptions)."""
    from pipelines.kubeflow import run_end

    spec = job["pipelineSpec"]
    if TFX_DAG not in spec["components"]:
        raise ValueError(f"the compiled spec has no {TFX_DAG} sub-DAG: the exit handler was not "
                         f"compiled the way TFX 1.16 does it")
    tasks = dag_tasks(spec)
    end = spec["root"]["dag"]["tasks"][EXIT_TASK]
    graph = {n: sorted(tasks[n].get("dependentTasks", [])) for n in _topological(tasks)}
    end["inputs"]["parameters"][run_end.TASKS] = {"runtimeValue": {
        "constant": json.dumps(graph)}}
    end["cachingOptions"] = {}
    root_params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    spec["components"][TFX_DAG]["inputDefinitions"] = {"parameters": {
        n: {"parameterType": d.get("parameterType", "STRING")} for n, d in root_params.items()}}
    spec["root"]["dag"]["tasks"][TFX_DAG]["inputs"] = {"parameters": {
        n: {"componentInputParameter": n} for n in root_params}}


def with_final_status(job: Dict[str, Any]) -> Dict[str, Any]:
    """A copy of the job whose exit task also takes KFP's PipelineTaskFinalStatus of tfx-dag
    (TFX's FinalStatusStr compiles to the same input). Only for a KFP backend >= 2.14.0: before
    it, the backend's Argo compiler refuses the whole pipeline ("task final status not
    supported yet", backend/src/v2/compiler/argocompiler/dag.go; kubeflow/pipelines#11953),
    so `deblur compile` leaves it out and RunEnd infers the outcome from the run folder."""
    from pipelines.kubeflow import run_end

    job = copy.deepcopy(job)
    spec = job["pipelineSpec"]
    end = spec["root"]["dag"]["tasks"][EXIT_TASK]
    end["inputs"]["parameters"][run_end.FINAL_STATUS] = {
        "taskFinalStatus": {"producerTask": TFX_DAG}}
    spec["components"][end["componentRef"]["name"]]["inputDefinitions"]["parameters"][
        run_end.FINAL_STATUS] = {"parameterType": "TASK_FINAL_STATUS"}
    return job


def add_trainer_retry_policy(job: Dict[str, Any], max_retries: int) -> None:
    """PipelineTaskSpec.retryPolicy on the Trainer task (TFX's compiler sets none): a retried
    pod resumes from the checkpoints in its ModelRun folder. Vertex AI Pipelines honours it;
    on open-source KFP it needs a backend whose Argo compiler reads retryPolicy."""
    if max_retries:
        dag_tasks(job["pipelineSpec"])["Trainer"]["retryPolicy"] = {
            "maxRetryCount": max_retries, "backoffDuration": "60s", "backoffFactor": 2.0,
            "backoffMaxDuration": "3600s"}


def platform_spec(job: Dict[str, Any], config: PipelineConfig) -> Optional[Dict[str, Any]]:
    """The Kubernetes PlatformSpec (kfp-kubernetes format) with each placed task's node selector,
    keyed by its executor label; None when no placed component has one."""
    spec = job["pipelineSpec"]
    tasks = all_tasks(spec)
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
    spec = copy.deepcopy(job["pipelineSpec"])
    # Runs started from the KFP UI (no runtime pipeline root) write here too, not to MinIO.
    spec["defaultPipelineRoot"] = kubeflow_section(config).pipeline_root
    docs = [spec]
    plat = platform_spec(job, config)
    if plat:
        docs.append(plat)
    return write_docs(docs, path)


def write_docs(docs: List[Dict[str, Any]], path: str) -> str:
    """The package's documents (pipeline spec, platform spec) as `deblur compile` writes them."""
    import yaml

    spec = docs[0]
    with open(path, "w") as f:
        f.write(f"# KFP package of {spec['pipelineInfo']['name']}: the pipeline spec compiled by "
                f"TFX {spec.get('sdkVersion', '')}\n# and a Kubernetes platform spec with the "
                f"node selectors (pipelines/kubeflow/compiler.py)\n")
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
    tasks = all_tasks(spec)
    plat = (platform_spec(job, config) if config is not None else None) or {}
    selectors = plat.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get(
        "executors", {})
    out = []
    exits = exit_tasks(spec)
    for name in _topological(dag_tasks(spec)) + sorted(exits):
        task = tasks[name]
        label = spec["components"][task["componentRef"]["name"]]["executorLabel"]
        executor = spec["deploymentSpec"]["executors"][label]
        container = executor.get("container", {})
        args = container.get("args", [])
        runner = next((a.split("=", 1)[1] for a in args if a.startswith("--runner=")), None)
        entry = {"name": name, "kind": next(iter(executor), None),
                 "depends_on": (["every task, whatever its outcome"] if name in exits
                                else sorted(task.get("dependentTasks", []))),
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



def pin_compiled(config: PipelineConfig, spec_file: str) -> Dict[str, str]:
    """`deblur compile`'s default: the PipelineJob at spec_file and its KFP package beside it
    rewritten with every image by digest (images.pin_images; an image the registry cannot
    resolve is one ImageError line and nothing is rewritten). Returns {tag: digest}."""
    from pipelines.kubeflow import images

    job = load_job(spec_file)
    table = images.pin_images(job["pipelineSpec"])
    if table:
        with open(spec_file, "w") as f:
            json.dump(job, f, indent=2, sort_keys=True)
        write_package(job, config, package_path(spec_file))
    return table


def _package_for(spec_file: str, config: PipelineConfig,
                 pin: bool = True) -> Tuple[str, Dict[str, Any], bool]:
    """(package path, PipelineJob dict or {}, temporary?) for a .json spec or a .yaml package.
    `pin`: what upload and submit send, every image named by digest (pipelines/kubeflow/
    images.py: a version then runs the builds it was uploaded with, whatever the tags do
    later); an image the registry cannot resolve is one ImageError line, before any request
    to KFP. A .yaml package already pinned is sent as it is."""
    from pipelines.kubeflow import images

    if spec_file.endswith((".yaml", ".yml")):
        if not pin or not images.tag_images(_package_spec(spec_file)):
            return spec_file, {}, False
        import yaml

        with open(spec_file) as f:
            docs = [d for d in yaml.safe_load_all(f) if d is not None]
        images.pin_images(docs[0])
        fd, tmp = tempfile.mkstemp(suffix=".yaml", prefix="deblur-kfp-")
        os.close(fd)
        write_docs(docs, tmp)  # byte for byte what the .json it was compiled with gives
        return tmp, {}, True
    job = load_job(spec_file)
    if pin:
        images.pin_images(job["pipelineSpec"])
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



def _load_spec(spec_file: str) -> Dict[str, Any]:
    if not os.path.exists(spec_file):
        raise ConfigError(f"spec file {spec_file} does not exist")
    if spec_file.endswith((".yaml", ".yml")):
        return _package_spec(spec_file)
    return load_job(spec_file)["pipelineSpec"]


def compiled_defaults(spec: Dict[str, Any]) -> Dict[str, Any]:
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    return {k: v["defaultValue"] for k, v in params.items() if "defaultValue" in v}
