"""Kubeflow runner: the compiled KFP v2 spec, the KFP package, config checks, cron, and
submission to a loopback fake of the KFP v2beta1 REST API (the endpoints kfp 2.5's Client
calls, from kfp_server_api: healthz, experiments list/create, runs, recurringruns)."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import socket

import pytest
import yaml

from pipelines import config as config_lib
from pipelines.kubeflow import client as kclient, compiler as kc, cron as kcron, images
from pipelines.config import REPO_ROOT, ConfigError
from pipelines.kubeflow.config import kubeflow_section
from tests.kfp_fixtures import kfp_server  # noqa: F401 - the fixture

EXAMPLE = os.path.join(REPO_ROOT, "infra", "kubeflow.example.yaml")
# TFX's KFP v2 entrypoint with the project's fixes for the open-source launcher
ENTRYPOINT = ["python", "-m", "pipelines.kubeflow.entrypoint"]
# the components of create_pipeline today; later ones are covered through create_pipeline()
TODAY = ["DeblurIngest", "StatisticsGen", "ImportSchemaGen", "ExampleValidator", "ValidationGate",
         "DomainDriftReport", "Trainer"]


def _example(**kubeflow_changes) -> config_lib.PipelineConfig:
    cfg = config_lib.load(EXAMPLE)
    if kubeflow_changes:
        cfg.kubeflow = {**cfg.kubeflow, **kubeflow_changes}
    return cfg


IMAGE_REPO = "deblur/deblur-pipeline"
IMAGE_TAGS = ("0.1.0", "0.1.0-tpu", "0.1.0-gpu")


@pytest.fixture(scope="module")
def registry():
    """tests/fake_registry.py serving the example's three images (the base, -tpu, -gpu): what
    upload and submit resolve the compiled specs' tags through."""
    from tests import fake_registry

    reg = fake_registry.start()
    for tag in IMAGE_TAGS:
        reg.push(IMAGE_REPO, tag)
    yield reg
    fake_registry.stop(reg)


def _on(reg, cfg: config_lib.PipelineConfig) -> config_lib.PipelineConfig:
    """The example's images, on the fake registry (same tags)."""
    kf = kubeflow_section(cfg)
    cfg.kubeflow = {
        **cfg.kubeflow, "image": reg.image(IMAGE_REPO, kf.image.rsplit(":", 1)[1]),
        "component_images": {k: reg.image(IMAGE_REPO, v.rsplit(":", 1)[1])
                             for k, v in kf.component_images.items()}}
    return cfg


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, registry):
    """{platform: (config, PipelineJob dict, package docs, spec path)} for gke and vertex, the
    images on the fake registry."""
    out = {}
    for platform in ("gke", "vertex"):
        cfg = _on(registry, _example(trainer_platform=platform))
        path = str(tmp_path_factory.mktemp(platform) / "deblur-icdpm.json")
        assert kc.compile_pipeline(cfg, path) == path
        with open(kc.package_path(path)) as f:
            docs = list(yaml.safe_load_all(f))
        out[platform] = (cfg, kc.load_job(path), docs, path)
    return out


def _spec(compiled, platform="gke"):
    return compiled[platform][1]["pipelineSpec"]


def _executor(spec, task):
    label = spec["components"][kc.all_tasks(spec)[task]["componentRef"]["name"]][
        "executorLabel"]
    return label, spec["deploymentSpec"]["executors"][label]


def _task_param(spec, task, name):
    return kc.dag_tasks(spec)[task]["inputs"]["parameters"][name]


def _param(spec, task, name):
    p = kc.dag_tasks(spec)[task]["inputs"]["parameters"][name]
    return p["runtimeValue"]["constant"]


# ---- config ---------------------------------------------------------------------------------
def test_example_config_loads_with_typed_kubeflow_section():
    cfg = config_lib.load(EXAMPLE)
    kf = kubeflow_section(cfg)
    assert kf.pipeline_root.startswith("gs://") and kf.image and kf.project == "my-project"
    assert kf.trainer_platform == "gke" and kf.missing() == []
    tr = kf.resources["Trainer"]
    assert (tr.accelerator, tr.accelerator_count) == ("google.com/tpu", 4)
    assert tr.node_selector["cloud.google.com/gke-tpu-topology"] == "2x2"
    assert kf.resolved_trainer_tpu() == "local"
    assert kubeflow_section(_example(trainer_platform="vertex")).resolved_trainer_tpu() == "env"
    kc.check_config(cfg)  # nothing missing


@pytest.mark.parametrize("kubeflow, message", [
    ({"pipeline_root": "/tmp/root"}, "gs:// URI"),
    ({"trainer_platform": "tpu-pod"}, "trainer_platform must be one of gke, vertex"),
    ({"resources": {"Trainer": {"accelerator": "google.com/tpu", "accelerator_count": 4}}},
     "cloud.google.com/gke-tpu-accelerator"),
    ({"resources": {"Trainer": {"accelerator": "NVIDIA_TESLA_T4", "accelerator_count": 1}}},
     "not a GKE accelerator resource"),
    ({"resources": {"Trainer": {"gpus": 1}}}, "unknown key(s) gpus"),
    ({"vertex": {"machine_type": "cloud-tpu", "accelerator_count": 4}}, "accelerator_count 8"),
    ({"dataflow": {"runner": "FlinkRunner"}}, "dataflow.runner"),
])
def test_config_format_errors(kubeflow, message):
    """The section's format checks run when Kubeflow code (or the command line) types it."""
    cfg = config_lib.from_dict({"kubeflow": kubeflow})  # plain data to pipelines/config.py
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kubeflow_section(cfg)


def test_compile_names_every_missing_field_at_once(tmp_path):
    with pytest.raises(ConfigError) as e:
        kc.compile_pipeline(config_lib.PipelineConfig(), str(tmp_path / "p.json"))
    for field in ("kubeflow.image", "kubeflow.pipeline_root", "kubeflow.project", "data.sources"):
        assert field in str(e.value)
    cfg = _example()
    cfg.data.sources[0] = dataclasses.replace(cfg.data.sources[0], root="/data/gopro")
    with pytest.raises(ConfigError, match="cannot read /data/gopro"):
        kc.check_config(cfg)


# ---- compiled spec --------------------------------------------------------------------------
def test_tasks_are_exactly_the_pipeline_components(compiled):
    from pipelines.kubeflow import placement
    from pipelines.pipeline import create_pipeline

    from tfx.dsl.components.common.resolver import Resolver

    for platform in ("gke", "vertex"):
        cfg, job, _, _ = compiled[platform]
        components = create_pipeline(kc.kubeflow_config(cfg), placement=placement,
                                     input_fingerprint=kc.FINGERPRINT_PLACEHOLDER).components
        # the run page's components come from the Kubeflow placement, not the pipeline
        assert {"TrainingReport", "RunSummary"} <= {c.id for c in components}
        # TFX compiles a Resolver node to one task per resolved channel: <id>-<channel>-resolver
        resolvers = {c.id for c in components if isinstance(c, Resolver)}
        tasks = set(kc.dag_tasks(job["pipelineSpec"]))
        resolved = {t for t in tasks if any(t.startswith(r + "-") for r in resolvers)}
        # + the task that fingerprints the ingest's inputs (add_input_fingerprint_task) and the
        # one that checks the run parameters before it (add_run_check_task)
        assert tasks - resolved == {c.id for c in components} - resolvers | {
            kc.FINGERPRINT_TASK, kc.CHECK_TASK}
        assert all(any(t.startswith(r + "-") for t in resolved) for r in resolvers)
        assert set(TODAY) <= tasks


def test_task_order(compiled):
    tasks = kc.dag_tasks(_spec(compiled))
    deps = {n: set(t.get("dependentTasks", [])) for n, t in tasks.items()}
    # ImportSchemaGen waits for the fingerprint task's cache_salt (add_cache_salt)
    assert deps["DeblurIngest"] == {kc.FINGERPRINT_TASK}
    assert deps["ImportSchemaGen"] == {kc.FINGERPRINT_TASK}
    assert deps[kc.FINGERPRINT_TASK] == {kc.CHECK_TASK} and deps[kc.CHECK_TASK] == set()
    assert deps["StatisticsGen"] == {"DeblurIngest"}
    assert deps["ExampleValidator"] == {"StatisticsGen", "ImportSchemaGen"}
    assert deps["ValidationGate"] == {"ExampleValidator"}
    assert deps["DomainDriftReport"] == {"StatisticsGen", "ImportSchemaGen"}
    assert deps["Trainer"] == {"DeblurIngest", "ValidationGate"}
    if "DeblurEvaluator" in deps:
        assert "Trainer" in deps["DeblurEvaluator"]
    order = [e["name"] for e in kc.describe(compiled["gke"][1])]
    assert all(order.index(d) < order.index(n) for n in deps for d in deps[n])


def test_schema_version_images_and_entrypoint(compiled):
    cfg, job, docs, _ = compiled["gke"]
    spec = job["pipelineSpec"]
    assert spec["schemaVersion"] == "2.1.0"  # the only one the KFP 2.0.x backend takes
    assert job["runtimeConfig"]["gcsOutputDirectory"] == kubeflow_section(cfg).pipeline_root
    for task in kc.all_tasks(spec):
        _, ex = _executor(spec, task)
        if "container" not in ex:
            continue  # TFX Resolver nodes (see unsupported_on_kfp)
        assert ex["container"]["image"] == kubeflow_section(cfg).image_for(task)
        # the image's ENTRYPOINT is not used
        assert ex["container"]["command"] == (
            kc.FINGERPRINT_COMMAND if task == kc.FINGERPRINT_TASK
            else kc.CHECK_COMMAND if task == kc.CHECK_TASK else ENTRYPOINT)
    assert _executor(spec, "Trainer")[1]["container"]["image"].endswith("-tpu")
    assert _executor(spec, "StatisticsGen")[1]["container"]["image"] == kubeflow_section(cfg).image
    # the checked-in schema, as seen inside the image
    assert _param(spec, "ImportSchemaGen", "schema_file") == "/opt/deblur/schemas/schema.pbtxt"


def test_dataflow_beam_args_in_the_beam_executors(compiled):
    cfg, job, _, _ = compiled["gke"]
    for task in ("DeblurIngest", "StatisticsGen"):
        args = _executor(job["pipelineSpec"], task)[1]["container"]["args"]
        for a in ("--runner=DataflowRunner", "--project=my-project", "--region=us-central1",
                  "--temp_location=gs://my-deblur-bucket/pipeline_root/beam-tmp",
                  "--machine_type=n2-standard-4", "--max_num_workers=16",
                  f"--sdk_container_image={kubeflow_section(cfg).image}", "--sdk_location=container",
                  "--experiments=use_runner_v2",
                  "--service_account_email=deblur-pipeline@my-project.iam.gserviceaccount.com"):
            assert a in args, (task, a)
        assert not any(a.startswith("--direct_") for a in args)  # not the local defaults


def test_gke_trainer_resources_and_node_selectors(compiled):
    cfg, job, docs, _ = compiled["gke"]
    spec = job["pipelineSpec"]
    label, ex = _executor(spec, "Trainer")
    assert ex["container"]["args"][1] == "tfx.components.trainer.executor.GenericExecutor"
    assert _task_param(spec, "Trainer", "train_steps") == {"componentInputParameter": "train_steps"}
    res = ex["container"]["resources"]
    assert res["accelerator"] == {"type": "google.com/tpu", "count": "4"}
    assert (res["cpuLimit"], res["memoryLimit"]) == (16.0, 64.0)
    custom = json.loads(_param(spec, "Trainer", "custom_config"))
    assert custom["tpu"] == "local" and custom["experiment"] == "S+Guide-S"
    assert "resources" not in _executor(spec, "StatisticsGen")[1]["container"]
    # the KFP package: the same spec with a default root, then the Kubernetes platform spec
    pkg_spec, platform = docs
    assert pkg_spec["root"] == spec["root"]
    assert pkg_spec["defaultPipelineRoot"] == kubeflow_section(cfg).pipeline_root
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors[label]["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
        "cloud.google.com/gke-tpu-topology": "2x2"}
    if "DeblurEvaluator" in kc.dag_tasks(spec):
        elabel, eex = _executor(spec, "DeblurEvaluator")
        assert eex["container"]["resources"]["accelerator"] == {"type": "nvidia.com/gpu",
                                                                "count": "1"}
        assert executors[elabel]["nodeSelector"]["labels"] == {
            "cloud.google.com/gke-accelerator": "nvidia-l4"}
    # the package parses as kfp 2.5's Client parses it
    from kfp.client import client as kfp_client

    doc = kfp_client._extract_pipeline_yaml(kc.package_path(compiled["gke"][3]))
    assert doc.pipeline_spec.pipeline_info.name == "deblur-icdpm"
    assert "kubernetes" in doc.platform_spec.platforms


def test_vertex_trainer_runs_a_custom_job_on_a_tpu_pool(compiled):
    cfg, job, docs, _ = compiled["vertex"]
    spec = job["pipelineSpec"]
    label, ex = _executor(spec, "Trainer")
    assert ex["container"]["args"][1] == (
        "tfx.extensions.google_cloud_ai_platform.trainer.executor.GenericExecutor")
    assert "resources" not in ex["container"]  # its pod only submits and waits
    custom = json.loads(_param(spec, "Trainer", "custom_config"))
    assert custom["ai_platform_enable_vertex"] is True
    assert custom["ai_platform_vertex_region"] == "us-central1"
    args = custom["ai_platform_training_args"]
    assert args["project"] == "my-project"
    pool, = args["job_spec"]["worker_pool_specs"]
    assert pool["machine_spec"] == {"machine_type": "cloud-tpu", "accelerator_type": "TPU_V3",
                                    "accelerator_count": 8}
    assert pool["container_spec"]["image_uri"] == kubeflow_section(cfg).image_for("Trainer")
    assert args["job_spec"]["service_account"].startswith("deblur-pipeline@")
    assert custom["tpu"] == "env"  # TPUClusterResolver() from Vertex's TPU_CONFIG
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(
        docs) > 1 else {}
    assert label not in executors
    entry = next(e for e in kc.describe(job, cfg) if e["name"] == "Trainer")
    assert entry["vertex_job"]["accelerator_type"] == "TPU_V3"


def test_vertex_gpu_workers_get_a_chief_pool_and_a_worker_pool():
    """vertex.workers: one chief replica and workers - 1 more of the same machine (Vertex sets
    TF_CONFIG; train() runs MultiWorkerMirroredStrategy); refused for TPUs in one line."""
    from pipelines.kubeflow import placement
    from pipelines.kubeflow.config import VertexTrainerConfig
    from tfx.extensions.google_cloud_ai_platform.trainer import executor

    cfg = _example()
    cfg.kubeflow["vertex"] = {
        **(cfg.kubeflow.get("vertex") or {}), "machine_type": "a2-highgpu-1g",
        "accelerator_type": "NVIDIA_TESLA_A100", "accelerator_count": 1, "workers": 4}
    job = placement.vertex_custom_config(cfg)[executor.TRAINING_ARGS_KEY]["job_spec"]
    chief, workers = job["worker_pool_specs"]
    assert (chief["replica_count"], workers["replica_count"]) == (1, 3)
    assert chief["machine_spec"] == workers["machine_spec"] == {
        "machine_type": "a2-highgpu-1g", "accelerator_type": "NVIDIA_TESLA_A100",
        "accelerator_count": 1}
    assert chief["container_spec"] == workers["container_spec"]
    with pytest.raises(ValueError, match="vertex.workers > 1 is for GPU machines"):
        VertexTrainerConfig(workers=2)  # cloud-tpu


def test_warm_start_looks_in_the_registry_on_kubeflow(compiled):
    """The example config warm-starts; open-source KFP cannot run Resolver nodes and its pods
    have no SQLite store: the Trainer finds the latest blessed model in the registry, when it
    runs (components/training.py), so the parent is not part of its cache key."""
    for platform in ("gke", "vertex"):
        spec = _spec(compiled, platform)
        custom = json.loads(_param(spec, "Trainer", "custom_config"))
        assert custom["warm_start"] == "latest_blessed"
        # a run parameter (KFP UI form, deblur submit --param warm_start=none), folded into
        # custom_config in the pod by pipelines/kubeflow/entrypoint.py
        assert _task_param(spec, "Trainer", "warm_start") == {
            "componentInputParameter": "warm_start"}
        assert custom["warm_start_source"] == {"registry_uri": "gs://my-deblur-bucket/registry",
                                               "model_name": "deblur-icdpm",
                                               "base_model": "auto"}  # training.base_model
        assert _param(spec, "Trainer", "run_fn") == "components.training.run_fn"


def test_local_pipeline_is_unplaced():
    from pipelines.pipeline import create_pipeline

    cfg = _example()
    cfg.runner.orchestrator = "local"
    comps = {c.id: c for c in create_pipeline(cfg, input_fingerprint="f" * 64).components}
    assert comps["Trainer"].platform_config is None
    assert type(comps["Trainer"]).__module__ == "tfx.components.trainer.component"
    assert "tpu" not in str(comps["Trainer"].exec_properties["custom_config"])


# ---- caching: the ingest's cache key sees the inputs -------------------------------------------
def test_ingest_cache_key_sees_the_fingerprint_of_the_inputs(compiled):
    """KFP's cache key holds parameter values, not the files under the gs:// roots: the ingest
    takes the fingerprint of its inputs as a parameter, from a task that is never cached."""
    for platform in ("gke", "vertex"):
        job, docs = compiled[platform][1], compiled[platform][2]
        for spec in (job["pipelineSpec"], docs[0]):  # the PipelineJob and the KFP package
            tasks = kc.dag_tasks(spec)
            ingest, fp = tasks["DeblurIngest"], tasks[kc.FINGERPRINT_TASK]
            assert ingest["cachingOptions"] == {"enableCache": True}  # example: enable_cache
            assert fp["cachingOptions"].get("enableCache", False) is False
            assert ingest["inputs"]["parameters"]["input_fingerprint"] == {"taskOutputParameter": {
                "producerTask": kc.FINGERPRINT_TASK, "outputParameterKey": "fingerprint"}}
            for name in ("sources", "options"):  # it lists exactly what the ingest reads
                assert fp["inputs"]["parameters"][name] == ingest["inputs"]["parameters"][name]
            # ingested units are kept for later runs under the pipeline root, not the run's
            assert ingest["inputs"]["parameters"]["unit_store"] == {"runtimeValue": {
                "constant": "gs://my-deblur-bucket/pipeline_root/DeblurIngest/units"}}
            comp = spec["components"][kc.FINGERPRINT_TASK]
            assert comp["outputDefinitions"]["parameters"] == {
                "fingerprint": {"parameterType": "STRING"},
                "cache_salt": {"parameterType": "STRING"}}  # add_cache_salt
            assert spec["components"]["DeblurIngest"]["inputDefinitions"]["parameters"][
                "input_fingerprint"] == {"parameterType": "STRING"}
            # every other task is cached (the example config), keyed on the ingest's outputs
            # (but the check before the fingerprint, and the summary of this run)
            assert all(t["cachingOptions"] == {"enableCache": True} for n, t in tasks.items()
                       if n not in (kc.FINGERPRINT_TASK, kc.CHECK_TASK, *kc.NEVER_CACHED))


def test_fingerprint_task_writes_what_the_ingest_will_check(compiled, tmp_path):
    """The task's container, its placeholders resolved as KFP's launcher resolves them, writes
    the fingerprint of the sources to its output parameter file."""
    from components.ingest.beam_ingest import input_fingerprint
    from components.ingest.sources import IngestOptions, IngestSource
    from pipelines.kubeflow import fingerprint as kfp_fingerprint
    from tests import fixtures as fx

    for i in range(2):
        fx.write_pair(str(tmp_path / "data" / "train" / "blur" / f"{i}.png"),
                      str(tmp_path / "data" / "train" / "sharp" / f"{i}.png"), (16, 16), seed=i)
    sources = [IngestSource("folder", str(tmp_path / "data"))]
    spec = _spec(compiled)
    _, ex = _executor(spec, kc.FINGERPRINT_TASK)
    options = _param(spec, kc.FINGERPRINT_TASK, "options")
    # the data_sources run parameter reaches it as it reaches the ingest, and wins over the
    # compiled sources there as here
    assert _task_param(spec, kc.FINGERPRINT_TASK, "data_sources") == \
        _task_param(spec, "DeblurIngest", "data_sources") == {
            "componentInputParameter": "data_sources"}
    values = {"{{$.inputs.parameters['sources']}}": _param(spec, "DeblurIngest", "sources"),
              "{{$.inputs.parameters['data_sources']}}": json.dumps([s.to_json() for s in sources]),
              "{{$.inputs.parameters['options']}}": options,
              "{{$.outputs.parameters['fingerprint'].output_file}}": str(tmp_path / "out" / "fp"),
              "{{$.outputs.parameters['cache_salt'].output_file}}": str(tmp_path / "out" / "salt"),
              # DeblurRunCheck found nothing wrong; the run keeps its cache
              "{{$.inputs.parameters['problems']}}": "", "{{$.inputs.parameters['cache']}}": "on"}
    args = [values.get(a, a) for a in ex["container"]["args"]]
    assert not [a for a in args if "{{" in a]
    assert ex["container"]["command"][-1] == "pipelines.kubeflow.fingerprint"
    assert kfp_fingerprint.main(args) == 0
    want = input_fingerprint(sources, IngestOptions(**json.loads(options)))
    assert (tmp_path / "out" / "fp").read_text() == want
    assert (tmp_path / "out" / "salt").read_text() == ""  # cache on: keys as in earlier runs


def test_caching_without_a_fingerprint_is_refused():
    from pipelines.pipeline import create_pipeline

    cfg = _example()
    cfg.runner.orchestrator = "local"
    with pytest.raises(ConfigError, match="enable_cache needs the fingerprint"):
        create_pipeline(cfg)


# ---- cron -----------------------------------------------------------------------------------
@pytest.mark.parametrize("cron", ["0 0 3 * * 1", "0 30 2 1 * ?", "0 0 */6 * * *", "0 0 4 * * mon-fri",
                                  "0 0 0 1 jan,jul *", "@daily", "@every 12h"])
def test_valid_cron(cron):
    assert kcron.validate_cron(cron) == cron


@pytest.mark.parametrize("cron, message", [
    ("0 3 * * 1", "has 5 fields"), ("0 0 3 * *  * *", "6 fields"), ("0 60 3 * * *", "outside 0-59"),
    ("0 0 25 * * *", "outside 0-23"), ("0 0 3 * * 1/0", "positive"), ("0 0 3 * * fun", "not a number"),
    ("@fortnightly", "unknown descriptor"), ("", "empty"),
])
def test_invalid_cron(cron, message):
    with pytest.raises(ValueError, match=message):
        kcron.validate_cron(cron)


# ---- submit against a fake KFP API ------------------------------------------------------------
def _pinned(job):
    """The job's pipeline spec as upload sends it: images by digest (from the fake registry)."""
    spec = copy.deepcopy(job["pipelineSpec"])
    images.pin_images(spec)
    return spec


def _version_uploads(srv):
    return [r for r in srv.requests
            if (r["method"], r["path"]) == ("POST", "/apis/v2beta1/pipelines/upload_version")]


def test_upload_registers_a_pipeline_version_named_from_the_version_and_commit(
        compiled, kfp_server, capsys):
    """`deblur pipeline upload`: the pipeline (created once, empty) and a version holding the
    package; the same package again is the same version, another one under the same name is
    refused in one line."""
    from deblur import cli

    cfg, job, _, path = compiled["gke"]
    r = kclient.upload(cfg, path, kfp_server.url)
    commit, dirty = kclient.git_commit()
    assert r["created"] and r["created_pipeline"]
    assert r["version_name"].startswith(f"{kclient.project_version()}-")
    if commit:
        assert r["version_name"].split("-")[1] == commit and ("-dirty-" in r["version_name"]) == dirty
    pipe, = kfp_server.bodies("POST", "/apis/v2beta1/pipelines")
    assert pipe["display_name"] == "deblur-icdpm-dev"  # experiments: never what a schedule runs
    up, = _version_uploads(kfp_server)
    assert up["query"]["pipelineid"] == [r["pipeline_id"]]
    assert up["query"]["name"] == [r["version_name"]]
    description = up["query"]["description"][0]
    assert f"package sha256:{r['digest']}" in description
    # the package uploaded is the one `deblur compile` writes (spec with defaults + platform
    # spec), its images named by digest
    docs = list(yaml.safe_load_all(up["file"]))
    assert docs[0]["root"] == _pinned(job)["root"]
    assert images.tag_images(docs[0]) == [] and images.tag_images(job["pipelineSpec"])
    # the description records them, and the config's hash
    pinned = images.images(docs[0])
    assert len(pinned) == 3 and all(f"{i}" in description for i in pinned)
    assert f"config sha256:{images.config_digest(docs[0])}" in description
    assert docs[0]["defaultPipelineRoot"] == kubeflow_section(cfg).pipeline_root
    assert "kubernetes" in docs[1]["platforms"]
    stored = kfp_server.version_spec(r["version_id"])
    assert stored["root"]["inputDefinitions"]["parameters"]["gate_input_psnr_tolerance"][
        "defaultValue"] == 0.0
    assert r["url"] == (f"{kfp_server.url}/#/pipelines/details/{r['pipeline_id']}/version/"
                        f"{r['version_id']}")
    # again: nothing new
    again = kclient.upload(cfg, path, kfp_server.url)
    assert not again["created"] and again["version_id"] == r["version_id"]
    assert len(_version_uploads(kfp_server)) == 1
    assert len(kfp_server.bodies("POST", "/apis/v2beta1/pipelines")) == 1
    # another package under that name: refused, in one line, by the CLI
    other = compiled["vertex"][3]
    assert cli.main(["pipeline", "upload", "--config", EXAMPLE, "--spec", other,
                     "--host", kfp_server.url, "--version-name", r["version_name"]]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already has a version" in err[0] and "--version-name" in err[0]
    assert cli.main(["pipeline", "upload", "--config", EXAMPLE, "--spec", other,
                     "--host", kfp_server.url, "--version-name", "vertex-1"]) == 0
    out = capsys.readouterr().out
    assert "pipeline deblur-icdpm-dev version vertex-1: uploaded" in out
    assert len(_version_uploads(kfp_server)) == 2


def test_submit_run_references_the_pipeline_version(compiled, kfp_server):
    cfg, job, _, path = compiled["gke"]
    r = kclient.submit(cfg, path, kfp_server.url, experiment="deblur-test", run_name="smoke")
    ver = r["pipeline_version"]
    assert r["kind"] == "run" and r["id"].startswith("run-") and r["experiment_id"].startswith("exp-")
    assert r["url"] == f"{kfp_server.url}/#/runs/details/{r['id']}"
    assert [b["display_name"] for b in kfp_server.bodies("POST", "/apis/v2beta1/experiments")] == [
        "deblur-test"]
    run, = kfp_server.bodies("POST", "/apis/v2beta1/runs")
    assert "pipeline_spec" not in run or run["pipeline_spec"] is None  # no inline spec
    assert run["pipeline_version_reference"] == {"pipeline_id": ver["pipeline_id"],
                                                 "pipeline_version_id": ver["version_id"]}
    assert run["experiment_id"] == r["experiment_id"] and run["display_name"] == "smoke"
    assert run["runtime_config"]["pipeline_root"] == "gs://my-deblur-bucket/pipeline_root"
    assert run["service_account"] == "deblur-pipeline"
    # every parameter's value: the version's defaults (the backend need not fill any)
    assert run["runtime_config"]["parameters"] == kc.compiled_defaults(
        kfp_server.version_spec(ver["version_id"]))
    # the version holds the spec with the node selectors
    assert kfp_server.version_spec(ver["version_id"])["deploymentSpec"] == \
        _pinned(job)["deploymentSpec"]
    # a second submission reuses the experiment and the version
    r2 = kclient.submit(cfg, path, kfp_server.url, experiment="deblur-test")
    assert len(kfp_server.bodies("POST", "/apis/v2beta1/experiments")) == 1
    assert len(_version_uploads(kfp_server)) == 1
    assert r2["pipeline_version"]["version_id"] == ver["version_id"]
    # its default name: the pipeline and the version, no temp file
    second = kfp_server.bodies("POST", "/apis/v2beta1/runs")[1]
    assert second["display_name"] == f"deblur-icdpm-dev {ver['version_name']}"


def test_default_run_name_lists_the_parameters_that_differ(compiled, kfp_server):
    cfg, job, _, path = compiled["gke"]
    r = kclient.submit(cfg, path, kfp_server.url, params={
        "train_steps": "5000", "gate_ood_lpips_max": "0.2",  # 0.2 is the default: not named
        "data_sources": json.dumps([{"layout": "gopro", "root": "gs://b/gopro"}])},
        no_cache=True)
    run, = kfp_server.bodies("POST", "/apis/v2beta1/runs")
    v = r["pipeline_version"]["version_name"]
    assert run["display_name"] == (
        f"deblur-icdpm-dev {v} cache=off data_sources=1 source(s) train_steps=5000")
    assert run["runtime_config"]["parameters"]["cache"] == "off"


def test_no_cache_turns_the_cache_parameter_off_for_that_run_only(compiled, kfp_server, capsys):
    """--no-cache keeps the version reference: the run parameter cache=off makes the fingerprint
    task salt its output, so the ingest's cache key is new (tested below with the task)."""
    from deblur import cli

    cfg, job, _, path = compiled["gke"]
    assert job["runtimeConfig"]["parameterValues"]["cache"] == "on"
    assert cli.main(["submit", "--config", EXAMPLE, "--spec", path, "--host", kfp_server.url,
                     "--no-cache"]) == 0
    assert "parameters: cache=off" in capsys.readouterr().out
    assert cli.main(["submit", "--config", EXAMPLE, "--spec", path, "--host",
                     kfp_server.url]) == 0
    first, second = kfp_server.bodies("POST", "/apis/v2beta1/runs")
    assert first["runtime_config"]["parameters"]["cache"] == "off"
    assert second["runtime_config"]["parameters"]["cache"] == "on"
    assert first["pipeline_version_reference"] == second["pipeline_version_reference"]


CLEAN = ("ab12cd34ef", False)


def _release(cfg, path, srv, monkeypatch, commit=CLEAN, name=None):
    """A release of `path` from a clean checkout (git_commit as `commit` says)."""
    monkeypatch.setattr(kclient, "git_commit", lambda *a: commit)
    return kclient.release(cfg, srv.url, spec_file=path) if name is None else \
        kclient.release(cfg, srv.url, version=name)


def test_submit_schedule_follows_the_newest_release(compiled, kfp_server, monkeypatch):
    """A recurring run uploads nothing: it names the release pipeline, not a version (KFP >=
    2.5.0 runs its newest version each time), and sends only the overrides, so each release's
    own defaults fill the rest."""
    cfg, job, _, path = compiled["vertex"]
    with pytest.raises(kclient.SubmitError, match="no release yet: schedules run releases only"):
        kclient.submit(cfg, None, kfp_server.url, schedule="0 0 3 * * 1")
    rel = _release(cfg, path, kfp_server, monkeypatch)
    assert rel["pipeline"] == "deblur-icdpm" and rel["version_name"].startswith(f"{kclient.project_version()}-ab12cd34ef-")
    uploads = len(_version_uploads(kfp_server))
    r = kclient.submit(cfg, None, kfp_server.url, schedule="0 0 3 * * 1",
                       params={"train_steps": "5000"})
    assert len(_version_uploads(kfp_server)) == uploads  # nothing uploaded by a schedule
    assert r["kind"] == "recurring_run" and r["follows"] == "newest"
    assert r["pipeline_version"]["version_id"] == rel["version_id"]
    assert r["url"] == f"{kfp_server.url}/#/recurringrun/details/{r['id']}"
    rr, = kfp_server.bodies("POST", "/apis/v2beta1/recurringruns")
    assert rr["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 1"}}
    assert rr["mode"] == "ENABLE" and int(rr["max_concurrency"]) == 1 and rr["no_catchup"] is True
    assert rr["pipeline_version_reference"] == {"pipeline_id": rel["pipeline_id"]}
    assert rr.get("pipeline_spec") is None
    assert rr["runtime_config"] == {"pipeline_root": kubeflow_section(cfg).pipeline_root,
                                    "parameters": {"train_steps": 5000}}
    assert rr["service_account"] == "deblur-pipeline"
    assert rr["display_name"] == "deblur-icdpm (newest release) train_steps=5000 0 0 3 * * 1"
    # pinned: the release's id; by name: that release
    r2 = kclient.submit(cfg, None, kfp_server.url, schedule="@daily", pin_version=True)
    rr2 = kfp_server.bodies("POST", "/apis/v2beta1/recurringruns")[1]
    assert rr2["pipeline_version_reference"]["pipeline_version_id"] == rel["version_id"]
    assert r2["follows"] == "pinned"
    with pytest.raises(kclient.SubmitError, match="no release nope"):
        kclient.submit(cfg, None, kfp_server.url, schedule="@daily", version="nope")
    # a parameter the release does not take is refused against the release's own spec
    with pytest.raises(ConfigError, match="no_such_param"):
        kclient.submit(cfg, None, kfp_server.url, schedule="@daily",
                       params={"no_such_param": "1"})


def test_a_dirty_one_off_run_never_changes_what_a_schedule_runs(compiled, kfp_server,
                                                                monkeypatch, capsys):
    """The reproduction of issue 36: a weekly schedule, then a one-off run from a work tree
    with uncommitted changes (another package). The run's version goes to the dev pipeline;
    the schedule's next version is still the release."""
    from deblur import cli

    cfg, _, _, path = compiled["gke"]
    other = compiled["vertex"][3]
    rel = _release(cfg, path, kfp_server, monkeypatch)
    sched = kclient.submit(cfg, None, kfp_server.url, schedule="0 0 3 * * 1")
    host = ["--config", EXAMPLE, "--host", kfp_server.url]
    monkeypatch.setattr(kclient, "git_commit", lambda *a: ("ab12cd34ef", True))
    assert cli.main(["submit", "--spec", other, *host]) == 0
    out = capsys.readouterr().out
    assert "pipeline deblur-icdpm-dev version" in out and "-dirty-" in out
    run, = kfp_server.bodies("POST", "/apis/v2beta1/runs")
    dev_pipeline = run["pipeline_version_reference"]["pipeline_id"]
    assert dev_pipeline != rel["pipeline_id"]
    # the schedule's next run: still the release (listed, and as the server resolves it)
    assert cli.main(["schedule", "list", *host]) == 0
    out = capsys.readouterr().out
    assert f"next run: deblur-icdpm {rel['version_name']} (the newest, today)" in out
    listed, = kclient.schedules(cfg, kfp_server.url)["schedules"]
    assert listed["id"] == sched["id"] and listed["version"] == rel["version_name"]
    newest = max((v for v in kfp_server.versions.values()
                  if v["pipeline_id"] == rel["pipeline_id"]), key=lambda v: v["created_at"])
    assert newest["pipeline_version_id"] == rel["version_id"]
    # and a release from that dirty tree is refused, in one line, before any request
    n = len(kfp_server.requests)
    assert cli.main(["pipeline", "release", "--spec", other, *host]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "uncommitted changes" in err[0]
    assert len(kfp_server.requests) == n
    # so is releasing the dirty dev version by name
    dirty_name = kfp_server.versions[run["pipeline_version_reference"][
        "pipeline_version_id"]]["display_name"]
    assert cli.main(["pipeline", "release", dirty_name, *host]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "built with uncommitted changes" in err[0]
    assert listed["version"] == kclient.schedules(cfg, kfp_server.url)["schedules"][0]["version"]


def test_release_a_tested_dev_version_as_it_is(compiled, kfp_server, monkeypatch, capsys):
    """`deblur pipeline release DEV_VERSION`: the package that ran on dev becomes the newest
    release (same spec, its commit in the description), and a following schedule takes it."""
    from deblur import cli

    cfg, _, _, path = compiled["gke"]
    first = _release(cfg, compiled["vertex"][3], kfp_server, monkeypatch,
                     commit=("0123456789", False))
    monkeypatch.setattr(kclient, "git_commit", lambda *a: CLEAN)
    sched = kclient.submit(cfg, None, kfp_server.url, schedule="@weekly")
    dev = kclient.submit(cfg, path, kfp_server.url)["pipeline_version"]
    host = ["--config", EXAMPLE, "--host", kfp_server.url]
    assert cli.main(["pipeline", "release", dev["version_name"], *host]) == 0
    out = capsys.readouterr().out
    assert f"pipeline deblur-icdpm version {dev['version_name']}: uploaded" in out
    rel = [v for v in kfp_server.versions.values() if v["pipeline_id"] == first["pipeline_id"]]
    assert [v["display_name"] for v in rel] == [first["version_name"], dev["version_name"]]
    assert rel[1]["_spec"] == kfp_server.version_spec(dev["version_id"])
    assert "commit ab12cd34ef;" in rel[1]["description"]
    assert f"released from deblur-icdpm-dev version {dev['version_name']}" in rel[1]["description"]
    row, = kclient.schedules(cfg, kfp_server.url)["schedules"]
    assert row["id"] == sched["id"] and row["version"] == dev["version_name"]
    # again: the same package, nothing new
    assert cli.main(["pipeline", "release", dev["version_name"], *host]) == 0
    assert "already there" in capsys.readouterr().out
    assert cli.main(["pipeline", "release", "no-such-version", *host]) == 2
    assert "has no version no-such-version" in capsys.readouterr().err


def test_pipeline_versions_prunes_but_never_a_release_or_a_pinned_version(
        compiled, kfp_server, monkeypatch, capsys):
    from deblur import cli

    cfg, _, _, path = compiled["gke"]
    old_rel = _release(cfg, path, kfp_server, monkeypatch, commit=("0123456789", False))
    pinned = kclient.submit(cfg, None, kfp_server.url, schedule="@daily", pin_version=True)
    new_rel = _release(cfg, compiled["vertex"][3], kfp_server, monkeypatch)
    kclient.submit(cfg, None, kfp_server.url, schedule="@weekly")  # follows new_rel
    devs = [kclient.upload(cfg, path, kfp_server.url, version=f"exp-{i}")["version_id"]
            for i in range(3)]
    host = ["--config", EXAMPLE, "--host", kfp_server.url]
    assert cli.main(["pipeline", "versions", "--keep", "1", *host]) == 0
    out = capsys.readouterr().out
    assert "2 version(s) would be deleted: add --delete" in out
    assert "the newest release" in out and f"pinned by {pinned['id']}" in out
    assert len(kfp_server.versions) == 5  # a dry run
    assert cli.main(["pipeline", "versions", "--keep", "1", "--delete", *host]) == 0
    assert ("DELETE", f"/apis/v2beta1/pipelines/{kfp_server.versions[devs[2]]['pipeline_id']}"
                      f"/versions/{devs[0]}") in kfp_server.calls()
    assert set(kfp_server.versions) == {old_rel["version_id"], new_rel["version_id"], devs[2]}
    assert cli.main(["pipeline", "versions", "--delete", *host]) == 2
    assert "--delete needs --keep" in capsys.readouterr().err


def test_schedule_list_pause_resume_delete(compiled, kfp_server, capsys, monkeypatch):
    from deblur import cli

    cfg, _, _, path = compiled["gke"]
    rel = _release(cfg, path, kfp_server, monkeypatch)
    a = kclient.submit(cfg, None, kfp_server.url, schedule="0 0 3 * * 1")
    b = kclient.submit(cfg, None, kfp_server.url, schedule="@daily", pin_version=True,
                       params={"train_steps": "7"})
    kclient.submit(cfg, None, kfp_server.url, schedule="@weekly", experiment="elsewhere")
    host = ["--config", EXAMPLE, "--host", kfp_server.url]
    assert cli.main(["schedule", "list", *host]) == 0
    out = capsys.readouterr().out
    assert a["id"] in out and b["id"] in out and out.count("enabled") == 2  # not "elsewhere"'s
    assert f"next run: deblur-icdpm {rel['version_name']} (the newest, today)" in out
    assert (f"next run: deblur-icdpm {rel['version_name']} (pinned); "
            f"parameters: train_steps=7") in out
    assert cli.main(["schedule", "pause", a["id"], *host]) == 0
    assert f"{a['id']}  paused" in capsys.readouterr().out
    assert kfp_server.recurring_runs[a["id"]]["status"] == "DISABLED"
    assert ("POST", f"/apis/v2beta1/recurringruns/{a['id']}:disable") in kfp_server.calls()
    assert cli.main(["schedule", "resume", a["id"], *host]) == 0
    assert f"{a['id']}  enabled" in capsys.readouterr().out
    assert ("POST", f"/apis/v2beta1/recurringruns/{a['id']}:enable") in kfp_server.calls()
    assert cli.main(["schedule", "delete", b["id"], *host]) == 0
    assert capsys.readouterr().out.strip() == f"deleted recurring run {b['id']}"
    assert b["id"] not in kfp_server.recurring_runs
    assert cli.main(["schedule", "list", "--all", "--json", *host]) == 0
    listed = json.loads(capsys.readouterr().out)["schedules"]
    assert sorted(s["id"] for s in listed) == sorted(set(kfp_server.recurring_runs))
    # one line for a mistake: no id, an unknown id
    assert cli.main(["schedule", "pause", *host]) == 2
    assert "name the recurring run id" in capsys.readouterr().err
    assert cli.main(["schedule", "delete", "rr-404", *host]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "404" in err[0] and "rr-404" in err[0]


def test_submit_errors_are_one_liners(compiled, kfp_server):
    cfg, _, _, path = compiled["gke"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(kclient.SubmitError, match="cannot reach the KFP API"):
        kclient.submit(cfg, path, closed)
    with pytest.raises(ValueError, match="has 5 fields"):
        kclient.submit(cfg, path, kfp_server.url, schedule="0 3 * * 1")
    assert kfp_server.requests == []  # the cron is checked before anything is sent
    with pytest.raises(kclient.SubmitError, match="404"):
        kclient.submit(cfg, path, kfp_server.url + "/nothing-here")


# ---- images by digest (pipelines/kubeflow/images.py, tests/fake_registry.py) ---------------
@pytest.mark.parametrize("auth", ["none", "anonymous token", "credential"])
def test_resolve_digest_asks_the_registry_for_the_tag(auth, monkeypatch):
    """A tag's digest is the registry's Docker-Content-Digest, the sha256 of the manifest it
    serves; behind a Bearer challenge, with a token from the realm (anonymous, or for the
    access token in DEBLUR_REGISTRY_TOKEN, sent as Basic oauth2accesstoken:<token>)."""
    import base64
    import hashlib

    from tests import fake_registry

    reg = fake_registry.start(token=auth != "none",
                              credential="access-123" if auth == "credential" else None)
    try:
        digest = reg.push("deblur/pipeline", "0.1.0")
        body = reg.manifests[("deblur/pipeline", "0.1.0")]
        assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
        monkeypatch.delenv(images.TOKEN_ENV, raising=False)
        if auth == "credential":
            # without the credential the realm refuses: one line naming the variable
            with pytest.raises(images.ImageError) as e:
                images.resolve_digest(reg.image("deblur/pipeline", "0.1.0"))
            assert len(str(e.value).splitlines()) == 1 and images.TOKEN_ENV in str(e.value)
            assert "401" in str(e.value) and "0.1.0" in str(e.value)
            monkeypatch.setenv(images.TOKEN_ENV, "access-123")
            reg.requests.clear()
            # the access token is sent as a Bearer first (Artifact Registry takes it so)
            assert images.resolve_digest(reg.image("deblur/pipeline", "0.1.0")) == \
                f"{reg.host}/deblur/pipeline@{digest}"
            assert reg.requests == [("HEAD", "/v2/deblur/pipeline/manifests/0.1.0",
                                     "Bearer access-123")]
            # at the realm: Basic oauth2accesstoken:<token>
            reg.requests.clear()
            images._token("i", {"realm": f"http://{reg.host}/token", "service": "s"},
                          "access-123")
            basic = base64.b64encode(b"oauth2accesstoken:access-123").decode()
            assert reg.requests == [("GET", "/token", f"Basic {basic}")]
            return
        assert images.resolve_digest(reg.image("deblur/pipeline", "0.1.0")) == \
            f"{reg.host}/deblur/pipeline@{digest}"
        paths = [(m, p) for m, p, _ in reg.requests]
        if auth == "none":
            assert paths == [("HEAD", "/v2/deblur/pipeline/manifests/0.1.0")]
        else:
            assert paths == [("HEAD", "/v2/deblur/pipeline/manifests/0.1.0"), ("GET", "/token"),
                             ("HEAD", "/v2/deblur/pipeline/manifests/0.1.0")]
            assert reg.requests[-1][2] == f"Bearer {reg.issued[0]}"
    finally:
        fake_registry.stop(reg)


def test_image_names_and_refusals(registry):
    """A digest is kept as it is (no request); an image without tag or digest, a malformed
    digest, an unknown tag, an unreachable registry: one line each, saying what to do."""
    pinned = f"{registry.host}/deblur/x@sha256:{'ab' * 32}"
    before = len(registry.requests)
    assert images.resolve_digest(pinned) == pinned and len(registry.requests) == before
    assert images.parse("ubuntu:22.04") == ("registry-1.docker.io", "library/ubuntu", "22.04",
                                            None)
    assert images.parse("localhost/a/b:1")[:2] == ("localhost", "a/b")
    assert images.parse("us-docker.pkg.dev/p/r/i:1.0")[:3] == ("us-docker.pkg.dev", "p/r/i",
                                                               "1.0")
    assert images._scheme("127.0.0.1:5000") == "http" and images._scheme("gcr.io") == "https"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{s.getsockname()[1]}"
    for image, message in [
            (f"{registry.host}/{IMAGE_REPO}", "names neither a tag nor a digest"),
            (f"{registry.host}/{IMAGE_REPO}@sha256:abc", "64 lowercase hex"),
            (registry.image(IMAGE_REPO, "9.9.9"), "404 Not Found; no manifest under that tag"),
            (f"{closed}/deblur/x:1", "cannot reach the registry")]:
        with pytest.raises(images.ImageError) as e:
            images.resolve_digest(image)
        text = str(e.value)
        assert len(text.splitlines()) == 1 and message in text and image in text, text
        assert "repo@sha256:" in text


def test_pin_images_names_every_image_of_the_spec_by_digest(compiled, registry):
    """Executors, the Dataflow --sdk_container_image, the Vertex CustomJob's image_uri and the
    compiled config the check task carries: each tag resolved once, whole names only (the
    base tag 0.1.0 must not be matched inside 0.1.0-tpu)."""
    cfg, job, _, _ = compiled["vertex"]
    spec = copy.deepcopy(job["pipelineSpec"])
    assert sorted(images.tag_images(spec)) == sorted(
        registry.image(IMAGE_REPO, t) for t in IMAGE_TAGS)
    before = len(registry.manifest_requests())
    table = images.pin_images(spec)
    assert len(registry.manifest_requests()) - before == 3  # one HEAD per distinct image
    assert images.tag_images(spec) == []
    digests = {t: registry.host + "/" + IMAGE_REPO + "@" + registry.push(IMAGE_REPO, t)
               for t in IMAGE_TAGS}  # the same manifests again: the same digests
    assert table == {registry.image(IMAGE_REPO, t): d for t, d in digests.items()}
    text = json.dumps(spec)
    assert registry.image(IMAGE_REPO, "0.1.0") not in text
    assert _executor(spec, "Trainer")[1]["container"]["image"] == digests["0.1.0-tpu"]
    assert _executor(spec, "StatisticsGen")[1]["container"]["image"] == digests["0.1.0"]
    assert f"--sdk_container_image={digests['0.1.0']}" in _executor(
        spec, "DeblurIngest")[1]["container"]["args"]
    custom = json.loads(_param(spec, "Trainer", "custom_config"))
    pool = custom["ai_platform_training_args"]["job_spec"]["worker_pool_specs"][0]
    assert pool["container_spec"]["image_uri"] == digests["0.1.0-tpu"]
    config = json.loads(_param(spec, kc.CHECK_TASK, "config"))
    assert config["kubeflow"]["image"] == digests["0.1.0"]
    assert config["kubeflow"]["component_images"]["DeblurEvaluator"] == digests["0.1.0-gpu"]
    # pinned again: nothing to resolve
    assert images.pin_images(spec) == {}


def test_an_unknown_tag_is_refused_in_one_line_before_any_upload(compiled, kfp_server,
                                                                  tmp_path, capsys):
    from deblur import cli

    _, job, _, _ = compiled["gke"]
    bad = copy.deepcopy(job)
    label, ex = _executor(bad["pipelineSpec"], "Trainer")
    tpu = ex["container"]["image"]
    missing = tpu.replace(":0.1.0-tpu", ":9.9.9-tpu")
    ex["container"]["image"] = missing
    spec = tmp_path / "deblur-icdpm.json"
    spec.write_text(json.dumps(bad))
    assert cli.main(["pipeline", "upload", "--config", EXAMPLE, "--spec", str(spec),
                     "--host", kfp_server.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0] and "push the image first" in err[0], err
    assert kfp_server.requests == []  # not even healthz
    assert cli.main(["submit", "--config", EXAMPLE, "--spec", str(spec),
                     "--host", kfp_server.url]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and missing in err[0], err
    assert _version_uploads(kfp_server) == [] and kfp_server.runs == {}


def test_same_commit_other_config_or_image_is_another_version(compiled, kfp_server, registry,
                                                              tmp_path):
    """The version name holds the pinned package's hash: the gke and the vertex compiles of one
    commit are two versions, and so is the same spec once its tag was pushed again (and a .yaml
    package named by tags is pinned like the .json)."""
    cfg, _, _, gke = compiled["gke"]
    vertex_cfg, _, _, vertex = compiled["vertex"]
    a = kclient.upload(cfg, gke, kfp_server.url)
    b = kclient.upload(vertex_cfg, vertex, kfp_server.url)
    assert a["created"] and b["created"] and a["version_name"] != b["version_name"]
    commit, _ = kclient.git_commit()
    if commit:
        assert a["version_name"].split("-")[1] == b["version_name"].split("-")[1] == commit
    # the KFP package written by compile (tags) is pinned too: the same version as its .json
    again = kclient.upload(cfg, kc.package_path(gke), kfp_server.url)
    assert not again["created"] and again["version_id"] == a["version_id"]
    try:
        moved = registry.push(IMAGE_REPO, "0.1.0", content="rebuilt")
        c = kclient.upload(cfg, gke, kfp_server.url)
        assert c["created"] and c["version_name"] not in (a["version_name"], b["version_name"])
        up = _version_uploads(kfp_server)[-1]
        assert f"{IMAGE_REPO}@{moved}" in up["query"]["description"][0]
        stored = kfp_server.version_spec(c["version_id"])
        assert _executor(stored, "StatisticsGen")[1]["container"]["image"].endswith(moved)
    finally:
        registry.push(IMAGE_REPO, "0.1.0")  # the digest the other tests pinned
    assert len(_version_uploads(kfp_server)) == 3
    descriptions = [u["query"]["description"][0] for u in _version_uploads(kfp_server)]
    # the config as the run's check task reads it (its images by digest): three configs
    assert len({d.split("config sha256:")[1] for d in descriptions}) == 3


def test_cli_submit_prints_the_run_and_fails_in_one_line(compiled, kfp_server, capsys):
    from deblur import cli

    cfg, _, _, path = compiled["gke"]
    assert cli.main(["submit", "--config", EXAMPLE, "--spec", path,
                     "--host", kfp_server.url]) == 0
    out = capsys.readouterr().out
    run_id = next(iter(kfp_server.runs))
    assert f"run {run_id} in KFP experiment deblur: deblur-icdpm-dev " in out
    assert f"/#/runs/details/{run_id}" in out and "(uploaded)" in out
    assert cli.main(["submit", "--config", EXAMPLE, "--spec", path, "--host", kfp_server.url,
                     "--schedule", "0 3 * * 1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("deblur: error: --schedule")


# ---- a host that answers HTML (an auth proxy's login page, a wrong port-forward) ------------
class _HTMLServer:
    """A loopback server answering every request with a login page: `mode` "html" (200
    text/html everywhere), "redirect" (302 to /login, which is the page) or "html-after-healthz"
    (healthz answers the API's JSON, every other path redirects to the login page: what a
    proxy protecting only the API's data would do; kfp's urllib3 follows the redirect)."""

    def __init__(self, mode):
        import http.server
        import threading

        page = b"<html><head><title>Sign in</title></head><body>login</body></html>"

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                path = self.path.split("?")[0]
                if mode == "html-after-healthz" and path.endswith("/healthz"):
                    body, ctype, code = b'{"multi_user": false}', "application/json", 200
                elif mode != "html" and path != "/login":
                    self.send_response(302)
                    self.send_header("Location", "/login")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                else:
                    body, ctype, code = page, "text/html; charset=utf-8", 200
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("mode", ["html", "redirect", "html-after-healthz"])
def test_a_host_answering_html_is_named_in_one_line_by_every_command(compiled, capsys, mode):
    """`schedule list` printed "no recurring runs" and `schedule pause` a TypeError: kfp read
    the login page into empty models. Every command of the KFP path now stops in one line
    naming the host and what it answered (exit 2), before anything else is sent."""
    from deblur import cli

    path = compiled["gke"][3]
    srv = _HTMLServer(mode)
    try:
        host = ["--config", EXAMPLE, "--host", srv.url]
        commands = [["pipeline", "upload", "--spec", path, *host],
                    ["submit", "--spec", path, *host],
                    ["submit", "--schedule", "@daily", *host],
                    ["pipeline", "release", "0.1.0-ab12cd34ef", *host],
                    ["pipeline", "versions", *host],
                    ["schedule", "list", *host], ["schedule", "list", "--all", *host],
                    ["schedule", "pause", "rr-1", *host], ["schedule", "resume", "rr-1", *host],
                    ["schedule", "delete", "rr-1", *host]]
        for argv in commands:
            assert cli.main(argv) == 2, argv
            out, err = capsys.readouterr()
            lines = err.strip().splitlines()
            assert len(lines) == 1, (argv, err)
            assert f"KFP at {srv.url} answered" in lines[0], (argv, lines)
            assert "a login page, or the wrong port?" in lines[0]
            said = "a redirect (302) to /login" if mode == "redirect" else "HTML"
            assert f"answered {said}" in lines[0], (argv, lines)
            assert "no recurring runs" not in out
    finally:
        srv.stop()


def test_check_answer_takes_json_and_empty_bodies_only():
    kclient.check_answer("h", "x", "application/json", '{"a": 1}')
    kclient.check_answer("h", "x", "application/json", "")
    with pytest.raises(kclient.SubmitError, match="answered HTML"):
        kclient.check_answer("h", "x", None, "  <!DOCTYPE html><html>login</html>")
    with pytest.raises(kclient.SubmitError, match="answered text/plain that is not JSON"):
        kclient.check_answer("h", "x", "text/plain", "Forbidden")


# ---- the fake refuses the list queries the API server refuses ---------------------------------
def _get(url):
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def test_fake_kfp_refuses_list_queries_the_server_refuses():
    import urllib.parse

    from tests import fake_kfp_api

    srv = fake_kfp_api.start()
    try:
        def q(path, **params):
            return _get(f"{srv.url}/apis/v2beta1/{path}?{urllib.parse.urlencode(params)}")

        def pred(key, **value):
            return json.dumps({"predicates": [{"operation": "EQUALS", "key": key, **value}]})

        for name in ("a", "b", "c"):
            srv.experiments[f"exp-{name}"] = {"experiment_id": f"exp-{name}",
                                              "display_name": name}
        # accepted: the API's field names, either spelling of the value, asc/desc any case
        code, r = q("experiments", filter=pred("display_name", stringValue="b"))
        assert code == 200 and [e["display_name"] for e in r["experiments"]] == ["b"]
        code, r = q("experiments", filter=pred("name", string_value="c"), sort_by="created_at DESC")
        assert code == 200 and [e["display_name"] for e in r["experiments"]] == ["c"]
        # refused as the server refuses them
        code, r = q("experiments", filter=pred("displayName", stringValue="b"))
        assert code == 400 and r["code"] == 3
        assert r["message"] == ("Invalid input error: no support for filtering on unrecognized "
                                "field 'displayName'")
        code, r = q("recurringruns", sort_by="no_such_field desc")
        assert code == 400 and "Invalid sorting field: 'no_such_field' on listable type Job" \
            in r["message"]
        code, r = q("pipelines", sort_by="created_at newest")
        assert code == 400 and "invalid sort by format" in r["message"]
        code, r = q("pipelines", filter="{display_name: x}")
        assert code == 400 and "failed to parse valid filter" in r["message"]
        code, r = q("pipelines", filter=json.dumps({"predicates": [
            {"operation": "LIKE", "key": "display_name", "stringValue": "x"}]}))
        assert code == 400 and "invalid predicate operation: LIKE" in r["message"]
        code, r = q("pipelines", filter=pred("created_at", intValues={"values": [1]}))
        assert code == 400 and "scalar operator EQUALS on array" in r["message"]
        code, r = q("experiments", page_size=-1)
        assert code == 400 and "page size should be greater than 0" in r["message"]
        code, r = q("experiments", page_token="made-up")
        assert code == 400 and "Invalid package token" in r["message"]
        # a token it issued pages on, with the order and filter of the first request
        code, r = q("experiments", page_size=2, sort_by="display_name desc")
        assert code == 200 and [e["display_name"] for e in r["experiments"]] == ["c", "b"]
        code, r = q("experiments", page_token=r["next_page_token"], page_size=2)
        assert code == 200 and [e["display_name"] for e in r["experiments"]] == ["a"]
        assert "next_page_token" not in r
        assert len(srv.errors) == 8
    finally:
        fake_kfp_api.stop(srv)


def test_fake_kfp_refusals_reach_kfp_client_calls():
    """The same refusals through kfp.Client, as the project's calls would meet them."""
    import kfp_server_api

    from tests import fake_kfp_api

    srv = fake_kfp_api.start()
    try:
        with kclient._kfp(srv.url) as client:
            assert client.list_recurring_runs(sort_by="created_at desc").recurring_runs is None
        with pytest.raises(kclient.SubmitError, match=r"400 .*Invalid sorting field: 'no_such_field'"):
            with kclient._kfp(srv.url) as client:
                client.list_recurring_runs(sort_by="no_such_field desc")
        with pytest.raises(kclient.SubmitError, match="unrecognized field 'displayName'"):
            with kclient._kfp(srv.url) as client:
                client.list_experiments(filter=json.dumps({"predicates": [{
                    "operation": "EQUALS", "key": "displayName", "stringValue": "x"}]}))
        assert len(srv.errors) == 2
        assert kfp_server_api  # the client's own module raised the ApiException
    finally:
        fake_kfp_api.stop(srv)


# ---- the placement's custom_config reaches the trainer ----------------------------------------
@pytest.mark.parametrize("tpu, env_strategy", [("local", False), ("env", True), (None, False)])
def test_run_fn_turns_custom_config_tpu_into_a_tpu_strategy(monkeypatch, tpu, env_strategy):
    from types import SimpleNamespace

    from components import training as tfx_trainer

    seen = {}
    monkeypatch.setattr(tfx_trainer.train, "train",
                        lambda exp, examples, out, strategy=None, export_dir=None, **kw: seen.update(
                            exp=exp, examples=examples, strategy=strategy, **kw))
    monkeypatch.setattr(tfx_trainer, "tpu_strategy_from_environment", lambda: "ENV-STRATEGY")
    # the training's folder lives on the (here imaginary) gs:// pipeline root
    monkeypatch.setattr(tfx_trainer, "training_dir", lambda exp, examples, out, record: "work")
    monkeypatch.setattr(tfx_trainer.tf_gfile(), "exists", lambda path: False)
    monkeypatch.setattr(tfx_trainer.warm_start, "plan", lambda mode, steps, find, base, **kw: {
        "mode": mode, "parent": None, "start_step": 0, "steps": steps, "target_step": steps})
    monkeypatch.setattr(tfx_trainer.warm_start, "decide",
                        lambda out, mode, steps, planned, **kw: planned)
    monkeypatch.setattr(tfx_trainer, "training_finished",
                        lambda work, out: seen.update(done=(work, out)))
    custom = {"experiment": "tiny", "overrides": {}, **({"tpu": tpu} if tpu else {})}
    tfx_trainer.train_from_fn_args(SimpleNamespace(
        custom_config=custom, train_steps=5, train_files=["gs://b/examples/Split-train/*"],
        model_run_dir="gs://b/run", serving_model_dir="gs://b/model"))
    t = seen["exp"].train
    assert seen["examples"] == "gs://b/examples" and t.steps == 5
    assert t.tpu == tpu
    assert t.mixed_precision == ("bfloat16" if tpu else "float32")
    assert seen["strategy"] == ("ENV-STRATEGY" if env_strategy else None)
    assert callable(seen["on_step"])  # the progress lines of `deblur run-local`
    assert seen["done"] == ("work", "gs://b/run")  # trained there, then moved into the ModelRun


def test_the_compiled_gate_has_every_rule(compiled):
    """beats_input applies on Kubeflow too: the evaluator task receives the whole gate config."""
    cfg, job, _, _ = compiled["gke"]
    spec = job["pipelineSpec"]
    gate = json.loads(_param(spec, "DeblurEvaluator", "gate_config"))
    assert gate == dataclasses.asdict(cfg.gate)
    assert gate["input_lpips_margin"] == 0.01 and gate["input_psnr_tolerance"] == 0.0


def test_the_trainer_task_is_retried(compiled):
    """A preempted Trainer pod (spot, TPU maintenance) is started again and resumes from the
    checkpoints in its ModelRun folder; the policy parses as KFP's PipelineTaskSpec."""
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    for platform in ("gke", "vertex"):
        cfg, job, docs, path = compiled[platform]
        tasks = kc.dag_tasks(job["pipelineSpec"])
        policy = tasks["Trainer"]["retryPolicy"]
        assert policy["maxRetryCount"] == kubeflow_section(cfg).trainer_max_retries == 3
        task = json_format.ParseDict(tasks["Trainer"], pipeline_spec_pb2.PipelineTaskSpec())
        assert task.retry_policy.max_retry_count == 3
        assert task.retry_policy.backoff_duration.seconds == 60
        assert kc.dag_tasks(docs[0])["Trainer"]["retryPolicy"] == policy  # the package
        assert [t for t in tasks if "retryPolicy" in tasks[t]] == ["Trainer"]


# ---- run parameters ---------------------------------------------------------------------------
EXPECTED_DEFAULTS = {  # infra/kubeflow.example.yaml
    "train_steps": 100000, "warm_start": "latest_blessed",
    "gate_ood_lpips_max": 0.2, "gate_input_lpips_margin": 0.01,
    "gate_input_psnr_tolerance": 0.0, "gate_regression_tolerance": 0.005}


def test_run_parameters_with_defaults_in_the_job_and_the_package(compiled):
    cfg, job, docs, _ = compiled["gke"]
    values = job["runtimeConfig"]["parameterValues"]
    assert {k: values[k] for k in EXPECTED_DEFAULTS} == EXPECTED_DEFAULTS
    assert isinstance(values["train_steps"], int)
    sources = json.loads(values["data_sources"])
    assert [s["root"] for s in sources] == [s.root for s in cfg.data.sources]
    # the names the issue asks for: data/source, steps, lpips
    assert any("data" in n or "source" in n for n in values)
    assert any("steps" in n for n in values) and any("lpips" in n for n in values)
    for spec in (job["pipelineSpec"], docs[0]):  # the PipelineJob and the KFP package (UI form)
        defs = spec["root"]["inputDefinitions"]["parameters"]
        assert set(defs) == set(values)
        for name, d in defs.items():
            assert d["defaultValue"] == values[name] and d["isOptional"] is True, name
            assert d["description"]
        assert defs["train_steps"]["parameterType"] == "NUMBER_INTEGER"
        assert defs["gate_ood_lpips_max"]["parameterType"] == "NUMBER_DOUBLE"
        assert defs["data_sources"]["parameterType"] == "STRING"
    # each task takes its parameter from the root, beside the exec property it changes
    spec = job["pipelineSpec"]
    assert _task_param(spec, "DeblurIngest", "data_sources") == {
        "componentInputParameter": "data_sources"}
    assert _param(spec, "DeblurIngest", "sources") == values["data_sources"]
    assert _task_param(spec, "DeblurEvaluator", "gate_ood_lpips_max") == {
        "componentInputParameter": "gate_ood_lpips_max"}
    # kfp 2.5's Client reads the defaults of the package as the UI does
    from kfp.client import client as kfp_client

    doc = kfp_client._extract_pipeline_yaml(kc.package_path(compiled["gke"][3]))
    ui = doc.pipeline_spec.root.input_definitions.parameters
    assert ui["gate_ood_lpips_max"].default_value.number_value == 0.2
    assert ui["train_steps"].default_value.number_value == 100000


def test_run_page_artifacts_in_the_spec(compiled):
    """The outputs the KFP frontend draws (MetricsVisualizations.tsx): their schema titles are
    the MLMD type names the launcher records."""
    spec = _spec(compiled)

    def titles(task):
        comp = spec["components"][kc.dag_tasks(spec)[task]["componentRef"]["name"]]
        return {k: yaml.safe_load(v["artifactType"]["instanceSchema"])["title"]
                for k, v in comp["outputDefinitions"]["artifacts"].items()}

    assert titles("DeblurEvaluator") == {
        "evaluation": "tfx.ModelEvaluation", "blessing": "tfx.ModelBlessing",
        "verdict": "system.Markdown", "report": "system.HTML",
        "metrics": "system.Metrics", "input_metrics": "system.Metrics"}
    assert titles("DeblurIngest") == {"examples": "tfx.Examples", "counts": "system.Metrics"}
    assert titles("DomainDriftReport") == {"report": "deblur.DomainDrift",
                                           "drift_table": "system.Markdown"}
    # the Trainer's outcome (TFX's Trainer has fixed outputs: a task after it), the push, the run
    assert titles("TrainingReport") == {"curves": "system.HTML", "metrics": "system.Metrics"}
    assert titles("RegistryPusher") == {"pushed_model": "tfx.PushedModel",
                                        "report": "system.Markdown"}
    assert titles("RunSummary") == {"summary": "system.Markdown"}
    tasks = kc.dag_tasks(spec)
    assert tasks["TrainingReport"]["dependentTasks"] == ["Trainer"]
    assert tasks["TrainingReport"]["cachingOptions"] == {"enableCache": True}  # with the Trainer
    assert tasks["RunSummary"]["cachingOptions"] == {}  # never cached: it reports this run
    assert set(tasks["RunSummary"]["dependentTasks"]) >= {"RegistryPusher", "DeblurIngest",
                                                         "DomainDriftReport"}
    assert spec["components"][kc.CHECK_TASK]["outputDefinitions"]["artifacts"]["report"][
        "artifactType"]["schemaTitle"] == "system.Markdown"


def test_run_summary_tells_cached_tasks_by_their_outputs_folder():
    from pipelines.kubeflow import run_summary as rs

    run = "gs://b/root/deblur-icdpm/run-2"
    assert rs.run_folder(f"{run}/RunSummary/summary") == run
    states = rs.task_states(run, {
        "examples": "gs://b/root/deblur-icdpm/run-1/DeblurIngest/examples",
        "model": f"{run}/Trainer/model", "model_run": f"{run}/Trainer/model_run",
        "pushed_model": f"{run}/RegistryPusher/pushed_model"})
    assert states == {"DeblurRunCheck": "COMPLETE", "DeblurInputFingerprint": "COMPLETE",
                      "DeblurIngest": "CACHED", "Trainer": "COMPLETE",
                      "RegistryPusher": "COMPLETE"}
    # a prefix of another run's id is not this run (run-2 vs run-20)
    assert rs.task_states(run, {"examples": f"{run}0/DeblurIngest/examples"})[
        "DeblurIngest"] == "CACHED"


def test_submit_params_reach_the_kfp_api(compiled, kfp_server, capsys, monkeypatch):
    from deblur import cli

    cfg, job, _, path = compiled["gke"]
    assert cli.main(["submit", "--config", EXAMPLE, "--spec", path, "--host", kfp_server.url,
                     "--param", "train_steps=5000", "--param", "gate_ood_lpips_max=0.25"]) == 0
    assert "train_steps=5000" in capsys.readouterr().out
    run, = kfp_server.bodies("POST", "/apis/v2beta1/runs")
    sent = run["runtime_config"]["parameters"]
    assert sent["train_steps"] == 5000 and sent["gate_ood_lpips_max"] == 0.25
    assert sent["gate_input_lpips_margin"] == 0.01  # the others keep their defaults
    assert sent["data_sources"] == job["runtimeConfig"]["parameterValues"]["data_sources"]
    # a recurring run of a release of the .yaml package the UI uploads: only the overrides
    _release(cfg, kc.package_path(path), kfp_server, monkeypatch)
    assert cli.main(["submit", "--config", EXAMPLE,
                     "--host", kfp_server.url, "--schedule", "0 0 3 * * 1",
                     "--param", "gate_input_lpips_margin=0.02"]) == 0
    rr, = kfp_server.bodies("POST", "/apis/v2beta1/recurringruns")
    assert rr["runtime_config"]["parameters"] == {"gate_input_lpips_margin": 0.02}


@pytest.mark.parametrize("param, message", [
    ("train_stepz=5", "no such run parameter; known: data_sources, gate_input_lpips_margin"),
    ("train_steps=many", "expected an integer"),
    ("train_steps=0", "training.train.steps must be an integer >= 1"),
    ("gate_ood_lpips_max=-1", "ood_lpips_max must be > 0"),
    ("train_steps", "expected NAME=VALUE"),
    ("warm_start=latest", "allowed: none, latest_blessed or a registry ref"),
    ("gate_input_psnr_tolerance=nan", "allowed: a finite number (dB, e.g. 0.0)"),
    ("data_sources=notjson", "data_sources=notjson: not JSON (Expecting value at character 0); "
                             "expected a non-empty JSON list of sources"),
    ("data_sources=[]", "data_sources: the list is empty"),
    ('data_sources=[{"layout": "gopro", "root": "/data/GOPRO_Large"}]',
     "data_sources[0].root /data/GOPRO_Large: not a gs:// URI"),
    ('data_sources=[{"layout": "gopro", "root": "gs://b/g", "colour": "red"}]',
     "data_sources[0]: "),
    ('data_sources={"layout": "gopro"}', "a JSON dict, not a list"),
])
def test_submit_bad_params_are_one_line_errors_before_any_request(compiled, kfp_server, capsys,
                                                                   param, message):
    from deblur import cli

    _, _, _, path = compiled["gke"]
    assert cli.main(["submit", "--config", EXAMPLE, "--spec", path, "--host", kfp_server.url,
                     "--param", param]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert kfp_server.requests == []


# ---- the first task checks the run parameters ---------------------------------------------------
def _check_executor_input(spec, values, tmp_path):
    """The DeblurRunCheck task's ExecutorInput as the driver builds it: its root parameters
    (here `values` over the compiled defaults) and the constant config."""
    task = kc.dag_tasks(spec)[kc.CHECK_TASK]
    defaults = kc.compiled_defaults(spec)
    params = {}
    for key, p in task["inputs"]["parameters"].items():
        params[key] = (p["runtimeValue"]["constant"] if "runtimeValue" in p
                       else values.get(p["componentInputParameter"],
                                       defaults[p["componentInputParameter"]]))
    return {"inputs": {"parameterValues": params},
            "outputs": {"artifacts": {"report": {"artifacts": [{
                "uri": str(tmp_path / "DeblurRunCheck" / "report"),
                "type": {"schemaTitle": "system.Markdown"}}]}},
                "parameters": {"problems": {"outputFile": str(tmp_path / "out" / "problems")}},
                "outputFile": str(tmp_path / "out" / "executor_output.json")}}


class _Blobs:
    """A google.cloud.storage.Client stand-in for list_blobs: {bucket: [object names]}."""

    def __init__(self, buckets):
        self.buckets = buckets
        self.calls = []

    def list_blobs(self, bucket, prefix="", max_results=None):
        from google.api_core import exceptions

        self.calls.append((bucket, prefix))
        if bucket not in self.buckets:
            raise exceptions.NotFound(f"bucket {bucket}")
        return [n for n in self.buckets[bucket] if n.startswith(prefix)][:max_results]


def test_the_check_task_comes_first_and_gates_the_fingerprint(compiled):
    for platform in ("gke", "vertex"):
        cfg, job, docs, _ = compiled[platform]
        for spec in (job["pipelineSpec"], docs[0]):
            tasks = kc.dag_tasks(spec)
            check, fp = tasks[kc.CHECK_TASK], tasks[kc.FINGERPRINT_TASK]
            assert check.get("dependentTasks", []) == [] and check["cachingOptions"] == {}
            assert fp["dependentTasks"] == [kc.CHECK_TASK]
            assert fp["inputs"]["parameters"]["problems"] == {"taskOutputParameter": {
                "producerTask": kc.CHECK_TASK, "outputParameterKey": "problems"}}
            # every run parameter reaches the check, the compiled config as a constant
            root = set(spec["root"]["inputDefinitions"]["parameters"])
            assert root == set(run_params_names()) | {"cache"}
            assert {k for k, v in check["inputs"]["parameters"].items()
                    if "componentInputParameter" in v} == root
            config = json.loads(check["inputs"]["parameters"]["config"]["runtimeValue"]["constant"])
            assert config_lib.from_dict(config).gate == cfg.gate
            comp = spec["components"][kc.CHECK_TASK]
            assert comp["outputDefinitions"]["artifacts"]["report"]["artifactType"][
                "schemaTitle"] == "system.Markdown"
            _, ex = _executor(spec, kc.CHECK_TASK)
            assert ex["container"]["command"] == kc.CHECK_COMMAND
            assert ex["container"]["args"] == ["--executor-input", "{{$}}"]
            # the cache switch: a root parameter, default on
            assert spec["root"]["inputDefinitions"]["parameters"]["cache"]["defaultValue"] == "on"
            assert fp["inputs"]["parameters"]["cache"] == {"componentInputParameter": "cache"}
        # every task depends on the check, through the fingerprint (ImportSchemaGen through
        # its cache_salt)
        deps = {n: set(t.get("dependentTasks", [])) for n, t in tasks.items()}
        after = {kc.CHECK_TASK}
        changed = True
        while changed:
            changed = False
            for n, d in deps.items():
                if n not in after and d & after:
                    after.add(n)
                    changed = True
        assert set(tasks) - after == set()


def run_params_names():
    from pipelines import run_params

    return list(run_params.BY_NAME)


def test_check_task_refuses_a_bad_value_in_one_line_with_a_report(compiled, tmp_path, capsys):
    from pipelines.kubeflow import check as kfp_check
    from pipelines.kubeflow import fingerprint as kfp_fingerprint

    spec = _spec(compiled)
    ei = _check_executor_input(spec, {"train_steps": 0, "warm_start": "latest"}, tmp_path)
    client = _Blobs({"my-deblur-bucket": ["data/GOPRO_Large/train/a.png",
                                          "data/incoming/2025-01-31/blur/1.png",
                                          "data/RealBlur/RealBlur-J/x.png"]})
    assert kfp_check.main(["--executor-input", json.dumps(ei)], client=client) == 0
    line = (tmp_path / "out" / "problems").read_text()
    assert line == ("run parameters refused: train_steps=0: training: training.train.steps must be "
                    "an integer >= 1, got 0 (allowed: an integer >= 1); warm_start=latest: training: "
                    "training.warm_start must be none, latest_blessed or a registry model ref "
                    "(@production, NAME@ALIAS, NAME/N), got 'latest' "
                    "(allowed: none, latest_blessed or a registry ref)")
    assert capsys.readouterr().err.strip().splitlines() == [line]
    md = (tmp_path / "DeblurRunCheck" / "report").read_text()
    assert md.startswith("## Run parameters: 2 refused, the run stops here")
    assert "- **train_steps** = `0`: " in md and "Allowed: an integer >= 1." in md
    assert "| warm_start | `latest` | none, latest_blessed or a registry ref | **REFUSED** |" in md
    assert "| gate_input_psnr_tolerance | `0.0` | a finite number (dB, e.g. 0.0) | ok |" in md
    out = json.loads((tmp_path / "out" / "executor_output.json").read_text())
    assert out["parameterValues"]["problems"] == line
    assert out["artifacts"]["report"]["artifacts"][0]["metadata"]["display_name"] == \
        "run parameters"
    # the fingerprint task fails on it at once, in that one line, listing nothing
    assert kfp_fingerprint.main(["--sources", "[]", "--options", "{}", "--fingerprint-file",
                                 str(tmp_path / "fp"), "--problems", line]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [line]
    assert not (tmp_path / "fp").exists()


def test_check_task_checks_the_data_sources_exist(compiled, tmp_path, capsys):
    from pipelines.kubeflow import check as kfp_check

    spec = _spec(compiled)
    sources = json.loads(kc.compiled_defaults(spec)["data_sources"])
    good = {"my-deblur-bucket": ["data/GOPRO_Large/train/a.png",
                                 "data/incoming/2025-01-31/blur/1.png",
                                 "data/RealBlur/RealBlur-J/x.png"]}
    ei = _check_executor_input(spec, {}, tmp_path)
    client = _Blobs(good)
    assert kfp_check.main(["--executor-input", json.dumps(ei)], client=client) == 0
    assert (tmp_path / "out" / "problems").read_text() == ""
    assert capsys.readouterr().err.strip() == "run parameters: all 8 good"
    assert [c[1] for c in client.calls] == [s["root"].split("/", 3)[3] + "/" for s in sources]
    assert (tmp_path / "DeblurRunCheck" / "report").read_text().startswith(
        "## Run parameters: all good")
    # an empty root and a missing bucket
    moved = sources[:1] + [{**sources[1], "root": "gs://other-bucket/data"}]
    ei = _check_executor_input(spec, {"data_sources": json.dumps(moved)}, tmp_path)
    assert kfp_check.main(["--executor-input", json.dumps(ei)],
                          client=_Blobs({"my-deblur-bucket": []})) == 0
    line = (tmp_path / "out" / "problems").read_text()
    assert line == ("run parameters refused: data_sources[0].root gs://my-deblur-bucket/data/"
                    "GOPRO_Large: no object under it (missing or empty); data_sources[1].root "
                    "gs://other-bucket/data: bucket other-bucket does not exist")
    # no credentials: not checked, said so, not refused
    ei = _check_executor_input(spec, {}, tmp_path)

    class NoAccess(_Blobs):
        def list_blobs(self, *a, **k):
            from google.api_core import exceptions

            raise exceptions.Forbidden("no storage.objects.list")

    assert kfp_check.main(["--executor-input", json.dumps(ei)], client=NoAccess({})) == 0
    assert (tmp_path / "out" / "problems").read_text() == ""
    assert "not checked, no read access" in capsys.readouterr().err
    assert "not checked, no read access" in (tmp_path / "DeblurRunCheck" / "report").read_text()


def test_cache_off_salts_the_fingerprint_the_ingest_still_checks(tmp_path):
    from components.ingest.beam_ingest import input_fingerprint
    from components.ingest.sources import IngestOptions, IngestSource
    from pipelines.kubeflow import fingerprint as kfp_fingerprint
    from tests import fixtures as fx

    fx.write_pair(str(tmp_path / "d" / "train" / "blur" / "0.png"),
                  str(tmp_path / "d" / "train" / "sharp" / "0.png"), (16, 16), seed=0)
    sources = json.dumps([IngestSource("folder", str(tmp_path / "d")).to_json()])
    want = input_fingerprint([IngestSource("folder", str(tmp_path / "d"))], IngestOptions())
    outs = []
    for i, cache in enumerate(("on", "off", "off")):
        assert kfp_fingerprint.main(["--sources", sources, "--options", "{}", "--cache", cache,
                                     "--fingerprint-file", str(tmp_path / f"fp{i}")]) == 0
        outs.append((tmp_path / f"fp{i}").read_text())
    assert outs[0] == want
    assert outs[1].split(" ")[0] == outs[2].split(" ")[0] == want
    assert outs[1] != outs[2] and " no-cache " in outs[1]  # a new cache key each time


def test_front_door_options_reach_every_request(compiled, kfp_server, tmp_path, monkeypatch):
    """kubeflow.namespace (multi-user KFP) files experiments in the profile; a token file
    (kubeflow.token_path, or $KF_PIPELINES_SA_TOKEN_PATH) is sent on every request."""
    cfg, _, _, path = compiled["gke"]
    cfg = copy.deepcopy(cfg)
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(token))
    cfg.kubeflow["namespace"] = "team-deblur"
    kclient.submit(cfg, path, kfp_server.url)
    assert {r["authorization"] for r in kfp_server.requests} == {"Bearer s3cret-token"}
    exp, = kfp_server.bodies("POST", "/apis/v2beta1/experiments")
    assert exp["namespace"] == "team-deblur"
    # the config's path wins over the environment's; an unreadable one is one line, no request
    cfg.kubeflow["token_path"] = str(tmp_path / "missing")
    n = len(kfp_server.requests)
    with pytest.raises(ConfigError, match=r"token file .*missing .*cannot be read"):
        kclient.schedules(cfg, kfp_server.url)
    assert len(kfp_server.requests) == n
    # a run and a schedule are created with the service account infra/ binds
    run, = kfp_server.bodies("POST", "/apis/v2beta1/runs")
    assert run["service_account"] == kubeflow_section(cfg).service_account == "deblur-pipeline"


def test_data_sources_short_form_a_sources_file(compiled, tmp_path, capsys):
    """issue 36 item 8: the UI's data_sources field takes the path of a .json/.yaml file that
    holds the list (gs:// on the cluster); the check, the fingerprint task and the ingest's exec
    property all read that list, through run_params.data_sources_text."""
    from pipelines import run_params
    from pipelines.kubeflow import fingerprint as kfp_fingerprint
    from tests import fixtures as fx

    root = tmp_path / "data"
    for i in range(2):
        fx.write_pair(str(root / "train" / "blur" / f"{i}.png"),
                      str(root / "train" / "sharp" / f"{i}.png"), (16, 16), seed=i)
    listed = [{"layout": "folder", "root": str(root)}]
    as_json, as_yaml = tmp_path / "sources.json", tmp_path / "sources.yaml"
    as_json.write_text(json.dumps(listed))
    as_yaml.write_text(yaml.safe_dump(listed))
    for path in (as_json, as_yaml):
        assert json.loads(run_params.data_sources_text(str(path))) == listed
        src, = run_params.check_data_sources(str(path), gcs_only=False)
        assert src.root == str(root)
    # the ingest's exec property gets the list, not the path
    values = {"data_sources": str(as_yaml), "sources": json.dumps([{"layout": "x", "root": "y"}])}
    run_params.fold(values)
    assert json.loads(values["sources"]) == listed
    # the fingerprint task: the same fingerprint from the file as from the list itself
    outs = []
    for arg in (str(as_json), json.dumps(listed)):
        out = tmp_path / f"fp{len(outs)}"
        assert kfp_fingerprint.main(["--sources", "[]", "--options", "{}", "--data-sources", arg,
                                     "--fingerprint-file", str(out)]) == 0
        outs.append(out.read_text())
    assert outs[0] == outs[1] and outs[0]
    # on the cluster the file must be on gs://; errors are one line naming the file
    with pytest.raises(ConfigError, match="sources file must be on gs://"):
        run_params.check_value("data_sources", str(as_json))
    with pytest.raises(ConfigError, match=r"data_sources=.*missing\.json: the sources file "
                                          r"cannot be read"):
        run_params.check_data_sources(str(tmp_path / "missing.json"), gcs_only=False)
    (tmp_path / "dict.yaml").write_text("layout: gopro\n")
    with pytest.raises(ConfigError, match="holds a dict, not a list"):
        run_params.check_data_sources(str(tmp_path / "dict.yaml"), gcs_only=False)
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ConfigError, match=r"the list is empty.*\(in .*empty\.json\)"):
        run_params.check_data_sources(str(tmp_path / "empty.json"), gcs_only=False)
    # the JSON list itself still works
    assert run_params.check_value("data_sources", json.dumps(
        [{"layout": "gopro", "root": "gs://b/gopro"}])).startswith("[")


# ---- the exit task and cache=off (issue 36 item 6) ----------------------------------------------
def test_the_exit_task_runs_after_the_dag_whatever_its_outcome(compiled):
    """TFX's exit handler: every task in the sub-DAG tfx-dag, RunEnd at the root after it with
    ALL_UPSTREAM_TASKS_COMPLETED (KFP's Argo compiler: tfx-dag Succeeded, Failed, Errored or
    Skipped), never cached, with the DAG's graph; the run parameters reach the tasks inside."""
    from pipelines.kubeflow import run_end as re_

    for platform in ("gke", "vertex"):
        spec = _spec(compiled, platform)
        root = spec["root"]["dag"]["tasks"]
        assert set(root) == {kc.TFX_DAG, kc.EXIT_TASK}
        end = root[kc.EXIT_TASK]
        assert end["triggerPolicy"] == {"strategy": "ALL_UPSTREAM_TASKS_COMPLETED"}
        assert end["dependentTasks"] == [kc.TFX_DAG] and not end["cachingOptions"]
        assert "inputs" not in end or "artifacts" not in end["inputs"]
        graph = json.loads(end["inputs"]["parameters"][re_.TASKS]["runtimeValue"]["constant"])
        tasks = kc.dag_tasks(spec)
        assert graph == {n: sorted(t.get("dependentTasks", [])) for n, t in tasks.items()}
        # the compiled exit task asks for no PipelineTaskFinalStatus (KFP backend < 2.14
        # refuses the whole pipeline); with_final_status adds it
        assert re_.FINAL_STATUS not in end["inputs"]["parameters"]
        final = kc.with_final_status(compiled[platform][1])["pipelineSpec"]["root"]["dag"][
            "tasks"][kc.EXIT_TASK]["inputs"]["parameters"][re_.FINAL_STATUS]
        assert final == {"taskFinalStatus": {"producerTask": kc.TFX_DAG}}
        label, ex = _executor(spec, kc.EXIT_TASK)
        assert ex["container"]["command"] == ENTRYPOINT
        assert "pipelines.kubeflow.run_end.Executor" in ex["container"]["args"]
        # every root parameter goes into tfx-dag, whose tasks take it from there
        root_params = spec["root"]["inputDefinitions"]["parameters"]
        dag = spec["components"][kc.TFX_DAG]
        assert set(dag["inputDefinitions"]["parameters"]) == set(root_params)
        assert root[kc.TFX_DAG]["inputs"]["parameters"] == {
            n: {"componentInputParameter": n} for n in root_params}
        used = {p["componentInputParameter"] for t in tasks.values()
                for p in t.get("inputs", {}).get("parameters", {}).values()
                if "componentInputParameter" in p}
        assert used and used <= set(dag["inputDefinitions"]["parameters"])
        assert kc.describe(compiled[platform][1])[-1]["name"] == kc.EXIT_TASK


def test_no_cached_task_is_independent_of_the_cache_parameter(compiled):
    """cache=off gives every cached task a new cache key: each one has, in its inputs, a path
    from the `cache` run parameter (directly, or through an upstream task's output parameter
    or artifact: KFP's cache key holds input parameter values and input artifact ids)."""
    from pipelines import run_params

    for platform in ("gke", "vertex"):
        spec = _spec(compiled, platform)
        tasks = kc.dag_tasks(spec)
        keyed = set()
        for name in kc._topological(tasks):
            inputs = tasks[name].get("inputs", {})
            sources = [p.get("componentInputParameter") or p.get("taskOutputParameter", {}).get(
                "producerTask") for p in inputs.get("parameters", {}).values()]
            sources += [a.get("taskOutputArtifact", {}).get("producerTask")
                        for a in inputs.get("artifacts", {}).values()]
            if run_params.CACHE in sources or keyed & set(sources):
                keyed.add(name)
        cached = {n for n, t in tasks.items() if t.get("cachingOptions", {}).get("enableCache")}
        assert cached and cached <= keyed, sorted(cached - keyed)
        schema = tasks["ImportSchemaGen"]["inputs"]["parameters"][run_params.CACHE_SALT]
        assert schema == {"taskOutputParameter": {"producerTask": kc.FINGERPRINT_TASK,
                                                  "outputParameterKey": run_params.CACHE_SALT}}
        comp = spec["components"][tasks["ImportSchemaGen"]["componentRef"]["name"]]
        assert comp["inputDefinitions"]["parameters"][run_params.CACHE_SALT] == {
            "parameterType": "STRING"}
        fp = spec["components"][kc.FINGERPRINT_TASK]
        assert run_params.CACHE_SALT in fp["outputDefinitions"]["parameters"]
        # only where needed: the ingest is keyed through the fingerprint already
        assert run_params.CACHE_SALT not in tasks["DeblurIngest"]["inputs"]["parameters"]


def test_the_cache_salt_is_empty_with_cache_on_and_the_nonce_with_cache_off(tmp_path):
    from pipelines.kubeflow import fingerprint
    from components.ingest.sources import IngestSource
    from tests import fixtures as fx

    fx.write_pair(str(tmp_path / "d" / "train" / "blur" / "0.png"),
                  str(tmp_path / "d" / "train" / "sharp" / "0.png"), (16, 16), seed=0)
    sources = json.dumps([IngestSource("folder", str(tmp_path / "d")).to_json()])
    out = {}
    for cache in ("on", "off"):
        fp, salt = tmp_path / f"fp-{cache}", tmp_path / f"salt-{cache}"
        assert fingerprint.main(["--sources", sources, "--options", "{}", "--cache", cache,
                                 "--fingerprint-file", str(fp),
                                 "--cache-salt-file", str(salt)]) == 0
        out[cache] = (fp.read_text(), salt.read_text())
    assert out["on"][1] == "" and len(out["off"][1]) == 32
    assert out["off"][0] == f"{out['on'][0]} no-cache {out['off'][1]}"


def test_run_folder_and_summary_path_for_both_kfp_output_layouts():
    from core import artifacts
    from pipelines.kubeflow import run_summary as rs

    run = "gs://b/root/deblur-icdpm/run-2"
    uid = "0f4c6a1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
    assert rs.run_folder(f"{run}/RunSummary/{uid}/summary") == run  # backend >= 2.4
    assert artifacts.kfp_task_folder(f"{run}/Trainer/{uid}/model", "model") == f"{run}/Trainer"
    assert artifacts.kfp_task_folder(f"{run}/Trainer/model", "model") == f"{run}/Trainer"
    assert artifacts.kfp_run_summary_path(run) == f"{run}/summary.md"


def test_run_end_tells_failed_not_started_and_cached_tasks(tmp_path):
    """RunEnd's reading of a run folder (KFP >= 2.4 layout): the failed task by its
    task_error.json, the tasks after it not started, a task without outputs cached."""
    from core import artifacts
    from pipelines.kubeflow import run_end as re_

    run = tmp_path / "deblur-icdpm" / "run-3"
    uid = "0f4c6a1e-2b3d-4e5f-8a9b-0c1d2e3f4a5b"
    (run / "DeblurRunCheck" / uid).mkdir(parents=True)
    (run / "DeblurRunCheck" / uid / "report").write_text("## Run parameters: all good\n")
    (run / "Trainer" / uid / "model").mkdir(parents=True)
    (run / "Trainer" / artifacts.TASK_ERROR_FILE).write_text(
        json.dumps({"error": "ValueError: no split 'train'"}))
    graph = {"DeblurRunCheck": [], "DeblurIngest": ["DeblurRunCheck"],
             "Trainer": ["DeblurIngest"], "RunSummary": ["Trainer"]}
    s = re_.build(str(run), graph, None)
    assert not s["succeeded"] and s["errors"] == {"Trainer": "ValueError: no split 'train'"}
    assert s["outcome"] == {"DeblurRunCheck": "outputs here", "DeblurIngest": "no output here",
                            "Trainer": "FAILED", "RunSummary": "not started"}
    md = re_.markdown(s)
    assert md.startswith("## Run failed: Trainer\n") and "| RunSummary | not started" in md
    # KFP's final status wins over the inference; a succeeded run is one RunSummary finished
    assert re_.build(str(run), graph, re_.parse_status('{"state": "FAILED"}'))["state"] == "FAILED"
    (run / "Trainer" / artifacts.TASK_ERROR_FILE).unlink()
    (run / "summary.md").write_text("## Run summary\n")
    assert re_.build(str(run), graph, None)["succeeded"]


def test_compile_writes_only_digests_unless_told_to_keep_tags(compiled, registry, tmp_path):
    """`deblur compile`'s default (pin_compiled): the PipelineJob and the KFP package beside it
    name every image by digest, the digests the registry serves; --keep-tags leaves the tags."""
    import hashlib
    import re
    import shutil

    from pipelines.kubeflow import images

    cfg, job, _, path = compiled["vertex"]
    assert images.tag_images(job["pipelineSpec"])  # the library compiles the config's names
    out = str(tmp_path / "deblur-icdpm.json")
    shutil.copy(path, out)
    table = kc.pin_compiled(cfg, out)
    assert sorted(table) == sorted(images.tag_images(job["pipelineSpec"]))
    pinned = kc.load_job(out)["pipelineSpec"]
    with open(kc.package_path(out)) as f:
        package = list(yaml.safe_load_all(f))[0]
    for spec in (pinned, package):
        assert images.tag_images(spec) == []
        assert all(re.fullmatch(r"127\.0\.0\.1:\d+/deblur/deblur-pipeline@sha256:[0-9a-f]{64}", i)
                   for i in images.images(spec)), images.images(spec)
    digests = {t: "sha256:" + hashlib.sha256(registry.manifests[(IMAGE_REPO, t)]).hexdigest()
               for t in IMAGE_TAGS}  # as a registry computes it, from the manifest served
    want = {f"{registry.host}/{IMAGE_REPO}@{d}" for d in digests.values()}
    assert set(images.images(pinned)) == want
    assert kc.pin_compiled(cfg, out) == {}  # already pinned: nothing to resolve
