"""The servability check: TFX InfraValidator's role, without Docker, before an alias moves.

    result = check_servability(registry_uri, model_name, version, examples_dir,
                               promote_to="staging", run={"pipeline": ..., "run_id": ...})

1. Loads the pushed version through the serving code of `deblur serve` (a real server process
   in the serving environment, components/serving/process.py, bound to 127.0.0.1 on a free
   port, serving exactly `NAME/version`: its files checked against the manifest on load).
2. Sends real requests over the Open Inference Protocol: the first test image (by pair id) of
   one in-domain and one out-of-domain evaluation split, as a PNG (BYTES) and as a UINT8
   tensor with the binary extension, with a fixed seed.
3. Checks every answer: HTTP 200, `model_version` = the pushed version, shape = the input's,
   and the image equal to the evaluator's library computing the same image at the
   registered setting (the manifest's `sampling`) and seed, here, in the pipeline's own
   TensorFlow: components/serving/runtime.deblur_image over the SavedModel's deblur_batch,
   the function the evaluator samples through (trainer.sampling.call_deblur_batch).
   Tolerance: the two sides run the same graph with the same stateless seeds but different
   TensorFlow builds (2.16 here, the serving environment's own), whose convolution kernels
   may round float32 differently; over T ancestral steps such differences stay far below one
   intensity level almost everywhere. Allowed: max |difference| <= MAX_ABS_DIFF (4 of 255)
   and mean |difference| <= MAX_MEAN_DIFF (0.05 of 255). Another seed or setting is far out
   (measured on models/local, a 96x96 crop at ddpm-T20-n1-K4: seed 1 instead of 0, max 24 and
   mean 2.5 levels; max_noise 0.5 instead of 1, max 14 and mean 1.9; the same seed twice, 0
   and 0). Identical answers are reported as such.
4. Records the latency of each request (and the load time), and only when every check passed
   moves `promote_to` (an alias, e.g. staging) to the version: components/registry/aliases.
   A failed check moves nothing and says why.

servability.json holds all of it; markdown() is the run page's account.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any, Dict, List, Optional

import numpy as np

from components.registry.aliases import AliasConflict, Aliases
from components.registry.registry import Registry, RegistryError

MAX_ABS_DIFF = 4
MAX_MEAN_DIFF = 0.05
MODES = ("png", "binary")
SERVABILITY_FILE = "servability.json"

log = logging.getLogger(__name__)


@dataclasses.dataclass
class ServabilityResult:
    checked: bool  # a version was checked (False: nothing was pushed)
    passed: bool
    version: Optional[int] = None
    reason: str = ""
    requests: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
    load_seconds: Optional[float] = None
    setting: Optional[Dict[str, Any]] = None
    seed: int = 0
    promote_to: Optional[str] = None
    alias_moved: Optional[Dict[str, Any]] = None  # {"alias", "from", "to"} when it moved
    alias_note: Optional[str] = None  # why it did not move

    def to_json(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def _test_images(examples_dir: str, train_split: str) -> List[Dict[str, Any]]:
    """The first image (by pair id) of one split per domain, in-domain first."""
    from components.evaluator.evaluate import EvalConfig, select_data

    _, data, domain_of = select_data(examples_dir, EvalConfig(max_images_per_split=1,
                                                              train_split=train_split))
    chosen: Dict[str, Dict[str, Any]] = {}
    for split in sorted(data, key=lambda s: (s != "test", s)):
        domain = domain_of[split]
        if domain not in chosen:
            chosen[domain] = dict(data[split][0], split=split)
    return [chosen[d] for d in sorted(chosen, key=lambda d: (d != "in", d))]


def check_servability(registry_uri: str, model_name: str, version: Optional[int],
                      examples_dir: str, *, train_split: str = "train",
                      promote_to: Optional[str] = "staging", run: Optional[Dict[str, Any]] = None,
                      seed: int = 0, ready_timeout_s: float = 600.0) -> ServabilityResult:
    """Checks that `version` serves what the evaluator measured; moves `promote_to` after a
    pass. version None (nothing was pushed) is recorded as not checked, nothing moves."""
    if version is None:
        return ServabilityResult(False, False, None, "nothing was pushed: no version to check",
                                 promote_to=promote_to or None,
                                 alias_note="no alias moved: nothing was pushed")
    import tensorflow as tf

    from components.serving import runtime
    from components.serving.client import V2Client, V2Error
    from components.serving.process import ServeError, serve_process
    from trainer.setting import SamplingSetting

    reg = Registry(registry_uri, model_name)
    manifest = reg.show(version)
    setting = SamplingSetting.from_dict(manifest.get("sampling") or {})
    result = ServabilityResult(True, False, version, setting=setting.to_dict(), seed=seed,
                               promote_to=promote_to or None)
    images = _test_images(examples_dir, train_split)
    problems: List[str] = []
    t0 = time.monotonic()
    try:
        loaded = tf.saved_model.load(reg.local_path(version))  # hashes checked first
        with serve_process(registry_uri, f"{model_name}/{version}", poll_seconds=0,
                           ready_timeout_s=ready_timeout_s) as server:
            result.load_seconds = round(time.monotonic() - t0, 2)
            client = V2Client(server.url)
            for item in images:
                want = runtime.deblur_image(loaded, item["blurry"], setting, seed=seed)
                for mode in MODES:
                    row: Dict[str, Any] = {"pair_id": item["pair_id"], "split": item["split"],
                                           "domain": item["domain"], "mode": mode,
                                           "size": list(item["blurry"].shape[:2])}
                    t1 = time.monotonic()
                    try:
                        got, served = client.infer(model_name, item["blurry"], mode=mode,
                                                   seed=seed)
                    except (V2Error, OSError) as e:
                        row.update(ok=False, error=str(e))
                        problems.append(f"{item['pair_id']} ({mode}): {e}")
                        result.requests.append(row)
                        continue
                    row["seconds"] = round(time.monotonic() - t1, 3)
                    row["model_version"] = served
                    diff = np.abs(got.astype(np.int16) - want.astype(np.int16)) \
                        if got.shape == want.shape else None
                    if str(served) != str(version):
                        problems.append(f"{item['pair_id']} ({mode}) answered by version {served}, "
                                        f"not {version}")
                    if diff is None:
                        problems.append(f"{item['pair_id']} ({mode}): shape {got.shape}, "
                                        f"expected {want.shape}")
                    else:
                        row.update(max_abs_diff=int(diff.max()),
                                   mean_abs_diff=round(float(diff.mean()), 5),
                                   identical=bool(diff.max() == 0))
                        if diff.max() > MAX_ABS_DIFF or diff.mean() > MAX_MEAN_DIFF:
                            problems.append(
                                f"{item['pair_id']} ({mode}) differs from the evaluator's output "
                                f"at {setting.key} seed {seed}: max |diff| {int(diff.max())}, "
                                f"mean {float(diff.mean()):.4f} (allowed {MAX_ABS_DIFF}, "
                                f"{MAX_MEAN_DIFF})")
                    row["ok"] = not any(p.startswith(f"{item['pair_id']} ({mode})")
                                        for p in problems)
                    result.requests.append(row)
    except (ServeError, RegistryError) as e:
        problems.append(f"version {version} was not served: {e}")
    if problems:
        result.reason = "; ".join(problems)
        result.alias_note = ("no alias moved: the check failed" if promote_to else
                             "no alias to move (registry.promote_to is empty)")
        return result
    result.passed = True
    identical = all(r.get("identical") for r in result.requests)
    result.reason = (f"{len(result.requests)} requests answered by version {version}, "
                     + ("identical to" if identical else "within tolerance of")
                     + f" the evaluator's outputs at {setting.key} seed {seed}")
    if not promote_to:
        result.alias_note = "no alias to move (registry.promote_to is empty)"
        return result
    aliases = Aliases(reg)
    try:
        move = aliases.move(promote_to, version, action="promote",
                            reason=f"servability check passed: {result.reason}", run=run)
        result.alias_moved = {"alias": promote_to, "from": move.from_version, "to": version}
    except AliasConflict as e:
        result.alias_note = f"{promote_to} not moved: {e}"
    except RegistryError as e:
        result.alias_note = f"{promote_to} not moved: {e}"
    return result


def markdown(result: ServabilityResult, model_name: str) -> str:
    """The run page's account of the check and of the alias it moved (or why not)."""
    if not result.checked:
        return f"## Servability: not checked\n\n{result.reason}\n"
    verdict = "passed" if result.passed else "FAILED"
    lines = [f"## Servability of {model_name} version {result.version}: {verdict}", "",
             result.reason, ""]
    if result.alias_moved:
        m = result.alias_moved
        src = "unset" if m["from"] is None else f"version {m['from']}"
        lines.append(f"**{model_name}@{m['alias']}: {src} -> version {m['to']}**")
    elif result.alias_note:
        lines.append(result.alias_note)
    if result.requests:
        lines += ["", "| image | domain | as | seconds | version | max diff | mean diff |",
                  "|---|---|---|---|---|---|---|"]
        for r in result.requests:
            lines.append(f"| {r['pair_id']} | {r['domain']} | {r['mode']} | {r.get('seconds', '-')} "
                         f"| {r.get('model_version', '-')} | {r.get('max_abs_diff', '-')} "
                         f"| {r.get('mean_abs_diff', '-')} |")
    if result.load_seconds is not None:
        lines += ["", f"server start and model load: {result.load_seconds} s"]
    return "\n".join(lines) + "\n"


def write(result: ServabilityResult, path: str) -> None:
    with open(path, "w") as f:
        json.dump(result.to_json(), f, indent=2, sort_keys=True)
