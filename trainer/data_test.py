"""The tf.data input: aligned crops, consistent flips, scaling, targets, noise."""
from __future__ import annotations

import numpy as np
import pytest

from components.ingest.beam_ingest import run_ingest
from components.ingest.sources import IngestOptions, IngestSource
from tests import fixtures as fx
from trainer import data as D


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    for i in range(4):
        # 45 x 70: sides not multiples of 8, so the last rows/cols are outside every level
        d = root / "GOPRO_Large" / "train" / "SEQ"
        fx.write_pair(str(d / "blur" / f"{i}.png"), str(d / "sharp" / f"{i}.png"), (45, 70), i)
    out = str(tmp_path_factory.mktemp("ex"))
    run_ingest([IngestSource("gopro", str(root))], out, IngestOptions(train_crop_size=16))
    return out


def _luma_box(img01: np.ndarray, k: int) -> np.ndarray:
    """Brute force: BT.601 luma of a [0,1] RGB crop, then k x k block means."""
    y = img01 @ np.array([0.299, 0.587, 0.114])
    h, w = y.shape[0] // k, y.shape[1] // k
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            out[i, j] = y[i * k : i * k + k, j * k : j * k + k].mean()
    return out


def test_crops_are_aligned_with_every_pyramid_level(examples_dir):
    cfg = D.DataConfig(examples_dir=examples_dir, crop_size=16, random_flips=True)
    ds = D.training_dataset(cfg, batch_size=4, seed=3)
    batch = next(iter(ds))
    assert batch["x"].shape == (4, 16, 16, 3) and batch["y"].shape == (4, 16, 16, 3)
    for i in range(4):
        x = (batch["x"][i].numpy() + 1) / 2
        y = (batch["y"][i].numpy() + 1) / 2
        assert x.min() >= 0 and x.max() <= 1
        for k in (2, 4, 8):
            # the sharp level is the box average of the sharp crop's luma (so crop offsets and
            # flips were applied identically), the blurry one that of the blurry crop
            np.testing.assert_allclose((batch["target"][k][i].numpy()[..., 0] + 1) / 2,
                                       _luma_box(x, k), atol=2e-6)
            np.testing.assert_allclose((batch["phi"][k][i].numpy()[..., 0] + 1) / 2,
                                       _luma_box(y, k), atol=2e-6)


def test_rgb_target_and_guidance_noise(examples_dir):
    cfg = D.DataConfig(examples_dir=examples_dir, crop_size=16, target="rgb",
                       guidance_noise_sigma=0.1, scales=(8,))
    batch = next(iter(D.training_dataset(cfg, batch_size=4, seed=1)))
    assert set(batch["phi"]) == {8} and batch["target"][8].shape == (4, 2, 2, 3)
    x = batch["x"].numpy()
    np.testing.assert_allclose(batch["target"][8].numpy(),
                               x.reshape(4, 2, 8, 2, 8, 3).mean(axis=(2, 4)), atol=1e-6)
    # phi = clean level + N(0, 0.1^2): the residual against the blurry crop's luma has std ~0.1
    resid = []
    for b in D.training_dataset(cfg, batch_size=4, seed=1).take(8):
        y01 = (b["y"].numpy() + 1) / 2
        for i in range(4):
            resid.append(b["phi"][8][i].numpy()[..., 0] - (_luma_box(y01[i], 8) * 2 - 1))
    resid = np.concatenate([r.ravel() for r in resid])
    assert 0.06 < resid.std() < 0.14 and abs(resid.mean()) < 0.05


def test_bad_config_and_missing_split(examples_dir):
    with pytest.raises(ValueError, match="multiple of 8"):
        D.DataConfig(crop_size=20)
    with pytest.raises(ValueError, match="no TFRecord files for split 'nope'"):
        D.training_dataset(D.DataConfig(examples_dir=examples_dir, train_split="nope", crop_size=16), 2)


def test_degraded_crops_keep_their_pyramids_and_the_sharp_crop_clean(examples_dir, monkeypatch):
    """data.degrade: the pyramid levels are those of the degraded crops (as phi_k is computed
    from the input at inference); the sharp crop only ever changes by the exposure, which maps
    each value through one increasing curve (no noise, no JPEG: its order of values is kept)."""
    from trainer import degrade

    monkeypatch.setattr(degrade, "PROBABILITY", 1.0)  # every degradation, every crop
    cfg = D.DataConfig(examples_dir=examples_dir, crop_size=16, degrade=True)
    plain = next(iter(D.training_dataset(D.DataConfig(examples_dir=examples_dir, crop_size=16),
                                         batch_size=4, seed=3)))
    batch = next(iter(D.training_dataset(cfg, batch_size=4, seed=3)))
    for i in range(4):
        x = (batch["x"][i].numpy() + 1) / 2
        y = (batch["y"][i].numpy() + 1) / 2
        for k in (2, 4, 8):
            np.testing.assert_allclose((batch["target"][k][i].numpy()[..., 0] + 1) / 2,
                                       _luma_box(x, k), atol=2e-6)
            np.testing.assert_allclose((batch["phi"][k][i].numpy()[..., 0] + 1) / 2,
                                       _luma_box(y, k), atol=2e-6)
        # the same crop (same seed) undegraded: the exposure darkens it through one curve
        x0 = (plain["x"][i].numpy() + 1) / 2
        assert x.mean() < x0.mean()
        order = np.argsort(x0.ravel(), kind="stable")
        assert np.all(np.diff(x.ravel()[order]) >= -1e-6)
        # the blurry crop carries noise and JPEG on top: not one curve of the clean one
        y0 = (plain["y"][i].numpy() + 1) / 2
        order = np.argsort(y0.ravel(), kind="stable")
        assert np.any(np.diff(y.ravel()[order]) < -1e-3)


def test_degradation_is_off_in_the_paper_experiments():
    from trainer import experiments

    for name in experiments.EXPERIMENTS:
        assert experiments.get(name).data.degrade is (name in ("local", "local-finetune")), name
