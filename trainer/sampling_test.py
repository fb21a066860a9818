"""Samplers (trainer/sampling.py): schedule, steps against the closed forms, an oracle
denoiser that both samplers must invert exactly, guidance outside the loop, no retracing,
and tiling."""
from __future__ import annotations

import types

import numpy as np
import pytest
import tensorflow as tf

from trainer import experiments as E
from trainer import model as M
from trainer import sampling as S


class Oracle:
    """A 'model' that knows the answer x0 = f(y) = -y (a pointwise map, so it also works on
    tiles) and predicts the exact noise of x_t: eps = (x_t - sqrt(g) x0) / sqrt(1 - g)."""

    multiple = 8
    cfg = types.SimpleNamespace(guidance_scales=())

    def __init__(self):
        self.guide_calls = 0

    def guide(self, phi, training=False):
        self.guide_calls += 1
        return {}, {}

    def denoise(self, x_t, y, gamma, guidance, training=False):
        g = tf.reshape(gamma, [-1, 1, 1, 1])
        return (x_t - tf.sqrt(g) * -y) / tf.sqrt(1.0 - g)


@pytest.mark.parametrize("steps", [1, 3, 20, 1000])
@pytest.mark.parametrize("max_noise", [0.01, 0.5, 1.0])
def test_schedule_reaches_max_noise(steps, max_noise):
    betas = S.inference_betas(steps, max_noise).numpy()
    assert betas.shape == (steps,) and betas.dtype == np.float64
    gamma_T = np.prod(1.0 - betas)
    assert gamma_T == pytest.approx(max(1.0 - max_noise, S.PURE_NOISE_GAMMA), rel=1e-9)
    if steps > 2:  # linear from 1e-6
        assert betas[0] == pytest.approx(S.BETA_START)
        np.testing.assert_allclose(np.diff(betas), np.diff(betas)[0], rtol=1e-6)


def test_ddpm_step_is_ho_et_al_eq11_when_x0_is_in_range():
    """Without clipping the x0-form of the step equals Ho et al. eq. 11 with the posterior std."""
    sched = S.InferenceSchedule(10, 0.2)
    betas = S.inference_betas(10, 0.2).numpy()
    gammas = np.cumprod(1 - betas)
    rng = np.random.default_rng(0)
    t = 6
    x0 = rng.uniform(-0.9, 0.9, (1, 4, 4, 3))
    eps = rng.normal(size=x0.shape)
    x_t = np.sqrt(gammas[t]) * x0 + np.sqrt(1 - gammas[t]) * eps
    z = rng.normal(size=x0.shape)
    got = sched.step(tf.constant(x_t, tf.float32), tf.constant(eps, tf.float32), t,
                     tf.constant(z, tf.float32), False).numpy()
    sigma = np.sqrt(betas[t] * (1 - gammas[t - 1]) / (1 - gammas[t]))
    want = (x_t - betas[t] / np.sqrt(1 - gammas[t]) * eps) / np.sqrt(1 - betas[t]) + sigma * z
    np.testing.assert_allclose(got, want, atol=2e-5)
    ddim = sched.step(tf.constant(x_t, tf.float32), tf.constant(eps, tf.float32), t,
                      tf.constant(z, tf.float32), True).numpy()
    want = np.sqrt(gammas[t - 1]) * x0 + np.sqrt(1 - gammas[t - 1]) * eps  # Song et al. eq. 12
    np.testing.assert_allclose(ddim, want, atol=2e-5)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("steps,max_noise,samples", [(3, 1.0, 1), (20, 0.5, 3), (50, 0.01, 2)])
def test_an_exact_denoiser_recovers_x0(deterministic, steps, max_noise, samples):
    """Both samplers invert the forward process when eps is exact, including max_noise = 1
    with 3 steps (beta_T -> 1: the x0 form keeps it finite)."""
    oracle = Oracle()
    y = tf.random.stateless_uniform([2, 16, 24, 3], [1, 2], -1, 1)
    out = S.sample(oracle, y, {}, steps, max_noise, tf.constant([5, 6], tf.int64), samples,
                   deterministic)
    np.testing.assert_allclose(out.numpy(), -y.numpy(), atol=2e-4)
    assert oracle.guide_calls == 1


def test_guidance_is_outside_the_loop_and_nothing_retraces():
    tf.random.set_seed(0)
    model = M.GuidedDenoiser(E.get("tiny").model)
    sampler = S.Sampler(model)
    rng = np.random.default_rng(0)
    a = sampler(rng.integers(0, 256, (2, 16, 24, 3), dtype=np.uint8), S.SamplingSetting("ddpm", 3, 0.5, 2))
    b = sampler(rng.integers(0, 256, (21, 13, 3), dtype=np.uint8), S.SamplingSetting("ddim", 5, 1.0, 1))
    assert a.shape == (2, 16, 24, 3) and b.shape == (21, 13, 3) and a.dtype == np.uint8
    assert sampler._fn.experimental_get_tracing_count() == 1
    # The while loop's body calls the UNet but never the guidance network.
    graph = sampler._fn.get_concrete_function().graph.as_graph_def()
    bodies = [f for f in graph.library.function if "while_body" in f.signature.name]
    assert bodies
    names = [n.name for f in bodies for n in f.node_def]
    assert any("unet" in n for n in names)
    assert not any(n.startswith("H_") or "guidance_net" in n for n in names), \
        [n for n in names if "guidance" in n][:5]
    top = [n.name for n in graph.node] + [n.name for f in graph.library.function
                                          if "while" not in f.signature.name for n in f.node_def]
    assert any("guidance_net" in n for n in top)


def test_same_seed_same_output_and_ddim_is_deterministic_given_the_seed():
    tf.random.set_seed(0)
    sampler = S.Sampler(M.GuidedDenoiser(E.get("tiny").model))
    img = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    ddpm = S.SamplingSetting("ddpm", 4, 0.5, 1)
    assert np.array_equal(sampler(img, ddpm, seed=3), sampler(img, ddpm, seed=3))
    assert not np.array_equal(sampler(img, ddpm, seed=3), sampler(img, ddpm, seed=4))


def test_tiled_sampling():
    # exact noise predictions blend to exact noise: the oracle's answer, any tiling
    img = np.random.default_rng(2).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    out = S.sample_tiled(Oracle(), img, S.SamplingSetting("ddpm", 5, 0.5, 2), tile=16, overlap=8)
    np.testing.assert_allclose(out.astype(int), 255 - img.astype(int), atol=1)
    # one tile covering the image: the same chain as the untiled sampler
    tf.random.set_seed(0)
    model = M.GuidedDenoiser(E.get("tiny").model)
    img = img[:32, :32]
    setting = S.SamplingSetting("ddpm", 4, 0.5, 1)
    whole = S.Sampler(model)(img, setting, seed=7)
    tiled = S.sample_tiled(model, img, setting, tile=32, overlap=8, seed=7)
    assert np.abs(whole.astype(int) - tiled).max() <= 1
    with pytest.raises(ValueError, match="multiple of 8"):
        S.sample_tiled(model, img, setting, tile=30)


def test_setting_validation():
    with pytest.raises(ValueError, match="sampler"):
        S.SamplingSetting("euler")
    with pytest.raises(ValueError, match="max_noise"):
        S.SamplingSetting(max_noise=0.0)
    with pytest.raises(ValueError, match="steps"):
        S.SamplingSetting(steps=0)
    assert S.SamplingSetting("ddim", 20, 0.5, 4).key == "ddim-T20-n0.5-K4"


def test_tiled_sampling_from_the_saved_model_alone(tmp_path):
    """A registered SavedModel can be sampled tile by tile without the model code: the same
    chain as the Keras model's, step for step."""
    from trainer.export import DeblurModule

    tf.random.set_seed(0)
    model = M.GuidedDenoiser(E.get("tiny").model)
    module = DeblurModule(model)
    tf.saved_model.save(module, str(tmp_path / "sm"),
                        signatures={"serving_default": module.serve, "deblur": module.deblur})
    served = S.SavedModelDenoiser(tf.saved_model.load(str(tmp_path / "sm")))
    assert served.multiple == model.multiple
    assert served.cfg.guidance_scales == tuple(model.cfg.guidance_scales)
    img = np.random.default_rng(3).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    setting = S.SamplingSetting("ddpm", 3, 0.5, 2)
    done = []
    a = S.sample_tiled(served, img, setting, tile=32, overlap=16, seed=1, progress=done.append)
    b = S.sample_tiled(model, img, setting, tile=32, overlap=16, seed=1)
    assert a.shape == img.shape and np.abs(a.astype(int) - b).max() <= 1
    assert done == list(range(1, 7))  # K * T steps
    with pytest.raises(ValueError, match="no guide_features"):
        S.SavedModelDenoiser(tf.Module())
