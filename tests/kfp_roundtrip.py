"""The KFP package that `deblur compile` writes, read back by another kfp SDK (issue 22: "kfp
2.5 / 2.17 round trips").

    make kfp-roundtrip                 # KFP=2.17: builds .venv-kfp217 (requirements/kfp217.lock)
    make kfp-roundtrip KFP=2.5         # the project's .venv (kfp 2.5.0, TFX 1.16's pin)
    .venv/bin/python -m tests.kfp_roundtrip --kfp-python .venv-kfp217/bin/python \\
        [--spec deblur-icdpm.json] [--out DIR] [--json]

Two Pythons, because kfp 2.17 needs protobuf >= 6 and TFX 1.16 pins 3.20.3. This process (the
project's .venv) compiles infra/kubeflow.example.yaml with the project's compiler (`deblur
compile`, as a subprocess), or takes `--spec`, and drives `deblur pipeline upload`, `submit`
and `schedule` (runner.upload / submit / schedules, what the CLI calls). `--kfp-python`, a
Python with the kfp under test and nothing of the project's, runs the two other roles of this
file:

- `serve`: tests/fake_kfp_api.py, so every request body, the project's and that kfp's
  Client's, is checked against that kfp's kfp_server_api models, and an uploaded package is
  parsed strictly by its kfp-pipeline-spec protos;
- `check`: the package read back by that kfp, each check named in CHECKS:
  client_parse    kfp.client's own parse (`_extract_pipeline_yaml`, what
                  create_run_from_pipeline_package does): name, platform spec, and each run
                  parameter's type, default, optional flag and description as written, the
                  defaults equal to the PipelineJob's runtimeConfig (what `deblur submit` sends);
  proto_strict    PipelineSpec and PlatformSpec parsed refusing unknown fields, and written
                  back identical (nothing dropped by that kfp-pipeline-spec);
  component_load  kfp.components.load_component_from_file: the run parameters as the
                  component's inputs, with their kfp types and defaults, all optional;
  recompile       kfp's Compiler on the loaded component writes the same package back;
  wrapper         a kfp @dsl.pipeline that runs the package as one task, overriding
                  train_steps from its own parameter and cache with a constant: compiled by
                  that kfp and parsed back, the inner component keeps every default and
                  description, the task sends only the overrides, the tasks, executors and
                  node selectors are the package's;
  client_runs     that kfp's Client against the fake: a run from the package file with two
                  overrides (spec inline), and a run of the version `deblur pipeline upload`
                  registered, with one override.
  The driver adds `project_calls` (the project's upload, run, recurring run, schedule list /
  pause / resume / delete against the same fake) and `server` (no body refused, the bodies
  as expected).

Exit 0 when every check passed, 1 when one failed, 2 on a usage error. Nothing here reaches a
network: the fake listens on 127.0.0.1. What it cannot say: whether a KFP backend of that
version accepts the package and the bodies (the fake checks against the client-side models of
the API, not the server); infra/README.md ("Versions").
"""
# no `from __future__ import annotations`: kfp.dsl reads the wrapper pipeline's annotations as
# types
import argparse
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import traceback
import warnings
from typing import Any, Callable, Dict, List, Optional

import yaml

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(REPO_ROOT, "infra", "kubeflow.example.yaml")
CHECKS = ["client_parse", "proto_strict", "component_load", "recompile", "wrapper",
          "client_runs"]
DRIVER_CHECKS = ["project_calls", "server"]
# the overrides the wrapper pipeline and the runs send (any run parameter would do)
WRAPPER_STEPS = 7
RUN_OVERRIDES = {"train_steps": 5, "cache": "off"}
VERSION_OVERRIDE = {"gate_ood_lpips_max": 0.3}
EXPERIMENT = "deblur-kfp-roundtrip"
# what uv prints when the index cannot provide a locked package (a missing version, no
# network, a registry that refuses): then the round trip is skipped, not failed
INDEX_REFUSALS = re.compile(
    r"No solution found|there is no version of|not found in the package registry|"
    r"Failed to fetch|Failed to download|error sending request|network was disabled|"
    r"Could not connect|Connection refused|Network is unreachable|dns error|timed out")


def index_refusal(output: str) -> Optional[str]:
    """The line of uv's output that says the index cannot provide a package, or None."""
    for line in output.splitlines():
        if INDEX_REFUSALS.search(line):
            return line.strip(" ×╰─▶")
    return None


# ---- the kfp side (run by --kfp-python) ---------------------------------------------------
class CheckFailed(AssertionError):
    pass


def _expect(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def _same(a: Any, b: Any, path: str = "") -> List[str]:
    """Where two parsed YAML/JSON documents differ (numbers compare by value: a proto Value
    holds 100000 as 100000.0)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                out.append(f"{path}.{k}: only in the {'second' if k not in a else 'first'}")
            else:
                out += _same(a[k], b[k], f"{path}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items against {len(b)}"]
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in _same(x, y, f"{path}[{i}]")]
    if isinstance(a, bool) or isinstance(b, bool):
        return [] if a is b else [f"{path}: {a!r} against {b!r}"]
    return [] if a == b else [f"{path}: {str(a)[:80]!r} against {str(b)[:80]!r}"]


def _no_diff(diffs: List[str], what: str) -> None:
    _expect(not diffs, f"{what}: {len(diffs)} differences, first {diffs[:3]}")


def _read_package(path: str):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    return docs[0], (docs[1] if len(docs) > 1 else None)


def _value(v) -> Any:
    from google.protobuf import json_format

    return json_format.MessageToDict(v)


KFP_TYPES = {"STRING": "String", "NUMBER_INTEGER": "Integer", "NUMBER_DOUBLE": "Float",
             "BOOLEAN": "Boolean", "LIST": "List", "STRUCT": "Dict"}


def check_client_parse(ctx) -> str:
    from kfp.client import client as kfp_client
    from kfp.pipeline_spec import pipeline_spec_pb2

    raw, raw_platform = ctx["raw"], ctx["raw_platform"]
    doc = kfp_client._extract_pipeline_yaml(ctx["package"])
    _expect(doc.pipeline_spec.pipeline_info.name == raw["pipelineInfo"]["name"], "pipeline name")
    if raw_platform:
        _no_diff(_same(_value(doc.platform_spec), raw_platform), "platform spec")
    defs = raw["root"]["inputDefinitions"]["parameters"]
    parsed = doc.pipeline_spec.root.input_definitions.parameters
    _expect(set(parsed) == set(defs), f"parameters {sorted(parsed)} against {sorted(defs)}")
    values = ctx["job_values"]
    _expect(set(values) == set(defs), f"the PipelineJob's runtimeConfig has {sorted(values)}, "
                                      f"the package {sorted(defs)}")
    for name, d in defs.items():
        p = parsed[name]
        ptype = pipeline_spec_pb2.ParameterType.ParameterTypeEnum.Name(p.parameter_type)
        _expect(ptype == d["parameterType"], f"{name}: type {ptype} against {d['parameterType']}")
        _expect(p.HasField("default_value"), f"{name}: no default")
        _no_diff(_same(_value(p.default_value), d["defaultValue"]), f"{name}'s default")
        _no_diff(_same(_value(p.default_value), values[name]),
                 f"{name}'s default against the PipelineJob's value")
        _expect(p.is_optional is True and d.get("isOptional") is True, f"{name}: not optional")
        _expect(bool(p.description) and p.description == d.get("description"),
                f"{name}: description {p.description!r}")
        if d["parameterType"] == "NUMBER_INTEGER":
            _expect(float(_value(p.default_value)).is_integer(), f"{name}: not an integer")
    ctx["parameters"] = {n: {"type": d["parameterType"], "default": d["defaultValue"]}
                         for n, d in sorted(defs.items())}
    return (f"{doc.pipeline_spec.pipeline_info.name}: {len(parsed)} run parameters with their "
            f"types, defaults (= the PipelineJob's), optional flags and descriptions; platform "
            f"spec {sorted(doc.platform_spec.platforms)}")


def check_proto_strict(ctx) -> str:
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = json_format.ParseDict(ctx["raw"], pipeline_spec_pb2.PipelineSpec(),
                                 ignore_unknown_fields=False)
    _no_diff(_same(json_format.MessageToDict(spec), ctx["raw"]), "PipelineSpec written back")
    n = len(json_format.MessageToJson(spec))
    if ctx["raw_platform"]:
        platform = json_format.ParseDict(ctx["raw_platform"], pipeline_spec_pb2.PlatformSpec(),
                                         ignore_unknown_fields=False)
        _no_diff(_same(json_format.MessageToDict(platform), ctx["raw_platform"]),
                 "PlatformSpec written back")
    return (f"PipelineSpec (schemaVersion {spec.schema_version}, {len(spec.components)} "
            f"components, {n} chars of JSON) and PlatformSpec parse strictly and write back "
            f"identical")


def check_component_load(ctx) -> str:
    from kfp import components

    comp = components.load_component_from_file(ctx["package"])
    ctx["component"] = comp
    raw = ctx["raw"]
    _expect(comp.name == raw["pipelineInfo"]["name"], f"component name {comp.name!r}")
    defs = raw["root"]["inputDefinitions"]["parameters"]
    inputs = comp.component_spec.inputs or {}
    _expect(set(inputs) == set(defs), f"inputs {sorted(inputs)} against {sorted(defs)}")
    dropped = []
    for name, d in defs.items():
        i = inputs[name]
        _expect(i.type == KFP_TYPES[d["parameterType"]], f"{name}: kfp type {i.type!r}")
        _no_diff(_same(i.default, d["defaultValue"]), f"{name}'s default")
        _expect(i.optional is True, f"{name}: not optional")
        if i.description != d.get("description"):
            dropped.append(name)
    note = ""
    if dropped:  # kfp's InputSpec.from_ir_component_inputs_dict does not read descriptions
        note = (f"; InputSpec.description is not filled from the package for "
                f"{len(dropped)} of {len(defs)} (the spec keeps them: recompile, wrapper)")
    return (f"component {comp.name!r}: {len(inputs)} optional inputs with their kfp types "
            f"and defaults{note}")


def _component(ctx):
    if "component" not in ctx:
        raise CheckFailed("the package did not load as a component (component_load)")
    return ctx["component"]


def check_recompile(ctx) -> str:
    from kfp import compiler

    out = os.path.join(ctx["out"], "recompiled.yaml")
    compiler.Compiler().compile(_component(ctx), out)
    spec, platform = _read_package(out)
    # the package keeps the sdkVersion of the compiler that wrote it
    _no_diff(_same({**spec, "sdkVersion": None}, {**ctx["raw"], "sdkVersion": None}),
             "the recompiled pipeline spec")
    if ctx["raw_platform"]:
        _no_diff(_same(platform or {}, ctx["raw_platform"]), "the recompiled platform spec")
    return (f"Compiler().compile(the loaded component) writes the same pipeline spec "
            f"(sdkVersion {spec.get('sdkVersion')}) and platform spec")


def check_wrapper(ctx) -> str:
    from kfp import compiler, dsl
    from kfp.client import client as kfp_client

    comp = _component(ctx)

    @dsl.pipeline(name="deblur-icdpm-wrapper")
    def wrapper(train_steps: int = WRAPPER_STEPS):
        comp(train_steps=train_steps, cache="off")

    out = os.path.join(ctx["out"], "wrapper.yaml")
    compiler.Compiler().compile(wrapper, out)
    kfp_client._extract_pipeline_yaml(out)  # parses as that kfp's Client parses a package
    spec, platform = _read_package(out)
    raw = ctx["raw"]
    outer = spec["root"]["inputDefinitions"]["parameters"]
    _expect(list(outer) == ["train_steps"] and outer["train_steps"]["parameterType"] ==
            "NUMBER_INTEGER" and outer["train_steps"]["defaultValue"] == WRAPPER_STEPS,
            f"the wrapper's own parameters: {outer}")
    task, = spec["root"]["dag"]["tasks"].values()
    _expect(task["inputs"]["parameters"] == {
        "train_steps": {"componentInputParameter": "train_steps"},
        "cache": {"runtimeValue": {"constant": "off"}}},
        f"the task sends {task['inputs']['parameters']}")
    inner = spec["components"][task["componentRef"]["name"]]
    _no_diff(_same(inner["inputDefinitions"], raw["root"]["inputDefinitions"]),
             "the inner component's parameters (defaults, descriptions)")
    _no_diff(_same(inner["dag"], raw["root"]["dag"]), "the inner DAG")
    for name, c in raw["components"].items():
        _expect(name in spec["components"], f"component {name} missing")
        _no_diff(_same(spec["components"][name], c), f"component {name}")
    _no_diff(_same(spec["deploymentSpec"], raw["deploymentSpec"]), "the executors")
    if ctx["raw_platform"]:
        _no_diff(_same(platform or {}, ctx["raw_platform"]), "the platform spec")
    ctx["wrapper_inner_defaults"] = {n: d["defaultValue"]
                                     for n, d in inner["inputDefinitions"]["parameters"].items()}
    return (f"a kfp pipeline running the package as a task compiles (sdkVersion "
            f"{spec['sdkVersion']}); it sends train_steps and cache=off, the other "
            f"{len(inner['inputDefinitions']['parameters']) - 2} parameters keep the package's "
            f"defaults; the {len(raw['root']['dag']['tasks'])} tasks, executors and node "
            f"selectors are the package's")


def check_client_runs(ctx) -> str:
    if not ctx.get("host"):
        raise CheckFailed("no --host (the fake KFP API) to run against")
    import kfp

    with contextlib.redirect_stdout(io.StringIO()):  # kfp prints its own links
        client = kfp.Client(host=ctx["host"])
        run = client.create_run_from_pipeline_package(
            ctx["package"], arguments=dict(RUN_OVERRIDES), run_name="kfp-roundtrip-inline",
            experiment_name=EXPERIMENT)
        exp = client.get_experiment(experiment_name=EXPERIMENT)
        by_version = client.run_pipeline(
            experiment_id=exp.experiment_id, job_name="kfp-roundtrip-version",
            params=dict(VERSION_OVERRIDE), pipeline_id=ctx["pipeline_id"],
            version_id=ctx["version_id"])
    ctx["client_run_ids"] = [run.run_id, by_version.run_id]
    return (f"Client.create_run_from_pipeline_package (spec inline, {RUN_OVERRIDES}) and "
            f"Client.run_pipeline of version {ctx['version_id']} ({VERSION_OVERRIDE}): runs "
            f"{run.run_id}, {by_version.run_id}")


CHECK_FUNCTIONS: Dict[str, Callable[[Dict[str, Any]], str]] = {
    "client_parse": check_client_parse, "proto_strict": check_proto_strict,
    "component_load": check_component_load, "recompile": check_recompile,
    "wrapper": check_wrapper, "client_runs": check_client_runs}


def _versions() -> Dict[str, str]:
    from importlib import metadata

    out = {}
    for name in ("kfp", "kfp-pipeline-spec", "kfp-server-api", "protobuf"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    out["python"] = sys.version.split()[0]
    return out


def _one_line(e: BaseException) -> str:
    text = "".join(traceback.format_exception_only(type(e), e)).strip()
    return text.splitlines()[0] if text else type(e).__name__


def run_checks(args) -> Dict[str, Any]:
    raw, raw_platform = _read_package(args.package)
    with open(args.job) as f:
        job = json.load(f)
    ctx = {"package": args.package, "raw": raw, "raw_platform": raw_platform, "out": args.out,
           "job_values": job["runtimeConfig"]["parameterValues"], "host": args.host,
           "pipeline_id": args.pipeline_id, "version_id": args.version_id}
    checks = []
    for name in CHECKS:
        try:
            checks.append({"name": name, "ok": True, "detail": CHECK_FUNCTIONS[name](ctx)})
        except Exception as e:  # noqa: BLE001 - every check reports, one failure stops none
            detail = (str(e) if isinstance(e, CheckFailed)
                      else _one_line(e))
            checks.append({"name": name, "ok": False, "detail": detail})
    return {"versions": _versions(), "checks": checks,
            "parameters": ctx.get("parameters", {}),
            "client_run_ids": ctx.get("client_run_ids", [])}


def serve() -> int:
    """The fake KFP API with this Python's kfp_server_api: prints {"url"} on one line, serves
    until stdin closes (or a line is read), then prints what it recorded as one JSON line."""
    from tests import fake_kfp_api

    srv = fake_kfp_api.start()
    print(json.dumps({"url": srv.url, "versions": _versions()}), flush=True)
    try:
        sys.stdin.readline()
    finally:
        fake_kfp_api.stop(srv)
    runs = list(srv.runs.values())
    print(json.dumps({
        "errors": srv.errors, "calls": srv.calls(),
        "runs": [{"run_id": r["run_id"], "display_name": r.get("display_name"),
                  "inline": "pipeline_spec" in r and bool(r.get("pipeline_spec")),
                  "pipeline_version_reference": r.get("pipeline_version_reference"),
                  "parameters": (r.get("runtime_config") or {}).get("parameters") or {}}
                 for r in runs],
        "recurring_runs": srv.bodies("POST", "/apis/v2beta1/recurringruns"),
        "versions": [{"pipeline_version_id": v["pipeline_version_id"],
                      "display_name": v["display_name"],
                      "root_inputs": sorted(v["_spec"]["root"]["inputDefinitions"]["parameters"])}
                     for v in srv.versions.values()]}, default=str), flush=True)
    return 0


# ---- the driver (the project's .venv) -----------------------------------------------------
class _Server:
    """`serve` under the kfp Python, as a context manager; .result holds what it recorded."""

    def __init__(self, kfp_python: str):
        self.kfp_python = kfp_python
        self.result: Dict[str, Any] = {}

    def __enter__(self):
        self.proc = subprocess.Popen(
            [self.kfp_python, "-m", "tests.kfp_roundtrip", "serve"], cwd=REPO_ROOT,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            err = self.proc.stderr.read()
            self.proc.wait()
            raise RuntimeError(f"the fake KFP server under {self.kfp_python} did not start: "
                               f"{err.strip().splitlines()[-1] if err.strip() else 'no output'}")
        started = json.loads(line)
        self.url = started["url"]
        return self

    def __exit__(self, *exc):
        try:
            out, err = self.proc.communicate("stop\n", timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
        lines = [ln for ln in out.splitlines() if ln.strip()]
        self.result = json.loads(lines[-1]) if lines else {"errors": [f"no record: {err[-300:]}"]}
        return False


def compile_spec(out_dir: str) -> str:
    """`deblur compile --config infra/kubeflow.example.yaml --out OUT/deblur-icdpm.json` with
    this Python (the project's .venv); the PipelineJob's path, the KFP package beside it."""
    spec = os.path.join(out_dir, "deblur-icdpm.json")
    # --keep-tags: the example's images are on no registry here; _project_calls serves them
    cmd = [sys.executable, "-m", "deblur.cli", "compile", "--config", EXAMPLE, "--out", spec,
           "--keep-tags"]
    r = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    with open(os.path.join(out_dir, "compile.log"), "w") as f:
        f.write(r.stdout + r.stderr)
    if r.returncode != 0:
        tail = (r.stderr.strip() or r.stdout.strip()).splitlines()[-1:]
        raise RuntimeError(f"deblur compile failed ({r.returncode}): {' '.join(tail)}")
    return spec


@contextlib.contextmanager
def _stopping(registry):
    from tests import fake_registry

    try:
        yield
    finally:
        fake_registry.stop(registry)


def _project_calls(spec: str, host: str) -> Dict[str, Any]:
    """`deblur pipeline upload`, `submit` (a run with --param and --no-cache), `pipeline
    release`, `submit --schedule` (a recurring run of the release) and `schedule
    list|pause|resume|delete` against the fake, through the functions the CLI
    calls."""
    from pipelines import config as config_lib
    from pipelines.kubeflow import client as kclient, compiler as kc, images
    from unittest import mock

    from tests import fake_registry

    cfg = config_lib.load(EXAMPLE)
    # upload and submit send images by digest: the spec's images, on a loopback registry
    registry = fake_registry.start()
    job = kc.load_job(spec)
    text = json.dumps(job)
    for name in images.tag_images(job["pipelineSpec"]):
        where, repo, tag, _ = images.parse(name)
        registry.push(repo, tag)
        text = text.replace(f"{where}/", f"{registry.host}/")
    spec = os.path.splitext(spec)[0] + "-on-registry.json"
    with open(spec, "w") as f:
        f.write(text)
    # as from a clean commit, whatever this checkout holds: only those are released
    with contextlib.redirect_stdout(io.StringIO()), _stopping(registry), mock.patch.object(
            kclient, "git_commit", return_value=("0123456789", False)):
        up = kclient.upload(cfg, spec, host)
        run = kclient.submit(cfg, spec, host, experiment=EXPERIMENT, run_name="deblur-roundtrip",
                             params={"train_steps": "5"}, no_cache=True)
        rel = kclient.release(cfg, host, version=up["version_name"])
        rr = kclient.submit(cfg, None, host, experiment=EXPERIMENT, schedule="0 0 3 * * 1")
        listed = kclient.schedules(cfg, host, "list", experiment=EXPERIMENT)["schedules"]
        kclient.schedules(cfg, host, "pause", [rr["id"]])
        paused = kclient.schedules(cfg, host, "list", experiment=EXPERIMENT)["schedules"]
        kclient.schedules(cfg, host, "resume", [rr["id"]])
        kclient.schedules(cfg, host, "delete", [rr["id"]])
        left = kclient.schedules(cfg, host, "list", experiment=EXPERIMENT)["schedules"]
    _expect([s["id"] for s in listed] == [rr["id"]], f"schedule list: {listed}")
    _expect(str(paused[0]["status"]) == "DISABLED", f"paused: {paused[0]['status']}")
    _expect(left == [], f"after delete: {left}")
    _expect(listed[0]["version"] == rel["version_name"], f"the schedule's next: {listed[0]}")
    return {"pipeline_id": up["pipeline_id"], "version_id": up["version_id"],
            "release_pipeline_id": rel["pipeline_id"],
            "version_name": up["version_name"], "run_id": run["id"],
            "run_parameters": run["parameters"], "recurring_run_id": rr["id"]}


def _check_server(rec: Dict[str, Any], project: Dict[str, Any],
                  defaults: Dict[str, Any]) -> str:
    _expect(not rec.get("errors"), f"the fake refused {rec.get('errors')}")
    runs = {r["run_id"]: r for r in rec["runs"]}
    mine = runs[project["run_id"]]
    _expect(not mine["inline"] and mine["pipeline_version_reference"]["pipeline_version_id"]
            == project["version_id"], f"deblur submit's run: {mine}")
    want = {**{n: p["default"] for n, p in defaults.items()}, "train_steps": 5, "cache": "off"}
    _no_diff(_same(mine["parameters"], want), "deblur submit's run parameters")
    rr, = rec["recurring_runs"]
    _expect(rr["pipeline_version_reference"] == {"pipeline_id": project["release_pipeline_id"]},
            f"the recurring run references {rr['pipeline_version_reference']}")
    inline, by_version = [r for r in rec["runs"] if r["run_id"] != project["run_id"]]
    _expect(inline["inline"] and inline["parameters"] == RUN_OVERRIDES,
            f"the kfp Client's run from the package: {inline}")
    _expect(by_version["pipeline_version_reference"]["pipeline_version_id"] ==
            project["version_id"] and by_version["parameters"] == VERSION_OVERRIDE,
            f"the kfp Client's run of the version: {by_version}")
    dev, released = rec["versions"]  # the dev version and its release: the same package
    for version in (dev, released):
        _expect(version["root_inputs"] == sorted(defaults), f"the stored version's inputs")
    return (f"{len(rec['calls'])} requests, none refused by kfp_server_api's models; the "
            f"uploaded package parsed strictly; runs and the recurring run reference version "
            f"{project['version_name']} with the parameters sent")


def run(kfp_python: str, out_dir: Optional[str] = None, spec: Optional[str] = None
        ) -> Dict[str, Any]:
    """The round trip under `kfp_python`; the report (also written to OUT/report.json)."""
    out_dir = os.path.abspath(out_dir or tempfile.mkdtemp(prefix="kfp-roundtrip-"))
    os.makedirs(out_dir, exist_ok=True)
    spec = os.path.abspath(spec) if spec else compile_spec(out_dir)
    from pipelines.kubeflow import client as kclient, compiler as kc

    package = kc.package_path(spec)
    checks: List[Dict[str, Any]] = []
    with _Server(kfp_python) as server:
        try:
            project = _project_calls(spec, server.url)
            checks.append({"name": "project_calls", "ok": True, "detail": (
                f"pipeline upload (version {project['version_name']}), submit --param "
                f"train_steps=5 --no-cache, pipeline release, submit --schedule, schedule "
                f"list/pause/resume/delete")})
        except Exception as e:  # noqa: BLE001
            project = {}
            checks.append({"name": "project_calls", "ok": False,
                           "detail": _one_line(e)})
        cmd = [kfp_python, "-m", "tests.kfp_roundtrip", "check", "--package", package,
               "--job", spec, "--out", out_dir, "--host", server.url]
        if project:
            cmd += ["--pipeline-id", project["pipeline_id"], "--version-id",
                    project["version_id"]]
        r = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"the check under {kfp_python} ended {r.returncode}: "
                           f"{(r.stderr.strip().splitlines() or ['no output'])[-1]}")
    report = json.loads(lines[-1])
    report["checks"] += checks
    if project:
        try:
            detail = _check_server(server.result, project, report["parameters"])
            report["checks"].append({"name": "server", "ok": True, "detail": detail})
        except Exception as e:  # noqa: BLE001
            report["checks"].append({"name": "server", "ok": False, "detail": str(e)})
    else:
        report["checks"].append({"name": "server", "ok": False, "detail": "no project calls"})
    report.update(spec=spec, package=package, out=out_dir, kfp_python=kfp_python,
                  server_requests=len(server.result.get("calls", [])))
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=2, default=str)
    return report


def _print(report: Dict[str, Any]) -> None:
    v = report["versions"]
    print(f"kfp {v['kfp']} (kfp-pipeline-spec {v['kfp-pipeline-spec']}, kfp-server-api "
          f"{v['kfp-server-api']}, protobuf {v['protobuf']}, Python {v['python']}) on "
          f"{os.path.relpath(report['package'], REPO_ROOT) if report['package'].startswith(REPO_ROOT) else report['package']}")
    for c in report["checks"]:
        print(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['name']:15s} {c['detail']}")
    failed = [c["name"] for c in report["checks"] if not c["ok"]]
    print(f"round trip through kfp {v['kfp']}: "
          + (f"FAILED ({', '.join(failed)})" if failed else
             f"all {len(report['checks'])} checks hold") + f"; report {report['out']}/report.json")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # kfp's "This client only works with ... v2.0.0-beta.2 and later", google's Python 3.10 notes
    warnings.filterwarnings("ignore", category=FutureWarning)
    if argv[:1] == ["serve"]:
        return serve()
    if argv[:1] == ["check"]:
        p = argparse.ArgumentParser(prog="kfp_roundtrip check")
        p.add_argument("--package", required=True)
        p.add_argument("--job", required=True)
        p.add_argument("--out", required=True)
        p.add_argument("--host")
        p.add_argument("--pipeline-id")
        p.add_argument("--version-id")
        args = p.parse_args(argv[1:])
        with contextlib.redirect_stdout(sys.stderr):  # stdout: the report alone
            report = run_checks(args)
        print(json.dumps(report, default=str))
        return 0
    p = argparse.ArgumentParser(
        prog="python -m tests.kfp_roundtrip",
        description="The compiled KFP package read back, compiled into a pipeline and submitted "
                    "by another kfp SDK (make kfp-roundtrip KFP=2.17)")
    p.add_argument("--kfp-python", required=True,
                   help="a Python with the kfp under test (.venv-kfp217/bin/python)")
    p.add_argument("--spec", help="a PipelineJob .json from `deblur compile` (default: compile "
                                  "infra/kubeflow.example.yaml)")
    p.add_argument("--out", help="where the package, the kfp outputs and report.json go "
                                 "(default: a new temporary folder)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    args = p.parse_args(argv)
    if not os.access(args.kfp_python, os.X_OK):
        print(f"error: --kfp-python {args.kfp_python}: no such Python (make kfp-venv "
              f"KFP=2.17 builds .venv-kfp217)", file=sys.stderr)
        return 2
    if args.spec and not os.path.exists(args.spec):
        print(f"error: --spec {args.spec}: no such file", file=sys.stderr)
        return 2
    try:
        report = run(args.kfp_python, args.out, args.spec)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        _print(report)
    return 0 if all(c["ok"] for c in report["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
