"""Evaluate a deblurring SavedModel in-domain and out-of-domain over a sampling grid, and bless it.

    result = evaluate(model_dir, examples_dir, out_dir, EvalConfig(...), gate=GateConfig(...))
    result["blessing"]  # the gate's decision, every rule

Validation chooses, test judges: the grid runs on the validation splits (val, val_*) and the
setting is chosen there; only that setting runs on the test splits (every other split but the
train split), beside the blurry input and the classical baselines (classical.py), and every
comparison is paired image by image with a bootstrap interval (stats.py). Without a
validation split the grid runs on test and the result says so (chosen_on "test").

The model is the exported SavedModel itself (trainer/export.py, its `deblur_batch`
function): what is evaluated is what ships. Images: the `max_images_per_split` examples with
the smallest pair ids of every evaluated split (one pass over the split reads the ids, so the
choice does not depend on how an ingest run ordered its shards), at full resolution (the model pads to its
multiple and crops back). Same-size images are sampled together in batches; batch b of a
split uses the seed (seed, b), so two models evaluated with one config see the same noise.

Metrics per image (metrics/ package): PSNR, SSIM (RGB uint8, no border crop), LPIPS
(AlexNet v0.1) of the output against the sharp image, NIQE of the output; averaged per split
and per domain (over all images of the domain's splits) for every sampling setting run there.
The blurry input itself is scored too ("input": the do-nothing baseline every model must beat).
The best setting is the one with the lowest out-of-domain LPIPS on validation among those
whose metrics are all finite (and that beat the input, when one does; ties: fewer network
evaluations).

FID and KID per domain (metrics/fid.py, the FID Inception of metrics/inception.py): every
setting's outputs, and the blurry inputs, against the domain's sharp images, with the image
count; reported, not gated (FID is biased at the evaluator's few images, KID is not; see
docs/evaluation.md). The domain gap of the paper's Table 1 (domain_gap.py): FID/KID between
the in- and out-of-domain blurry inputs at full resolution, of their gray pyramid levels and of
the model's guidance regressions R_k.

Writes to out_dir:
  evaluation.json                      everything below, plus the grid and the best setting
  domain_gap.json                      the Table 1 report (also in evaluation.json)
  metrics/<domain>/<split>/<setting>.json   mean metrics of one test split at one setting
  per_image.jsonl                      one line per test image and method (setting, baseline)
  perception_distortion.png            PSNR against LPIPS: the grid on validation (the choice),
                                       the chosen setting, input and baselines on test
  samples/<split>.png                  blurry | output (best setting) | sharp, a row per image
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from components.evaluator import domain_gap as dg
from components.evaluator.gate import (PASS, GateConfig, beats_input, comparison_text, decide,
                                      domain_name, format_value)
from core import artifacts
from core.artifacts import BLESSING_FILE, DOMAIN_GAP_FILE, EVALUATION_FILE
from trainer.setting import SamplingSetting

METRICS = ("psnr", "ssim", "lpips", "niqe")
# what the run summaries carry of evaluation.json besides the test domains and the choice
EVALUATION_SUMMARY_KEYS = ("chosen_on", "validation", "classical", "comparisons", "splits",
                           "config")
FID_KID_NOTE = ("FID and KID of the outputs (and of the blurry inputs) against the domain's "
                "sharp images, n images each. FID is biased upwards at small n (compare FIDs "
                "only at equal n); KID is unbiased but noisy at small n. Reported, not gated.")


def _default_grid():
    # The settings that win with the local model (docs/experiments.md, "An LPIPS term on the x0
    # estimate"), both from pure noise (max_noise 1: gamma_T = 1e-4): the one-step x0 estimate
    # (DDIM, T = 1) and DDPM T = 20 with sample averaging of 4 (the paper's SA), the best
    # setting of every measurement since the LPIPS term. DDIM T = 20 and DDPM from the blurry
    # input at max_noise 0.5 never won there and cost 100 of the grid's 181 network calls per
    # image (`--set evaluation.grid=[...]` brings them back).
    return [{"sampler": "ddim", "steps": 1, "max_noise": 1.0, "samples": 1},
            {"sampler": "ddpm", "steps": 20, "max_noise": 1.0, "samples": 4}]


def is_validation_split(name: str) -> bool:
    """The naming convention of validation splits: "val" or "val_<anything>" (val_ood)."""
    return name == "val" or name.startswith("val_")


def _default_baselines():
    from components.evaluator import classical

    return list(classical.DEFAULT_BASELINES)


@dataclasses.dataclass
class EvalConfig:
    grid: List[Dict] = dataclasses.field(default_factory=_default_grid)
    # the test splits, which the gate judges: None: every split but train_split and the
    # validation splits
    splits: Optional[List[str]] = None
    # the splits the sampling setting is chosen on: None: every split named val or val_*
    # (is_validation_split); []: none, the setting is then chosen on the test splits, and the
    # evaluation says so (an optimistic verdict)
    validation_splits: Optional[List[str]] = None
    train_split: str = "train"
    # classical references scored beside the model on the test images (classical.py)
    baselines: List[str] = dataclasses.field(default_factory=_default_baselines)
    # the paired bootstrap of every comparison (stats.py): resamples and confidence
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    # 8: the least the issue asks for; each image costs 81 network calls of the default grid
    max_images_per_split: int = 8
    batch_size: int = 4
    seed: int = 0
    sample_grid_images: int = 3
    lpips_net: str = "alex"
    fid_kid: bool = True  # FID/KID per domain with the FID Inception (reported, not gated)
    domain_gap: bool = True  # the paper's Table 1 (domain_gap.json)

    def settings(self) -> List[SamplingSetting]:
        if not self.grid:
            raise ValueError("the sampling grid is empty")
        out = [SamplingSetting(**g) if isinstance(g, dict) else g for g in self.grid]
        keys = [s.key for s in out]
        if len(set(keys)) != len(keys):
            raise ValueError(f"the sampling grid repeats a setting: {keys}")
        return out

    def __post_init__(self):
        if self.max_images_per_split < 1:
            raise ValueError(f"max_images_per_split must be >= 1, got {self.max_images_per_split}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (isinstance(self.confidence, float) and 0.5 <= self.confidence < 1.0):
            raise ValueError(f"confidence must be a number in [0.5, 1), got {self.confidence!r}")
        if isinstance(self.bootstrap_samples, bool) or not isinstance(self.bootstrap_samples, int) \
                or self.bootstrap_samples < 100:
            raise ValueError(f"bootstrap_samples must be an integer >= 100, got "
                             f"{self.bootstrap_samples!r}")
        from components.evaluator import classical

        for name in self.baselines:
            classical.get(name)  # an unknown name: one line naming the known ones
        if len(set(self.baselines)) != len(self.baselines):
            raise ValueError(f"baselines repeats a name: {self.baselines}")
        self.settings()


# ---- data ----------------------------------------------------------------------------------
def split_names(examples_dir: str) -> List[str]:
    import tensorflow as tf

    return artifacts.split_names(tf.io.gfile.listdir(examples_dir))


def load_split(examples_dir: str, split: str, max_images: int) -> List[dict]:
    """The max_images examples of a split with the smallest pair ids (a choice that does not
    depend on the shard order of an ingest run): pair_id, dataset, domain, blurry, sharp.

    One pass over the split parses only pair_id; the kept records are decoded at the end."""
    import heapq

    import tensorflow as tf

    from core import example_format as ef
    from trainer.data import split_files

    from trainer.data import find_damaged_shard

    files = sorted(split_files(examples_dir, split))
    id_spec = {"pair_id": tf.io.FixedLenFeature([], tf.string)}
    heap: List = []  # max-heap by pair id (negated order via a wrapper) of (id, record)
    try:
        for rec in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            pid = tf.io.parse_single_example(rec, id_spec)["pair_id"].numpy().decode()
            item = (_Desc(pid), rec.numpy())
            if len(heap) < max_images:
                heapq.heappush(heap, item)
            elif pid < heap[0][0].key:
                heapq.heapreplace(heap, item)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        # a truncated or overwritten shard: TensorFlow's message names no file
        damaged = find_damaged_shard(files)
        if damaged is None:
            raise
        raise ValueError(damaged) from e
    if not heap:
        raise ValueError(f"split {split!r} of {examples_dir} has no examples")
    spec = {k: tf.io.FixedLenFeature([], tf.string)
            for k in ("blurry", "sharp", "pair_id", "dataset", "domain")}
    out = []
    for _, rec in sorted(heap, key=lambda x: x[0].key):
        ex = tf.io.parse_single_example(rec, spec)
        item = {k: ex[k].numpy().decode() for k in ("pair_id", "dataset", "domain")}
        for k in ef.IMAGE_KEYS:
            item[k] = tf.io.decode_png(ex[k], channels=3).numpy()
        out.append(item)
    return out


class _Desc:
    """Reverses string order, so heapq's min-heap keeps the largest kept id on top."""

    __slots__ = ("key",)

    def __init__(self, key: str):
        self.key = key

    def __lt__(self, other: "_Desc") -> bool:
        return self.key > other.key


# ---- scoring -------------------------------------------------------------------------------
class Scorer:
    """PSNR, SSIM, LPIPS and NIQE of outputs against references (uint8 RGB)."""

    def __init__(self, lpips_net: str = "alex"):
        import metrics

        self._metrics = metrics
        self._lpips = metrics.LPIPS(lpips_net)

    def __call__(self, output: np.ndarray, reference: np.ndarray) -> Dict[str, float]:
        return {k: float(v) for k, v in
                self._metrics.image_metrics(output, reference, lpips_model=self._lpips).items()}


def _mean(rows: Sequence[Dict[str, float]]) -> Dict[str, float]:
    return {m: float(np.mean([r[m] for r in rows])) for m in METRICS}


def _batches(items: List[dict], batch_size: int):
    """Consecutive runs of same-size images, at most batch_size each: (start, end)."""
    i = 0
    while i < len(items):
        j = i + 1
        while (j < len(items) and j - i < batch_size
               and items[j]["blurry"].shape == items[i]["blurry"].shape):
            j += 1
        yield i, j
        i = j


def load_model(model_dir: str):
    """The exported SavedModel (ValueError unless it has trainer/export.py's deblur_batch)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(model_dir)
    if not hasattr(loaded, "deblur_batch"):
        raise ValueError(f"{model_dir} is not a deblurring SavedModel of trainer/export.py "
                         "(no deblur_batch function)")
    return loaded


def load_model_or_explain(model_dir: str):
    """load_model, or a one-line ValueError naming the folder when the SavedModel does not
    load (a truncated variables file: IndexError; a bit flip: DataLossError; a saved_model.pb
    that does not parse): TensorFlow's own error is a page of traceback."""
    try:
        return load_model(model_dir)
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 (TensorFlow fails a damaged model in many ways)
        text = getattr(e, "message", None) or str(e) or type(e).__name__
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(e).__name__)
        raise ValueError(f"the SavedModel {model_dir} does not load ({type(e).__name__}: "
                         f"{first[:200]}): it is damaged or partial; export it again or give "
                         f"an intact copy (e.g. its registry version)") from None


def run_model(loaded, data: Dict[str, List[dict]], settings: Sequence[SamplingSetting],
              config: EvalConfig, scorer: Scorer, progress=None,
              label: str = "model", inception=None) -> Dict[str, Dict[str, list]]:
    """{"scores": {setting key: {split: [per-image metrics]}},
        "outputs": {setting key: {split: [the first sample_grid_images outputs, uint8]}},
        "features": {setting key: {split: [n, 2048] Inception features of the finite
                     outputs]}} (with `inception`: images -> features)}"""
    from trainer.sampling import NonFiniteOutput, call_deblur_batch

    scores: Dict[str, Dict[str, list]] = {}
    outputs: Dict[str, Dict[str, list]] = {}
    features: Dict[str, Dict[str, np.ndarray]] = {}
    non_finite: Dict[str, List[str]] = {}  # setting key -> pair ids whose output was not finite
    for s in settings:
        scores[s.key], outputs[s.key], features[s.key] = {}, {}, {}
        for split, items in data.items():
            rows, kept, feats = [], [], []
            for b, (i, j) in enumerate(_batches(items, config.batch_size)):
                images = np.stack([it["blurry"] for it in items[i:j]])
                try:
                    out = call_deblur_batch(loaded, images, s, (config.seed, b))
                except NonFiniteOutput:
                    out = None  # scored as NaN: the gate's finite rule names the reason
                if out is not None and inception is not None:
                    feats.append(inception(out))
                for k, it in enumerate(items[i:j]):
                    if out is None:
                        non_finite.setdefault(s.key, []).append(it["pair_id"])
                        rows.append({"pair_id": it["pair_id"], **{m: math.nan for m in METRICS}})
                        continue
                    rows.append({"pair_id": it["pair_id"], **scorer(out[k], it["sharp"])})
                    if len(kept) < config.sample_grid_images:
                        kept.append(out[k])
                if progress is not None:
                    progress.update(j - i)
            scores[s.key][split] = rows
            outputs[s.key][split] = kept
            features[s.key][split] = (np.concatenate(feats) if feats
                                      else np.zeros((0, 2048), np.float32))
        logging.getLogger("deblur.progress").info(
            "DeblurEvaluator: %s %s sampled and scored on %s", label, s.key, ", ".join(data))
    return {"scores": scores, "outputs": outputs, "features": features, "non_finite": non_finite}


def _finite(d: Dict[str, float]) -> bool:
    return all(isinstance(v, float) and math.isfinite(v) for v in d.values())


def choose_best(by_domain: Dict[str, Dict[str, Dict[str, float]]], settings: Sequence[SamplingSetting],
                domain: str = "out", inputs: Optional[Dict[str, Dict[str, float]]] = None,
                gate: Optional[GateConfig] = None) -> Optional[SamplingSetting]:
    """The setting with the lowest LPIPS in `domain` (or, without that domain, over all
    domains) among those with all metrics finite; ties go to fewer network evaluations.
    With the inputs' scores and the gate: among the settings that beat the blurry input in
    every domain (the gate's beats_input) when there are any, so a setting that wins on
    out-of-domain LPIPS but loses to doing nothing in-domain is not chosen over one that
    serves both."""
    def lpips(s):
        if domain in by_domain:
            return by_domain[domain][s.key]["lpips"]
        return float(np.mean([d[s.key]["lpips"] for d in by_domain.values()]))

    ok = [s for s in settings if all(_finite(d[s.key]) for d in by_domain.values())]
    if not ok:
        return None
    if inputs is not None and gate is not None:
        better = [s for s in ok if beats_input({d: m[s.key] for d, m in by_domain.items()},
                                               inputs, gate).verdict == PASS]
        ok = better or ok
    return min(ok, key=lambda s: (lpips(s), s.steps * s.samples))


def distribution_metrics(features: Dict[str, Dict[str, np.ndarray]],
                         by_domain: Dict[str, List[dict]], splits: Sequence[str],
                         domain_of: Dict[str, str], settings: Sequence[SamplingSetting],
                         inception, blurry_features: Dict[str, np.ndarray]) -> Dict[str, dict]:
    """{domain: {"images": n, "input": {fid, kid, n_a, n_b}, "settings": {key: {...}}}}: FID and
    KID of each setting's outputs (the finite ones) and of the blurry inputs against the
    domain's sharp images (metrics/fid.py; NaN below 2 images)."""
    from metrics.fid import fid_kid

    out = {}
    for d, items in by_domain.items():
        sharp = inception([it["sharp"] for it in items])
        per_setting = {}
        for s in settings:
            outs = np.concatenate([features[s.key][sp] for sp in splits if domain_of[sp] == d])
            per_setting[s.key] = fid_kid(outs, sharp)
        out[d] = {"images": len(items), "input": fid_kid(blurry_features[d], sharp),
                  "settings": per_setting}
    logging.getLogger("deblur.progress").info("DeblurEvaluator: FID/KID per domain done")
    return out


def split_roles(available: Sequence[str], config: EvalConfig) -> Tuple[List[str], List[str]]:
    """(validation splits, test splits) of an evaluation (see EvalConfig.splits and
    .validation_splits); ValueError naming what is missing."""
    if config.validation_splits is None:
        validation = [s for s in available if is_validation_split(s) and s != config.train_split]
    else:
        validation = list(config.validation_splits)
    tests = config.splits or [s for s in available
                              if s != config.train_split and s not in validation]
    missing = [s for s in list(tests) + validation if s not in available]
    if missing:
        raise ValueError(f"evaluation split(s) {missing} not in the examples (has {list(available)})")
    if not tests:
        raise ValueError(f"the examples have no test split to judge on (only {list(available)})")
    both = sorted(set(tests) & set(validation))
    if both:
        raise ValueError(f"split(s) {both} are both validation and test splits: the setting "
                         f"must not be chosen on the images that judge it")
    return validation, tests


def load_splits(examples_dir: str, splits: Sequence[str], config: EvalConfig):
    """({split: items}, {split: domain}): each split's first max_images_per_split examples by
    pair id; a split must hold one domain."""
    data = {s: load_split(examples_dir, s, config.max_images_per_split) for s in splits}
    domain_of = {}
    for s, items in data.items():
        domains = sorted({it["domain"] for it in items})
        if len(domains) != 1:
            raise ValueError(f"split {s!r} mixes domains {domains}; evaluate them as separate splits")
        domain_of[s] = domains[0]
    return data, domain_of


def select_data(examples_dir: str, config: EvalConfig):
    """(test splits, {split: items}, {split: domain}) of the evaluation's test splits."""
    _, splits = split_roles(split_names(examples_dir), config)
    data, domain_of = load_splits(examples_dir, splits, config)
    return splits, data, domain_of


def domain_gap_report(model_dir: str, examples_dir: str, config: EvalConfig = EvalConfig()) -> dict:
    """The Table 1 report alone (`deblur domain-gap`): the evaluation splits' blurry images by
    domain, the model's guidance regressions; no sampling."""
    from metrics.inception import default_inception

    splits, data, domain_of = select_data(examples_dir, config)
    by_domain = {d: [it for s in splits if domain_of[s] == d for it in data[s]]
                 for d in sorted(set(domain_of.values()))}
    return dg.domain_gap(load_model_or_explain(model_dir), by_domain, default_inception())


# ---- the whole evaluation ------------------------------------------------------------------
def _summarise(scores: Dict[str, Dict[str, list]], keys: Sequence[str], splits: Sequence[str],
               domain_of: Dict[str, str]):
    """({split: {key: mean metrics}}, {domain: {key: mean metrics over its splits}})."""
    per_split = {s: {k: _mean(scores[k][s]) for k in keys} for s in splits}
    per_domain = {d: {k: _mean([r for s in splits if domain_of[s] == d for r in scores[k][s]])
                      for k in keys}
                  for d in sorted({domain_of[s] for s in splits})}
    return per_split, per_domain


def _by_domain(rows: Dict[str, list], splits: Sequence[str], domain_of: Dict[str, str]):
    """{domain: the per-image rows of its splits, in split then pair-id order}."""
    return {d: [r for s in splits if domain_of[s] == d for r in rows[s]]
            for d in sorted({domain_of[s] for s in splits})}


def compare(candidate: Dict[str, list], reference: Dict[str, list],
            config: EvalConfig) -> Dict[str, Dict[str, dict]]:
    """{domain: {metric: stats.paired_comparison(candidate, reference)}} over the per-image rows
    of each domain ({domain: rows}, the same images in the same order)."""
    from components.evaluator import stats

    out = {}
    for d, rows in candidate.items():
        ref = reference[d]
        if [r["pair_id"] for r in rows] != [r["pair_id"] for r in ref]:
            raise ValueError(f"{domain_name(d)}: the compared rows are not the same images")
        # an infinite PSNR (an output equal to its reference) or a non-finite output is
        # left out of the pairs and counted as "dropped"
        fin = lambda v: v if math.isfinite(v) else math.nan  # noqa: E731
        out[d] = {m: stats.paired_comparison(
            [fin(r[m]) for r in rows], [fin(r[m]) for r in ref],
            higher_is_better=m in ("psnr", "ssim"),
            n_boot=config.bootstrap_samples, confidence=config.confidence, seed=config.seed)
            for m in ("psnr", "ssim", "lpips")}
    return out


def score_classical(data: Dict[str, List[dict]], names: Sequence[str], scorer: "Scorer",
                    progress=None) -> Dict[str, Dict[str, list]]:
    """{baseline name: {split: per-image metrics}} of the classical references."""
    from components.evaluator import classical

    out = {}
    for name in names:
        out[name] = {}
        for split, items in data.items():
            out[name][split] = [{"pair_id": it["pair_id"],
                                 **scorer(classical.restore(name, it["blurry"]), it["sharp"])}
                                for it in items]
            if progress is not None:
                progress.update(len(items))
    logging.getLogger("deblur.progress").info(
        "DeblurEvaluator: classical baselines %s scored", ", ".join(names))
    return out


def evaluate(model_dir: str, examples_dir: str, out_dir: str, config: EvalConfig = EvalConfig(),
             baseline_dir: Optional[str] = None, baseline_setting: Optional[dict] = None,
             gate: GateConfig = GateConfig(), progress: bool = False,
             baseline_loaded=None) -> dict:
    """Evaluates model_dir over the grid on the validation splits and chooses its setting
    there; scores that setting (and the baseline model at its own setting, if given, the
    blurry input and the classical references) on the test splits, compares them image by
    image, applies the gate; writes everything to out_dir and returns evaluation.json's
    content with "blessing" added (also written to out_dir/blessing.json). Without a
    validation split the whole grid runs on test and the setting is chosen there
    (result["chosen_on"] says "test", with a warning). baseline_loaded: load_model(baseline_dir)
    when the caller already loaded it (the DeblurEvaluator, which tries blessed models until
    one loads)."""
    settings = config.settings()
    val_splits, splits = split_roles(split_names(examples_dir), config)
    data, domain_of = load_splits(examples_dir, splits, config)
    val_data, val_domain_of = load_splits(examples_dir, val_splits, config)
    scorer = Scorer(config.lpips_net)
    loaded = load_model_or_explain(model_dir)
    if baseline_dir and baseline_loaded is None:  # a damaged --baseline: before any work
        baseline_loaded = load_model_or_explain(baseline_dir)
    inception = None
    if config.fid_kid or config.domain_gap:
        from metrics.inception import default_inception

        inception = default_inception()
    n_test, n_val = sum(len(v) for v in data.values()), sum(len(v) for v in val_data.values())
    base_settings = [SamplingSetting(**baseline_setting)] if baseline_setting else settings
    total = (n_val * len(settings) + n_test * (1 if val_splits else len(settings))
             + n_test * (len(base_settings) if baseline_dir else 0)
             + n_test * len(config.baselines))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=total, desc="evaluate (images x methods)", unit="img")
    log = logging.getLogger("deblur.progress")
    validation = None
    try:
        if val_splits:  # choose on validation
            vrun = run_model(loaded, val_data, settings, config, scorer, bar,
                             "candidate (validation)")
            v_inputs = {s: [scorer(it["blurry"], it["sharp"]) for it in items]
                        for s, items in val_data.items()}
            v_split, v_domain = _summarise(vrun["scores"], [x.key for x in settings],
                                           val_splits, val_domain_of)
            v_input = {d: _mean(rows) for d, rows in
                       _by_domain(v_inputs, val_splits, val_domain_of).items()}
            best = choose_best(v_domain, settings, gate.domain, v_input, gate)
            validation = {
                "splits": {s: {"domain": val_domain_of[s], "images": len(val_data[s]),
                               "input": _mean(v_inputs[s]), "settings": v_split[s]}
                           for s in val_splits},
                "domains": {d: {"splits": [s for s in val_splits if val_domain_of[s] == d],
                                "input": v_input[d], "settings": v_domain[d]}
                            for d in v_domain},
                "non_finite_outputs": vrun["non_finite"]}
            # no setting with every metric finite: the first one is judged (and fails)
            test_settings = [best or settings[0]]
            log.info("DeblurEvaluator: setting %s chosen on validation (%s)",
                     (best or settings[0]).key, ", ".join(val_splits))
        else:
            best, test_settings = None, settings
            log.warning("DeblurEvaluator: no validation split: the sampling setting is chosen "
                        "on the test splits %s that also judge it (an optimistic verdict); "
                        "give the examples a val / val_ood split", ", ".join(splits))
        cand = run_model(loaded, data, test_settings, config, scorer, bar, "candidate",
                         inception if config.fid_kid else None)
        base = run_model(baseline_loaded if baseline_loaded is not None
                         else load_model(baseline_dir), data, base_settings, config, scorer, bar,
                         "baseline") if baseline_dir else None
        classical_scores = score_classical(data, config.baselines, scorer, bar)
    finally:
        if bar is not None:
            bar.close()

    inputs = {s: [{"pair_id": it["pair_id"], **scorer(it["blurry"], it["sharp"])} for it in items]
              for s, items in data.items()}
    per_split, per_domain = _summarise(cand["scores"], [x.key for x in test_settings], splits,
                                       domain_of)
    input_by_domain = {d: _mean(rows) for d, rows in _by_domain(inputs, splits, domain_of).items()}
    if not val_splits:
        best = choose_best(per_domain, settings, gate.domain, input_by_domain, gate)
    # no setting with every metric finite: the gate sees the first setting's (non-finite) ones
    shown = best or test_settings[0]
    best_metrics = {d: per_domain[d][shown.key] for d in per_domain}
    cand_rows = _by_domain(cand["scores"][shown.key], splits, domain_of)
    comparisons = {"input": compare(cand_rows, _by_domain(inputs, splits, domain_of), config)}
    baseline_best = None
    baseline_info = None
    if base is not None:
        b_split, b_domain = _summarise(base["scores"], [x.key for x in base_settings], splits,
                                       domain_of)
        # the baseline's own setting as is (the gate looks only at its LPIPS); without one,
        # its best over the grid on these images
        b_best = base_settings[0] if len(base_settings) == 1 else choose_best(
            b_domain, base_settings, gate.domain)
        baseline_best = {d: b_domain[d][b_best.key] for d in b_domain} if b_best else {}
        baseline_info = {"model": baseline_dir, "setting": b_best.to_dict() if b_best else None,
                         "domains": b_domain, "splits": b_split, "best": baseline_best}
        if b_best is not None:
            comparisons["previous"] = compare(
                cand_rows, _by_domain(base["scores"][b_best.key], splits, domain_of), config)
            baseline_info["comparison"] = comparisons["previous"]
    from components.evaluator import classical

    classical_info = {}
    for name, rows in classical_scores.items():
        by_d = _by_domain(rows, splits, domain_of)
        classical_info[name] = {"label": classical.get(name).label,
                                "domains": {d: _mean(r) for d, r in by_d.items()},
                                "splits": {s: _mean(rows[s]) for s in splits}}
    comparisons["baselines"] = {name: compare(cand_rows, _by_domain(rows, splits, domain_of),
                                              config)
                                for name, rows in classical_scores.items()}

    by_domain = {d: [it for s in splits if domain_of[s] == d for it in data[s]]
                 for d in per_domain}
    blurry_features = None
    if inception is not None:
        blurry_features = {d: inception([it["blurry"] for it in items])
                           for d, items in by_domain.items()}
    per_domain_fid = distribution_metrics(cand["features"], by_domain, splits, domain_of,
                                          test_settings, inception, blurry_features) \
        if config.fid_kid else {}
    gap = None
    if config.domain_gap:
        gap = dg.domain_gap(loaded, by_domain, inception, full_features=blurry_features)
        log.info("DeblurEvaluator: domain gap (Table 1) done")

    result = {
        "model": model_dir, "examples": examples_dir, "config": dataclasses.asdict(config),
        "grid": [s.to_dict() | {"key": s.key} for s in settings],
        "chosen_on": "validation" if val_splits else "test",
        "validation": validation,
        "splits": {s: {"domain": domain_of[s], "datasets": sorted({it["dataset"] for it in data[s]}),
                       "images": len(data[s]), "input": _mean(inputs[s]), "settings": per_split[s]}
                   for s in splits},
        "domains": {d: {"splits": [s for s in splits if domain_of[s] == d],
                        "input": input_by_domain[d], "settings": per_domain[d],
                        **({"fid_kid": per_domain_fid[d]} if d in per_domain_fid else {})}
                    for d in per_domain},
        "classical": classical_info,
        "comparisons": comparisons,
        "fid_kid_note": FID_KID_NOTE if config.fid_kid else None,
        "domain_gap": gap,
        "best_setting": best.to_dict() | {"key": best.key} if best else None,
        "best": best_metrics,
        "baseline": baseline_info,
        "non_finite_outputs": cand["non_finite"],
    }
    non_finite = sorted(set(cand["non_finite"]) | set((validation or {}).get(
        "non_finite_outputs", {})))
    blessing = decide(best_metrics, gate, baseline_best if base is not None else None,
                      inputs=input_by_domain, non_finite_outputs=non_finite,
                      classical={n: i["domains"] for n, i in classical_info.items()},
                      comparisons=comparisons)
    # what travels with the blessing (the pusher's manifest, the next run's baseline setting)
    result["blessing"] = {**blessing, "best_setting": result["best_setting"], "best": best_metrics,
                          "chosen_on": result["chosen_on"],
                          "validation_best": _validation_best(validation, best),
                          "classical": {n: i["domains"] for n, i in classical_info.items()}}
    _write(out_dir, result, cand, data, domain_of, test_settings, best, classical_scores)
    return result


def _validation_best(validation: Optional[dict], best: Optional[SamplingSetting]):
    """{domain: metrics} of the chosen setting on the validation splits (None without)."""
    if not validation or best is None:
        return None
    return {d: info["settings"][best.key] for d, info in validation["domains"].items()}


def _write(out_dir, result, cand, data, domain_of, settings, best, classical_scores=None):
    import tensorflow as tf

    tf.io.gfile.makedirs(out_dir)
    with tf.io.gfile.GFile(os.path.join(out_dir, EVALUATION_FILE), "w") as f:
        json.dump({k: v for k, v in result.items() if k != "blessing"}, f, indent=2, sort_keys=True)
    with tf.io.gfile.GFile(os.path.join(out_dir, BLESSING_FILE), "w") as f:
        json.dump(result["blessing"], f, indent=2, sort_keys=True)
    if result.get("domain_gap") is not None:
        with tf.io.gfile.GFile(os.path.join(out_dir, DOMAIN_GAP_FILE), "w") as f:
            json.dump(result["domain_gap"], f, indent=2, sort_keys=True)
    for split, info in result["splits"].items():
        for key, m in info["settings"].items():
            path = os.path.join(out_dir, "metrics", info["domain"], split, f"{key}.json")
            tf.io.gfile.makedirs(os.path.dirname(path))
            with tf.io.gfile.GFile(path, "w") as f:
                json.dump({"split": split, "domain": info["domain"], "setting": key,
                           "images": info["images"], **m}, f, indent=2, sort_keys=True)
    # one line per test image and method: the model at each setting run on test, and the
    # classical references ("baseline": name); the paired comparisons are computed from these
    with tf.io.gfile.GFile(os.path.join(out_dir, "per_image.jsonl"), "w") as f:
        for key, by_split in cand["scores"].items():
            for split, rows in by_split.items():
                for r in rows:
                    f.write(json.dumps({"setting": key, "split": split,
                                        "domain": domain_of[split], **r}, sort_keys=True) + "\n")
        for name, by_split in (classical_scores or {}).items():
            for split, rows in by_split.items():
                for r in rows:
                    f.write(json.dumps({"baseline": name, "split": split,
                                        "domain": domain_of[split], **r}, sort_keys=True) + "\n")
    plot_perception_distortion(result, os.path.join(out_dir, "perception_distortion.png"))
    if best is not None:
        for split, items in data.items():
            outs = cand["outputs"][best.key][split]
            write_sample_grid(items[:len(outs)], outs,
                              os.path.join(out_dir, "samples", f"{split}.png"))


def plot_perception_distortion(result: dict, path: str) -> None:
    """PSNR (distortion, up is better) against LPIPS (perception, left is better), one colour
    per domain (the paper's Fig. 5). Left: the sampling grid on the splits that chose the
    setting (validation; test without one), a curve per sampler configuration along
    max_noise, the blurry input as a cross. Right, with a validation split: the verdict on
    test, the chosen setting (star), the blurry input (cross) and each classical baseline (a
    labelled square). Validation and test are different images: they get their own axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tensorflow as tf

    best = (result.get("best_setting") or {}).get("key")
    on_val = result.get("chosen_on") == "validation"
    grid_domains = ((result.get("validation") or {}).get("domains") if on_val
                    else result["domains"]) or {}
    fig, axes = plt.subplots(1, 2, figsize=(12.0, 5.8), dpi=100)
    markers = "osD^v<>"
    domains = sorted(set(result["domains"]) | set(grid_domains))
    colour = {d: f"C{i}" for i, d in enumerate(domains)}
    ax = axes[0]
    for domain, info in sorted(grid_domains.items()):
        curves = {}  # one curve per sampler configuration (sampler, T, K), along max_noise
        for g in result["grid"]:
            if g["key"] in info["settings"]:
                curves.setdefault((g["sampler"], g["steps"], g["samples"]), []).append(g)
        for j, ((sampler, steps, k), points) in enumerate(sorted(curves.items())):
            points = sorted(points, key=lambda g: g["max_noise"])
            ms = [info["settings"][g["key"]] for g in points]
            ax.plot([m["lpips"] for m in ms], [m["psnr"] for m in ms], "-",
                    color=colour[domain], marker=markers[j % len(markers)],
                    label=f"{domain_name(domain)}: {sampler} T={steps}" + (f" K={k}" if k > 1 else ""))
            for g, m in zip(points, ms):
                ax.annotate(f"{g['max_noise']:g}" + (" *" if g["key"] == best else ""),
                            (m["lpips"], m["psnr"]), fontsize=7, textcoords="offset points",
                            xytext=(4, 3))
        ax.plot(info["input"]["lpips"], info["input"]["psnr"], "x", color=colour[domain],
                markersize=9, label=f"{domain_name(domain)}: blurry input")
    ax.set_title(f"The choice: the grid on {'validation' if on_val else 'test (no validation split)'}"
                 f"\n(labels: max noise; * = chosen by out-of-domain LPIPS)", fontsize=9)
    ax = axes[1]
    for domain, test in sorted(result["domains"].items()):
        c = colour[domain]
        chosen = (result.get("best") or {}).get(domain)
        if chosen:
            ax.plot(chosen["lpips"], chosen["psnr"], "*", color=c, markersize=14,
                    markeredgecolor="k", label=f"{domain_name(domain)}: model ({best})")
        ax.plot(test["input"]["lpips"], test["input"]["psnr"], "x", color=c, markersize=9,
                label=f"{domain_name(domain)}: blurry input")
        for name, ref in sorted((result.get("classical") or {}).items()):
            m = ref["domains"].get(domain)
            if m:
                ax.plot(m["lpips"], m["psnr"], "s", color=c, markersize=5, alpha=0.8)
                ax.annotate(name, (m["lpips"], m["psnr"]), fontsize=7, color=c,
                            textcoords="offset points", xytext=(4, -9))
    ax.set_title("The verdict: the chosen setting on test, beside the blurry input\nand the "
                 "classical baselines (squares)", fontsize=9)
    for ax in axes:
        ax.set_xlabel("LPIPS (AlexNet), lower is better")
        ax.set_ylabel("PSNR (dB), higher is better")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2)
    fig.tight_layout()
    tf.io.gfile.makedirs(os.path.dirname(path))
    with tf.io.gfile.GFile(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)


def write_sample_grid(items: List[dict], outputs: List[np.ndarray], path: str, gap: int = 4) -> None:
    """A PNG with one row per image: blurry | output | sharp."""
    import tensorflow as tf
    from PIL import Image

    rows = []
    for it, out in zip(items, outputs):
        h = it["blurry"].shape[0]
        sep = np.full((h, gap, 3), 255, np.uint8)
        rows.append(np.concatenate([it["blurry"], sep, out, sep, it["sharp"]], axis=1))
    if not rows:
        return
    width = max(r.shape[1] for r in rows)
    padded = []
    for r in rows:
        padded.append(np.pad(r, ((0, gap), (0, width - r.shape[1]), (0, 0)), constant_values=255))
    tf.io.gfile.makedirs(os.path.dirname(path))
    import io

    buf = io.BytesIO()
    Image.fromarray(np.concatenate(padded, axis=0)).save(buf, format="PNG")
    with tf.io.gfile.GFile(path, "wb") as f:
        f.write(buf.getvalue())


def fid_kid_text(m: dict) -> str:
    """"  FID 123.45  KID 0.0123" of a fid_kid entry (nan below 2 images)."""
    return f"  FID {format_value(m['fid'], '.2f')}  KID {format_value(m['kid'], '.4f')}"


def _metric_text(m: dict) -> str:
    return (f"PSNR {format_value(m.get('psnr'), '6.2f')}  SSIM {format_value(m.get('ssim'), '.4f')}  "
            f"LPIPS {format_value(m.get('lpips'), '.4f')}  NIQE {format_value(m.get('niqe'), '.3f')}")


def versus_text(comparison: Optional[Dict[str, dict]]) -> str:
    """"model - it: LPIPS -0.0123 [-0.0201, -0.0040] wins 7/8; PSNR +0.52 [...] wins 6/8" of
    one domain's paired comparisons (LPIPS wins: lower; PSNR wins: higher)."""
    if not comparison:
        return ""
    parts = [f"{m.upper()} " + comparison_text(comparison[m], m).replace("diff ", "")
             for m in ("lpips", "psnr") if m in comparison]
    return "model - it: " + "; ".join(parts)


def chosen_text(result: dict) -> str:
    """"setting ddpm-... chosen on validation (val, val_ood) by out-of-domain LPIPS" or the
    warning that it was chosen on the test splits."""
    key = (result.get("best_setting") or {}).get("key", "none (no setting with finite metrics)")
    if result.get("chosen_on") == "validation":
        splits = sorted((result.get("validation") or {}).get("splits", {}))
        return f"setting {key} chosen on validation ({', '.join(splits)}) by out-of-domain LPIPS"
    return (f"setting {key} chosen on the test splits (no validation split: the verdict is "
            f"optimistic)")


def reference_lines(result: dict, domain: str, indent: str = "  ", width: int = 22) -> List[str]:
    """The test rows of a domain: the blurry input, the model at the chosen setting and each
    classical reference, each with the model's paired comparison against it."""
    info = result["domains"][domain]
    comps = result.get("comparisons") or {}
    best = (result.get("best") or {}).get(domain, {})
    key = (result.get("best_setting") or {}).get("key", "model")
    lines = [f"{indent}{'model ' + key:<{width}} {_metric_text(best)}",
             f"{indent}{'blurry input':<{width}} {_metric_text(info['input'])}   "
             f"{versus_text((comps.get('input') or {}).get(domain))}"]
    for name, ref in sorted((result.get("classical") or {}).items()):
        m = ref["domains"].get(domain)
        if m:
            lines.append(f"{indent}{name:<{width}} {_metric_text(m)}   "
                         f"{versus_text(((comps.get('baselines') or {}).get(name) or {}).get(domain))}")
    return lines


def format_result(result: dict) -> str:
    """A short human-readable table of the evaluation: the grid on validation (the choice),
    then the test rows (the verdict) beside the input and the classical baselines."""
    lines = [chosen_text(result)]
    best_key = (result.get("best_setting") or {}).get("key")
    for domain, info in sorted(((result.get("validation") or {}).get("domains") or {}).items()):
        lines.append(f"validation, {domain_name(domain)} ({', '.join(info['splits'])}):")
        lines.append(f"  {'blurry input':<22} {_metric_text(info['input'])}")
        for key, m in info["settings"].items():
            lines.append(f"  {key:<22} {_metric_text(m)}" + (" *" if key == best_key else ""))
    conf = (result.get("config") or {}).get("confidence", 0.95)
    lines.append(f"test (the verdict; differences with {conf:.0%} paired bootstrap intervals "
                 f"and per-image wins):")
    for domain, info in sorted(result["domains"].items()):
        fk = info.get("fid_kid")
        lines.append(f"{domain_name(domain)} ({', '.join(info['splits'])}, "
                     f"{sum(result['splits'][s]['images'] for s in info['splits'])} images)"
                     + (f", FID/KID against {fk['images']} sharp images:" if fk else ":"))
        lines.extend(reference_lines(result, domain))
        if result.get("chosen_on") != "validation":
            for key, m in info["settings"].items():
                lines.append(f"  {key:<22} {_metric_text(m)}" + (" *" if key == best_key else ""))
        if fk:
            lines.append(f"  FID/KID: blurry input{fid_kid_text(fk['input'])}; model"
                         + "; ".join(fid_kid_text(fk["settings"][k]) for k in fk["settings"]))
    if result.get("fid_kid_note"):
        lines.append(f"({result['fid_kid_note']})")
    if result.get("domain_gap"):
        lines.extend(dg.format_domain_gap(result["domain_gap"], indent=""))
    b = result.get("blessing")
    if b:
        lines.append(f"blessed: {'YES' if b['blessed'] else 'NO'} ({b['reason']})")
        for r in b["rules"]:
            v = "" if r["value"] is None else f" value {r['value']:.4f}"
            t = "" if r["threshold"] is None else f" threshold {r['threshold']:.4f}"
            lines.append(f"  {r['rule']:<15} {r['verdict'].upper():<7}{v}{t}  {r['detail']}")
    return "\n".join(lines)
