"""A point of the sampling grid (TensorFlow-free: configs and the CLI import it)."""
from __future__ import annotations

import dataclasses

SAMPLERS = ("ddpm", "ddim")
# The paper's grid (section C.2).
PAPER_STEPS = (20, 30, 50, 100, 200, 500, 1000)
PAPER_MAX_NOISE = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


@dataclasses.dataclass(frozen=True)
class SamplingSetting:
    """One point of the sampling grid."""

    sampler: str = "ddpm"  # ddpm (ancestral, the paper's) or ddim (deterministic)
    steps: int = 50  # T
    max_noise: float = 1.0  # 1 - alpha_T, the largest noise variance of the schedule
    samples: int = 1  # K: the output is the mean of K samples (SA); 1 = a single sample

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 < float(self.max_noise) <= 1.0:
            raise ValueError(f"max_noise must be in (0, 1], got {self.max_noise}")
        if int(self.samples) < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")

    @property
    def key(self) -> str:
        """A stable name, e.g. ddpm-T20-n0.5-K1."""
        return f"{self.sampler}-T{int(self.steps)}-n{float(self.max_noise):g}-K{int(self.samples)}"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "SamplingSetting":
        """From a stored setting (evaluation.json, a manifest, deblur.json): its four fields,
        extra keys such as "key" ignored."""
        return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


# deblur.json's sampling_chosen_by: who set the SavedModel's serving setting (trainer/export.py)
EXPORT_DEFAULT, EVALUATOR = "export default", "evaluator"

# The message of the InvalidArgumentError the sampler raises when the model's output has a NaN
# or an Inf (e.g. weights ruined by a diverged training run); the evaluator and predict match it.
NON_FINITE_OUTPUT = "the model's output is not finite (NaN or Inf)"
