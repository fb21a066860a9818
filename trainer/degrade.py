"""Practical degradations of the conditioning input (`data.degrade`, off in the paper experiments).

A model trained only on clean, well-exposed frame-averaged blur (GoPro) meets dark, noisy and
JPEG-compressed blur out of domain (RealBlur: the paper's failure cases). The augmentation
widens the training inputs with the practical degradations of the blind-restoration literature,
with their published ranges, never with statistics of any test set:

  exposure  (sharp and blurry alike: the scene's light is content, not a degradation to
            remove) the low-light synthesis of Lv et al. (MBLLEN, BMVC 2018; "Attention guided
            low-light image enhancement", IJCV 2021): I' = beta (alpha I)^g on display values,
            alpha ~ U(0.9, 1), beta ~ U(0.5, 1), g ~ U(1.5, 5).
  noise     (blurry only) heteroscedastic Poisson-Gaussian sensor noise in linear light,
            variance = lambda_shot x + lambda_read, log lambda_shot ~ U(log 1e-4, log 1.2e-2),
            log lambda_read ~ N(2.18 log lambda_shot + 1.20, 0.26) (Brooks et al.,
            "Unprocessing images for learned raw denoising", CVPR 2019, section 3.2).
  JPEG      (blurry only) quality ~ U{30..95} (Real-ESRGAN, Wang et al. ICCVW 2021, and
            BSRGAN, Zhang et al. ICCV 2021, both use [30, 95]).
Each is applied with probability PROBABILITY, independently, in the order exposure, noise,
JPEG (the camera's order: light, sensor, encoder). The pyramid levels phi_k(y) and phi_k(x)
are recomputed from the degraded crops (trainer/data.py). All randomness is stateless (the
training input is checkpointed).
"""
from __future__ import annotations

import tensorflow as tf

PROBABILITY = 0.3
ALPHA, BETA, EXPOSURE_GAMMA = (0.9, 1.0), (0.5, 1.0), (1.5, 5.0)
LOG_SHOT = (-9.2103404, -4.4228486)  # log 1e-4, log 1.2e-2
READ_SLOPE, READ_INTERCEPT, READ_STD = 2.18, 1.20, 0.26
JPEG_QUALITY = (30, 95)
GAMMA = 2.2


def _to_linear(img01):
    return tf.pow(tf.clip_by_value(img01, 0.0, 1.0), GAMMA)


def _to_display(lin):
    return tf.pow(tf.clip_by_value(lin, 0.0, 1.0), 1.0 / GAMMA)


def degrade_pair(sharp01: tf.Tensor, blurry01: tf.Tensor, seed: tf.Tensor):
    """(sharp, blurry) crops in [0, 1], (H, W, 3) float32 -> the degraded pair (module docstring).
    seed: int64 [2], stateless."""
    s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 8)
    apply = tf.random.stateless_uniform([3], s[0]) < PROBABILITY

    # exposure: one draw for both images (Lv et al.)
    abg = tf.random.stateless_uniform([3], s[1])
    alpha = ALPHA[0] + (ALPHA[1] - ALPHA[0]) * abg[0]
    beta = BETA[0] + (BETA[1] - BETA[0]) * abg[1]
    g = EXPOSURE_GAMMA[0] + (EXPOSURE_GAMMA[1] - EXPOSURE_GAMMA[0]) * abg[2]

    def dim(img01):
        return tf.where(apply[0], beta * tf.pow(alpha * tf.clip_by_value(img01, 0.0, 1.0), g),
                        img01)

    sharp = dim(sharp01)
    blurry_lin = _to_linear(dim(blurry01))

    # Poisson-Gaussian sensor noise on the blurry image (Gaussian approximation, Brooks et al.)
    log_shot = tf.random.stateless_uniform([], s[2], *LOG_SHOT)
    log_read = READ_SLOPE * log_shot + READ_INTERCEPT + READ_STD * tf.random.stateless_normal(
        [], s[3])
    variance = tf.exp(log_shot) * tf.clip_by_value(blurry_lin, 0.0, 1.0) + tf.exp(log_read)
    noisy = blurry_lin + tf.sqrt(variance) * tf.random.stateless_normal(tf.shape(blurry_lin), s[4])
    blurry = _to_display(tf.where(apply[1], noisy, blurry_lin))

    # JPEG round trip of the blurry image
    quality = tf.random.stateless_uniform([], s[5], JPEG_QUALITY[0], JPEG_QUALITY[1] + 1,
                                          dtype=tf.int32)
    jpeg = tf.image.adjust_jpeg_quality(blurry, quality)
    blurry = tf.where(apply[2], tf.image.convert_image_dtype(jpeg, tf.float32), blurry)
    blurry = tf.ensure_shape(blurry, blurry01.shape)
    return sharp, blurry
