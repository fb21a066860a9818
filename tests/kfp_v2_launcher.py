"""Runs a compiled PipelineJob's tasks on this machine the way KFP v2's driver and launcher do.

This is a model of the open-source KFP v2 backend's per-task contract, written from its
sources (kubeflow/pipelines backend/src/v2, tag 2.0.5, checked against master):

  root DAG driver   driver/root_dag.go: the run's parameters are runtimeConfig.parameterValues
                    of the submitted run (`deblur submit` sends the compiled defaults with the
                    --param overrides); the run's root is <pipeline root>/<pipeline>/<run id>
                    (metadata/client.go GetPipeline).
  container driver  driver/driver.go resolveInputs: a task parameter is its runtimeValue
                    constant, the root parameter it names (componentInputParameter) or an
                    upstream output parameter; then the types are checked against the
                    component's inputDefinitions (a STRING gets any value as JSON text, a number
                    type takes only numbers). An input artifact is the producer's output as
                    recorded in ML Metadata: name = its MLMD id, uri, metadata = its
                    properties and custom properties, and type {instanceSchema: ""}
                    (metadata/client.go GetOutputArtifactsByExecutionId leaves the schema
                    empty). provisionOutputs: each output artifact gets
                    uri <run root>/<task>/<output key>, the type and metadata of the
                    component's outputDefinitions; outputs.outputFile is where the executor
                    writes its ExecutorOutput.
  launcher          component/launcher_v2.go: default parameter values of the component are
                    added; {{$}} becomes the ExecutorInput as JSON and
                    {{$.inputs.parameters['x']}}, {{$.inputs.artifacts['x'].uri|path}},
                    {{$.outputs.artifacts['x'].uri|path}}, {{$.outputs.parameters['x']
                    .output_file}} their values, in command and args; parent folders of the
                    outputs are made; the command runs; a non-zero exit fails the task; the
                    ExecutorOutput file is read (absent = empty), its first artifact per output
                    key is merged into the provisioned one (uri if set, metadata keys), output
                    parameters are collected, and each output artifact is recorded in ML
                    Metadata: type = the schema title, custom properties = metadata
                    (string -> string, number -> double, bool -> int, list -> struct
                    {"list": ...}, struct -> struct {"struct": ...}; metadata/converter.go),
                    plus display_name = the output key unless the executor set one.

What it does not model (tests/test_kfp_contract.py says what that leaves untested): images
(the command runs with this .venv's python in place of the image's `python`), pods and
Kubernetes (resources, node selectors, the PlatformSpec, retries), Argo, the cache server
(fingerprints, cached tasks), the ML Metadata gRPC server (records are kept in memory, with
the same conversions), object storage (the launcher copies gs:// inputs to /gcs/... and
uploads outputs from there; here the pipeline root is a local folder, a scheme KFP's launcher
refuses, and executors read and write it directly), importer and resolver executors (refused),
conditions and loops (the pipeline has none).

Sub-DAGs and exit tasks (TFX's exit handler: the pipeline's tasks in the sub-DAG `tfx-dag`, the
exit task at the root): a sub-DAG's task resolves its inputs from the root like a container
task, and the tasks inside take a componentInputParameter from the sub-DAG's inputs (driver.go:
the parent DAG's execution; "parent DAG does not have input parameter" otherwise). A task runs
when every task it depends on succeeded (argocompiler/dag.go depends: `X.Succeeded`); when one
fails, the tasks after it do not start and the DAG fails. A task with triggerPolicy
ALL_UPSTREAM_TASKS_COMPLETED runs once its dependencies are over whatever their outcome
(depends_exit_handler: Succeeded, Skipped, Failed or Errored). Its `taskFinalStatus` input (KFP
backend >= 2.14, resolve.go; refused by the Argo compiler before) is the struct of
PipelineTaskFinalStatus of its first dependency: state = that execution's ML Metadata state
(COMPLETE, FAILED), an empty error (the backend's TODO), pipelineJobResourceName = the run,
pipelineTaskName = the producer. A task already in `outputs` before execute() is one KFP served
from its cache: it does not run, and its outputs are an earlier run's.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from typing import Any, Dict, List, Optional


class TaskFailed(RuntimeError):
    pass


def topological(tasks: Dict[str, Any]) -> List[str]:
    """Task names, each after its dependentTasks (ties by name, as a stable order)."""
    done: List[str] = []
    left = dict(tasks)
    while left:
        ready = sorted(n for n, t in left.items() if all(d in done for d in t.get("dependentTasks", [])))
        if not ready:
            raise ValueError(f"dependency cycle among {sorted(left)}")
        done += ready
        for n in ready:
            left.pop(n)
    return done


def _text(value: Any) -> str:
    """metadata.PbValueToText: a string as is, anything else as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _check_type(name: str, value: Any, ptype: str) -> Any:
    """driver.go handleParamTypeValidationAndConversion."""
    if ptype == "STRING":
        return _text(value)
    if ptype == "TASK_FINAL_STATUS":
        if not isinstance(value, dict):
            raise TaskFailed(f"input parameter {name!r}: expect a PipelineTaskFinalStatus struct")
        return value
    if value is None:
        raise TaskFailed(f"got null for input parameter {name!r}")
    kind = ("bool" if isinstance(value, bool) else "number" if isinstance(value, (int, float))
            else "string" if isinstance(value, str) else "list" if isinstance(value, list)
            else "struct")
    ok = {"number": ("NUMBER_DOUBLE", "NUMBER_INTEGER"), "bool": ("BOOLEAN",),
          "string": ("STRING",), "list": ("LIST",), "struct": ("STRUCT",)}[kind]
    if ptype not in ok:
        raise TaskFailed(f"input parameter {name!r} type mismatch: expect {ptype}, got {kind}")
    return value


def _to_mlmd(value: Any) -> Dict[str, Any]:
    """converter.go StructValueToMLMDValue, as {kind: value}."""
    if isinstance(value, str):
        return {"string": value}
    if isinstance(value, bool):
        return {"int": int(value)}
    if isinstance(value, (int, float)):
        return {"double": float(value)}
    if isinstance(value, list):
        return {"struct": {"list": value}}
    if isinstance(value, dict):
        return {"struct": {"struct": value}}
    raise TaskFailed(f"unknown/unsupported value type {type(value).__name__}")


def _from_mlmd(value: Dict[str, Any]) -> Any:
    """converter.go toRuntimeArtifact: int and double become numbers, a struct stays as is."""
    (kind, v), = value.items()
    return float(v) if kind in ("int", "double") else v


class Run:
    """One run of a compiled PipelineJob: Run(job, root, ...).execute() -> {task: record}."""

    def __init__(self, job: Dict[str, Any], pipeline_root: str, run_id: str = "run-1",
                 arguments: Optional[Dict[str, Any]] = None, python: str = sys.executable,
                 env: Optional[Dict[str, str]] = None, timeout: float = 3600,
                 cwd: Optional[str] = None, send_defaults: bool = True):
        self.spec = job["pipelineSpec"]
        self.pipeline_name = self.spec["pipelineInfo"]["name"]
        self.run_root = f"{pipeline_root.rstrip('/')}/{self.pipeline_name}/{run_id}"
        self.python = python
        self.env = env
        self.timeout = timeout  # a guard against a hung task, not a performance bound
        # the image's WORKDIR (/opt/deblur, the repository): not the task's folder, whose
        # output folders (e.g. `metrics`) would shadow packages of the same name
        self.cwd = cwd
        if send_defaults:
            # the run carries every value: the compiled defaults with the arguments over them
            params = dict((job.get("runtimeConfig") or {}).get("parameterValues") or {})
            params.update(arguments or {})
        else:
            # the run carries only `arguments` (a run of an uploaded pipeline version, or a
            # recurring run, started with overrides): the root DAG's inputs missing from the
            # runtime config take the defaultValue of the spec's root inputDefinitions (what
            # the KFP UI's form pre-fills, and what the driver falls back to for optional
            # inputs from backend 2.5.0, "Handle optional pipeline inputs in the driver")
            params = dict(arguments or {})
            for key, d in self.spec["root"].get("inputDefinitions", {}).get(
                    "parameters", {}).items():
                if key not in params:
                    if "defaultValue" not in d:
                        raise TaskFailed(f"root input {key!r} has no value and no default")
                    params[key] = d["defaultValue"]
        self.root_params = params
        self.mlmd: Dict[int, Dict[str, Any]] = {}  # artifact id -> record
        self.outputs: Dict[str, Dict[str, Any]] = {}  # task -> {"artifacts": {key: id}, ...}
        self.executor_inputs: Dict[str, Dict[str, Any]] = {}
        self.process: Optional[subprocess.Popen] = None  # the task's command while it runs
        self.run_id = run_id
        # every task by name, with the DAG it is in (None: the root) and each DAG's inputs
        self.tasks: Dict[str, Dict[str, Any]] = {}
        self.parent: Dict[str, Optional[str]] = {}
        for name, task in self.spec["root"]["dag"]["tasks"].items():
            self.tasks[name], self.parent[name] = task, None
            for inner, t in self._component(task).get("dag", {}).get("tasks", {}).items():
                self.tasks[inner], self.parent[inner] = t, name
        self.dag_inputs: Dict[str, Dict[str, Any]] = {}
        self.states: Dict[str, str] = {}  # task or DAG -> COMPLETE | FAILED (ML Metadata)
        self.failures: Dict[str, str] = {}  # failed task -> TaskFailed text

    # ---- driver ------------------------------------------------------------------------
    def _component(self, task: Dict[str, Any]) -> Dict[str, Any]:
        return self.spec["components"][task["componentRef"]["name"]]

    def final_status(self, producer: str) -> Dict[str, Any]:
        """resolve.go TaskFinalStatus: the producer's PipelineTaskFinalStatus as a struct."""
        return {"state": self.states.get(producer, "RUNNING"), "error": {},
                "pipelineJobResourceName": self.run_id, "pipelineTaskName": producer}

    def resolve_inputs(self, name: str) -> Dict[str, Any]:
        task = self.tasks[name]
        defs = self._component(task).get("inputDefinitions", {})
        dag = self.parent[name]
        if dag is not None and dag not in self.dag_inputs:  # a task run on its own
            self.dag_inputs[dag] = self.resolve_inputs(dag)["parameterValues"]
        scope = self.root_params if dag is None else self.dag_inputs[dag]
        values: Dict[str, Any] = {}
        for key, p in task.get("inputs", {}).get("parameters", {}).items():
            if "runtimeValue" in p:
                values[key] = p["runtimeValue"]["constant"]
            elif "componentInputParameter" in p:
                root = p["componentInputParameter"]
                if root not in scope:
                    raise TaskFailed(f"{name}: parent DAG does not have input parameter {root}")
                values[key] = scope[root]
            elif "taskFinalStatus" in p:
                if not task.get("dependentTasks"):
                    raise TaskFailed(f"task {name} has no dependent tasks")
                values[key] = self.final_status(task["dependentTasks"][0])
            elif "taskOutputParameter" in p:
                src = p["taskOutputParameter"]
                values[key] = self.outputs[src["producerTask"]]["parameters"][
                    src["outputParameterKey"]]
            else:
                raise TaskFailed(f"{name}: parameter spec {p} not implemented")
        for key, d in defs.get("parameters", {}).items():
            if key in values:
                values[key] = _check_type(key, values[key], d.get("parameterType", "STRING"))
            elif not d.get("isOptional") and "defaultValue" not in d:
                raise TaskFailed(f"neither value nor default value provided for non-optional "
                                 f"parameter {key!r}")
        artifacts = {}
        for key, a in task.get("inputs", {}).get("artifacts", {}).items():
            if "taskOutputArtifact" not in a:
                raise TaskFailed(f"{name}: artifact spec {a} not implemented")
            src = a["taskOutputArtifact"]
            art_id = self.outputs[src["producerTask"]]["artifacts"][src["outputArtifactKey"]]
            rec = self.mlmd[art_id]
            artifacts[key] = {"artifacts": [{
                "name": str(art_id), "uri": rec["uri"], "type": {"instanceSchema": ""},
                "metadata": {k: _from_mlmd(v) for k, v in rec["custom_properties"].items()}}]}
        return {"parameterValues": values, "artifacts": artifacts}

    def provision_outputs(self, name: str) -> Dict[str, Any]:
        task = self.tasks[name]
        out_defs = self._component(task).get("outputDefinitions", {})
        task_root = f"{self.run_root}/{name}"
        return {
            "artifacts": {key: {"artifacts": [{
                "uri": f"{task_root}/{key}", "type": d["artifactType"],
                **({"metadata": d["metadata"]} if d.get("metadata") else {})}]}
                for key, d in out_defs.get("artifacts", {}).items()},
            "parameters": {key: {"outputFile": f"{task_root}/outputs/{key}"}
                           for key in out_defs.get("parameters", {})},
            # KFP 2.0.x: /tmp/kfp_outputs/output_metadata.json in the pod; master: under the
            # task root. Here one file per task, beside its outputs.
            "outputFile": f"{task_root}/executor_output.json",
        }

    # ---- launcher ----------------------------------------------------------------------
    @staticmethod
    def placeholders(executor_input: Dict[str, Any]) -> Dict[str, str]:
        out = {"{{$}}": json.dumps(executor_input)}
        for key, lst in executor_input["inputs"].get("artifacts", {}).items():
            if lst["artifacts"]:
                uri = lst["artifacts"][0]["uri"]
                out[f"{{{{$.inputs.artifacts['{key}'].uri}}}}"] = uri
                out[f"{{{{$.inputs.artifacts['{key}'].path}}}}"] = uri  # local root: the path
        for key, lst in executor_input["outputs"].get("artifacts", {}).items():
            uri = lst["artifacts"][0]["uri"]
            out[f"{{{{$.outputs.artifacts['{key}'].uri}}}}"] = uri
            out[f"{{{{$.outputs.artifacts['{key}'].path}}}}"] = uri
        for key, v in executor_input["inputs"].get("parameterValues", {}).items():
            out[f"{{{{$.inputs.parameters['{key}']}}}}"] = (
                v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict))
                else str(v).lower() if isinstance(v, bool) else f"{v:g}" if isinstance(v, float)
                else str(v))
        for key, p in executor_input["outputs"].get("parameters", {}).items():
            out[f"{{{{$.outputs.parameters['{key}'].output_file}}}}"] = p["outputFile"]
        return out

    def execute_task(self, name: str) -> Dict[str, Any]:
        task = self.tasks[name]
        component = self._component(task)
        executor = self.spec["deploymentSpec"]["executors"][component["executorLabel"]]
        if "container" not in executor:
            raise TaskFailed(f"{name}: {next(iter(executor))} executor: not a container (the "
                             f"open-source backend refuses it at compile time)")
        container = executor["container"]
        executor_input = {"inputs": self.resolve_inputs(name),
                          "outputs": self.provision_outputs(name)}
        # launcher: the component's parameter defaults, for placeholders and {{$}}
        with_defaults = copy.deepcopy(executor_input)
        for key, d in component.get("inputDefinitions", {}).get("parameters", {}).items():
            if "defaultValue" in d:
                with_defaults["inputs"]["parameterValues"].setdefault(key, d["defaultValue"])
        self._validate(with_defaults)
        self.executor_inputs[name] = with_defaults
        table = self.placeholders(with_defaults)

        def fill(text: str) -> str:
            for k, v in table.items():
                text = text.replace(k, v)
            return text

        cmd = [fill(c) for c in container.get("command", [])] + [
            fill(a) for a in container.get("args", [])]
        if cmd and cmd[0] == "python":
            cmd[0] = self.python  # the image's python
        for lst in with_defaults["outputs"]["artifacts"].values():
            os.makedirs(os.path.dirname(lst["artifacts"][0]["uri"]), exist_ok=True)
        for p in with_defaults["outputs"]["parameters"].values():
            os.makedirs(os.path.dirname(p["outputFile"]), exist_ok=True)
        task_root = f"{self.run_root}/{name}"
        os.makedirs(task_root, exist_ok=True)
        log_path = f"{task_root}/launcher.log"
        with open(log_path, "w") as log:
            # self.process: the running task's command, for a test that signals it (a pod's
            # SIGTERM)
            self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                            env=self.env, cwd=self.cwd)
            try:
                code = self.process.wait(timeout=self.timeout)
            finally:
                if self.process.poll() is None:
                    self.process.kill()
                    self.process.wait()
        if code != 0:
            with open(log_path) as f:
                tail = "".join(f.readlines()[-40:])
            raise TaskFailed(f"{name}: the command exited {code}; last lines of {log_path}:\n"
                             f"{tail}")
        return self._publish(name, with_defaults)

    @staticmethod
    def _validate(executor_input: Dict[str, Any]) -> None:
        """The JSON is a valid ExecutorInput (the launcher marshals the proto)."""
        from google.protobuf import json_format
        from kfp.pipeline_spec import pipeline_spec_pb2 as pb

        json_format.ParseDict(executor_input, pb.ExecutorInput())

    def _publish(self, name: str, executor_input: Dict[str, Any]) -> Dict[str, Any]:
        path = executor_input["outputs"]["outputFile"]
        executor_output: Dict[str, Any] = {}
        if os.path.exists(path):
            with open(path) as f:
                executor_output = json.load(f)
            from google.protobuf import json_format
            from kfp.pipeline_spec import pipeline_spec_pb2 as pb

            json_format.ParseDict(executor_output, pb.ExecutorOutput())  # protojson.Unmarshal
        params = dict(executor_output.get("parameterValues", {}))
        for key, p in executor_input["outputs"]["parameters"].items():
            if key not in params:
                with open(p["outputFile"]) as f:
                    params[key] = f.read()
        recorded = {}
        for key, lst in executor_input["outputs"]["artifacts"].items():
            art = copy.deepcopy(lst["artifacts"][0])
            produced = executor_output.get("artifacts", {}).get(key, {}).get("artifacts", [])
            if produced:  # mergeRuntimeArtifacts
                if produced[0].get("uri"):
                    art["uri"] = produced[0]["uri"]
                art.setdefault("metadata", {}).update(produced[0].get("metadata", {}))
            schema = art["type"].get("schemaTitle") or (
                __import__("yaml").safe_load(art["type"].get("instanceSchema") or "") or {}
            ).get("title")
            props = {k: _to_mlmd(v) for k, v in (art.get("metadata") or {}).items()}
            props.setdefault("display_name", {"string": key})
            art_id = len(self.mlmd) + 1
            self.mlmd[art_id] = {"id": art_id, "type": schema, "uri": art["uri"],
                                 "custom_properties": props, "task": name, "key": key}
            recorded[key] = art_id
        self.outputs[name] = {"artifacts": recorded, "parameters": params,
                              "executor_output": executor_output}
        return self.outputs[name]

    def execute(self, stop_after: Optional[str] = None) -> Dict[str, Dict[str, Any]]:
        """Every task in dependency order, sub-DAGs included, then the exit tasks; a task that
        failed is raised once the exit tasks ran. With stop_after, that task and the tasks it
        depends on (directly or not) only, the part of the run that leads to it, no exit task,
        and a failure is raised at once."""
        if stop_after is not None:
            dag = self.parent[stop_after]
            tasks = self._dag_tasks(dag)
            if dag is not None:
                self.dag_inputs[dag] = self.resolve_inputs(dag)["parameterValues"]
            needed = {stop_after}
            order = topological(tasks)
            for name in reversed(order):  # a task's dependencies come before it in the order
                if name in needed:
                    needed.update(tasks[name].get("dependentTasks", []))
            for name in order:
                if name in needed and name not in self.outputs:
                    self.execute_task(name)
                    self.states[name] = "COMPLETE"
            return self.outputs
        self._execute_dag(None)
        if self.failures:
            first = next(iter(self.failures.values()))
            raise TaskFailed(first)
        return self.outputs

    def _dag_tasks(self, dag: Optional[str]) -> Dict[str, Any]:
        return {n: self.tasks[n] for n, p in self.parent.items() if p == dag}

    def _execute_dag(self, dag: Optional[str]) -> str:
        tasks = self._dag_tasks(dag)
        for name in topological(tasks):
            task = tasks[name]
            deps = task.get("dependentTasks", [])
            exit_task = task.get("triggerPolicy", {}).get(
                "strategy") == "ALL_UPSTREAM_TASKS_COMPLETED"
            if not exit_task and any(self.states.get(d) != "COMPLETE" for d in deps):
                continue  # not started: an upstream task failed
            if name in self.outputs:  # served from the cache
                self.states[name] = "COMPLETE"
                continue
            if "dag" in self._component(task):
                self.dag_inputs[name] = self.resolve_inputs(name)["parameterValues"]
                self.states[name] = self._execute_dag(name)
                continue
            try:
                self.execute_task(name)
                self.states[name] = "COMPLETE"
            except TaskFailed as e:
                self.states[name] = "FAILED"
                self.failures[name] = str(e)
        return "FAILED" if any(self.states.get(n) == "FAILED" for n in tasks) else "COMPLETE"

    # ---- what ML Metadata would hold -------------------------------------------------------
    def artifact(self, task: str, key: str) -> Dict[str, Any]:
        return self.mlmd[self.outputs[task]["artifacts"][key]]

    def scalars(self, task: str, key: str) -> Dict[str, Any]:
        """What the run page's Scalar Metrics table lists: custom properties but display_name."""
        props = self.artifact(task, key)["custom_properties"]
        return {k: _from_mlmd(v) for k, v in props.items() if k != "display_name"}
