"""The evaluator library on hand-made examples and SavedModels whose outputs are known, so every
number can be recomputed independently (skimage for PSNR/SSIM; the LPIPS network itself is
checked against the published reference values in metrics/)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from components.evaluator import evaluate as ev
from components.evaluator.gate import GateConfig
from components.ingest.decode import encode_png, process_pair_bytes

# NIQE needs at least two 96-pixel blocks per side: 192 is the smallest scorable side.
SIZES = {"test": [(192, 208)] * 3 + [(200, 200)] * 2, "test_ood": [(200, 200)] * 2 + [(192, 208)] * 2,
         "train": [(192, 192)] * 2}
DOMAIN = {"test": "in", "test_ood": "out", "train": "in"}


def _pair(h, w, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    sharp = np.stack([(xx * 7 + yy * 3 + 40 * c + seed * 11) % 256 for c in range(3)], -1)
    sharp = np.clip(sharp + rng.normal(0, 10, sharp.shape), 0, 255).astype(np.uint8)
    blurry = sharp.astype(float)
    for _ in range(2):  # a box blur, done by hand
        blurry = (blurry + np.roll(blurry, 1, 0) + np.roll(blurry, 1, 1) + np.roll(blurry, -1, 1)) / 4
    return np.clip(blurry, 0, 255).astype(np.uint8), sharp


@pytest.fixture(scope="module")
def examples_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("examples")
    for split, sizes in SIZES.items():
        os.makedirs(root / f"Split-{split}")
        opts = tf.io.TFRecordOptions(compression_type="GZIP")
        with tf.io.TFRecordWriter(str(root / f"Split-{split}" / "data-00000-of-00001.gz"), opts) as w:
            # the test split is written out of pair-id order: the evaluator sorts by pair id
            order = [3, 0, 4, 1, 2] if split == "test" else range(len(sizes))
            for i in order:
                h, w_ = sizes[i]
                blurry, sharp = _pair(h, w_, seed=100 * len(split) + i)
                rec, _ = process_pair_bytes(encode_png(blurry), encode_png(sharp),
                                            pair_id=f"{split}/{i}", dataset=f"ds_{DOMAIN[split]}",
                                            domain=DOMAIN[split], split=split, min_side=8)
                w.write(rec)
    return str(root)


class Checker(tf.Module):
    """Not a network: out = blurry +- strength * max_noise * 255 in a checkerboard (clipped),
    so each setting's output, and so every metric, is known in advance (a high-frequency
    pattern, which LPIPS sees; it barely sees a uniform brightening)."""

    def __init__(self, strength):
        super().__init__()
        self.strength = strength

    @tf.function(input_signature=[
        tf.TensorSpec([None, None, None, 3], tf.uint8), tf.TensorSpec([], tf.int32),
        tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.int32), tf.TensorSpec([2], tf.int64),
        tf.TensorSpec([], tf.bool)])
    def deblur_batch(self, images, steps, max_noise, samples, seed, deterministic):
        shape = tf.shape(images)
        i, j = tf.meshgrid(tf.range(shape[1]), tf.range(shape[2]), indexing="ij")
        sign = tf.cast((i + j) % 2 * 2 - 1, tf.float32)[None, :, :, None]
        x = tf.cast(images, tf.float32) + sign * self.strength * max_noise * 255.0
        return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


def checker(x, strength, max_noise):
    i, j = np.mgrid[0:x.shape[0], 0:x.shape[1]]
    sign = ((i + j) % 2 * 2 - 1).astype(np.float32)[..., None]
    return np.clip(np.round(x.astype(np.float32) + sign * np.float32(strength * max_noise * 255.0)),
                   0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, strength in (("mild", 0.02), ("strong", 3.0)):
        tf.saved_model.save(Checker(strength), str(root / name))
        out[name] = (str(root / name), strength)
    return out


GRID = [{"sampler": "ddpm", "steps": 2, "max_noise": 0.1, "samples": 1},
        {"sampler": "ddim", "steps": 3, "max_noise": 0.5, "samples": 1}]
# tests about the gate and the grid skip the Inception work (tested below and in metrics/)
NO_FID = {"fid_kid": False, "domain_gap": False}


def test_metrics_per_split_domain_and_setting(examples_dir, models, tmp_path):
    model_dir, strength = models["mild"]
    cfg = ev.EvalConfig(grid=GRID, max_images_per_split=10, batch_size=2, domain_gap=False)
    res = ev.evaluate(model_dir, examples_dir, str(tmp_path / "e"), cfg,
                      gate=GateConfig(ood_lpips_max=0.99))
    assert sorted(res["splits"]) == ["test", "test_ood"]  # train is not evaluated
    data = {s: ev.load_split(examples_dir, s, 10) for s in ("test", "test_ood")}
    for split, items in data.items():
        info = res["splits"][split]
        assert info["domain"] == DOMAIN[split] and info["images"] == len(SIZES[split])
        want_in = np.mean([peak_signal_noise_ratio(it["sharp"], it["blurry"]) for it in items])
        assert info["input"]["psnr"] == pytest.approx(want_in, abs=1e-3)
        for g in GRID:
            key = ev.SamplingSetting(**g).key
            outs = [checker(it["blurry"], strength, g["max_noise"]) for it in items]
            psnr = np.mean([peak_signal_noise_ratio(it["sharp"], o) for it, o in zip(items, outs)])
            ssim = np.mean([structural_similarity(it["sharp"], o, channel_axis=-1, gaussian_weights=True,
                                                  sigma=1.5, use_sample_covariance=False, data_range=255)
                            for it, o in zip(items, outs)])
            assert info["settings"][key]["psnr"] == pytest.approx(psnr, abs=1e-3), (split, key)
            assert info["settings"][key]["ssim"] == pytest.approx(ssim, abs=1e-4), (split, key)
            f = tmp_path / "e" / "metrics" / DOMAIN[split] / split / f"{key}.json"
            assert json.loads(f.read_text())["psnr"] == pytest.approx(psnr, abs=1e-3)
    # one split per domain here, so the domain means are the split means
    assert res["domains"]["out"]["settings"] == res["splits"]["test_ood"]["settings"]
    # the best setting has the lowest out-of-domain LPIPS
    lp = {k: m["lpips"] for k, m in res["domains"]["out"]["settings"].items()}
    assert res["best_setting"]["key"] == min(lp, key=lp.get)
    assert res["best"]["out"] == res["domains"]["out"]["settings"][res["best_setting"]["key"]]
    lines = (tmp_path / "e" / "per_image.jsonl").read_text().splitlines()
    # the model at each setting (no validation split: the whole grid ran on test) and the
    # four classical baselines
    assert len(lines) == (len(GRID) + 4) * (len(SIZES["test"]) + len(SIZES["test_ood"]))
    assert res["chosen_on"] == "test"
    png = Image.open(tmp_path / "e" / "perception_distortion.png")
    assert png.size[0] > 300
    grid = np.asarray(Image.open(tmp_path / "e" / "samples" / "test_ood.png"))
    assert grid.shape[0] == 2 * (200 + 4) + (192 + 4)  # three rows: the first three images
    assert grid.shape[1] == 3 * 208 + 2 * 4
    # the model is its input plus a faint pattern: worse than doing nothing, whatever the
    # absolute threshold, and beats_input is the one enforced rule that says so
    rules = {r["rule"]: r["verdict"] for r in res["blessing"]["rules"]}
    assert rules == {"finite": "pass", "ood_lpips": "pass", "beats_input": "fail",
                     "regression": "skipped", "beats_baselines": "fail"}, res["blessing"]
    assert res["blessing"]["reason"].startswith("beats_input:")  # not enforced: not a reason
    assert json.loads((tmp_path / "e" / "blessing.json").read_text())["blessed"] is False
    # FID/KID per domain: the known outputs and the blurry inputs against the sharp images.
    # The metric itself is checked against independent references in metrics/fid_test.py;
    # here, which images enter it (per domain, all splits of the domain, n reported).
    from metrics.fid import fid_kid
    from metrics.inception import default_inception

    net = default_inception()
    for split, items in data.items():
        fk = res["domains"][DOMAIN[split]]["fid_kid"]
        sharp = net([it["sharp"] for it in items])
        assert fk["images"] == len(items)
        assert fk["input"] == pytest.approx(fid_kid(net([it["blurry"] for it in items]), sharp),
                                            rel=1e-6, abs=1e-9)
        g = GRID[1]
        key = ev.SamplingSetting(**g).key
        outs = net([checker(it["blurry"], strength, g["max_noise"]) for it in items])
        assert fk["settings"][key] == pytest.approx(fid_kid(outs, sharp), rel=1e-6, abs=1e-9)
        assert all(m["n_a"] == m["n_b"] == len(items) for m in fk["settings"].values())
    assert "biased" in res["fid_kid_note"]
    assert res["domain_gap"] is None  # switched off here; test_domain_gap_table covers it
    assert "FID/KID against 5 sharp images" in ev.format_result(res)


class Baseline(tf.Module):
    """Reference models with deblur_batch: "identity" returns its input (the do-nothing model),
    "noise" adds Gaussian grain (sigma 8 grey levels), "sharpen" is an unsharp mask
    x + 2 (x - box3(x)), which undoes part of these examples' box blur."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind

    @tf.function(input_signature=Checker.deblur_batch.input_signature)
    def deblur_batch(self, images, steps, max_noise, samples, seed, deterministic):
        x = tf.cast(images, tf.float32)
        if self.kind == "noise":
            x += tf.random.stateless_normal(tf.shape(x), seed, stddev=8.0)
        elif self.kind == "sharpen":
            x += 2.0 * (x - tf.nn.avg_pool2d(x, 3, 1, "SAME"))
        return tf.cast(tf.clip_by_value(tf.round(x), 0, 255), tf.uint8)


@pytest.mark.parametrize("kind,blessed", [("identity", False), ("noise", False), ("sharpen", True)])
def test_beats_input_refuses_do_nothing_and_noise(examples_dir, tmp_path, kind, blessed):
    tf.saved_model.save(Baseline(kind), str(tmp_path / kind))
    res = ev.evaluate(str(tmp_path / kind), examples_dir, str(tmp_path / "e"),
                      ev.EvalConfig(grid=GRID[:1], max_images_per_split=10, **NO_FID),
                      gate=GateConfig(ood_lpips_max=0.99))  # the absolute rule passes them all
    rules = {r["rule"]: r for r in res["blessing"]["rules"]}
    assert rules["ood_lpips"]["verdict"] == "pass" and rules["finite"]["verdict"] == "pass"
    assert res["blessing"]["blessed"] is blessed, res["blessing"]["reason"]
    assert rules["beats_input"]["verdict"] == ("pass" if blessed else "fail")
    for d in ("in", "out"):
        entry = rules["beats_input"]["domains"][d]
        want = res["domains"][d]["input"]
        assert entry["lpips"]["input"] == want["lpips"] and entry["psnr"]["input"] == want["psnr"]
        assert entry["lpips"]["value"] == res["best"][d]["lpips"]
        assert entry["lpips"]["threshold"] == pytest.approx(want["lpips"] - 0.01)
    if kind == "identity":  # the very same images: equal scores, so LPIPS misses the margin
        assert res["best"] == {d: res["domains"][d]["input"] for d in ("in", "out")}
    if not blessed:
        assert res["blessing"]["reason"].startswith("beats_input: worse than the blurry input")


def test_baseline_is_measured_now_at_its_own_setting(examples_dir, models, tmp_path):
    cfg = ev.EvalConfig(grid=GRID, max_images_per_split=2, **NO_FID)
    strong, mild = models["strong"][0], models["mild"][0]
    # the strongly patterned candidate is worse than the mild baseline: regression fails
    res = ev.evaluate(strong, examples_dir, str(tmp_path / "a"), cfg, baseline_dir=mild,
                      baseline_setting=GRID[0], gate=GateConfig(ood_lpips_max=0.99))
    assert res["baseline"]["setting"]["max_noise"] == 0.1  # only its own setting was run
    assert list(res["baseline"]["domains"]["out"]) == [ev.SamplingSetting(**GRID[0]).key]
    rules = {r["rule"]: r for r in res["blessing"]["rules"]}
    assert rules["regression"]["verdict"] == "fail", rules
    assert rules["regression"]["threshold"] == pytest.approx(res["baseline"]["best"]["out"]["lpips"] + 0.01)
    assert not res["blessing"]["blessed"]
    # the other way round it passes
    res = ev.evaluate(mild, examples_dir, str(tmp_path / "b"), cfg, baseline_dir=strong,
                      baseline_setting=GRID[0], gate=GateConfig(ood_lpips_max=0.99))
    assert {r["rule"]: r["verdict"] for r in res["blessing"]["rules"]}["regression"] == "pass"


def test_caps_and_errors(examples_dir, models, tmp_path):
    model_dir = models["mild"][0]
    res = ev.evaluate(model_dir, examples_dir, str(tmp_path / "c"),
                      ev.EvalConfig(grid=GRID[:1], max_images_per_split=1, splits=["test_ood"]))
    assert list(res["splits"]) == ["test_ood"] and res["splits"]["test_ood"]["images"] == 1
    # the kept images are those with the smallest pair ids, whatever the record order
    assert [it["pair_id"] for it in ev.load_split(examples_dir, "test", 3)] == \
        ["test/0", "test/1", "test/2"]
    assert list(res["domains"]) == ["out"]
    # one image: FID/KID undefined (NaN, not an error), no domain gap without both domains
    fk = res["domains"]["out"]["fid_kid"]
    assert fk["images"] == 1 and np.isnan(fk["input"]["fid"]) and np.isnan(fk["input"]["kid"])
    assert res["domain_gap"] == {"skipped": "needs evaluation images of both domains (in and "
                                            "out), has out"}
    with pytest.raises(ValueError, match="not in"):
        ev.evaluate(model_dir, examples_dir, str(tmp_path / "d"), ev.EvalConfig(splits=["val"]))
    with pytest.raises(ValueError, match="repeats a setting"):
        ev.EvalConfig(grid=GRID[:1] * 2)
    with pytest.raises(ValueError, match="max_noise"):
        ev.EvalConfig(grid=[{"max_noise": 2.0}])
    with pytest.raises(ValueError, match="no deblur_batch"):
        tf.saved_model.save(tf.Module(), str(tmp_path / "empty"))
        ev.evaluate(str(tmp_path / "empty"), examples_dir, str(tmp_path / "f"), ev.EvalConfig(grid=GRID[:1]))


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory):
    """A real export (trainer/export.py) of a small GuidedDenoiser with one NaN weight in its
    UNet: what a diverged training run leaves behind. Its guidance network is finite, and its
    zero-initialised R_k convs get random kernels so that R_k is not the identity (the domain
    gap test reads it). Returns (SavedModel path, the in-process model)."""
    from trainer.export import DeblurModule
    from trainer import experiments
    from trainer.model import GuidedDenoiser

    model = GuidedDenoiser(experiments.get("tiny").model.replace(
        guidance="input", channel_multipliers=(1,), num_middle_blocks=0))
    w = model.unet.trainable_variables[0]
    value = w.numpy()
    value.flat[0] = np.nan
    w.assign(value)
    rng = np.random.default_rng(0)
    for k in (2, 4, 8):
        layer = model.guidance_net.get_layer(f"R_x{k}")
        layer.kernel.assign(rng.normal(0, 0.3, layer.kernel.shape).astype(np.float32))
    path = str(tmp_path_factory.mktemp("nan") / "saved_model")
    module = DeblurModule(model, {"sampler": "ddim", "steps": 2, "max_noise": 0.5})
    tf.saved_model.save(module, path, signatures={"serving_default": module.serve,
                                                  "deblur": module.deblur})
    return path, model


def test_a_nan_model_is_refused_for_being_nan(examples_dir, nan_model, tmp_path, capsys):
    nan_model = nan_model[0]
    res = ev.evaluate(nan_model, examples_dir, str(tmp_path / "e"),
                      ev.EvalConfig(grid=GRID, max_images_per_split=2, domain_gap=False),
                      gate=GateConfig(ood_lpips_max=0.99))
    keys = sorted(ev.SamplingSetting(**g).key for g in GRID)
    assert sorted(res["non_finite_outputs"]) == keys
    assert res["best_setting"] is None and not res["blessing"]["blessed"]
    rule = {r["rule"]: r for r in res["blessing"]["rules"]}["finite"]
    assert rule["verdict"] == "fail"
    assert rule["detail"] == ("the model's output is not finite (NaN or Inf) at 2 setting(s): "
                              + ", ".join(keys))
    assert res["blessing"]["reason"].startswith("finite: the model's output is not finite")
    # no finite output: FID/KID of the outputs are NaN over 0 images; the inputs' are defined
    fk = res["domains"]["out"]["fid_kid"]
    assert all(fk["settings"][k]["n_a"] == 0 and np.isnan(fk["settings"][k]["fid"]) for k in keys)
    assert np.isfinite(fk["input"]["fid"])
    # deblur predict refuses it in one line and writes nothing (it wrote a black image)
    from deblur import cli

    blurry = tmp_path / "blurry.png"
    Image.fromarray(_pair(24, 40, 0)[0]).save(blurry)
    assert cli.main(["predict", str(blurry), str(tmp_path / "out.png"),
                     "--model", nan_model]) == cli.EXIT_USAGE
    last = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert last.startswith("deblur: error: ") and "output is not finite (NaN or Inf)" in last
    assert not (tmp_path / "out.png").exists()


def test_the_chosen_setting_beats_the_input_when_one_does():
    """Lowest out-of-domain LPIPS among the settings that beat the blurry input everywhere;
    only when none does, the lowest overall (which the gate then refuses)."""
    a, b = ev.SamplingSetting("ddpm", 20, 0.5), ev.SamplingSetting("ddim", 20, 0.5)
    by_domain = {"in": {a.key: {"psnr": 20.0, "lpips": 0.20}, b.key: {"psnr": 25.0, "lpips": 0.25}},
                 "out": {a.key: {"psnr": 25.0, "lpips": 0.10}, b.key: {"psnr": 25.0, "lpips": 0.15}}}
    inputs = {"in": {"psnr": 24.0, "lpips": 0.30}, "out": {"psnr": 24.0, "lpips": 0.30}}
    gate = GateConfig()
    assert ev.choose_best(by_domain, [a, b], "out") == a  # a: lowest LPIPS, in-domain PSNR 20
    assert ev.choose_best(by_domain, [a, b], "out", inputs, gate) == b
    worse = {"in": {"psnr": 30.0, "lpips": 0.1}, "out": {"psnr": 30.0, "lpips": 0.1}}
    assert ev.choose_best(by_domain, [a, b], "out", worse, gate) == a


def test_domain_gap_table(examples_dir, nan_model, capsys):
    """Table 1 on two images per domain, against closed-form FID/KID of independently made
    images: the blurry RGB, the box-averaged luma, and R_k of the in-process Keras model
    (the exported model's guidance network is finite; only its UNet holds a NaN)."""
    from metrics.cli_test import _fid_kid_of_pairs
    from metrics.inception import default_inception

    from components.evaluator import domain_gap as dg
    from deblur import cli

    model_dir, model = nan_model
    # `deblur domain-gap` = evaluate.domain_gap_report on the evaluation splits
    assert cli.main(["domain-gap", "--model", model_dir, "--examples", examples_dir,
                     "--max-images", "2", "--json"]) == 0
    gap = json.loads(capsys.readouterr().out)
    data = {d: ev.load_split(examples_dir, s, 2) for d, s in (("in", "test"), ("out", "test_ood"))}
    net = default_inception()

    def luma_blocks(img, k):  # BT.601 luma, mean over k x k blocks
        y = (img.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0
        h, w = y.shape[0] // k, y.shape[1] // k
        return y[:h * k, :w * k].reshape(h, k, w, k).mean(axis=(1, 3))

    want = {"full": {d: net([it["blurry"] for it in data[d]]) for d in data}}
    for k in (2, 4, 8):
        levels = {d: [luma_blocks(it["blurry"], k) for it in data[d]] for d in data}
        want[f"x{k}"] = {d: net([v * 255.0 for v in levels[d]]) for d in data}
        regs = {d: [model.guide({k2: tf.constant((luma_blocks(it["blurry"], k2) * 2 - 1)[None, :, :, None],
                                                 tf.float32) for k2 in (2, 4, 8)})[1][k].numpy()[0, :, :, 0]
                    for it in data[d]] for d in data}
        want[f"R{k}"] = {d: net([np.clip((r + 1) / 2, 0, 1) * 255.0 for r in regs[d]]) for d in data}
    assert (gap["n_in"], gap["n_out"]) == (2, 2) and gap["guidance"]["available"]
    rows = {r["scale"]: r for r in gap["rows"]}
    assert list(rows) == ["full", "x2", "x4", "x8"] and rows["full"]["guidance"] is None
    for scale, row in rows.items():
        fid, kid = _fid_kid_of_pairs(want[scale]["in"], want[scale]["out"])
        assert row["input"]["fid"] == pytest.approx(fid, rel=1e-4), scale
        assert row["input"]["kid"] == pytest.approx(kid, rel=1e-3, abs=1e-6), scale
        if scale != "full":
            fid, kid = _fid_kid_of_pairs(want["R" + scale[1:]]["in"], want["R" + scale[1:]]["out"])
            assert row["guidance"]["fid"] == pytest.approx(fid, rel=1e-4), scale
            assert row["guidance"]["kid"] == pytest.approx(kid, rel=1e-3, abs=1e-6), scale
            assert row["guidance_smaller"] == {m: row["guidance"][m] < row["input"][m]
                                               for m in ("fid", "kid")}
    assert gap["verdict"].startswith("the guidance output's gap is smaller than its input's at")
    text = "\n".join(dg.format_domain_gap(gap))
    assert "domain gap (paper Table 1)" in text and "2 vs 2 images" in text


def test_domain_gap_of_models_without_regressions(examples_dir):
    """A SavedModel from before guide_features, and a model without guidance: the input rows
    and a note, not a failure."""
    from components.evaluator import domain_gap as dg

    class Old:  # no guide_features / guidance_scales
        pass

    class Unguided:
        guidance_scales = tf.Variable([0])

        def guide_features(self, phis):
            raise AssertionError("not called")

    items = {d: ev.load_split(examples_dir, s, 2) for d, s in (("in", "test"), ("out", "test_ood"))}
    fake = lambda images: np.stack([np.full(2048, float(np.mean(i)) / 255.0) for i in images])  # noqa: E731
    for model, detail in ((Old(), "no guide_features"), (Unguided(), "no guidance network")):
        gap = dg.domain_gap(model, items, fake)
        assert not gap["guidance"]["available"] and detail in gap["guidance"]["detail"]
        assert [r["scale"] for r in gap["rows"]] == ["full", "x2", "x4", "x8"]
        assert all(r["guidance"] is None for r in gap["rows"]) and gap["verdict"] is None
        assert "R_k: " + gap["guidance"]["detail"] in "\n".join(dg.format_domain_gap(gap))


# ---- choose on validation, judge on test; classical baselines; paired comparisons -------------
@pytest.fixture(scope="module")
def examples_with_validation(tmp_path_factory, examples_dir, models):
    """The module's examples plus val (in-domain) and val_ood splits whose sharp images carry
    the mild model's checkerboard at max_noise 0.7 (+-3.57: 4 grey levels): on validation
    GRID[1] (max_noise 0.5: 3 levels) is nearer than GRID[0] (0.1: 1 level), while on the
    test splits GRID[0] is the better one."""
    import shutil

    root = tmp_path_factory.mktemp("examples_val")
    for split in ("test", "test_ood", "train"):
        shutil.copytree(os.path.join(examples_dir, f"Split-{split}"), root / f"Split-{split}")
    strength = models["mild"][1]
    for split, domain in (("val", "in"), ("val_ood", "out")):
        os.makedirs(root / f"Split-{split}")
        opts = tf.io.TFRecordOptions(compression_type="GZIP")
        with tf.io.TFRecordWriter(str(root / f"Split-{split}" / "data-00000-of-00001.gz"), opts) as w:
            for i in range(3):
                blurry, _ = _pair(192, 192, seed=900 + i + (10 if domain == "out" else 0))
                sharp = checker(blurry, strength, 0.7)
                rec, _ = process_pair_bytes(encode_png(blurry), encode_png(sharp),
                                            pair_id=f"{split}/{i}", dataset=f"ds_{domain}",
                                            domain=domain, split=split, min_side=8)
                w.write(rec)
    return str(root)


def test_the_setting_is_chosen_on_validation_and_judged_on_test(examples_with_validation, models,
                                                                 tmp_path):
    model_dir, strength = models["mild"]
    keys = [ev.SamplingSetting(**g).key for g in GRID]
    cfg = ev.EvalConfig(grid=GRID, max_images_per_split=10, baselines=["unsharp_r2_a1.0"],
                        bootstrap_samples=500, **NO_FID)
    res = ev.evaluate(model_dir, examples_with_validation, str(tmp_path / "v"), cfg,
                      gate=GateConfig(ood_lpips_max=0.99))
    assert res["chosen_on"] == "validation" and res["blessing"]["chosen_on"] == "validation"
    assert sorted(res["validation"]["splits"]) == ["val", "val_ood"]
    assert sorted(res["splits"]) == ["test", "test_ood"]  # validation is not judged
    assert res["best_setting"]["key"] == keys[1]
    # on validation GRID[1] is one grey level from the sharp images, GRID[0] three
    val_out = res["validation"]["domains"]["out"]["settings"]
    items = ev.load_split(examples_with_validation, "val_ood", 10)
    for g, key in zip(GRID, keys):
        want = np.mean([peak_signal_noise_ratio(it["sharp"], checker(it["blurry"], strength,
                                                                     g["max_noise"]))
                        for it in items])
        assert val_out[key]["psnr"] == pytest.approx(want, abs=1e-3)
    assert val_out[keys[1]]["lpips"] < val_out[keys[0]]["lpips"]
    # only the chosen setting runs on test
    assert list(res["domains"]["out"]["settings"]) == [keys[1]]
    assert res["blessing"]["validation_best"]["out"] == val_out[keys[1]]
    # without the validation splits the test images choose, and they choose the other one
    fallback = ev.evaluate(model_dir, examples_with_validation, str(tmp_path / "t"),
                           ev.EvalConfig(grid=GRID, max_images_per_split=10, baselines=[],
                                         validation_splits=[], bootstrap_samples=500, **NO_FID),
                           gate=GateConfig(ood_lpips_max=0.99))
    assert fallback["chosen_on"] == "test" and fallback["best_setting"]["key"] == keys[0]
    assert "chosen on the test splits" in ev.format_result(fallback)
    assert "chosen on validation (val, val_ood)" in ev.format_result(res)

    # the paired comparison with the input, recomputed by brute force with skimage
    items = ev.load_split(examples_with_validation, "test_ood", 10)
    outs = [checker(it["blurry"], strength, GRID[1]["max_noise"]) for it in items]
    d = np.array([peak_signal_noise_ratio(it["sharp"], o) - peak_signal_noise_ratio(it["sharp"], it["blurry"])
                  for it, o in zip(items, outs)])
    c = res["comparisons"]["input"]["out"]["psnr"]
    assert c["n"] == len(items) and c["mean_diff"] == pytest.approx(d.mean(), abs=1e-3)
    assert c["wins"] == int((d > 0).sum()) and c["losses"] == int((d < 0).sum())
    assert c["ci_low"] <= c["mean_diff"] <= c["ci_high"]

    # the classical baseline: skimage's unsharp mask, scored on the same test images
    from skimage.filters import unsharp_mask

    ref = [np.clip(np.round(unsharp_mask(it["blurry"] / 255.0, radius=2, amount=1.0,
                                         channel_axis=2) * 255), 0, 255).astype(np.uint8)
           for it in items]
    want = np.mean([peak_signal_noise_ratio(it["sharp"], r) for it, r in zip(items, ref)])
    got = res["classical"]["unsharp_r2_a1.0"]["domains"]["out"]["psnr"]
    assert got == pytest.approx(want, abs=1e-3)
    rule = next(r for r in res["blessing"]["rules"] if r["rule"] == "beats_baselines")
    assert rule["enforced"] is False and "unsharp_r2_a1.0" in rule["references"]
    text = ev.format_result(res)
    assert "unsharp_r2_a1.0" in text and "wins" in text
    lines = (tmp_path / "v" / "per_image.jsonl").read_text().splitlines()
    n_test = len(SIZES["test"]) + len(SIZES["test_ood"])
    assert len(lines) == n_test * 2  # the chosen setting and the one baseline


def test_a_split_cannot_both_choose_and_judge(examples_with_validation, models, tmp_path):
    with pytest.raises(ValueError, match="both validation and test"):
        ev.evaluate(models["mild"][0], examples_with_validation, str(tmp_path / "x"),
                    ev.EvalConfig(grid=GRID, splits=["test_ood"], validation_splits=["test_ood"],
                                  **NO_FID))
