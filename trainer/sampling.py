"""Sampling the guided icDPM (paper sections 4 and C.2): ancestral DDPM, DDIM, sample averaging.

Inference schedule. The paper samples with T steps on a schedule whose largest noise variance
is 1 - alpha_T (its grid: T in {20..1000}, 1 - alpha_T in {0.01..0.5}); here alpha_T is the
cumulative signal level gamma_T of the inference schedule. We use linear betas from
beta_1 = 1e-6 to a beta_T solved (by bisection) so that gamma_T = prod_t (1 - beta_t) equals
1 - max_noise exactly; the trained network is conditioned on continuous gamma, so any schedule
is valid at inference. max_noise = 1 means gamma_T = PURE_NOISE_GAMMA = 1e-4 ("pure noise": 1 %
signal), not 0: every x0 estimate divides by sqrt(gamma_t), and at gamma_T = 1e-12 float32 cannot
resolve the model's x0 through its eps (a one-step estimate came out 0.1 off), while 1e-4 is
about the training schedule's own smallest level (gamma_2000 = 4.5e-5).

Start. When 1 - gamma_T = 1 the chain starts from pure noise. When it is smaller, a pure-noise
start would hand the network an x_T whose signal part is missing, unlike anything it saw in
training; instead the chain starts from the forward marginal of the best estimate of x we
have, the blurry input itself:  x_T = sqrt(gamma_T) y + sqrt(1 - gamma_T) eps  (as SDEdit does).
The network then only has to remove the blur within the residual noise budget, which is what
makes small max_noise values trade perception for distortion (the paper's Fig. 5).

Step. Both samplers go through the clipped prediction of x_0 (Ho et al. 2020 sample with
clip_denoised; it keeps the chain finite when beta_T -> 1 at max_noise = 1 with few steps):
  x0_hat  = clip((x_t - sqrt(1 - gamma_t) eps_hat) / sqrt(gamma_t), -1, 1)
  DDPM (Ho et al. eq. 6-7, the posterior q(x_{t-1} | x_t, x_0) at x0_hat):
    x_{t-1} = c0_t x0_hat + ct_t x_t + sigma_t z,
    c0_t = sqrt(gamma_{t-1}) beta_t / (1 - gamma_t),  ct_t = sqrt(alpha_t) (1 - gamma_{t-1}) / (1 - gamma_t),
    sigma_t^2 = beta_t (1 - gamma_{t-1}) / (1 - gamma_t),  z = 0 at the last step
    (without clipping this is exactly eq. 11 with the posterior variance).
  DDIM (Song et al. 2021 eq. 12, eta = 0): deterministic given x_T,
    x_{t-1} = sqrt(gamma_{t-1}) x0_hat + sqrt(1 - gamma_{t-1}) eps',  eps' = (x_t - sqrt(gamma_t) x0_hat) / sqrt(1 - gamma_t)
Sample averaging ("SA", the paper's Table 3): the mean of K independent samples; the K chains
run as one batch.
The guidance H_k(phi_k(y)) depends only on y: it is computed once per image (and shared by its
K samples), not once per step. The whole loop is a tf.while_loop inside one tf.function whose
steps, max_noise, samples and image size are tensors: nothing retraces per setting or size.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf

from trainer.data import luma_levels
from trainer.diffusion import BETA_START
from trainer.setting import (NON_FINITE_OUTPUT, PAPER_MAX_NOISE, PAPER_STEPS, SAMPLERS,  # noqa: F401
                            SamplingSetting)

PURE_NOISE_GAMMA = 1e-4  # gamma_T at max_noise = 1 (module docstring)


def inference_betas(steps: tf.Tensor, max_noise: tf.Tensor) -> tf.Tensor:
    """Linear betas (1e-6 .. beta_T) of length `steps` with 1 - prod(1 - beta) = max_noise (float64)."""
    steps = tf.cast(steps, tf.int32)
    max_noise = tf.cast(max_noise, tf.float64)
    tf.debugging.assert_positive(steps, message="steps must be >= 1")
    tf.debugging.assert_greater(max_noise, tf.constant(0.0, tf.float64), message="max_noise must be in (0, 1]")
    tf.debugging.assert_less_equal(max_noise, tf.constant(1.0, tf.float64), message="max_noise must be in (0, 1]")
    target = tf.math.log(tf.maximum(1.0 - max_noise, PURE_NOISE_GAMMA))  # log gamma_T
    frac = tf.cast(tf.range(steps), tf.float64) / tf.cast(tf.maximum(steps - 1, 1), tf.float64)

    def log_gamma_T(beta_end):
        betas = BETA_START + (beta_end - BETA_START) * frac
        return tf.reduce_sum(tf.math.log1p(-betas))

    lo, hi = tf.constant(BETA_START, tf.float64), tf.constant(1.0 - 1e-12, tf.float64)
    for _ in range(60):  # bisection on beta_end: log gamma_T decreases in beta_end
        mid = (lo + hi) / 2.0
        too_little_noise = log_gamma_T(mid) > target
        lo = tf.where(too_little_noise, mid, lo)
        hi = tf.where(too_little_noise, hi, mid)
    betas = BETA_START + ((lo + hi) / 2.0 - BETA_START) * frac
    # steps == 1: a single beta that reaches the target
    return tf.where(steps == 1, 1.0 - tf.exp(target) + 0.0 * betas, betas)


class InferenceSchedule:
    """The T-step schedule and its per-step coefficients (computed in float64, used in float32).

    Index t = 0..T-1 holds level t+1 of the paper's notation (x_{t+1} -> x_t).
    """

    def __init__(self, steps, max_noise):
        betas = inference_betas(steps, max_noise)
        gammas = tf.math.cumprod(1.0 - betas)  # gamma_t = prod_{s<=t} alpha_s
        prev = tf.concat([tf.ones([1], tf.float64), gammas[:-1]], 0)  # gamma_{t-1}, gamma_0 = 1
        f32 = lambda v: tf.cast(v, tf.float32)  # noqa: E731
        self.steps = tf.shape(betas)[0]
        self.gammas = f32(gammas)
        self.signal_rate = f32(tf.sqrt(gammas))  # sqrt(gamma_t)
        self.noise_rate = f32(tf.sqrt(1.0 - gammas))  # sqrt(1 - gamma_t)
        self.prev_signal_rate = f32(tf.sqrt(prev))  # sqrt(gamma_{t-1})
        self.prev_noise_rate = f32(tf.sqrt(1.0 - prev))  # sqrt(1 - gamma_{t-1})
        self.c0 = f32(tf.sqrt(prev) * betas / (1.0 - gammas))  # posterior mean coefficient of x0
        self.ct = f32(tf.sqrt(1.0 - betas) * (1.0 - prev) / (1.0 - gammas))  # ... of x_t
        self.sigma = f32(tf.sqrt(betas * (1.0 - prev) / (1.0 - gammas)))  # posterior std

    def add_noise(self, y, noise):
        """x_T = sqrt(gamma_T) y + sqrt(1 - gamma_T) noise: the chain's start (module docstring)."""
        return self.signal_rate[-1] * y + self.noise_rate[-1] * noise

    def predict_x0(self, x_t, eps, t):
        return tf.clip_by_value((x_t - self.noise_rate[t] * eps) / self.signal_rate[t], -1.0, 1.0)

    def step(self, x_t, eps, t, noise, deterministic):
        """x_{t-1} from x_t and the predicted eps; `deterministic` selects DDIM over DDPM."""
        x0 = self.predict_x0(x_t, eps, t)
        eps_x0 = (x_t - self.signal_rate[t] * x0) / self.noise_rate[t]
        ddim = self.prev_signal_rate[t] * x0 + self.prev_noise_rate[t] * eps_x0
        ddpm = self.c0[t] * x0 + self.ct[t] * x_t + self.sigma[t] * noise
        return tf.where(deterministic, ddim, ddpm)


def phi_from_image(img01: tf.Tensor, scales) -> dict:
    """{k: (B, H/k, W/k, 1)} box-averaged BT.601 luma in [-1, 1] of a (B, H, W, 3) image in
    [0, 1]: the guidance input phi_k(y), as in the example format's pyramid."""
    return {k: v * 2.0 - 1.0 for k, v in luma_levels(img01, scales).items()}


def symmetric_pad_end(x: tf.Tensor, size, axis: int) -> tf.Tensor:
    """x extended along `axis` to `size` by mirroring at its end: tf.pad's SYMMETRIC mode, which
    refuses a padding larger than the side (a 3-pixel side padded to 8); this repeats it."""
    n = tf.shape(x)[axis]
    i = tf.range(size) % (2 * n)
    return tf.gather(x, tf.where(i < n, i, 2 * n - 1 - i), axis=axis)


def _tile_batch(tree, k):
    """Repeat every tensor of a nested structure k times along the batch: [a, b] -> [a, a, b, b]."""
    return tf.nest.map_structure(lambda v: tf.repeat(v, k, axis=0), tree)


def sample(model, y: tf.Tensor, phi, steps, max_noise, seed, samples=1,
           deterministic=False) -> tf.Tensor:
    """x_0 estimates in [-1, 1] for y (B, H, W, 3) in [-1, 1] (H, W multiples of model.multiple).

    steps, max_noise, samples, deterministic may be tensors (no retracing). seed: int64 [2];
    the same seed gives the same output. samples = K > 1 returns the mean of K samples.
    """
    batch = tf.shape(y)[0]
    samples = tf.cast(samples, tf.int32)
    tf.debugging.assert_positive(samples, message="samples must be >= 1")
    deterministic = tf.cast(deterministic, tf.bool)
    sched = InferenceSchedule(steps, max_noise)
    n = sched.steps
    guidance = _tile_batch(model.guide(phi, training=False), samples)  # once per image
    yk = tf.repeat(y, samples, axis=0)  # (B*K, H, W, 3): image b's K chains are adjacent
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), n + 1)
    x = sched.add_noise(yk, tf.random.stateless_normal(tf.shape(yk), seeds[n]))
    gamma_shape = tf.shape(yk)[:1]

    def body(i, x):
        t = n - 1 - i
        eps = model.denoise(x, yk, tf.fill(gamma_shape, sched.gammas[t]), guidance, training=False)
        noise = tf.random.stateless_normal(tf.shape(x), seeds[t])
        return i + 1, tf.ensure_shape(sched.step(x, eps, t, noise, deterministic), yk.shape)

    _, x = tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), tf.ensure_shape(x, yk.shape)))
    x = tf.reshape(x, tf.concat([[batch, samples], tf.shape(x)[1:]], 0))
    return tf.reduce_mean(x, axis=1)


def deblur_images(model, images: tf.Tensor, steps, max_noise, samples, seed,
                  deterministic=False) -> tf.Tensor:
    """uint8 (B, H, W, 3) -> uint8 (B, H, W, 3): pad (mirror) to the UNet's multiple, sample, crop."""
    h, w = tf.shape(images)[1], tf.shape(images)[2]
    m = int(model.multiple)
    x01 = tf.image.convert_image_dtype(images, tf.float32)
    x01 = symmetric_pad_end(symmetric_pad_end(x01, h + (m - h % m) % m, 1), w + (m - w % m) % m, 2)
    phi = phi_from_image(x01, tuple(model.cfg.guidance_scales))
    out = sample(model, x01 * 2.0 - 1.0, phi, steps, max_noise, seed, samples, deterministic)
    # uint8 would turn NaN into black: a model whose output is not finite fails loudly instead
    out = tf.debugging.assert_all_finite(out, NON_FINITE_OUTPUT)
    return tf.image.convert_image_dtype((out[:, :h, :w] + 1.0) / 2.0, tf.uint8, saturate=True)


class NonFiniteOutput(ValueError):
    """The model's output had a NaN or an Inf (the sampler's assertion, NON_FINITE_OUTPUT)."""


def call_deblur_batch(loaded, images: np.ndarray, setting: SamplingSetting, seed,
                      samples: Optional[int] = None) -> np.ndarray:
    """uint8 (B, H, W, 3) through an exported SavedModel's deblur_batch at `setting` (samples
    overrides setting.samples; seed is the [2] int64 seed); NonFiniteOutput when the model's
    output is not finite. The evaluator and `deblur predict` call it."""
    try:
        return loaded.deblur_batch(
            tf.constant(images), tf.constant(int(setting.steps)),
            tf.constant(float(setting.max_noise)),
            tf.constant(int(setting.samples if samples is None else samples)),
            tf.constant(list(seed), tf.int64), tf.constant(setting.sampler == "ddim")).numpy()
    except tf.errors.InvalidArgumentError as e:
        if NON_FINITE_OUTPUT not in e.message:
            raise
        raise NonFiniteOutput(NON_FINITE_OUTPUT) from None


class Sampler:
    """A compiled deblurring function of a model: one trace serves every size and setting.

        sampler = Sampler(model)
        out = sampler(images_uint8, SamplingSetting("ddpm", 20, 0.5, 1), seed=0)
    """

    def __init__(self, model):
        self.model = model
        self._fn = tf.function(self._run, input_signature=[
            tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32),
            tf.TensorSpec([2], tf.int64), tf.TensorSpec([], tf.bool)])

    def _run(self, images, steps, max_noise, samples, seed, deterministic):
        return deblur_images(self.model, images, steps, max_noise, samples, seed, deterministic)

    def __call__(self, images, setting: SamplingSetting, seed: int = 0) -> np.ndarray:
        images = np.asarray(images)
        single = images.ndim == 3
        if single:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"expected uint8 images (B, H, W, 3), got {images.dtype} {images.shape}")
        out = self._fn(tf.constant(images), tf.constant(int(setting.steps)),
                       tf.constant(float(setting.max_noise)), tf.constant(int(setting.samples)),
                       tf.constant([int(seed), 0], tf.int64),
                       tf.constant(setting.sampler == "ddim")).numpy()
        return out[0] if single else out

    def tiled(self, image, setting: SamplingSetting, tile: int, overlap: int,
              seed: int = 0) -> np.ndarray:
        """Deblur one image too large for memory in overlapping tiles (see sample_tiled)."""
        return sample_tiled(self.model, image, setting, tile, overlap, seed)


# ---- tiling --------------------------------------------------------------------------------
class SavedModelDenoiser:
    """The model interface sample_tiled needs (multiple, cfg.guidance_scales, guide, denoise),
    served by an exported SavedModel (trainer/export.py: guide_features, predict_noise), so a
    registered model can be sampled tile by tile without the project's model code."""

    def __init__(self, loaded):
        for name in ("guide_features", "predict_noise", "unet_multiple", "guidance_scales"):
            if not hasattr(loaded, name):
                raise ValueError(f"the SavedModel has no {name}: exported before tiled sampling "
                                 "was supported; export it again")
        self._loaded = loaded
        self.multiple = int(loaded.unet_multiple.numpy())
        scales = tuple(int(k) for k in loaded.guidance_scales.numpy() if k > 0)
        self.cfg = type("Cfg", (), {"guidance_scales": scales})()

    def guide(self, phi, training=False):
        return self._loaded.guide_features([phi[k] for k in self.cfg.guidance_scales])

    def denoise(self, x_t, y, gamma, guidance, training=False):
        return self._loaded.predict_noise(x_t, y, gamma, list(guidance))


def _tile_starts(size: int, tile: int, overlap: int):
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def _blend_window(tile: int, overlap: int) -> np.ndarray:
    """1 inside, a linear ramp over `overlap` pixels at each border (never 0)."""
    ramp = np.minimum(np.arange(tile) + 1, np.arange(tile)[::-1] + 1).astype(np.float32)
    ramp = np.minimum(ramp / max(overlap, 1), 1.0)
    return np.outer(ramp, ramp)[..., None]


def sample_tiled(model, image: np.ndarray, setting: SamplingSetting, tile: int = 256,
                 overlap: int = 32, seed: int = 0, progress=None) -> np.ndarray:
    """Deblur a uint8 (H, W, 3) image whose whole-image UNet pass does not fit in memory.

    One chain over the whole image; at every step the noise prediction is made tile by tile
    (overlapping tiles of `tile` pixels, a multiple of the UNet's) and blended with linear
    ramps over the overlap (as MultiDiffusion, Bar-Tal et al. 2023, blends per step), so there
    are no seams between independently sampled tiles. Each tile's guidance is computed once.
    Memory: one tile's UNet activations; time: about (tile / stride)^2 of the untiled run.
    model: a GuidedDenoiser, or a SavedModelDenoiser around an exported SavedModel.
    progress: called with the number of steps done after each step (K * T in all).
    """
    m = int(model.multiple)
    if tile % m or tile <= 0:
        raise ValueError(f"tile must be a positive multiple of {m}, got {tile}")
    if not 0 <= overlap < tile:
        raise ValueError(f"overlap must be in [0, tile), got {overlap}")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    ph, pw = max(tile, h + (m - h % m) % m), max(tile, w + (m - w % m) % m)
    x01 = tf.image.convert_image_dtype(tf.constant(image), tf.float32)
    x01 = symmetric_pad_end(symmetric_pad_end(x01, ph, 0), pw, 1)[None]
    y = x01 * 2.0 - 1.0
    boxes = [(i, j) for i in _tile_starts(ph, tile, overlap) for j in _tile_starts(pw, tile, overlap)]
    window = _blend_window(tile, overlap)
    weight = np.zeros((ph, pw, 1), np.float32)
    for i, j in boxes:
        weight[i:i + tile, j:j + tile] += window
    scales = tuple(model.cfg.guidance_scales)
    guides = [model.guide(phi_from_image(x01[:, i:i + tile, j:j + tile], scales))
              for i, j in boxes]

    @tf.function(reduce_retracing=True)  # every tile has the same shapes: one trace
    def eps_tile(x_t, y_t, gamma, guidance):
        return model.denoise(x_t, y_t, gamma, guidance, training=False)

    sched = InferenceSchedule(int(setting.steps), float(setting.max_noise))
    n = int(sched.steps)
    k = int(setting.samples)
    seeds = tf.random.experimental.stateless_split(tf.constant([seed, 0], tf.int64), k * (n + 1))
    total = np.zeros((ph, pw, 3), np.float32)
    for s in range(k):
        sd = seeds[s * (n + 1):(s + 1) * (n + 1)]
        x = sched.add_noise(y, tf.random.stateless_normal(tf.shape(y), sd[n]))
        for t in range(n - 1, -1, -1):
            eps = np.zeros((ph, pw, 3), np.float32)
            for (i, j), g in zip(boxes, guides):
                e = eps_tile(x[:, i:i + tile, j:j + tile], y[:, i:i + tile, j:j + tile],
                             tf.fill([1], sched.gammas[t]), g)
                eps[i:i + tile, j:j + tile] += e[0].numpy() * window
            eps = tf.constant((eps / weight)[None])
            x = sched.step(x, eps, t, tf.random.stateless_normal(tf.shape(x), sd[t]),
                           setting.sampler == "ddim")
            if progress is not None:
                progress(s * n + (n - t))
        total += x[0].numpy()
    if not np.all(np.isfinite(total)):
        raise ValueError(NON_FINITE_OUTPUT)
    out01 = (total[:h, :w] / k + 1.0) / 2.0
    return tf.image.convert_image_dtype(out01, tf.uint8, saturate=True).numpy()
