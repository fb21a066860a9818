"""Training-time diffusion: the schedule, gamma sampling, the forward process, the weights."""
import numpy as np
import pytest
import tensorflow as tf

from trainer import diffusion as D


def test_schedule_matches_closed_form():
    s = D.TrainingSchedule()
    g = s.gammas.numpy().astype(np.float64)
    betas = np.linspace(1e-6, 1e-2, 2000)
    assert g.shape == (2001,) and g[0] == 1.0
    # gamma_t = prod (1 - beta_s), by brute force at a few t
    for t in (1, 2, 10, 1000, 2000):
        expect = 1.0
        for b in betas[:t]:
            expect *= 1.0 - b
        assert g[t] == pytest.approx(expect, rel=1e-5)
    assert np.all(np.diff(g) < 0)  # strictly decreasing signal level


def test_gamma_is_uniform_between_neighbouring_levels():
    s = D.TrainingSchedule(D.DiffusionConfig(num_train_steps=4, beta_start=0.1, beta_end=0.4))
    gam = s.sample_gamma(20000, seed=tf.constant([1, 2])).numpy()
    edges = s.gammas.numpy()
    # every draw falls in one interval (gamma_t, gamma_{t-1}); intervals are chosen uniformly
    idx = np.searchsorted(-edges, -gam)  # edges decrease
    counts = np.bincount(idx, minlength=len(edges))[1:]
    assert counts.sum() == 20000 and np.all(np.abs(counts / 20000 - 0.25) < 0.02)
    assert gam.min() >= edges[-1] and gam.max() <= 1.0
    # and is reproducible for a stateless seed
    np.testing.assert_array_equal(gam, s.sample_gamma(20000, seed=tf.constant([1, 2])).numpy())


def test_add_noise_and_losses():
    x = tf.fill([2, 4, 4, 3], 0.5)
    eps = tf.fill([2, 4, 4, 3], -1.0)
    xt = D.add_noise(x, tf.constant([1.0, 0.25]), eps).numpy()
    np.testing.assert_allclose(xt[0], 0.5)
    np.testing.assert_allclose(xt[1], 0.5 * 0.5 + np.sqrt(0.75) * -1.0, rtol=1e-6)
    np.testing.assert_allclose(D.l1_per_example(x, eps).numpy(), [1.5, 1.5])
    np.testing.assert_allclose(D.mse_per_example(x, eps).numpy(), [2.25, 2.25])


def test_warmups():
    np.testing.assert_allclose(D.dpm_loss_weight(tf.constant([0, 30000, 60000, 90000]), 60000).numpy(),
                               [0.0, 0.5, 1.0, 1.0])
    lr = D.learning_rate(tf.constant([0, 9999, 19999, 50000]), 1e-4, 20000).numpy()
    np.testing.assert_allclose(lr, [1e-4 / 20000, 0.5e-4, 1e-4, 1e-4], rtol=1e-5)


def test_the_cosine_learning_rate_falls_from_base_to_zero_after_the_warm_up():
    steps = np.array([0, 49, 50, 1050, 2050, 2500, 3000])
    # brute force: warm-up factor min(1, (s + 1) / 50), then cos over the 2000 steps 50..2050
    warm = np.minimum(1.0, (steps + 1) / 50.0)
    cos = 0.5 * (1 + np.cos(np.pi * np.clip((steps - 50) / 2000.0, 0, 1)))
    lr = D.learning_rate(tf.constant(steps), 1e-3, 50, decay_steps=2050).numpy()
    np.testing.assert_allclose(lr, 1e-3 * warm * cos, rtol=1e-5, atol=1e-12)
    assert lr[1] == pytest.approx(1e-3) and lr[3] == pytest.approx(0.5e-3, rel=1e-5)
    assert lr[4] == lr[5] == lr[6] == 0.0
    # a run that ends inside its warm-up has no cosine phase: the plain ramp
    early = D.learning_rate(tf.constant([0, 19, 29]), 1e-3, 50, decay_steps=30).numpy()
    np.testing.assert_allclose(early, 1e-3 * np.array([1, 20, 30]) / 50, rtol=1e-5)
    with pytest.raises(ValueError):
        D.DiffusionConfig(beta_start=0.0)
