"""The compiled Kubeflow pipeline runs under the KFP v2 driver/launcher contract.

`deblur compile` output (the PipelineJob JSON, not create_pipeline) is executed task by task by
tests/kfp_v2_launcher.py, a model of what KFP v2's driver and launcher do for each task: the
ExecutorInput built from the spec (parameters, input artifacts as ML Metadata hands them back,
output URIs under the pipeline root), the placeholders of the spec's command and args filled,
the command run as a subprocess, the ExecutorOutput read back and recorded. Dependencies first,
on the synthetic data, with a local folder as the pipeline root and the model registry on gs://
in fake-gcs-server.

The run is started the way `deblur submit --param` starts one: the compiled defaults with run
parameters over them. The run parameters also make the run tiny and the gate permissive: the
spec is compiled with a stricter gate and more steps, so a blessed, registered 3-step model
proves the parameters reached the executors. (A 3-step model cannot beat its blurry input:
gate_input_lpips_margin -1 and gate_input_psnr_tolerance 100 open beats_input; the gate's rules
are tested in components/evaluator.)

Time: 212 s in a full `make test`, 367 s alone, measured on the shared 2-core machine under load
(every task is a fresh Python that imports TensorFlow; Beam DirectRunner in-process, one
worker); about 2.5 CPU-minutes. Nothing here waits on a clock: a task's timeout is a
guard against a hang only.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

from pipelines import config as config_lib
from pipelines.kubeflow import compiler as kc
from pipelines.config import REPO_ROOT
from tests.gcs_emulator import fake_gcs
from tests.kfp_v2_launcher import Run, TaskFailed, topological

pytestmark = pytest.mark.slow  # the whole compiled pipeline through the KFP launcher model

BUCKET = "deblur-kfp-contract"
TASKS = ["DeblurRunCheck", "DeblurInputFingerprint", "DeblurIngest", "StatisticsGen",
         "ImportSchemaGen", "ExampleValidator", "ValidationGate", "DomainDriftReport", "Trainer",
         "TrainingReport", "DeblurEvaluator", "RegistryPusher", "ServabilityCheck", "RunSummary"]


def compile_config(tmp_path) -> config_lib.PipelineConfig:
    """A Kubeflow config as a user writes it (gs:// everywhere), tiny where the run cannot
    change it by a parameter; Beam on DirectRunner; the schema path as this checkout."""
    return config_lib.from_dict({
        "data": {"sources": [
            {"layout": "gopro", "root": f"gs://{BUCKET}/data/gopro", "subsets": ["train", "test"],
             "dataset": "gopro_synth", "domain": "in"},
            {"layout": "realblur", "root": f"gs://{BUCKET}/data/realblur", "subsets": ["test"],
             "split_names": {"test": "test_ood"}, "dataset": "realblur_synth", "domain": "out"}]},
        "ingest": {"train_crop_size": 64},
        "training": {"experiment": "tiny", "train": {"steps": 50, "global_batch_size": 2}},
        "evaluation": {"grid": [{"sampler": "ddim", "steps": 2, "max_noise": 0.05}],
                       "max_images_per_split": 2},
        "gate": {"baseline": "registry"},  # the open-source backend runs no Resolver
        "registry": {"uri": f"gs://{BUCKET}/registry"},
        # the unit store as a local folder, like the pipeline root the launcher model gets:
        # fake-gcs-server cannot finalize Beam's file sinks (SPEC section 2)
        "runner": {"enable_cache": True, "unit_store": str(tmp_path / "units")},
        "kubeflow": {"image": "registry.invalid/deblur:test", "image_repo_root": REPO_ROOT,
                     "resources": {},  # CPU pods: the default asks for a TPU Trainer
                     "pipeline_root": f"gs://{BUCKET}/pipeline_root",
                     "dataflow": {"runner": "DirectRunner", "extra_args": [
                         "--direct_running_mode=in_memory", "--direct_num_workers=1"]}},
    })


def synthetic_sources(tmp_path, gcs):
    """The synthetic sets, copied to gs://BUCKET/synth/ in the emulator: the run's check task
    accepts gs:// sources only, and looks for objects under each root."""
    from core import synth

    root = tmp_path / "data"
    # 192: NIQE needs two 96-pixel blocks per side; 6 pairs at seed 1: two sequences of 3, one
    # held out as val (the default data.synthetic.val_fraction)
    synth.generate(str(root), pairs=6, size=(192, 192), seed=1, test_pairs=2, progress=False)
    bucket = gcs.client.bucket(BUCKET)
    for path in sorted(root.rglob("*")):
        if path.is_file():
            bucket.blob(f"synth/{path.relative_to(root).as_posix()}").upload_from_filename(
                str(path))
    cfg = config_lib.PipelineConfig()
    cfg.runner.work_dir = str(tmp_path)  # synthetic_root() = <work_dir>/data
    out = []
    for s in cfg.ingest_sources():
        j = s.to_json()
        j["root"] = f"gs://{BUCKET}/synth/{os.path.relpath(s.root, root)}"
        out.append(j)
    return out


@pytest.fixture(scope="module")
def contract_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kfp-contract")
    cfg = compile_config(tmp)
    spec_file = kc.compile_pipeline(cfg, str(tmp / "deblur-icdpm.json"))
    job = kc.load_job(spec_file)
    scratch = tmp / "tmp"
    scratch.mkdir()
    with fake_gcs(tmp) as gcs:
        gcs.create_bucket(BUCKET)
        sources = json.dumps(synthetic_sources(tmp, gcs))
        arguments = kc.run_arguments(cfg, job["pipelineSpec"], {
            "data_sources": sources,
            "train_steps": "3",
            "gate_ood_lpips_max": "0.99", "gate_input_lpips_margin": "-1",
            "gate_input_psnr_tolerance": "100"})
        # the registry's download cache of its own: one under ~/.cache from an earlier
        # emulator (another gs:// registry of the same name) is refused as stale, rightly
        env = {**os.environ, "TMPDIR": str(scratch), "PYTHONUNBUFFERED": "1",
               "DEBLUR_REGISTRY_CACHE": str(tmp / "registry-cache")}
        run = Run(job, str(tmp / "pipeline_root"), run_id="run-1", arguments=arguments,
                  python=sys.executable, env=env, timeout=1800, cwd=REPO_ROOT)
        run.execute()
        from components.registry.registry import Registry

        latest = Registry(f"gs://{BUCKET}/registry", "deblur-icdpm").latest()
        # a value typed in the UI form that KFP's type check lets through: the run stops at
        # once, before the ingest, and the exit task RunEnd tells why
        bad = Run(job, str(tmp / "pipeline_root"), run_id="run-bad",
                  arguments={**arguments, "train_steps": 0, "warm_start": "newest"},
                  python=sys.executable, env=env, timeout=600, cwd=REPO_ROOT)
        try:
            bad.execute()  # the whole run: it stops at the fingerprint, then the exit task
            bad_error = None
        except TaskFailed as e:
            bad_error = e
        # a run that sends only overrides: the compiled defaults fill the rest (up to the
        # fingerprint: what follows is the run above)
        lean = Run(job, str(tmp / "pipeline_root"), run_id="run-lean",
                   arguments={"data_sources": sources, "train_steps": 3},
                   python=sys.executable, env=env, timeout=600, cwd=REPO_ROOT,
                   send_defaults=False)
        lean.execute(stop_after="DeblurInputFingerprint")
    return run, job, cfg, latest, bad, bad_error, lean


def test_every_task_runs_in_dependency_order(contract_run):
    run, job = contract_run[:2]
    order = topological(kc.dag_tasks(job["pipelineSpec"]))
    # the exit task last, after the sub-DAG tfx-dag
    assert sorted(order) == sorted(TASKS) and list(run.outputs) == order + [kc.EXIT_TASK]
    assert run.states == {**{t: "COMPLETE" for t in TASKS}, kc.TFX_DAG: "COMPLETE",
                          kc.EXIT_TASK: "COMPLETE"}


def test_the_executor_input_is_what_the_driver_builds(contract_run):
    run, job = contract_run[:2]
    ei = run.executor_inputs["DeblurEvaluator"]
    examples, = ei["inputs"]["artifacts"]["examples"]["artifacts"]
    # as ML Metadata hands it back: id as name, no schema, properties as metadata
    assert examples["type"] == {"instanceSchema": ""} and examples["name"].isdigit()
    assert json.loads(examples["metadata"]["split_names"]) == [
        "test", "test_ood", "train", "val", "val_ood"]
    assert examples["uri"] == f"{run.run_root}/DeblurIngest/examples"
    assert ei["outputs"]["artifacts"]["blessing"]["artifacts"][0]["uri"] == (
        f"{run.run_root}/DeblurEvaluator/blessing")
    # run parameters arrive as root inputs beside the exec properties they change
    params = ei["inputs"]["parameterValues"]
    assert params["gate_ood_lpips_max"] == 0.99
    assert json.loads(params["gate_config"])["ood_lpips_max"] == cfg_gate(job)
    assert run.executor_inputs["Trainer"]["inputs"]["parameterValues"]["train_steps"] == 3


def cfg_gate(job):
    return job["runtimeConfig"]["parameterValues"]["gate_ood_lpips_max"]


def test_the_ingest_checks_the_fingerprint_the_run_computed(contract_run):
    """The DeblurInputFingerprint task's output parameter is the ingest's input_fingerprint
    (what KFP's cache key sees); the ingest listed the same inputs (it fails otherwise)."""
    run = contract_run[0]
    fingerprint = run.outputs["DeblurInputFingerprint"]["parameters"]["fingerprint"]
    params = run.executor_inputs["DeblurIngest"]["inputs"]["parameterValues"]
    assert params["input_fingerprint"] == fingerprint and len(fingerprint) == 64
    examples = run.artifact("DeblurIngest", "examples")
    assert examples["custom_properties"]["input_fingerprint"] == {"string": fingerprint}
    summary = json.loads(open(os.path.join(examples["uri"], "summary.json")).read())
    assert summary["unit_store"] == params["unit_store"] and os.path.isdir(params["unit_store"])
    assert summary["processed"]["units"] == 2  # the two synthetic sources, new


def test_run_parameters_reached_the_executors(contract_run):
    run, _, cfg = contract_run[:3]
    # ingest read the synthetic sets named by data_sources, not the compiled gs:// roots
    counts = run.scalars("DeblurIngest", "counts")
    assert counts["inputs"] == counts["written"] == 6 + 2 + 2 + 2
    # the Trainer trained train_steps (3), not the compiled 50
    assert cfg.training.train["steps"] == 50
    model_run = run.artifact("Trainer", "model_run")["uri"]
    history = json.loads(open(os.path.join(model_run, "history.json")).read())
    assert history[-1]["step"] == 3
    blessing = json.loads(open(os.path.join(run.artifact("DeblurEvaluator", "blessing")["uri"],
                                            "blessing.json")).read())
    assert blessing["config"]["ood_lpips_max"] == 0.99
    assert blessing["config"]["input_lpips_margin"] == -1.0


def test_the_model_is_blessed_and_registered(contract_run):
    run, latest = contract_run[0], contract_run[3]
    blessing = run.artifact("DeblurEvaluator", "blessing")
    # the executor output carried `blessed`; ML Metadata keeps it as a double; the pusher read it
    assert blessing["custom_properties"]["blessed"] == {"double": 1.0}
    pushed = run.artifact("RegistryPusher", "pushed_model")["custom_properties"]
    assert pushed["pushed"] == {"double": 1.0}, pushed
    assert pushed["pushed_version"] == {"string": "1"}
    assert pushed["pushed_destination"]["string"] == f"gs://{BUCKET}/registry/deblur-icdpm/1"
    version, manifest = latest
    assert version == 1 and manifest["sampling"]["key"] == "ddim-T2-n0.05-K1"


def test_executor_outputs_carry_what_the_next_task_reads(contract_run):
    run = contract_run[0]
    ingest = run.outputs["DeblurIngest"]["executor_output"]["artifacts"]["examples"]["artifacts"][0]
    # split_names is what StatisticsGen, the Trainer and the evaluator iterate over
    assert json.loads(ingest["metadata"]["split_names"]) == [
        "test", "test_ood", "train", "val", "val_ood"]
    model = run.outputs["Trainer"]["executor_output"]["artifacts"]["model"]["artifacts"][0]
    assert model["uri"] == f"{run.run_root}/Trainer/model"
    assert os.path.exists(os.path.join(model["uri"], "Format-Serving", "saved_model.pb"))
    for task in TASKS:  # every task wrote its ExecutorOutput
        assert run.outputs[task]["executor_output"] or not run.outputs[task]["artifacts"], task


def test_run_page_artifacts_are_recorded_as_the_frontend_wants_them(contract_run):
    run = contract_run[0]
    types = {(m["task"], m["key"]): m["type"] for m in run.mlmd.values()}
    assert types[("DeblurEvaluator", "metrics")] == "system.Metrics"
    assert types[("DeblurEvaluator", "input_metrics")] == "system.Metrics"
    assert types[("DeblurEvaluator", "verdict")] == "system.Markdown"
    assert types[("DeblurEvaluator", "report")] == "system.HTML"
    assert types[("DeblurIngest", "counts")] == "system.Metrics"
    assert types[("DomainDriftReport", "drift_table")] == "system.Markdown"
    metrics = run.scalars("DeblurEvaluator", "metrics")
    assert {"out-of-domain LPIPS", "in-domain PSNR"} <= set(metrics) and "tfx_version" not in metrics
    assert all(isinstance(v, float) for v in metrics.values())
    name = run.artifact("DeblurEvaluator", "metrics")["custom_properties"]["display_name"]
    assert name == {"string": "chosen setting ddim-T2-n0.05-K1"}
    # Markdown and HTML: the file is AT the artifact's URI (what the UI's artifact proxy reads)
    verdict = open(run.artifact("DeblurEvaluator", "verdict")["uri"]).read()
    assert verdict.startswith("## Blessed: YES") and "| beats_input |" in verdict
    page = open(run.artifact("DeblurEvaluator", "report")["uri"]).read()
    assert page.count("data:image/png;base64,") == 1 + 2  # the plot, test and test_ood grids


def test_the_check_task_ran_first_and_found_every_value_good(contract_run):
    run = contract_run[0]
    assert run.outputs["DeblurRunCheck"]["parameters"]["problems"] == ""
    report = run.artifact("DeblurRunCheck", "report")
    assert report["type"] == "system.Markdown"
    assert report["custom_properties"]["display_name"] == {"string": "run parameters"}
    md = open(report["uri"]).read()
    assert md.startswith("## Run parameters: all good")
    assert "| train_steps | `3` | an integer >= 1 | ok |" in md
    # it looked under each gs:// root in the emulator (found objects: no note)
    assert "not checked" not in md


def test_a_bad_value_stops_the_run_first_in_one_line(contract_run):
    """train_steps 0 and warm_start newest typed in the UI (the types are right, so KFP lets
    them through): DeblurRunCheck reports them on the run page, DeblurInputFingerprint fails in
    one line, nothing else starts."""
    bad, error = contract_run[4], contract_run[5]
    assert error is not None and "DeblurInputFingerprint: the command exited 1" in str(error)
    # nothing else ran (ImportSchemaGen waits for the fingerprint's cache_salt) but the exit task
    assert set(bad.outputs) == {"DeblurRunCheck", kc.EXIT_TASK}
    assert "DeblurRunCheck" in bad.outputs and "DeblurIngest" not in bad.outputs
    log = open(f"{bad.run_root}/DeblurInputFingerprint/launcher.log").read().strip().splitlines()
    assert len(log) == 1, log
    assert log[0].startswith("run parameters refused: train_steps=0: ") and \
        "warm_start=newest: " in log[0] and "(allowed: none, latest_blessed or a registry ref)" in log[0]
    md = open(bad.artifact("DeblurRunCheck", "report")["uri"]).read()
    assert md.startswith("## Run parameters: 2 refused, the run stops here")
    assert "- **warm_start** = `newest`:" in md and "Allowed: none, latest_blessed or a registry ref." in md


def test_a_run_with_only_overrides_gets_the_compiled_defaults(contract_run):
    job, lean = contract_run[1], contract_run[6]
    defaults = job["runtimeConfig"]["parameterValues"]
    params = lean.executor_inputs["DeblurRunCheck"]["inputs"]["parameterValues"]
    assert params["train_steps"] == 3
    for name in ("gate_ood_lpips_max", "gate_input_psnr_tolerance", "warm_start", "cache"):
        assert params[name] == defaults[name], name
    assert params["gate_input_psnr_tolerance"] == 0.0  # the 0 default reaches the run
    assert lean.outputs["DeblurRunCheck"]["parameters"]["problems"] == ""
    assert len(lean.outputs["DeblurInputFingerprint"]["parameters"]["fingerprint"]) == 64


def test_the_trainer_and_the_pusher_show_their_outcome(contract_run):
    run = contract_run[0]
    curves = run.artifact("TrainingReport", "curves")
    assert curves["type"] == "system.HTML"
    page = open(curves["uri"]).read()
    assert page.count("data:image/png;base64,") == 1 and "from random weights" in page
    m = run.scalars("TrainingReport", "metrics")
    assert run.artifact("TrainingReport", "metrics")["type"] == "system.Metrics"
    assert m["final step"] == 3.0 and m["steps this run"] == 3.0
    assert m["warm-start parent step"] == 0.0 and "final loss_dpm" in m
    assert "tfx_version" not in m
    report = run.artifact("RegistryPusher", "report")
    assert report["type"] == "system.Markdown"
    md = open(report["uri"]).read()
    assert md.splitlines()[0] == "## Registered: deblur-icdpm version 1"
    assert f"- URI: `gs://{BUCKET}/registry/deblur-icdpm/1`" in md


def test_the_run_summary_lists_what_ran(contract_run):
    run = contract_run[0]
    summary = run.artifact("RunSummary", "summary")
    assert summary["type"] == "system.Markdown"
    md = open(summary["uri"]).read()
    assert md.startswith("## Run summary: 10 task(s) ran, 0 cached")
    assert "TFDV validation against schemas/schema.pbtxt: no anomalies" in md
    assert "| DeblurIngest | ran |" in md and "| ValidationGate | (no output to tell by) |" in md
    assert "what this run did:" in md and "registered: version 1 at gs://" in md
    assert "inputs: 12 decoded now, 0 reused from the unit store" in md  # 6 + 2 + 2 + 2


# ---- a Trainer pod stopped by SIGTERM ---------------------------------------------------------
PAUSED_PYTHON = r'''#!{python}
"""The image's python for the Trainer task: holds the training at its first logged step until
SIGTERM arrives (what Kubernetes sends a pod it stops), then lets the real handler act."""
import os, runpy, sys, threading

sys.path.insert(0, os.getcwd())
from trainer import train as T

termed = threading.Event()
handler = T.TermGuard._handler


def record(self, signum, frame):
    termed.set()
    return handler(self, signum, frame)


T.TermGuard._handler = record
original = T.train


def paused_train(exp, examples, out, **kw):
    on_step = kw.get("on_step")

    def hold(step, row):
        if on_step:
            on_step(step, row)
        if not termed.is_set():
            open(os.environ["DEBLUR_TEST_PAUSED"], "w").write(str(step))
            termed.wait(1800)

    return original(exp, examples, out, **{{**kw, "on_step": hold}})


T.train = paused_train
assert sys.argv[1] == "-m", sys.argv
module = sys.argv[2]
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
'''


def test_a_trainer_pod_stopped_by_sigterm_resumes_in_the_next_run(contract_run, tmp_path):
    """SIGTERM during a Trainer task: its checkpoint goes to <pipeline root>/<pipeline>/Trainer/
    checkpoints/<key>, outside the task's output (which a failed execution may lose and which
    a new run does not share), and the Trainer of the next run resumes from it (step > 0) and
    moves the finished training into its own ModelRun."""
    import re
    import signal
    import threading
    import time

    run, job, _, _, _, _, _ = contract_run
    tasks = kc.dag_tasks(job["pipelineSpec"])
    upstream = set(tasks["Trainer"].get("dependentTasks", []))
    for name in reversed(topological(tasks)):
        if name in upstream:
            upstream.update(tasks[name].get("dependentTasks", []))
    pipeline_root = run.run_root.rsplit("/", 2)[0]
    arguments = {**run.root_params, "train_steps": 20}  # tiny logs every 10 steps
    wrapper = tmp_path / "python-paused"
    wrapper.write_text(PAUSED_PYTHON.format(python=sys.executable))
    wrapper.chmod(0o755)
    paused = tmp_path / "paused"
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1",
           "DEBLUR_TEST_PAUSED": str(paused), "DEBLUR_REGISTRY_CACHE": str(tmp_path / "cache")}

    def trainer_run(run_id, python):
        r = Run(job, pipeline_root, run_id=run_id, arguments=arguments, python=python, env=env,
                timeout=1800, cwd=REPO_ROOT)
        r.outputs = {t: run.outputs[t] for t in upstream}  # the upstream tasks of run-1
        r.mlmd = dict(run.mlmd)
        return r

    stopped = trainer_run("run-term", str(wrapper))
    failure = {}

    def execute():
        try:
            stopped.execute_task("Trainer")
        except TaskFailed as e:
            failure["error"] = str(e)

    thread = threading.Thread(target=execute)
    thread.start()
    deadline = time.monotonic() + 1800  # a guard against a hang, not a performance bound
    while not paused.exists() and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert paused.exists(), failure
    stopped.process.send_signal(signal.SIGTERM)
    thread.join(1800)
    assert not thread.is_alive() and "error" in failure  # the task failed
    log = open(f"{stopped.run_root}/Trainer/launcher.log").read()
    m = re.search(r"terminated by SIGTERM at step 10 of 20; checkpoint of step 10 in (\S+): run "
                  r"the same command again to resume", log)
    assert m, log[-3000:]
    announced = m.group(1)
    assert announced.startswith(f"{pipeline_root}/{run.pipeline_name}/Trainer/checkpoints/")
    assert os.path.exists(os.path.join(announced, "ckpt-10.index"))

    rerun = trainer_run("run-rerun", sys.executable)
    rerun.execute_task("Trainer")
    model_run = rerun.artifact("Trainer", "model_run")["uri"]
    with open(os.path.join(model_run, "resumed.json")) as f:
        assert [r["step"] for r in json.load(f)] == [10]
    with open(os.path.join(model_run, "history.json")) as f:
        assert [h["step"] for h in json.load(f)] == [10, 20]
    assert os.path.exists(os.path.join(model_run, "checkpoints", "ckpt-20.index"))
    assert not os.path.exists(os.path.dirname(announced))  # moved into the ModelRun


# ---- the exit task: what a run did, whatever its outcome (issue 36 item 6) -------------------
def test_a_run_that_succeeded_ends_with_the_run_summary(contract_run):
    run = contract_run[0]
    end = run.artifact(kc.EXIT_TASK, "summary")
    assert end["type"] == "system.Markdown"
    md = open(end["uri"]).read()
    summary = open(run.artifact("RunSummary", "summary")["uri"]).read()
    assert md == "## Run succeeded: run-1\n\n" + summary
    # the run's summary at the one path `deblur` reads, whatever the outcome
    assert open(f"{run.run_root}/summary.md").read() == summary
    # cache on: an empty salt, the same in every run, for ImportSchemaGen's cache key
    assert run.outputs["DeblurInputFingerprint"]["parameters"]["cache_salt"] == ""
    assert run.executor_inputs["ImportSchemaGen"]["inputs"]["parameterValues"][
        "cache_salt"] == ""


def test_a_run_stopped_by_a_bad_value_ends_with_a_failure_summary(contract_run):
    bad = contract_run[4]
    assert bad.states[kc.TFX_DAG] == "FAILED" and bad.states[kc.EXIT_TASK] == "COMPLETE"
    end = bad.artifact(kc.EXIT_TASK, "summary")
    assert end["custom_properties"]["display_name"] == {"string": "run end: failed"}
    md = open(end["uri"]).read()
    assert md.startswith("## Run failed: DeblurInputFingerprint\n")
    assert "- final state: FAILED (inferred from the run folder)" in md
    assert "- **DeblurInputFingerprint**: run parameters refused: **train_steps** = `0`" in md
    assert "| DeblurRunCheck | wrote outputs in this run |" in md
    assert "| DeblurIngest | not started (after a failure) |" in md
    assert "| RunSummary | not started (after a failure) |" in md
    assert open(f"{bad.run_root}/summary.md").read() == md


FAILING_PYTHON = r'''#!{python}
"""The image's python, with the executor class DEBLUR_TEST_FAIL_EXECUTOR made to raise."""
import importlib, os, runpy, sys

sys.path.insert(0, os.getcwd())
target = os.environ["DEBLUR_TEST_FAIL_EXECUTOR"]
if target in sys.argv:
    module, _, name = target.rpartition(".")

    def fail(self, input_dict, output_dict, exec_properties):
        raise RuntimeError("forced by the test\nsecond line")

    setattr(getattr(importlib.import_module(module), name), "Do", fail)
assert sys.argv[1] == "-m", sys.argv
module = sys.argv[2]
sys.argv = [module] + sys.argv[3:]
runpy.run_module(module, run_name="__main__", alter_sys=True)
'''


def test_a_failed_evaluator_is_named_with_its_error_in_the_failure_summary(contract_run,
                                                                           tmp_path):
    """The evaluator raises in a run whose earlier tasks came from the cache (run-1's
    outputs); the exit task, given KFP's final status (backend >= 2.14: with_final_status),
    names the task and its error, the tasks that did not start and the cached ones."""
    run, job = contract_run[:2]
    job = kc.with_final_status(job)
    tasks = kc.dag_tasks(job["pipelineSpec"])
    after = {"DeblurEvaluator"}
    for name in topological(tasks):
        if set(tasks[name].get("dependentTasks", [])) & after:
            after.add(name)
    label = job["pipelineSpec"]["components"][tasks["DeblurEvaluator"]["componentRef"][
        "name"]]["executorLabel"]
    args = job["pipelineSpec"]["deploymentSpec"]["executors"][label]["container"]["args"]
    executor_class = args[args.index("--executor_class_path") + 1]
    wrapper = tmp_path / "python-failing"
    wrapper.write_text(FAILING_PYTHON.format(python=sys.executable))
    wrapper.chmod(0o755)
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONUNBUFFERED": "1",
           "DEBLUR_TEST_FAIL_EXECUTOR": executor_class}
    pipeline_root = run.run_root.rsplit("/", 2)[0]
    failing = Run(job, pipeline_root, run_id="run-fail", arguments=run.root_params,
                  python=str(wrapper), env=env, timeout=1800, cwd=REPO_ROOT)
    failing.outputs = {t: run.outputs[t] for t in tasks if t not in after}  # cached
    failing.mlmd = dict(run.mlmd)
    with pytest.raises(TaskFailed, match="DeblurEvaluator: the command exited"):
        failing.execute()
    assert set(failing.executor_inputs) == {"DeblurEvaluator", kc.EXIT_TASK}
    status = failing.executor_inputs[kc.EXIT_TASK]["inputs"]["parameterValues"]["final_status"]
    assert status == {"state": "FAILED", "error": {}, "pipelineJobResourceName": "run-fail",
                      "pipelineTaskName": kc.TFX_DAG}
    md = open(failing.artifact(kc.EXIT_TASK, "summary")["uri"]).read()
    assert md.startswith("## Run failed: DeblurEvaluator\n")
    assert "- final state: FAILED\n" in md and "- reported by KFP for: tfx-dag" in md
    assert "- **DeblurEvaluator**: RuntimeError: forced by the test\n" in md
    for name in ("RegistryPusher", "ServabilityCheck", "RunSummary"):
        assert f"| {name} | not started (after a failure) |" in md
    assert "| Trainer | no output in this run (cached, or stopped without a record) |" in md
    assert open(f"{failing.run_root}/summary.md").read() == md
