"""The train/sample contract on one batch (SPEC section 5: "a learn-one-batch check").

The quickstart's recipe trains on one fixed batch of blurred crops until its loss is low; then
the sampler must give the sharp crops back far above the blurry input, from pure noise and from
the start the evaluator's grid uses, through the Keras model and through the exported
SavedModel. A mismatch anywhere between the training loss and the sampler (the noise
parameterisation, the schedule's direction, the residual, the preconditioning, the export)
makes the samples no better than the input, whatever the loss says.

The blur is a brute-force horizontal box filter on crops of the sample photographs that ship
with scikit-image: no ingest, no project code in the data.
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from components.evaluator.evaluate import EvalConfig
from trainer import experiments, export
from trainer.sampling import Sampler, call_deblur_batch, phi_from_image
from trainer.setting import SamplingSetting
from trainer.train import Trainer, add_diffusion_noise

CROP, N, STEPS = 32, 4, 300
BLUR = 7  # px, horizontal box


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    """uint8 images; brute force (10 log10(255^2 / MSE))."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


def _blurred_crops():
    from skimage import data

    crops = []
    # windows whose blurred copy is ~24 dB from the sharp one (textured, not saturated)
    for name, (i, j) in (("astronaut", (304, 352)), ("coffee", (96, 16)),
                         ("chelsea", (16, 224)), ("rocket", (368, 592))):
        crops.append(getattr(data, name)()[i:i + CROP, j:j + CROP + BLUR - 1].astype(np.float64))
    sharp, blurry = [], []
    for c in crops:
        pad = (BLUR - 1) // 2
        sharp.append(c[:, pad:pad + CROP])
        # the mean of BLUR horizontal shifts: a box blur with no border effect in the crop
        blurry.append(np.mean([c[:, k:k + CROP] for k in range(BLUR)], axis=0))
    to8 = lambda a: np.clip(np.round(np.stack(a)), 0, 255).astype(np.uint8)  # noqa: E731
    return to8(sharp), to8(blurry)


def _batch(sharp8, blurry8, scales, sigma):
    x01, y01 = sharp8.astype(np.float32) / 255.0, blurry8.astype(np.float32) / 255.0
    phi = phi_from_image(tf.constant(y01), scales)
    rng = np.random.default_rng(0)
    phi = {k: v + sigma * rng.standard_normal(v.shape).astype(np.float32) for k, v in phi.items()}
    return {"x": tf.constant(x01 * 2 - 1), "y": tf.constant(y01 * 2 - 1), "phi": phi,
            "target": phi_from_image(tf.constant(x01), scales)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    # ema_decay 0: the EMA (what the export holds) is the trained weights themselves
    exp = experiments.get("local").replace(
        train={"global_batch_size": N, "steps": STEPS, "ema_decay": 0.0})
    sharp8, blurry8 = _blurred_crops()
    m = exp.model
    batch = _batch(sharp8, blurry8, tuple(m.guidance_scales), m.guidance_noise_sigma)
    trainer = Trainer(exp, str(tmp_path_factory.mktemp("one_batch")),
                      tf.distribute.get_strategy())
    noise = add_diffusion_noise(trainer.schedule, seed=0)
    losses = []
    for i in range(STEPS):  # fresh gamma and eps every step, the same images
        losses.append(float(trainer.train_step(noise(tf.constant(i, tf.int64), batch))["loss_dpm"]))
    return trainer, sharp8, blurry8, losses


def test_the_loss_falls_on_one_batch(trained):
    _, _, _, losses = trained  # noisy step to step: gamma and eps are drawn anew
    first, last = np.mean(losses[:50]), np.mean(losses[-50:])
    assert last < 0.6 * first, (first, last)


# every setting of the evaluator's default grid: pure noise (one step, DDIM, DDPM with sample
# averaging) and the start from the blurry input
GRID = [SamplingSetting(**g) for g in EvalConfig().grid]


@pytest.mark.parametrize("setting", GRID, ids=lambda s: s.key)
def test_sampling_gives_the_sharp_crops_back(trained, setting):
    trainer, sharp8, blurry8, _ = trained
    out = Sampler(trainer.model)(blurry8, setting, seed=0)
    inp = np.mean([_psnr(b, s) for b, s in zip(blurry8, sharp8)])
    got = np.mean([_psnr(o, s) for o, s in zip(out, sharp8)])
    assert got > inp + 3.0, f"{setting.key}: {got:.2f} dB against the input's {inp:.2f} dB"


def test_the_exported_saved_model_gives_them_back_too(trained, tmp_path):
    trainer, sharp8, blurry8, _ = trained
    export.export_saved_model(trainer, str(tmp_path / "saved_model"))
    loaded = tf.saved_model.load(str(tmp_path / "saved_model"))
    out = call_deblur_batch(loaded, blurry8, SamplingSetting("ddim", 20, 1.0), [0, 0])
    inp = np.mean([_psnr(b, s) for b, s in zip(blurry8, sharp8)])
    got = np.mean([_psnr(o, s) for o, s in zip(out, sharp8)])
    assert got > inp + 3.0, f"{got:.2f} dB against the input's {inp:.2f} dB"


def test_its_serving_default_is_a_setting_that_works_and_says_it_was_not_evaluated(trained, tmp_path):
    """The export's serving setting of a preconditioned model samples from pure noise (the
    paper's eps-output default would too, but that one returns noise for an eps model), and
    deblur predict tells the user no evaluation chose it."""
    from deblur.predict import resolve_model

    trainer, sharp8, blurry8, _ = trained
    path = export.export_saved_model(trainer, str(tmp_path / "saved_model"))
    model = resolve_model(path, "unused")
    assert model.setting == SamplingSetting("ddpm", 20, 1.0, 4) and model.unevaluated
    loaded = tf.saved_model.load(path)
    out = loaded.signatures["serving_default"](image=tf.constant(blurry8[0]))["image"].numpy()
    assert _psnr(out, sharp8[0]) > _psnr(blurry8[0], sharp8[0]) + 3.0

