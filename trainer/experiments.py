"""One typed config per experiment (google-research/vdm style): model, diffusion, data, train.

    exp = get("S+Guide-S")                       # the paper's recipe at size S + Guide-S
    exp = get("tiny", train={"steps": 300})      # CPU-sized, for tests

EXPERIMENTS is the one table of named experiments, each defined in one place: tiny, local (the
quickstart's network and recipe), local-finetune (the pipeline's default: local fine-tuned
1500 steps from its shipped base model), and the paper's icDPM-S, icDPM-L, S+Guide-S,
S+Guide-L, L+Guide-S, L+Guide-L, which use the paper's training recipe (SPEC section 5).

train.steps is the number of steps a training of the experiment trains: from random weights,
the step it reaches; warm-started (trainer/warm_start.py), the steps beyond its parent's step.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, Dict, Optional

from core.fields import check_scalar
from metrics.lpips import NETS as LPIPS_NETS
from trainer import data as data_lib
from trainer.diffusion import DiffusionConfig


@dataclasses.dataclass(frozen=True)
class DataSection:
    crop_size: int = 128
    random_flips: bool = True
    # serialized examples held for shuffling; the checkpointed input iterator stores them, so
    # keep it small (256 GoPro-size examples made ~1.3 GB checkpoints; file interleave mixes too)
    shuffle_buffer: int = 32
    train_split: str = "train"
    # practical degradations of the conditioning input (trainer/degrade.py); off in the
    # paper's experiments
    degrade: bool = False

    def __post_init__(self):
        # checked when the experiment is built, before any data is read: a 0 shuffle buffer
        # was a traceback inside tf.data, a crop of 0 or 60 one inside the model
        require("crop_size", self.crop_size, _positive_int, "a multiple of 8 >= 8",
                extra=lambda v: v % 8 == 0)
        require("shuffle_buffer", self.shuffle_buffer, _positive_int, "an integer >= 1")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v) -> bool:
    return _is_int(v) and v >= 1


def _count(v) -> bool:
    return _is_int(v) and v >= 0


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def require(name: str, value, kind, allowed: str, extra=lambda v: True) -> None:
    """ValueError "<name> must be <allowed>, got <value>" unless kind(value) and extra(value):
    one line naming the knob and its range (Experiment.replace adds the section)."""
    if not (kind(value) and extra(value)):
        raise ValueError(f"{name} must be {allowed}, got {value!r}")


STRATEGIES = ("auto", "default", "mirrored", "multi_worker")
ON_NONFINITE = ("stop", "skip")
DPM_LOSS_WEIGHTINGS = ("eps", "unit")
LR_SCHEDULES = ("constant", "cosine")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    # the steps a training trains: from random weights, the step it ends at; warm-started, the
    # steps beyond its parent's step (trainer/warm_start.py prepare() hands train.train the
    # experiment with the step to end at, the parent's + these, which its experiment.json
    # records)
    steps: int = 1_000_000
    global_batch_size: int = 256
    learning_rate: float = 1e-4
    lr_warmup_steps: int = 20_000
    # after the warm-up: "constant" (the paper), or "cosine" down to 0 at the run's last step
    # (diffusion.learning_rate). The schedule runs on the optimizer's iterations, so a warm
    # start's cosine spans its own `steps`; a resumed run keeps the schedule while `steps` is
    # the same
    lr_schedule: str = "constant"
    dpm_warmup_steps: int = 60_000  # w(step): 0 -> 1 (regression-only warm start)
    # L_DPM per noise level: "eps", the paper's L1 of eps (eq. 2); "unit", the L1 of the
    # preconditioned output F against its target, every level weighing F's error alike (EDM's
    # lambda(sigma); model.output must be "preconditioned"; model.unit_loss_weight)
    dpm_loss_weighting: str = "eps"
    # + lpips_weight x LPIPS(x0_hat, x) (Zhang et al. 2018, metrics/lpips.py) on the denoiser's
    # estimate of the sharp image at the drawn noise level, x0_hat = (x_t - sqrt(1 - gamma)
    # eps_hat) / sqrt(gamma), under the same w(step) as L_DPM. Not in the paper (0 there): the
    # L1 estimate is a posterior mean, blurred wherever the sharp image is uncertain, and
    # LPIPS penalises that blur. lpips_net "alex" or "vgg" (the training network; the
    # evaluator's metric is its own setting)
    lpips_weight: float = 0.0
    lpips_net: str = "alex"
    adam_beta1: float = 0.5
    adam_beta2: float = 0.999
    ema_decay: float = 0.9999
    # EMA warm-up: decay_n = min(ema_decay, (1 + n) / (10 + n)) after the n-th applied update
    # (TF's ExponentialMovingAverage num_updates rule), so a short run's EMA forgets the random
    # initialisation (plain 0.999 still holds 37 % of it after 1000 steps); n counts a warm
    # start's parent's updates too, so the child's EMA goes on from the parent's; off: the
    # paper's constant decay
    ema_warmup: bool = False
    checkpoint_every: int = 5_000
    keep_checkpoints: int = 3
    log_every: int = 100
    image_summary_every: int = 5_000
    seed: int = 0
    # "float32" | "bfloat16" (TPU; CPUs with AVX512_BF16) | "auto": bfloat16 where the device
    # computes it natively (TPUs, CPUs with AVX512_BF16 / AMX), float32 elsewhere
    mixed_precision: str = "float32"
    # "auto": MultiWorkerMirroredStrategy when TF_CONFIG names several workers, else
    # MirroredStrategy over several GPUs, else the default strategy; "multi_worker" forces the
    # first (TF_CONFIG), "mirrored" / "default" the others (train.make_strategy)
    strategy: str = "auto"
    tpu: Optional[str] = None  # TPU name or grpc:// address -> TPUStrategy
    # K training steps per call of the compiled loop (a tf.range loop inside one tf.function):
    # one host round trip per K steps. A call also ends at every log, checkpoint and image
    # summary step, so the results and the logs are those of K = 1 (train_test.py); K is at
    # most log_every in effect (tiny: 10). Measured on CPU (benchmarks/results/train_step.md):
    # K = 10 gives tiny 1.16x the steps/s of K = 1, S+Guide-S (0.5 s steps) 1.02x; the
    # shorter the step (accelerators), the more the host round trip weighs
    steps_per_loop: int = 100
    # XLA-compile the step (forward and backward; Adam and the EMA); None: the default
    # of the device type, train.JIT_COMPILE_DEFAULT (benchmarks/results/train_step_xla.md).
    # TPUs compile everything anyway.
    jit_compile: Optional[bool] = None
    # a batch whose loss or gradient is not finite is never applied: "stop" ends training with
    # an error naming the step; "skip" goes on with the next batch and counts it
    on_nonfinite: str = "stop"
    # "skip" has a bound: training stops (TrainingStopped, nothing exported) once more than
    # this share of the steps so far (applied + skipped) were skipped
    max_skipped_fraction: float = 0.01
    # multi-worker: seconds to wait for every TF_CONFIG task to join; past it the process
    # exits 1 in one line naming the missing tasks (train.wait_for_peers)
    peer_timeout_s: float = 600.0

    def __post_init__(self):
        # every number's range, before any work: a negative learning rate trained (the loss
        # climbed from 0.035 to 54) and exported; keep_checkpoints 0 failed in TensorFlow's
        # words after start-up
        for name in ("steps", "global_batch_size", "checkpoint_every", "keep_checkpoints",
                     "log_every", "image_summary_every", "steps_per_loop"):
            require(name, getattr(self, name), _positive_int, "an integer >= 1")
        for name in ("lr_warmup_steps", "dpm_warmup_steps", "seed"):
            require(name, getattr(self, name), _count, "an integer >= 0")
        require("learning_rate", self.learning_rate, _finite, "a number > 0, e.g. 1e-4",
                extra=lambda v: v > 0)
        for name in ("adam_beta1", "adam_beta2", "ema_decay"):
            require(name, getattr(self, name), _finite, "in [0, 1)",
                    extra=lambda v: 0.0 <= v < 1.0)
        require("lpips_weight", self.lpips_weight, _finite, ">= 0 (0: no LPIPS term)",
                extra=lambda v: v >= 0)
        if self.lpips_net not in LPIPS_NETS:
            raise ValueError(f"lpips_net must be {' or '.join(sorted(LPIPS_NETS))}, "
                             f"got {self.lpips_net!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, "
                             f"got {self.lr_schedule!r}")
        if self.mixed_precision not in ("float32", "bfloat16", "auto"):
            raise ValueError("mixed_precision must be float32, bfloat16 or auto")
        if self.dpm_loss_weighting not in DPM_LOSS_WEIGHTINGS:
            raise ValueError(f"dpm_loss_weighting must be one of {', '.join(DPM_LOSS_WEIGHTINGS)}, "
                             f"got {self.dpm_loss_weighting!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, "
                             f"got {self.strategy!r}")
        if self.jit_compile not in (None, True, False):
            raise ValueError(f"jit_compile must be true, false or null (the device type's "
                             f"default), got {self.jit_compile!r}")
        if self.on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {', '.join(ON_NONFINITE)}, "
                             f"got {self.on_nonfinite!r}")
        if not (_finite(self.max_skipped_fraction) and 0.0 <= self.max_skipped_fraction <= 1.0):
            raise ValueError(f"max_skipped_fraction must be in [0, 1], "
                             f"got {self.max_skipped_fraction!r}")
        if not (isinstance(self.peer_timeout_s, (int, float)) and self.peer_timeout_s > 0):
            raise ValueError(f"peer_timeout_s must be > 0 seconds, got {self.peer_timeout_s!r}")


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str
    model: Any  # trainer.model.ModelConfig
    diffusion: DiffusionConfig = DiffusionConfig()
    data: DataSection = DataSection()
    train: TrainConfig = TrainConfig()

    def __post_init__(self):
        multiple = getattr(self.model, "multiple", 8)
        if self.data.crop_size % multiple:
            raise ValueError(f"data.crop_size must be a multiple of {multiple} for this model "
                             f"(its UNet levels and guidance scales), got {self.data.crop_size}")
        output = getattr(self.model, "output", None)
        if self.train.dpm_loss_weighting == "unit" and output != "preconditioned":
            raise ValueError(f"train.dpm_loss_weighting 'unit' weighs the preconditioned output's "
                             f"error; it needs model.output 'preconditioned', got {output!r}")

    def data_config(self, examples_dir: str) -> data_lib.DataConfig:
        m = self.model
        return data_lib.DataConfig(
            examples_dir=examples_dir, train_split=self.data.train_split,
            crop_size=self.data.crop_size, scales=tuple(m.guidance_scales),
            target=m.guidance_target, guidance_noise_sigma=m.guidance_noise_sigma,
            random_flips=self.data.random_flips, shuffle_buffer=self.data.shuffle_buffer,
            degrade=self.data.degrade)

    def replace(self, **sections: Dict[str, Any]) -> "Experiment":
        """exp.replace(train={"steps": 10}, model={"guidance": "none"})"""
        kw = {}
        for name, changes in sections.items():
            if name == "name":
                kw[name] = changes
                continue
            current = getattr(self, name, None)
            if not dataclasses.is_dataclass(current):
                raise ValueError(f"unknown experiment section {name!r}")
            if not isinstance(changes, dict):
                raise ValueError(f"{name}: expected a mapping of fields, got {changes!r}")
            fields = {f.name for f in dataclasses.fields(current)}
            unknown = set(changes) - fields
            if unknown:
                raise ValueError(f"{name}: unknown field(s) {', '.join(sorted(unknown))}")
            hints = typing.get_type_hints(type(current))
            for field, value in changes.items():
                check_scalar(hints[field], value, f"{name}.{field}")
            try:
                kw[name] = dataclasses.replace(current, **changes)
            except ValueError as e:  # "learning_rate must be ..." -> "train.learning_rate ..."
                text = str(e)
                head = text.split(" ", 1)[0]
                raise ValueError(f"{name}.{text}" if head in fields else f"{name}: {text}") \
                    from None
        return dataclasses.replace(self, **kw)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Experiment":
        from trainer.model import ModelConfig

        return cls(name=d["name"], model=ModelConfig(**_tuples(d["model"])),
                   diffusion=DiffusionConfig(**d["diffusion"]), data=DataSection(**d["data"]),
                   train=TrainConfig(**d["train"]))


def _tuples(d: dict) -> dict:
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


# ---- the experiments: one entry per name, every section in it (vdm's get_config style) ------
# Each entry names the fields of its model, diffusion, data and train sections that differ from
# the sections' defaults (ModelConfig: size S, Guide-S; DiffusionConfig; DataSection;
# TrainConfig: the paper's recipe, SPEC section 5). "base_model", where present, is the folder
# under models/ holding the base model the repository ships for the experiment: the parent of
# its training under the pipeline's training.base_model "auto" (trainer/warm_start.py,
# models/README.md). get(name) builds the Experiment; nothing else holds named configurations.

# The quickstart's network (docs/model.md): the UNet on 2x2 patches (levels at 1/2 and 1/4,
# where phi_2 and phi_4 enter), 2 dilated residual blocks per level and 2 in the middle, no
# normalisation (GroupNorm's image-wide statistics kept it from denoising out of domain;
# without a norm, SkipInit gains and a linear read-out keep it alive), the noised residual
# x - y as its input, scaled to ~0 at the pure-noise end, preconditioned output
# (docs/experiments.md, 2026-12-03).
_LOCAL_MODEL = dict(
    diffusion_channels=32, channel_multipliers=(1, 2), num_res_blocks=2, num_middle_blocks=2,
    patch_size=2, guidance="latent", guidance_channels=16, guidance_multiplier=1,
    guidance_blocks=2, guidance_scales=(2, 4), norm="none", dilations=(1, 2, 4, 8),
    output="preconditioned", input_residual=True, input_scaling="signal", sigma_data=0.15)
# 64 px crops, and the practical degradations of the input (trainer/degrade.py)
_LOCAL_DATA = dict(crop_size=64, shuffle_buffer=64, degrade=True)
# The quickstart's recipe (docs/experiments.md has the measurements behind each choice):
# mixed bfloat16 where the CPU has it, a short regression-only start, an EMA that follows a
# run of a few thousand steps, and L_DPM weighing the preconditioned output's error alike at
# every noise level (its posterior mean, the one-step estimate, gained 0.21 dB over the input
# in 2000 steps against 0.09 dB in 4000 with the paper's eps weighting), and the LPIPS term on
# the x0 estimate (3000 steps: out-of-domain LPIPS 0.405 with DDPM T20 SA4 against 0.495 for
# the one-step estimate without it; benchmarks/results/learning_curves_lpips1_3000.json), and
# a cosine learning rate that ends at 0 with the run (the quickstart's fine-tune from the base
# model, 3 seeds: in-domain LPIPS 0.2016-0.2022, against 0.2103 for the constant rate's seed 0;
# docs/experiments.md "The fine-tune's spread"). The shipped base model was trained with it at
# the constant rate for 18000 steps (make base-model).
_LOCAL_TRAIN = dict(
    steps=2000, global_batch_size=8, learning_rate=1e-3, lr_warmup_steps=50,
    dpm_warmup_steps=100, ema_decay=0.999, ema_warmup=True, checkpoint_every=250, log_every=25,
    image_summary_every=500, mixed_precision="auto", dpm_loss_weighting="unit",
    lpips_weight=1.0, lr_schedule="cosine")


def _paper(diffusion_channels: int, guidance_channels: Optional[int]) -> Dict[str, dict]:
    """One of the paper's six models (Table 11) with the paper's recipe: the UNet at C = 32 (S)
    or 64 (L), guided by Guide-S (G = 32) or Guide-L (64), or unguided (icDPM)."""
    guidance = (dict(guidance="none") if guidance_channels is None
                else dict(guidance="latent", guidance_channels=guidance_channels))
    return dict(model=dict(diffusion_channels=diffusion_channels, **guidance), diffusion={},
                data={}, train={})


EXPERIMENTS: Dict[str, Dict[str, Any]] = {
    # CPU-sized, for tests: C = 8, and the paper's recipe scaled to a few CPU minutes (a higher
    # learning rate, the regression-only warm start kept at half of the run, the paper: 60k
    # steps, so the small guidance network learns its regression before the noise loss
    # dominates the gradients)
    "tiny": dict(
        model=dict(diffusion_channels=8, channel_multipliers=(1, 1, 2, 2), num_res_blocks=1,
                   num_middle_blocks=1, guidance="latent", guidance_channels=8,
                   guidance_multiplier=1, guidance_blocks=1, norm_groups=4),
        diffusion={},
        data=dict(crop_size=64, shuffle_buffer=64),
        train=dict(steps=800, global_batch_size=8, learning_rate=1e-3, lr_warmup_steps=20,
                   dpm_warmup_steps=400, ema_decay=0.99, checkpoint_every=100, log_every=10,
                   image_summary_every=100)),
    # the quickstart's network and recipe from random weights (998k parameters); the shipped
    # base model models/local/ is this experiment trained 18000 steps (make base-model)
    "local": dict(model=_LOCAL_MODEL, diffusion={}, data=_LOCAL_DATA, train=_LOCAL_TRAIN,
                  base_model="local"),
    # the pipeline's default (pipelines/config.py): the local experiment fine-tuned from its
    # shipped base model on the run's own training split, 1500 steps beyond the base model's
    # step, which fit the quickstart's 15 minutes on 2 CPU cores (~6 min of training;
    # docs/experiments.md "The shipped base model and the fine-tune"). Everything else is the
    # local recipe: its cosine learning rate spans these 1500 steps (a warm start's optimizer
    # starts at 0) and its EMA warm-up counts the base model's steps
    "local-finetune": dict(model=_LOCAL_MODEL, diffusion={}, data=_LOCAL_DATA,
                           train={**_LOCAL_TRAIN, "steps": 1500}, base_model="local"),
    # the paper's six (Table 11), its recipe
    "icDPM-S": _paper(32, None),
    "icDPM-L": _paper(64, None),
    "S+Guide-S": _paper(32, 32),
    "S+Guide-L": _paper(32, 64),
    "L+Guide-S": _paper(64, 32),
    "L+Guide-L": _paper(64, 64),
}


def get(name: str, **overrides) -> Experiment:
    """The experiment `name` of EXPERIMENTS, with `overrides` ({section: {field: value}}, as
    Experiment.replace) applied on top."""
    from trainer.model import ModelConfig

    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    entry = EXPERIMENTS[name]
    exp = Experiment(name, ModelConfig(**entry["model"]),
                     diffusion=DiffusionConfig(**entry["diffusion"]),
                     data=DataSection(**entry["data"]), train=TrainConfig(**entry["train"]))
    return exp.replace(**overrides) if overrides else exp


def base_model(name: str) -> Optional[str]:
    """The folder under models/ of the base model the repository ships for experiment `name`
    (its entry's base_model), or None: the repository ships none for it."""
    return (EXPERIMENTS.get(name) or {}).get("base_model")
