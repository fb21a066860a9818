"""The `kubeflow` section of the pipeline config: image, GCS root, Dataflow, accelerators.

    kubeflow:
      image: us-docker.pkg.dev/my-project/deblur/deblur-pipeline:0.1.0
      pipeline_root: gs://my-bucket/pipeline_root
      project: my-project
      trainer_platform: gke            # or vertex
      resources:                       # pods on GKE, by component id
        Trainer: {accelerator: google.com/tpu, accelerator_count: 4, node_selector: {...}}
        DeblurEvaluator: {accelerator: nvidia.com/gpu, accelerator_count: 1}

Only what a user must decide has no default (image, pipeline_root, project for Dataflow or
Vertex); `deblur compile` names every such field that is still unset in one ConfigError
(pipelines/kubeflow/compiler.py: check_config). The pipeline config keeps the section as plain
data (pipelines/config.py knows no orchestrator); kubeflow_section(config) types it, with the
format checks here, each time Kubeflow code reads it, and the command line calls it as it loads
a config, so a typo fails before any work. No TFX import: the CLI loads configs cheaply.

How each field reaches the cluster (checked against the KFP backend 2.0.5 sources):
- ResourceSpec (cpu/memory limits and requests, accelerator type+count) is compiled by TFX's
  KubeflowV2DagRunner from component.with_platform_config(); KFP's driver turns memory into
  "<n>G" and the accelerator into `resources.limits[<type>] = <count>`: the type is used
  verbatim as the Kubernetes resource name, so it must be e.g. `nvidia.com/gpu` or
  `google.com/tpu` (Vertex-style names such as NVIDIA_TESLA_T4 are for Vertex AI only).
- Node selectors are not part of the v2 PipelineSpec and TFX cannot emit them: they go into the
  Kubernetes PlatformSpec (the kfp-kubernetes format, second YAML document of the package), which
  KFP 2.0.x applies (nodeSelector only; tolerations need KFP >= 2.1, and GKE adds the
  tolerations for `nvidia.com/gpu` / `google.com/tpu` taints itself when a pod requests them).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional

from pipelines.config import PipelineConfig, build_section

PLATFORMS = ("gke", "vertex")
BEAM_RUNNERS = ("DataflowRunner", "DirectRunner")
# The Kubernetes extended resources GKE exposes for accelerators.
GKE_ACCELERATORS = ("nvidia.com/gpu", "google.com/tpu")
# GKE schedules a TPU pod only onto a node pool whose accelerator and topology it names.
TPU_SELECTORS = ("cloud.google.com/gke-tpu-accelerator", "cloud.google.com/gke-tpu-topology")
VERTEX_TPU_NODE_TYPES = ("TPU_V2", "TPU_V3")  # machine_type cloud-tpu, 8 cores each


def _positive(name: str, v) -> None:
    if v is not None and (not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0):
        raise ValueError(f"{name} must be a positive number, got {v!r}")


@dataclasses.dataclass
class PodResources:
    """Resources of one component's pod on GKE, keyed by component id in `resources`."""

    cpu_limit: Optional[float] = None  # vCPU
    memory_limit_gb: Optional[float] = None  # GB (10^9 bytes: KFP renders "<n>G")
    cpu_request: Optional[float] = None
    memory_request_gb: Optional[float] = None
    accelerator: Optional[str] = None  # nvidia.com/gpu | google.com/tpu (Kubernetes resource)
    accelerator_count: int = 0
    node_selector: Dict[str, str] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        for name in ("cpu_limit", "memory_limit_gb", "cpu_request", "memory_request_gb"):
            _positive(name, getattr(self, name))
        if self.accelerator is not None and self.accelerator not in GKE_ACCELERATORS:
            raise ValueError(
                f"accelerator {self.accelerator!r} is not a GKE accelerator resource; use one of "
                f"{', '.join(GKE_ACCELERATORS)} (KFP sets it verbatim as a Kubernetes resource "
                f"limit; the Vertex machine types live under kubeflow.vertex)")
        if bool(self.accelerator) != (self.accelerator_count > 0):
            raise ValueError("accelerator and accelerator_count >= 1 go together")
        if not isinstance(self.node_selector, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.node_selector.items()):
            raise ValueError("node_selector must map label names to string values")
        missing = [k for k in TPU_SELECTORS if k not in self.node_selector]
        if self.accelerator == "google.com/tpu" and missing:
            raise ValueError(f"a google.com/tpu request needs node_selector {', '.join(missing)} "
                             f"(e.g. tpu-v5-lite-podslice and 2x2): GKE places TPU pods by them")


@dataclasses.dataclass
class DataflowConfig:
    """Beam arguments of the Beam components (DeblurIngest, StatisticsGen, ...)."""

    runner: str = "DataflowRunner"  # or DirectRunner: Beam inside the component's pod
    region: Optional[str] = None  # default kubeflow.region
    temp_location: Optional[str] = None  # default <pipeline_root>/beam-tmp
    machine_type: str = "n2-standard-4"
    max_num_workers: int = 8
    disk_size_gb: Optional[int] = None
    experiments: List[str] = dataclasses.field(default_factory=lambda: ["use_runner_v2"])
    # The Dataflow workers need the project's code and the locked libraries: by default the
    # pipeline image itself (infra/Dockerfile carries Beam's SDK-harness boot entrypoint).
    sdk_container_image: Optional[str] = None  # default kubeflow.image
    service_account_email: Optional[str] = None  # the workers' service account
    extra_args: List[str] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.runner not in BEAM_RUNNERS:
            raise ValueError(f"dataflow.runner must be one of {', '.join(BEAM_RUNNERS)}, "
                             f"got {self.runner!r}")
        if self.temp_location is not None and not self.temp_location.startswith("gs://"):
            raise ValueError(f"dataflow.temp_location must be a gs:// URI, "
                             f"got {self.temp_location!r}")
        _positive("dataflow.max_num_workers", self.max_num_workers)
        _positive("dataflow.disk_size_gb", self.disk_size_gb)
        bad = [a for a in self.extra_args if not a.startswith("--")]
        if bad:
            raise ValueError(f"dataflow.extra_args must be --flag=value items, got {bad}")


@dataclasses.dataclass
class VertexTrainerConfig:
    """trainer_platform=vertex: TFX's google_cloud_ai_platform Trainer runs train() as a Vertex
    AI CustomJob (the Trainer pod on GKE only submits and waits). workers > 1 (GPU machines):
    a chief pool of one replica and a pool of workers - 1 more of the same machine; Vertex
    sets TF_CONFIG in each and train() runs MultiWorkerMirroredStrategy."""

    region: Optional[str] = None  # default kubeflow.region
    machine_type: str = "cloud-tpu"  # TPU v2/v3 (TPU Node); ct5lp-hightpu-4t etc. are TPU VMs
    accelerator_type: str = "TPU_V3"  # TPU_V2 | TPU_V3 | NVIDIA_* (GPU) | "" (none)
    accelerator_count: int = 8
    tpu_topology: Optional[str] = None  # TPU VM machine types, e.g. "2x2"
    service_account: Optional[str] = None  # the CustomJob's service account
    image: Optional[str] = None  # default: the Trainer's image (kubeflow.component_images/image)
    workers: int = 1  # machines training together (GPU pools; a TPU slice is one TPUStrategy)

    def __post_init__(self):
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"vertex.workers must be an integer >= 1, got {self.workers!r}")
        if self.workers > 1 and (self.machine_type == "cloud-tpu"
                                 or self.accelerator_type.startswith("TPU")
                                 or self.machine_type.startswith("ct")):
            raise ValueError("vertex.workers > 1 is for GPU machines (MultiWorkerMirroredStrategy); "
                             "a TPU trains on one slice under TPUStrategy: choose a larger "
                             "machine_type / tpu_topology instead")
        if self.machine_type == "cloud-tpu":
            if self.accelerator_type not in VERTEX_TPU_NODE_TYPES or self.accelerator_count != 8:
                raise ValueError("vertex.machine_type cloud-tpu takes accelerator_type TPU_V2 or "
                                 "TPU_V3 with accelerator_count 8")
        elif self.accelerator_type and self.accelerator_count < 1:
            raise ValueError("vertex.accelerator_count must be >= 1 with an accelerator_type")

    def machine_spec(self) -> Dict[str, Any]:
        spec: Dict[str, Any] = {"machine_type": self.machine_type}
        if self.accelerator_type:
            spec.update(accelerator_type=self.accelerator_type,
                        accelerator_count=self.accelerator_count)
        if self.tpu_topology:
            spec["tpu_topology"] = self.tpu_topology
        return spec


def _default_resources() -> Dict[str, PodResources]:
    # Match infra/gke/create_cluster.sh: a single-host TPU v5e slice (ct5lp-hightpu-4t, 2x2 =
    # 4 chips) for the Trainer, one L4 GPU (g2-standard-8) for the evaluator's many samplings.
    return {
        "Trainer": PodResources(
            cpu_limit=16, memory_limit_gb=64, accelerator="google.com/tpu", accelerator_count=4,
            node_selector={"cloud.google.com/gke-tpu-accelerator": "tpu-v5-lite-podslice",
                           "cloud.google.com/gke-tpu-topology": "2x2"}),
        "DeblurEvaluator": PodResources(
            cpu_limit=6, memory_limit_gb=24, accelerator="nvidia.com/gpu", accelerator_count=1,
            node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"}),
    }


@dataclasses.dataclass
class KubeflowConfig:
    # The pipeline image (infra/Dockerfile) for every component; required.
    image: Optional[str] = None
    # Per component id, another image (e.g. the tpu/gpu build variants of infra/Dockerfile).
    component_images: Dict[str, str] = dataclasses.field(default_factory=dict)
    pipeline_root: Optional[str] = None  # gs://BUCKET/...; required
    project: Optional[str] = None  # GCP project of Dataflow and Vertex jobs
    region: str = "us-central1"
    # Where infra/Dockerfile puts the repository inside the image: local paths under this
    # checkout (the default schema file) are rewritten to it in the compiled spec.
    image_repo_root: str = "/opt/deblur"
    # `deblur submit` defaults (the command line overrides them).
    host: Optional[str] = None  # KFP API endpoint, e.g. http://localhost:8080 (port-forward)
    # the KFP experiment the runs are filed under (not the training preset: training.experiment)
    kfp_experiment: str = "deblur"
    service_account: Optional[str] = None  # Kubernetes service account of the run's pods
    # Experiments and releases are two KFP pipelines (pipelines/kubeflow/client.py): runs of
    # any work tree (`deblur submit`, `deblur pipeline upload`) are versions of the dev
    # pipeline, default "<runner.pipeline_name>-dev"; only `deblur pipeline release` adds a
    # version to runner.pipeline_name, the pipeline every schedule runs.
    dev_pipeline: Optional[str] = None
    # Front doors of a real cluster (kfp.Client's options): the profile namespace of a
    # multi-user KFP; the OAuth client id of an IAP-protected endpoint (or the environment's
    # KF_PIPELINES_IAP_OAUTH2_CLIENT_ID, which kfp reads itself); a file holding a token sent
    # as `Authorization: Bearer` (default: $KF_PIPELINES_SA_TOKEN_PATH, the projected service
    # account token KFP mounts at /var/run/secrets/kubeflow/pipelines/token in its pods).
    namespace: Optional[str] = None
    iap_client_id: Optional[str] = None
    token_path: Optional[str] = None
    dataflow: DataflowConfig = dataclasses.field(default_factory=DataflowConfig)
    trainer_platform: str = "gke"  # gke: the Trainer pod holds the accelerator; vertex: CustomJob
    # What the trainer hands TPUClusterResolver: None derives it (gke + google.com/tpu and
    # Vertex TPU VM machine types -> "local"; Vertex cloud-tpu -> "env", i.e. resolved from the
    # TPU_CONFIG variable Vertex sets; GPUs/CPU -> no TPU); or a TPU name / grpc:// address.
    trainer_tpu: Optional[str] = None
    vertex: VertexTrainerConfig = dataclasses.field(default_factory=VertexTrainerConfig)
    resources: Dict[str, PodResources] = dataclasses.field(default_factory=_default_resources)
    # The Trainer task's retry policy: a preempted (spot / TPU maintenance) or killed Trainer
    # pod is started again, writes to the same ModelRun folder, and train() resumes from its
    # last checkpoint there (trainer/train.py). Backoff: 60 s, doubling, at most 1 h.
    trainer_max_retries: int = 3

    def __post_init__(self):
        if isinstance(self.trainer_max_retries, bool) or not isinstance(
                self.trainer_max_retries, int) or self.trainer_max_retries < 0:
            raise ValueError(f"trainer_max_retries must be an integer >= 0, "
                             f"got {self.trainer_max_retries!r}")
        if self.trainer_platform not in PLATFORMS:
            raise ValueError(f"trainer_platform must be one of {', '.join(PLATFORMS)}, "
                             f"got {self.trainer_platform!r}")
        if self.pipeline_root is not None and not self.pipeline_root.startswith("gs://"):
            raise ValueError(f"pipeline_root must be a gs:// URI (every pod, Dataflow worker and "
                             f"Vertex job reads and writes it), got {self.pipeline_root!r}")
        if not isinstance(self.resources, dict):
            raise ValueError("resources must map component ids to pod resources")
        built = {}
        for cid, r in self.resources.items():
            if isinstance(r, PodResources):
                built[cid] = r
                continue
            if not isinstance(r, dict):
                raise ValueError(f"resources.{cid}: expected a mapping")
            known = {f.name for f in dataclasses.fields(PodResources)}
            unknown = sorted(set(r) - known)
            if unknown:
                raise ValueError(f"resources.{cid}: unknown key(s) {', '.join(unknown)}; "
                                 f"known: {', '.join(sorted(known))}")
            try:
                built[cid] = PodResources(**r)
            except ValueError as e:
                raise ValueError(f"resources.{cid}: {e}") from e
        self.resources = built

    # ---- derived values ------------------------------------------------------------------
    def missing(self) -> List[str]:
        """Fields a user must set before compiling, with what goes in them."""
        out = []
        if not self.image:
            out.append("kubeflow.image (the pipeline image built from infra/Dockerfile)")
        if not self.pipeline_root:
            out.append("kubeflow.pipeline_root (gs://BUCKET/pipeline_root)")
        if not self.project and (self.dataflow.runner == "DataflowRunner"
                                 or self.trainer_platform == "vertex"):
            out.append("kubeflow.project (GCP project of the Dataflow/Vertex jobs)")
        return out

    def image_for(self, component_id: str) -> str:
        return self.component_images.get(component_id) or self.image

    def beam_args(self) -> List[str]:
        d = self.dataflow
        if d.runner == "DirectRunner":
            return ["--runner=DirectRunner", *d.extra_args]
        args = [
            "--runner=DataflowRunner",
            f"--project={self.project}",
            f"--region={d.region or self.region}",
            f"--temp_location={d.temp_location or self.pipeline_root.rstrip('/') + '/beam-tmp'}",
            f"--machine_type={d.machine_type}",
            f"--max_num_workers={d.max_num_workers}",
            f"--sdk_container_image={d.sdk_container_image or self.image}",
            # the SDK is inside that image: nothing to stage
            "--sdk_location=container",
        ]
        args += [f"--experiments={e}" for e in d.experiments]
        if d.disk_size_gb:
            args.append(f"--disk_size_gb={d.disk_size_gb}")
        if d.service_account_email:
            args.append(f"--service_account_email={d.service_account_email}")
        return args + list(d.extra_args)

    def resolved_trainer_tpu(self) -> Optional[str]:
        if self.trainer_tpu:
            return self.trainer_tpu
        if self.trainer_platform == "vertex":
            v = self.vertex
            if v.machine_type == "cloud-tpu":
                return "env"
            if v.machine_type.startswith("ct"):  # ct5lp-hightpu-*, ct6e-*, ... (TPU VMs)
                return "local"
            return None
        r = self.resources.get("Trainer")
        return "local" if r is not None and r.accelerator == "google.com/tpu" else None


def kubeflow_section(config: PipelineConfig) -> KubeflowConfig:
    """config.kubeflow typed and checked: a ConfigError names the key ("kubeflow.dataflow:
    unknown key(s) ..."). Built on every call from the plain data, so a change to the config's
    section is what the next caller sees."""
    return build_section(KubeflowConfig, config.kubeflow, "kubeflow")
