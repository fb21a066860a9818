"""Diffusion for training the guided icDPM (paper section 3, SR3 / DvSR noise parameterisation).

Symbols (paper / SR3):
  beta_t     linear schedule, t = 1..T_train, beta_1 = 1e-6 .. beta_T = 1e-2, T_train = 2000
  alpha_t    1 - beta_t
  gamma_t    prod_{s<=t} alpha_s  (gamma_0 = 1): the signal level; 1 - gamma_t is the noise variance
  x_t        sqrt(gamma) x + sqrt(1 - gamma) eps              (forward process, "add_noise")
  x0_hat     (x_t - sqrt(1 - gamma) eps_hat) / sqrt(gamma)    (its inverse, "predict_x0")
  gamma      continuous: t ~ U{1..T_train}, gamma ~ U(gamma_{t-1}, gamma_t)   (SR3 eq. 5 / WaveGrad)
  L_DPM      || eps - G([x_t, y], gamma) ||_1                 (paper eq. 2, L1 as in DvSR)
  L_guidance mean_k || R_k(H_k(phi_k(y))) - phi_k(x) ||_2^2     (paper eq. 4)
  L          L_guidance + w(step) L_DPM                          (w rises 0 -> 1: warm start)
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf


BETA_START = 1e-6  # beta_1: the training schedule's and the sampling schedules' first beta


@dataclasses.dataclass(frozen=True)
class DiffusionConfig:
    num_train_steps: int = 2000  # T_train
    beta_start: float = BETA_START
    beta_end: float = 1e-2

    def __post_init__(self):
        if isinstance(self.num_train_steps, bool) or not isinstance(self.num_train_steps, int) \
                or self.num_train_steps < 1:
            raise ValueError(f"num_train_steps must be an integer >= 1, got {self.num_train_steps!r}")
        if not 0.0 < self.beta_start <= self.beta_end < 1.0:
            raise ValueError(f"beta_start and beta_end must be 0 < beta_start <= beta_end < 1, "
                             f"got {self.beta_start!r} and {self.beta_end!r}")


def linear_betas(num_steps: int, beta_start: float, beta_end: float) -> np.ndarray:
    return np.linspace(beta_start, beta_end, num_steps, dtype=np.float64)


def gammas_from_betas(betas: np.ndarray) -> np.ndarray:
    """[gamma_0 = 1, gamma_1, ..., gamma_T] with gamma_t = prod_{s<=t} (1 - beta_s)."""
    return np.concatenate([[1.0], np.cumprod(1.0 - betas)])


class TrainingSchedule:
    """The training-time noise levels: sample_gamma() and add_noise()."""

    def __init__(self, cfg: DiffusionConfig = DiffusionConfig()):
        self.cfg = cfg
        g = gammas_from_betas(linear_betas(cfg.num_train_steps, cfg.beta_start, cfg.beta_end))
        self.gammas = tf.constant(g, tf.float32)  # index t = 0..T

    def sample_gamma(self, batch_size, seed=None) -> tf.Tensor:
        """gamma ~ U(gamma_{t-1}, gamma_t), t ~ U{1..T}: one continuous level per example.
        seed: optional stateless seed (shape [2]) for reproducible draws."""
        T = self.cfg.num_train_steps
        if seed is None:
            t = tf.random.uniform([batch_size], 1, T + 1, dtype=tf.int32)
            u = tf.random.uniform([batch_size])
        else:
            s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            t = tf.random.stateless_uniform([batch_size], s1, 1, T + 1, dtype=tf.int32)
            u = tf.random.stateless_uniform([batch_size], s2)
        lo = tf.gather(self.gammas, t)  # gamma_t < gamma_{t-1}
        hi = tf.gather(self.gammas, t - 1)
        return lo + (hi - lo) * u


def add_noise(x: tf.Tensor, gamma: tf.Tensor, eps: tf.Tensor) -> tf.Tensor:
    """x_t = sqrt(gamma) x + sqrt(1 - gamma) eps, gamma of shape [B]."""
    g = tf.reshape(tf.cast(gamma, x.dtype), [-1, 1, 1, 1])
    return tf.sqrt(g) * x + tf.sqrt(1.0 - g) * eps


def predict_x0(x_t: tf.Tensor, gamma: tf.Tensor, eps_hat: tf.Tensor) -> tf.Tensor:
    """x0_hat = (x_t - sqrt(1 - gamma) eps_hat) / sqrt(gamma): add_noise solved for x with the
    predicted eps, in float32, unclipped (a training loss on it keeps its gradient out of
    range). gamma >= gamma_T ~ 5e-5 here, so the division costs ~1e-5 of precision."""
    g = tf.reshape(tf.cast(gamma, tf.float32), [-1, 1, 1, 1])
    return (tf.cast(x_t, tf.float32) - tf.sqrt(1.0 - g) * tf.cast(eps_hat, tf.float32)) / tf.sqrt(g)


def l1_per_example(pred: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    """Mean |pred - target| over all but the batch axis -> [B]."""
    d = tf.abs(tf.cast(pred, tf.float32) - tf.cast(target, tf.float32))
    return tf.reduce_mean(d, axis=tf.range(1, tf.rank(d)))


def mse_per_example(pred: tf.Tensor, target: tf.Tensor) -> tf.Tensor:
    d = tf.square(tf.cast(pred, tf.float32) - tf.cast(target, tf.float32))
    return tf.reduce_mean(d, axis=tf.range(1, tf.rank(d)))


def dpm_loss_weight(step, warmup_steps: int) -> tf.Tensor:
    """w(step): linear 0 -> 1 over warmup_steps (regression-only warm start), then 1."""
    step = tf.cast(step, tf.float32)
    if warmup_steps <= 0:
        return tf.ones_like(step)
    return tf.minimum(1.0, step / float(warmup_steps))


def learning_rate(step, base: float, warmup_steps: int, decay_steps=0) -> tf.Tensor:
    """Linear warm-up over warmup_steps, then base: constant (decay_steps 0), or a cosine
    from base down to 0 at step decay_steps (Loshchilov & Hutter 2017, without restarts):
    base * (1 + cos(pi * (step - warmup_steps) / (decay_steps - warmup_steps))) / 2. A run
    that ends inside its warm-up (decay_steps <= warmup_steps) has no cosine phase. decay_steps
    may be a scalar tensor (a warm start's, known once its parent is read)."""
    step = tf.cast(step, tf.float32)
    warm = tf.ones_like(step) if warmup_steps <= 0 else \
        tf.minimum(1.0, (step + 1.0) / float(warmup_steps))
    if isinstance(decay_steps, int) and not decay_steps:
        return base * warm
    length = tf.maximum(tf.cast(decay_steps, tf.float32) - float(warmup_steps), 1.0)
    progress = tf.clip_by_value((step - warmup_steps) / length, 0.0, 1.0)
    return base * warm * 0.5 * (1.0 + tf.cos(np.pi * progress))
