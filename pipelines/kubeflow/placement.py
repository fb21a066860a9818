"""Where components run on Kubeflow, from config.kubeflow: the Kubeflow runner passes this
module to create_pipeline as its `placement`, which calls these functions and reads
SQLITE_METADATA (the local run uses pipelines.pipeline.LocalPlacement and never reads the
`kubeflow` section).

- trainer(config, **kwargs): the Trainer component. With trainer_platform=gke, TFX's standard
  Trainer (on GKE its pod gets the accelerator through place()); with trainer_platform=vertex,
  TFX's google_cloud_ai_platform Trainer, which runs the same run_fn as a Vertex AI CustomJob
  on the configured TPU/GPU worker pool.
- place(config, components): on Kubeflow, sets each component's KFP v2 ResourceSpec (cpu,
  memory, accelerator) from config.kubeflow.resources[component.id]; components that do not
  exist (e.g. DeblurEvaluator before it is added) are skipped. Node selectors cannot ride on
  the component: pipelines/kubeflow/compiler.py writes them into the package's PlatformSpec.
- run_page(config, outputs): the components only the KFP run page needs (TrainingReport,
  RunSummary); the pipeline itself never names them.

Nothing changes for config.runner.orchestrator == "local" (LocalDagRunner rejects ResourceSpec
platform configs), so the local pipeline stays exactly what it was.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from pipelines.kubeflow.config import PodResources, kubeflow_section

TRAINER_ID = "Trainer"
# The pods cannot read the runner's SQLite ML Metadata: the warm start finds its parent in the
# registry (pipelines/pipeline.py warm_start_config).
SQLITE_METADATA = False


def on_kubeflow(config) -> bool:
    return config.runner.orchestrator == "kubeflow"


def vertex_custom_config(config) -> Dict[str, Any]:
    """The custom_config keys TFX's Vertex Trainer executor reads (a CustomJob spec)."""
    from tfx.extensions.google_cloud_ai_platform import constants
    from tfx.extensions.google_cloud_ai_platform.trainer import executor

    kf = kubeflow_section(config)
    v = kf.vertex
    # the chief pool, and with several workers a second pool of the others: Vertex gives the
    # replicas TF_CONFIG (chief / worker tasks), and every replica runs the TFX executor
    counts = [1] + ([v.workers - 1] if v.workers > 1 else [])
    job_spec: Dict[str, Any] = {"worker_pool_specs": [{
        "machine_spec": v.machine_spec(),
        "replica_count": count,
        # TFX replaces the command with its own run_executor entry point
        "container_spec": {"image_uri": v.image or kf.image_for(TRAINER_ID)},
    } for count in counts]}
    if v.service_account:
        job_spec["service_account"] = v.service_account
    return {
        constants.ENABLE_VERTEX_KEY: True,
        constants.VERTEX_REGION_KEY: v.region or kf.region,
        executor.TRAINING_ARGS_KEY: {"project": kf.project, "job_spec": job_spec},
    }


def trainer(config, custom_config: Optional[Dict[str, Any]] = None, **kwargs):
    custom = dict(custom_config or {})
    if not on_kubeflow(config):
        from tfx.v1.components import Trainer

        return Trainer(custom_config=custom, **kwargs)
    kf = kubeflow_section(config)
    tpu = kf.resolved_trainer_tpu()
    if tpu:
        custom["tpu"] = tpu  # components/training.py: TPUStrategy with bfloat16
    if kf.trainer_platform == "vertex":
        from tfx.extensions.google_cloud_ai_platform.trainer import component as vertex

        custom.update(vertex_custom_config(config))
        return vertex.Trainer(custom_config=custom, **kwargs)
    from tfx.v1.components import Trainer

    return Trainer(custom_config=custom, **kwargs)


def resource_spec(r: PodResources):
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec = pipeline_spec_pb2.PipelineDeploymentConfig.PipelineContainerSpec.ResourceSpec()
    if r.cpu_limit:
        spec.cpu_limit = r.cpu_limit
    if r.memory_limit_gb:
        spec.memory_limit = r.memory_limit_gb
    if r.cpu_request:
        spec.cpu_request = r.cpu_request
    if r.memory_request_gb:
        spec.memory_request = r.memory_request_gb
    if r.accelerator:
        spec.accelerator.type = r.accelerator
        spec.accelerator.count = r.accelerator_count
    return spec


def placed_resources(config, component_ids) -> Dict[str, PodResources]:
    """The resources entries that apply to these component ids."""
    kf = kubeflow_section(config)
    out = {}
    for cid in component_ids:
        r = kf.resources.get(cid)
        if r is None:
            continue
        if cid == TRAINER_ID and kf.trainer_platform == "vertex":
            continue  # the pod only submits the CustomJob and waits for it
        out[cid] = r
    return out


def place(config, components: List) -> List:
    if not on_kubeflow(config):
        return components
    placed = placed_resources(config, [c.id for c in components])
    for c in components:
        if c.id in placed:
            c.with_platform_config(resource_spec(placed[c.id]))
    return components


def run_page(config, outputs: Dict[str, Any]) -> List:
    """The components the KFP run page needs, over the pipeline's `outputs` ({name: channel}):
    the Trainer's curves and metrics (TFX's Trainer has fixed outputs the frontend does not
    draw) and the whole run's summary (never cached: pipelines/kubeflow/compiler.py)."""
    if not on_kubeflow(config):
        return []
    from pipelines.kubeflow.run_summary import RunSummary
    from pipelines.kubeflow.training_report import TrainingReport

    return [TrainingReport(model_run=outputs["model_run"]),
            RunSummary(**{k: outputs[k] for k in (
                "examples", "statistics", "schema", "anomalies", "drift", "model", "model_run",
                "evaluation", "blessing", "pushed_model")})]
