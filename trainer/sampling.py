"""Sampling the guided icDPM (paper sections 4 and C.2): ancestral DDPM on a T-step schedule.

Inference schedule. The paper samples with T steps on a schedule whose largest noise variance
is 1 - alpha_T (its grid: T in {20..1000}, 1 - alpha_T in {0.01..0.5}); here alpha_T is the
cumulative signal level gamma_T of the inference schedule. We use linear betas from
beta_1 = 1e-6 to a beta_T solved (by bisection) so that gamma_T = prod_t (1 - beta_t) equals
1 - max_noise exactly; the trained network is conditioned on continuous gamma, so any schedule
is valid at inference.

Start. When 1 - gamma_T = 1 the chain starts from pure noise. When it is smaller, a pure-noise
start would hand the network an x_T whose signal part is missing, unlike anything it saw in
training; instead the chain starts from the forward marginal of the best estimate of x we
have, the blurry input itself:  x_T = sqrt(gamma_T) y + sqrt(1 - gamma_T) eps  (as SDEdit does).
The network then only has to remove the blur within the residual noise budget, which is what
makes small max_noise values trade perception for distortion (the paper's Fig. 5).

Step (Ho et al. 2020, eq. 11, with the posterior variance):
  x_{t-1} = (x_t - beta_t / sqrt(1 - gamma_t) * eps_hat) / sqrt(alpha_t) + sigma_t z,
  sigma_t^2 = beta_t (1 - gamma_{t-1}) / (1 - gamma_t),   z = 0 at the last step.
The guidance H_k(phi_k(y)) depends only on y: it is computed once per image, not per step.
"""
from __future__ import annotations

import tensorflow as tf

BETA_START = 1e-6


def inference_betas(steps: tf.Tensor, max_noise: tf.Tensor) -> tf.Tensor:
    """Linear betas (1e-6 .. beta_T) of length `steps` with 1 - prod(1 - beta) = max_noise."""
    steps = tf.cast(steps, tf.int32)
    max_noise = tf.cast(max_noise, tf.float64)
    tf.debugging.assert_positive(steps, message="steps must be >= 1")
    tf.debugging.assert_greater(max_noise, tf.constant(0.0, tf.float64), message="max_noise must be in (0, 1]")
    tf.debugging.assert_less_equal(max_noise, tf.constant(1.0, tf.float64), message="max_noise must be in (0, 1]")
    target = tf.math.log(tf.maximum(1.0 - max_noise, 1e-12))  # log gamma_T (1e-12: "pure noise")
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


def ddpm_sample(model, y: tf.Tensor, phi, steps, max_noise, seed: tf.Tensor) -> tf.Tensor:
    """One ancestral DDPM sample per image of y (B, H, W, 3) in [-1, 1]; returns x_0 in [-1, 1].

    steps, max_noise may be tensors: a different schedule does not retrace. seed: int64 [2].
    """
    betas64 = inference_betas(steps, max_noise)
    gammas64 = tf.math.cumprod(1.0 - betas64)
    betas, gammas = tf.cast(betas64, tf.float32), tf.cast(gammas64, tf.float32)
    prev_gammas = tf.concat([[1.0], gammas[:-1]], 0)
    n = tf.shape(betas)[0]
    guidance = model.guide(phi, training=False)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), n + 1)
    g_T = gammas[-1]
    x = tf.sqrt(g_T) * y + tf.sqrt(1.0 - g_T) * tf.random.stateless_normal(tf.shape(y), seeds[n])
    batch = tf.shape(y)[0]

    def body(i, x):
        t = n - 1 - i  # index of x_t's level in the arrays (t = T..1 -> n-1..0)
        beta, gamma, gamma_prev = betas[t], gammas[t], prev_gammas[t]
        eps = model.denoise(x, y, tf.fill([batch], gamma), guidance, training=False)
        mean = (x - beta / tf.sqrt(1.0 - gamma) * eps) / tf.sqrt(1.0 - beta)
        var = beta * (1.0 - gamma_prev) / (1.0 - gamma)
        z = tf.random.stateless_normal(tf.shape(x), seeds[t])
        x = mean + tf.where(t > 0, tf.sqrt(var), 0.0) * z
        return i + 1, tf.ensure_shape(x, y.shape)

    _, x = tf.while_loop(lambda i, _: i < n, body, (tf.constant(0), tf.ensure_shape(x, y.shape)))
    return tf.clip_by_value(x, -1.0, 1.0)
