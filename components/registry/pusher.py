"""Registers a blessed model: the library function the RegistryPusher component wraps.

`register_model` reads the blessing, the evaluation and the data summary, builds the manifest
(what was measured, how to sample, on which data, from which code and pipeline run) and pushes
the SavedModel into the registry. A model that is not blessed is not pushed: the result says
so with the failed rules, and nothing is written to the registry.

Inputs it reads (local paths or gs://, through the registry's storage layer, Storage in
registry.py: google-cloud-storage over the registry's own client):
  <blessing_uri>/blessing.json   {"blessed": bool, "rules": [{"rule", "value", "threshold",
                                  "verdict", "detail"?}, ...], "reason"?, "config"?,
                                  "best_setting"?, "best"?} (components/evaluator writes it);
                                  a rule failed when its verdict is "fail"/"failed"/false
                                  ("skipped" is not a failure)
  <evaluation_uri>/evaluation.json  at least "best_setting" {"sampler", "steps", "max_noise",
                                  "samples"} and "best" {"in": {metric: value}, "out": {...}}
  <examples_uri>/summary.json    the ingest summary (optional)
  <model_dir>/deblur.json        the export's default sampling, used when neither the
                                  evaluation nor the blessing names a best setting
No TensorFlow or TFX import here.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

from components.registry.registry import Registry, Storage
from core.artifacts import (BLESSING_FILE, EVALUATION_FILE, MODEL_INFO_FILE, SAVED_MODEL_FILE,
                            SUMMARY_FILE, read_json)
from core.version import code_version

FAILING_VERDICTS = ("false", "fail", "failed")


@dataclasses.dataclass
class PushResult:
    pushed: bool
    version: Optional[int] = None
    destination: Optional[str] = None  # the version's URI
    reason: Optional[str] = None  # why not pushed
    manifest: Optional[Dict[str, Any]] = None
    # not pushed because the registry holds this very model already, as this version
    already_registered: Optional[int] = None

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------- pieces
def _failed(verdict) -> bool:
    return verdict is False or str(verdict).strip().lower() in FAILING_VERDICTS


def _rule_text(r: Dict[str, Any]) -> str:
    if r.get("detail"):
        return f"{r.get('rule', '?')}: {r['detail']}"
    return f"{r.get('rule', '?')} = {r.get('value')} (threshold {r.get('threshold')})"


def read_blessing(blessing_uri: str, blessed_property: Optional[int],
                  storage: Optional[Storage] = None) -> Tuple[bool, Dict, List[str]]:
    """(blessed, blessing.json, failed rules as text).

    The artifact's `blessed` custom property (ML Metadata's record) and blessing.json must
    agree when both exist; a disagreement is an error, not a guess."""
    record = read_json(f"{blessing_uri.rstrip('/')}/{BLESSING_FILE}",
                       (storage or Storage()).read_text, "blessing file",
                       required=blessed_property is None) or {}
    if "blessed" in record and blessed_property is not None and bool(record["blessed"]) != bool(
            blessed_property):
        raise ValueError(f"blessing {blessing_uri}: custom property blessed={blessed_property} "
                         f"but {BLESSING_FILE} says blessed={record['blessed']}")
    if blessed_property is None and "blessed" not in record:
        raise ValueError(f"blessing {blessing_uri} has neither a 'blessed' custom property nor "
                         f"a 'blessed' key in {BLESSING_FILE}")
    blessed = bool(blessed_property if blessed_property is not None else record["blessed"])
    failed = [_rule_text(r) for r in record.get("rules", []) if _failed(r.get("verdict"))]
    return blessed, record, failed


def read_evaluation(evaluation_uri: str, storage: Optional[Storage] = None) -> Dict[str, Any]:
    ev = read_json(f"{evaluation_uri.rstrip('/')}/{EVALUATION_FILE}",
                   (storage or Storage()).read_text, "evaluation file", required=True)
    missing = [k for k in ("best_setting", "best") if k not in ev]
    if missing:
        raise ValueError(f"evaluation {evaluation_uri}/{EVALUATION_FILE} lacks {missing}")
    return ev


def data_fingerprint(examples_uri: str, storage: Optional[Storage] = None) -> Dict[str, Any]:
    """A cheap fingerprint of an Examples folder: SHA-256 over the sorted (path, bytes) of
    every file and the full text of summary.json (split counts, quarantine).

    It reads no example data (a training set is many GB); together with the Examples artifact's
    URI and ML Metadata id, which the manifest records too, it identifies the data."""
    storage = storage or Storage()
    files = storage.list_sizes(examples_uri)
    summary_text = storage.read_text(f"{examples_uri.rstrip('/')}/{SUMMARY_FILE}")
    h = hashlib.sha256()
    for rel, size in files:
        h.update(f"{rel}\t{size}\n".encode())
    h.update((summary_text or "").encode())
    out: Dict[str, Any] = {"fingerprint": f"sha256:{h.hexdigest()}", "uri": examples_uri,
                           "files": len(files), "bytes": sum(s for _, s in files)}
    if summary_text:
        summary = json.loads(summary_text)
        out["summary"] = {k: summary[k] for k in ("inputs", "written", "quarantined", "splits")
                          if k in summary}
    return out


# ------------------------------------------------------------------------------- the push
@contextlib.contextmanager
def _serving_copy(model_dir: str, sampling: Optional[Dict[str, Any]]):
    """(folder to push, setting of its serving_default): a temporary copy whose serving_default
    samples with the evaluator's chosen setting (trainer.export.set_serving_setting), so TF
    Serving clients get the blessed setting; the model as it is when there is no setting."""
    import tensorflow as tf

    if not sampling or not tf.io.gfile.exists(f"{model_dir.rstrip('/')}/{SAVED_MODEL_FILE}"):
        yield model_dir, None  # (no SavedModel: Registry.push says so)
        return
    from trainer.export import set_serving_setting
    from trainer.setting import SamplingSetting

    tmp = tempfile.mkdtemp(prefix="deblur-push-")
    try:
        set_serving_setting(model_dir, os.path.join(tmp, "model"), sampling)
        yield os.path.join(tmp, "model"), SamplingSetting.from_dict(sampling).to_dict()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _plain(value):
    """value with every non-finite float as None: a manifest is plain JSON, and an interval of
    fewer than 2 images is NaN (in the evaluation record and in the gate's rules)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _evaluation_record(evaluation: Optional[dict], blessing: dict) -> Optional[dict]:
    """Where the setting was chosen and what it scored there, the test splits, the input and
    the classical baselines, and the paired comparisons (written through _plain with the rest
    of the manifest)."""
    ev = evaluation or {}
    if not ev and "chosen_on" not in blessing:
        return None
    validation = ev.get("validation") or {}
    return {"chosen_on": ev.get("chosen_on", blessing.get("chosen_on")),
            "validation_splits": sorted((validation.get("splits") or {})),
            "validation_metrics": blessing.get("validation_best"),
            "test_splits": sorted(ev.get("splits") or {}),
            "input": {d: i.get("input") for d, i in (ev.get("domains") or {}).items()} or None,
            "classical": ev.get("classical") or blessing.get("classical"),
            "comparisons": ev.get("comparisons")}


def registered_version(registry: Registry, model_uri: Optional[str]) -> Optional[int]:
    """The version whose manifest names this Model artifact (source.model_uri), newest first;
    None if no version does. A damaged manifest is skipped here (latest() names it)."""
    if not model_uri:
        return None
    for version in reversed(registry.versions()):
        try:
            manifest = registry.show(version)
        except ValueError:
            continue
        source = manifest.get("source")
        if isinstance(source, dict) and source.get("model_uri") == model_uri:
            return version
    return None


def register_model(*, registry_uri: str, model_name: str, model_dir: str, blessing_uri: str,
                   blessed_property: Optional[int] = None, evaluation_uri: Optional[str] = None,
                   examples_uri: Optional[str] = None, pipeline: Optional[Dict[str, Any]] = None,
                   mlmd_ids: Optional[Dict[str, Optional[int]]] = None,
                   model_uri: Optional[str] = None) -> PushResult:
    """Pushes the SavedModel at model_dir into the registry if the blessing says so.

    Not blessed: returns pushed=False with "model not blessed: <failed rules>" and writes
    nothing. Blessed: returns the version, its URI and the manifest that was stored."""
    registry = Registry(registry_uri, model_name)  # validates the name before any reading
    storage = registry.storage  # its inputs are read over the registry's client
    blessed, blessing, failed = read_blessing(blessing_uri, blessed_property, storage)
    if not blessed:
        detail = "; ".join(failed) if failed else f"{BLESSING_FILE} records no failed rule"
        return PushResult(pushed=False, reason=f"model not blessed: {detail}")
    # A cached Trainer hands an unchanged run the model an earlier run registered, and its
    # evaluator (whose baseline is now that very model) blesses it again: one model, one
    # version, so a run on unchanged data registers nothing new.
    existing = registered_version(registry, model_uri)
    if existing is not None:
        return PushResult(pushed=False, already_registered=existing,
                          destination=registry.version_uri(existing),
                          reason=f"already registered as version {existing} (the same model "
                                 f"{model_uri}, from an earlier run)")

    evaluation = read_evaluation(evaluation_uri, storage) if evaluation_uri else None
    model_info = read_json(f"{model_dir.rstrip('/')}/{MODEL_INFO_FILE}", storage.read_text,
                           "model info")
    metrics = (evaluation or {}).get("best") or blessing.get("best")
    if evaluation is not None and evaluation.get("best_setting"):
        sampling, sampling_source = evaluation["best_setting"], "evaluation best_setting"
    elif blessing.get("best_setting"):
        sampling, sampling_source = blessing["best_setting"], "blessing best_setting"
    elif model_info and model_info.get("default_sampling"):
        sampling, sampling_source = model_info["default_sampling"], f"{MODEL_INFO_FILE} default"
    else:
        sampling, sampling_source = None, None
    manifest = {
        "metrics": metrics or None,
        "sampling": sampling,
        "sampling_source": sampling_source,
        # the choice on validation, the verdict on test (components/evaluator/evaluate.py):
        # where the setting was chosen and what it scored there; the classical references on
        # the test images with the model's paired comparisons (interval, wins)
        "evaluation": _evaluation_record(evaluation, blessing),
        "blessing": {"blessed": True, "rules": blessing.get("rules", []),
                     **{k: blessing[k] for k in ("reason", "config") if k in blessing}},
        "data": data_fingerprint(examples_uri, storage) if examples_uri else None,
        "code": code_version(),
        "pipeline": dict(pipeline or {}),
        "mlmd": dict(mlmd_ids or {}),
        "source": {"model_uri": model_uri, "model_dir": model_dir,
                   "blessing_uri": blessing_uri, "evaluation_uri": evaluation_uri,
                   "experiment": (model_info or {}).get("experiment", {}).get("name")
                   if isinstance((model_info or {}).get("experiment"), dict) else None},
        # the model it was trained from (trainer/warm_start.py), or how it started: the export
        # records it in deblur.json
        "warm_start": (model_info or {}).get("warm_start"),
    }
    with _serving_copy(model_dir, sampling) as (push_dir, serving):
        manifest["serving_default"] = serving or (model_info or {}).get("default_sampling")
        # plain JSON: the gate's rules carry paired intervals, NaN over fewer than 2 images
        version = registry.push(push_dir, _plain(manifest))
    return PushResult(pushed=True, version=version, destination=registry.version_uri(version),
                      manifest=registry.show(version))
