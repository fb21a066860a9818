"""The guided icDPM model (trainer/model.py) and its counter (trainer/flops.py); tiny configs,
except the Table 11 check, which counts the paper's full-size models without building tensors."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from trainer import experiments as E
from trainer import flops as F
from trainer import model as M

H, W = 32, 48  # non-square, a multiple of the tiny UNet's 8

# Every value of every ablation axis (guidance none/input/latent, target gray/rgb, scales
# (8,)/(2,4,8), input concatenation on/off) appears at least once.
ABLATIONS = {
    "latent_gray_ms": {},
    "latent_rgb_x8_noconcat": dict(guidance_target="rgb", guidance_scales=(8,), input_concat=False,
                                   num_res_blocks=2, guided_blocks_per_level=2),
    "input_gray_ms_noconcat": dict(guidance="input", input_concat=False),
    "input_rgb_x8": dict(guidance="input", guidance_target="rgb", guidance_scales=(8,)),
    "none": dict(guidance="none"),
    # the quickstart's axes: the UNet on 2x2 patches, the residual input, preconditioned output
    "patch2_residual_preconditioned": dict(patch_size=2, input_residual=True,
                                           output="preconditioned", sigma_data=0.15),
    # the options measured for the local model: dilated blocks, per-pixel normalisation or none
    "dilated_pixelnorm": dict(norm="pixel", num_res_blocks=2, dilations=(1, 2)),
    "nonorm": dict(norm="none"),
}


def tiny(**over) -> M.ModelConfig:
    """The tiny experiment's model with `over` changed."""
    return E.get("tiny").model.replace(**over)


@pytest.fixture(scope="module")
def models():
    tf.random.set_seed(0)
    return {name: M.GuidedDenoiser(tiny(**over)) for name, over in ABLATIONS.items()}


def _inputs(batch, h=H, w=W, scales=(2, 4, 8), seed=0):
    g = tf.random.Generator.from_seed(seed)
    x_t, y = g.normal([batch, h, w, 3]), g.normal([batch, h, w, 3])
    phi = {k: g.uniform([batch, h // k, w // k, 1], -1, 1) for k in scales}
    return x_t, y, phi


def _expected_input_channels(cfg):
    n = 3 + (3 if cfg.input_concat else 0)
    if cfg.guidance == "input":
        n += cfg.regression_channels * len(cfg.guidance_scales)
    return n * cfg.patch_size ** 2


@pytest.mark.parametrize("name", list(ABLATIONS))
def test_output_shapes_of_every_ablation(models, name):
    model = models[name]
    cfg = model.cfg
    x_t, y, phi = _inputs(2)
    eps, regs = model(x_t, y, tf.constant([0.3, 0.9]), phi)
    assert eps.shape == (2, H, W, 3)
    assert model.unet.get_layer("conv_in").kernel.shape[2] == _expected_input_channels(cfg)
    if cfg.guidance == "none":
        assert model.guidance_net is None and regs == {}
    else:
        assert sorted(regs) == list(cfg.guidance_scales)
        for k in cfg.guidance_scales:
            assert regs[k].shape == (2, H // k, W // k, cfg.regression_channels)
    assert np.all(np.isfinite(eps.numpy()))
    # the Keras variables are exactly what the counter predicts
    assert model.count_params() == F.count_analytic(cfg, H, W)["params"]


def test_fully_convolutional_and_multiple_enforced(models):
    model = models["latent_gray_ms"]
    assert model.multiple == 8
    x_t, y, phi = _inputs(1, 24, 16)  # the same weights at a second size
    eps, regs = model(x_t, y, tf.constant([0.5]), phi)
    assert eps.shape == (1, 24, 16, 3) and regs[8].shape == (1, 3, 2, 1)
    x_t, y, phi = _inputs(1, 36, 48)
    with pytest.raises(ValueError, match="height 36 is not a positive multiple of 8"):
        model(x_t, y, tf.constant([0.5]), phi)
    with pytest.raises(ValueError, match="width 50 is not a positive multiple of 8"):
        M.build_unet(model.cfg, 32, 50)
    with pytest.raises(ValueError, match="multiple of 8"):
        F.count_analytic(model.cfg, 720, 1276)


def _three_way(model, scales):
    """Batch of 3 (GroupNorm is per example): [reference, other gamma, other phi]."""
    x_t, y, phi = _inputs(1, scales=scales)
    _, _, phi2 = _inputs(1, scales=scales, seed=1)
    rep = lambda t: tf.concat([t, t, t], 0)
    phi3 = {k: tf.concat([phi[k], phi[k], phi2[k]], 0) for k in scales}
    eps, _ = model(rep(x_t), rep(y), tf.constant([0.5, 0.999, 0.5]), phi3)
    e = eps.numpy()
    return np.abs(e[0] - e[1]).max(), np.abs(e[0] - e[2]).max()


@pytest.mark.parametrize("name", ["latent_gray_ms", "input_rgb_x8", "none"])
def test_gamma_and_guidance_matter(models, name):
    model = models[name]
    d_gamma, d_phi = _three_way(model, model.cfg.guidance_scales)
    assert d_gamma > 1e-3  # the noise level conditions every block
    if model.cfg.guidance == "none":
        assert d_phi < 1e-5  # phi is ignored (CPU convolutions differ ~1e-6 across the batch)
    else:
        assert d_phi > 1e-3


def test_guide_once_then_denoise_equals_call(models):
    model = models["latent_gray_ms"]
    x_t, y, phi = _inputs(1)
    gamma = tf.constant([0.7])
    eps, regs = model(x_t, y, gamma, phi)
    guidance = model.guide(phi)
    np.testing.assert_allclose(model.denoise(x_t, y, gamma, guidance).numpy(), eps.numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(guidance[1][2].numpy(), regs[2].numpy())
    with pytest.raises(ValueError, match="lacks the guidance scales"):
        model.guide({2: phi[2]})


def test_input_residual_feeds_the_unet_the_noised_residual(models):
    """input_residual: G sees r_t = x_t - sqrt(gamma) y in place of x_t, nothing else changes.
    Checked against the same weights without the switch, fed r_t by hand."""
    plain = models["latent_gray_ms"]
    residual = M.GuidedDenoiser(plain.cfg.replace(input_residual=True))
    residual.set_weights(plain.get_weights())  # the switch adds no weights
    x_t, y, phi = _inputs(2)
    gamma = tf.constant([0.81, 0.25])
    r_t = x_t - tf.reshape([0.9, 0.5], [2, 1, 1, 1]) * y
    np.testing.assert_allclose(residual(x_t, y, gamma, phi)[0].numpy(),
                               plain(r_t, y, gamma, phi)[0].numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="input_residual needs input_concat"):
        M.ModelConfig(input_residual=True, input_concat=False)


def test_dilations_cycle_through_the_blocks_of_each_stage():
    cfg = tiny(channel_multipliers=(1, 2), guidance_scales=(2,), num_res_blocks=2,
               num_middle_blocks=3, dilations=[1, 2, 4, 8])
    assert cfg.dilations == (1, 2, 4, 8)
    unet = M.build_unet(cfg)
    rate = {l.name: l.dilation_rate[0] for l in unet.layers if l.name.endswith("_conv1")}
    assert [rate[f"enc1_res{i}_conv1"] for i in range(2)] == [1, 2]
    assert [rate[f"mid_res{i}_conv1"] for i in range(3)] == [4, 8, 1]
    assert [rate[f"dec0_res{i}_conv1"] for i in range(3)] == [1, 2, 4]
    # the second conv of every block and the default config stay undilated
    assert all(l.dilation_rate == (1, 1) for l in unet.layers if l.name.endswith("_conv2"))
    assert {l.dilation_rate for l in M.build_unet(tiny()).layers
            if isinstance(l, M.layers.Conv2D)} <= {(1, 1)}


@pytest.mark.parametrize("norm, local", [("group", False), ("pixel", True), ("none", True)])
def test_only_groupnorm_lets_a_far_region_change_the_output(norm, local):
    """GroupNorm's statistics span the whole image: brightening a region far outside a pixel's
    receptive field changes that pixel's output (a crop-trained model sees other statistics
    on a full image). "pixel" (LayerNorm over each pixel's channels) and "none" keep the
    output local."""
    tf.random.set_seed(1)
    m = M.GuidedDenoiser(tiny(norm=norm, guidance="none"))
    for layer in m.unet.layers:  # "none": open the SkipInit gains, so every branch computes
        if isinstance(layer, M.ResidualGain):
            layer.alpha.assign(1.0)
    x_t, y, _ = _inputs(1, 16, 512)
    far = tf.concat([y[:, :, :256], y[:, :, 256:] * 3.0 + 1.0], axis=2)
    g = tf.constant([0.5])
    a = m(x_t, y, g)[0][:, :, :32].numpy()
    b = m(x_t, far, g)[0][:, :, :32].numpy()
    assert np.array_equal(a, b) if local else np.abs(a - b).max() > 1e-3


def test_no_norm_blocks_start_as_their_skip_path():
    """norm "none": every residual branch is scaled by a ResidualGain that starts at 0
    (SkipInit), so at initialisation a block whose width does not change returns its input
    exactly, and conv_out reads the stream without a SiLU; GroupNorm blocks have neither."""
    cfg = tiny(norm="none", guidance="none")
    unet = M.build_unet(cfg)
    gains = [l for l in unet.layers if isinstance(l, M.ResidualGain)]
    blocks = [l for l in unet.layers if l.name.endswith("_out") and l.name.startswith(
        ("enc", "mid", "dec"))]
    assert len(gains) == len(blocks) > 0 and all(float(g.alpha.numpy()) == 0.0 for g in gains)
    group = M.build_unet(tiny())
    assert not any(isinstance(l, M.ResidualGain) for l in group.layers)
    # and no SiLU before conv_out, whose inputs could all drift below zero (a dead network)
    assert unet.get_layer("out_act").activation.__name__ == "linear"
    assert group.get_layer("out_act").activation.__name__ == "silu"
    # mid_res0 keeps the width: its output is its input until alpha moves
    probe = tf.keras.Model(unet.inputs, [unet.get_layer("mid_res0_out").input[0],
                                         unet.get_layer("mid_res0_out").output])
    x_t, y, _ = _inputs(2, 16, 32)
    skip, out = probe({"x_t": x_t, "y": y, "gamma": tf.constant([0.3, 0.7])})
    np.testing.assert_array_equal(skip.numpy(), out.numpy())
    for g in gains:
        g.alpha.assign(0.5)
    skip, out = probe({"x_t": x_t, "y": y, "gamma": tf.constant([0.3, 0.7])})
    assert np.abs(out.numpy() - skip.numpy()).max() > 1e-3


@pytest.mark.parametrize("scaling", ["edm", "signal"])
def test_signal_input_scaling_leaves_the_pure_noise_end_to_y(scaling):
    """input_scaling "signal" feeds the UNet sqrt(gamma) c_in r_t: at gamma = 1e-8 its x_t
    channels are ~1e-4 x_t, so F no longer depends on which noise x_t holds (a plain regressor
    of y there); "edm" feeds unit-variance noise, which moves F."""
    tf.random.set_seed(2)
    m = M.GuidedDenoiser(tiny(norm="none", output="preconditioned",
                              input_residual=True, sigma_data=0.15, input_scaling=scaling))
    x_a, y, phi = _inputs(1, seed=3)
    x_b = _inputs(1, seed=4)[0]
    g = tf.constant([1e-8])
    to_f = tf.keras.Model(m.unet.inputs, m.unet.get_layer("conv_out").output)  # F itself
    guide = m.guide(phi)[0]
    f = {}
    for name, x_t in (("a", x_a), ("b", x_b)):
        f[name] = to_f({"x_t": x_t, "y": y, "gamma": g,
                        **{f"guide_x{k}": v for k, v in guide.items()}}).numpy()
    change = np.abs(f["a"] - f["b"]).mean() / np.abs(f["a"]).mean()
    assert change < 1e-2 if scaling == "signal" else change > 0.1, change


def test_config_validation():
    with pytest.raises(ValueError, match="guidance must be one of"):
        M.ModelConfig(guidance="skip")
    with pytest.raises(ValueError, match="guidance_target"):
        M.ModelConfig(guidance_target="lab")
    with pytest.raises(ValueError, match="powers of two"):
        M.ModelConfig(guidance_scales=(3,))
    with pytest.raises(ValueError, match="increasing and unique"):
        M.ModelConfig(guidance_scales=(4, 2))
    with pytest.raises(ValueError, match="needs UNet levels"):
        M.ModelConfig(channel_multipliers=(1, 2, 3), guidance_scales=(2, 4, 8))
    with pytest.raises(ValueError, match="never show y"):
        M.ModelConfig(guidance="none", input_concat=False)
    with pytest.raises(ValueError, match="positive integer"):
        M.ModelConfig(num_res_blocks=0)
    with pytest.raises(ValueError, match="guided_blocks_per_level"):
        M.ModelConfig(num_res_blocks=2, guided_blocks_per_level=3)
    with pytest.raises(ValueError, match="dilations"):
        M.ModelConfig(dilations=(1, 0))
    with pytest.raises(ValueError, match="dilations"):
        M.ModelConfig(dilations=())
    with pytest.raises(ValueError, match="input_scaling must be one of"):
        M.ModelConfig(output="preconditioned", input_scaling="karras")
    with pytest.raises(ValueError, match="input_scaling applies"):
        M.ModelConfig(input_scaling="signal")
    with pytest.raises(ValueError, match="norm must be one of"):
        M.ModelConfig(norm="batch")
    with pytest.raises(ValueError, match="unknown experiment 'XL'; choose one of tiny, local"):
        E.get("XL")
    # input-level guidance needs no UNet level at 1/8; the multiple still covers phi_8
    cfg = M.ModelConfig(channel_multipliers=(1, 2), guidance="input")
    assert cfg.multiple == 8
    assert E.get("icDPM-S").model.guidance == "none"
    assert E.get("S+Guide-L").model.guidance_channels == 64


@pytest.mark.parametrize("name", list(F.PAPER_TABLE11))
def test_table11_sizes(name):
    """Params within 15 % and FLOPs of one 720 x 1280 step within 30 % of paper Table 11."""
    paper_params, paper_flops = F.PAPER_TABLE11[name]
    got = F.count_analytic(E.get(name).model, 720, 1280)
    assert abs(got["params"] / paper_params - 1) <= 0.15, got
    assert abs(got["flops"] / paper_flops - 1) <= 0.30, got


@pytest.mark.parametrize("name", ["latent_rgb_x8_noconcat", "input_gray_ms_noconcat",
                                  "patch2_residual_preconditioned"])
def test_counter_walks_the_keras_models(name):
    """count() (Keras layers at a static size) == count_analytic() on each code path."""
    cfg = tiny(**ABLATIONS[name])
    assert F.count(cfg, H, W) == F.count_analytic(cfg, H, W)


def test_counter_agrees_with_tf_profiler(models):
    """TF's profiler on the concrete graph of one step at 64 x 64 (tiny): Conv2D + MatMul
    FLOPs agree with our count; all ops together are a few % more (biases, norms...)."""
    model = models["latent_gray_ms"]
    ours = F.count_analytic(model.cfg, 64, 64)["flops"]
    prof = F.tf_profiler_flops(model.cfg, 64, 64, model=model)
    assert abs(prof["conv_matmul"] / ours - 1) < 0.01, (prof, ours)
    assert 0 <= prof["total"] / ours - 1 < 0.10, (prof, ours)


def test_model_stats_main():
    for bad, match in [(("M", "S"), "--diffusion must be S or L"),
                       (("S", "XL"), "--guide must be none, S or L")]:
        with pytest.raises(ValueError, match=match):
            F.model_stats_main(*bad, height=720, width=1280)
    with pytest.raises(ValueError, match="--height must be a positive multiple of 8"):
        F.model_stats_main("S", "none", height=721, width=1280)
    out = F.model_stats_main("s", "None", height=720, width=1280)  # builds icDPM-S (Keras)
    assert out["config"] == "icDPM-S"
    assert out["params"] == F.count_analytic(E.get("icDPM-S").model)["params"]
    assert out["flops"] == F.count_analytic(E.get("icDPM-S").model)["flops"]
    assert out["paper_params"] == 6_000_000 and abs(out["params_vs_paper"]) < 0.15


@pytest.mark.parametrize("residual", [False, True])
def test_preconditioned_output_is_eps_when_F_is_its_edm_target(residual):
    """EDM written in sigma (Karras et al. 2022, Table 1): with sigma^2 = (1 - g) / g and
    r~ = d + sigma eps, D = c_skip r~ + c_out F; the F that makes D = d must make the layer
    return exactly eps, at every noise level (computed here in float64 from the EDM form, not
    from the layer's closed form)."""
    rng = np.random.default_rng(0)
    sd = 0.15 if residual else 0.5
    x, y = rng.uniform(-1, 1, (5, 8, 8, 3)), rng.uniform(-1, 1, (5, 8, 8, 3))
    eps = rng.standard_normal((5, 8, 8, 3))
    g = np.array([1e-4, 0.01, 0.5, 0.99, 1 - 1e-6]).reshape(-1, 1, 1, 1)
    d = x - y if residual else x
    x_t = np.sqrt(g) * x + np.sqrt(1 - g) * eps
    sigma = np.sqrt((1 - g) / g)
    c_skip, c_out = sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / np.sqrt(sigma ** 2 + sd ** 2)
    f_star = (d - c_skip * (d + sigma * eps)) / c_out
    layer = M.PreconditionedNoise(sd, residual)
    got = layer([tf.constant(v, tf.float32) for v in (f_star, x_t, y, g.reshape(-1))]).numpy()
    np.testing.assert_allclose(got, eps, atol=2e-3)


def test_unit_loss_weight_turns_the_eps_error_into_the_error_of_F():
    """train.dpm_loss_weighting "unit": weight x |eps_hat - eps| must be |F - F*| at every
    noise level, F* the EDM target (d - c_skip r~) / c_out computed in float64 (Karras et al.
    2022, Table 1), not from the layer; the unweighted eps error shrinks F's by ~100x at
    gamma 1e-4 (the reason for the option)."""
    rng = np.random.default_rng(1)
    sd = 0.15
    x, y = rng.uniform(-1, 1, (4, 8, 8, 3)), rng.uniform(-1, 1, (4, 8, 8, 3))
    eps = rng.standard_normal((4, 8, 8, 3))
    g = np.array([1e-4, 0.05, 0.5, 0.99]).reshape(-1, 1, 1, 1)
    x_t = np.sqrt(g) * x + np.sqrt(1 - g) * eps
    sigma = np.sqrt((1 - g) / g)
    c_skip, c_out = sd ** 2 / (sigma ** 2 + sd ** 2), sigma * sd / np.sqrt(sigma ** 2 + sd ** 2)
    f_star = (x - y - c_skip * (x - y + sigma * eps)) / c_out
    delta = rng.uniform(-0.5, 0.5, f_star.shape)
    layer = M.PreconditionedNoise(sd, residual=True)
    eps_hat = layer([tf.constant(v, tf.float32) for v in (f_star + delta, x_t, y, g.reshape(-1))])
    err = np.abs(eps_hat.numpy() - eps).mean(axis=(1, 2, 3))
    w = M.unit_loss_weight(tf.constant(g.reshape(-1), tf.float32), sd).numpy()
    np.testing.assert_allclose(w * err, np.abs(delta).mean(axis=(1, 2, 3)), rtol=2e-3)
    assert err[0] < np.abs(delta).mean() / 50  # what the paper's eps L1 sees at gamma 1e-4


def test_unit_weighting_needs_the_preconditioned_output():
    from trainer import experiments

    assert experiments.get("local", train={"dpm_loss_weighting": "unit"}).train \
        .dpm_loss_weighting == "unit"
    with pytest.raises(ValueError, match="needs model.output 'preconditioned'"):
        experiments.get("tiny", train={"dpm_loss_weighting": "unit"})
    with pytest.raises(ValueError, match="dpm_loss_weighting must be one of eps, unit"):
        experiments.get("local", train={"dpm_loss_weighting": "x0"})


def test_patchify_round_trips_and_keeps_patches_together():
    x = tf.reshape(tf.range(2 * 4 * 6 * 3, dtype=tf.float32), (2, 4, 6, 3))
    s2d = M.SpaceToDepth(2)(x)
    assert s2d.shape == (2, 2, 3, 12)
    # the channels of patch (0, 0) of image 0: pixels (0,0), (0,1), (1,0), (1,1), 3 channels each
    want = np.concatenate([x[0, 0, 0], x[0, 0, 1], x[0, 1, 0], x[0, 1, 1]])
    np.testing.assert_array_equal(s2d[0, 0, 0].numpy(), want)
    np.testing.assert_array_equal(M.DepthToSpace(2)(s2d).numpy(), x.numpy())
