"""Warm start: a training that begins from an exported model (in the pipeline, the latest blessed
one) instead of random weights, and trains `steps` more steps: an experiment's train.steps is
the steps a training trains, beyond its parent's step when it has one (parent step 18000 and
train.steps 1500 end at step 19500).

prepare() is the one setup of it, which `deblur train --warm-start` and the pipeline's Trainer
(components/training.py) both call: the parent (a blessed model, the base model, or none),
its checks, the record, and the experiment that train.train runs, whose train.steps is the
step to end at (train.train counts steps from 0, so a warm start's target is absolute).

What is taken from the parent, and why
- Weights: the parent's SavedModel (trainer/export.py) holds the EMA weights, the model that was
  evaluated, blessed and registered. Its variables/ folder is a TF checkpoint whose object graph
  names the model under `model` (DeblurModule.model), so tf.train.Checkpoint(model=<a fresh
  GuidedDenoiser of the same config>).read(...) restores them by object path (checked: every
  model variable, equal to the parent's EMA, also from the pusher's re-saved copy). They become
  both the trained weights and the EMA: the registry keeps no raw weights, and the EMA is what
  was blessed, so the child starts exactly from the blessed model. The EMA's warm-up
  (train.ema_warmup) counts the parent's steps, so the child's EMA averages on from the
  parent's at full decay instead of restarting.
- Step count: kept. The child's global step starts at the parent's, so w(step), the weight of
  the noise loss that rises 0 -> 1 over dpm_warmup_steps (trainer/diffusion.py: the
  regression-only warm start of a random network), stays where the parent left it instead of
  switching the noise loss off again; checkpoints, history and TensorBoard steps continue the
  parent's. The target is parent step + steps.
- Optimizer: fresh. The registry keeps no Adam moments; Keras keys both Adam's bias correction
  and the learning-rate schedule on the optimizer's own iteration count, which starts at 0, so
  bias correction is right for the fresh moments and the learning rate warms up again over
  lr_warmup_steps (the first updates of fresh moments are sign-like, lr per weight: the
  warm-up keeps them small). Restoring the parent's step into the optimizer instead would skip
  bias correction with empty second moments: updates ~16 x lr at the first step (beta2 0.999).
- Data order: the input pipeline starts at its first element (the noise and crops are drawn
  from stateless seeds of the element index), as any training does.

A training that has checkpoints of its own (a retried or resumed one) resumes from them and
never warm-starts again; WARM_START_FILE in its ModelRun folder keeps the decision (parent,
start step, target), so a retry trains to the same target even if a newer model was blessed
meanwhile. This module imports TensorFlow only in the functions that need it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import posixpath
import re
from typing import Any, Callable, Optional, Union

from core.artifacts import MODEL_INFO_FILE, SAVED_MODEL_FILE, WARM_START_FILE

log = logging.getLogger(__name__)

MODES = ("none", "latest_blessed")
# ... or a registry model ref (components/registry/aliases.py): NAME@ALIAS, @ALIAS, NAME/N,
# e.g. "@production": that version is the parent (the registry resolves and checks it)
_REF = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*)?@[a-z][a-z0-9_-]*$|^[A-Za-z0-9][A-Za-z0-9._-]*/[1-9][0-9]*$")


def is_ref(mode: str) -> bool:
    """True for a warm start from a registry model ref (@production, deblur-icdpm/3)."""
    return isinstance(mode, str) and bool(_REF.match(mode))


def describe_modes() -> str:
    return f"{', '.join(MODES)} or a registry model ref (@production, NAME@ALIAS, NAME/N)"


# base models the repository ships, one folder per experiment (models/README.md)
SHIPPED_MODELS = posixpath.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "models")


def shipped_folder(experiment: str) -> Optional[str]:
    """models/<folder>/ of the base model the repository ships for the experiment (its
    base_model in trainer/experiments.py's table: models/local/ for local and local-finetune),
    or None: it ships none. "auto" without that model trains from random weights, which the
    quickstart's gate does not expect."""
    from trainer.experiments import base_model  # here: this module imports no TensorFlow

    folder = base_model(experiment)
    return posixpath.join(SHIPPED_MODELS, folder) if folder else None


def base_model_missing(setting: str, experiment: str) -> Optional[str]:
    """None, or (training.base_model auto, an experiment with a shipped base model, that model
    not there) the warning that the base model was not found: where it was looked for, what
    training from random weights means for the quickstart's gate, and how to get the model."""
    shipped = shipped_folder(experiment) if setting == "auto" else None
    if shipped is None or os.path.exists(posixpath.join(shipped, SAVED_MODEL_FILE)):
        return None
    return (f"the base model was not found: training.base_model is auto and there is no "
            f"{shipped}/{SAVED_MODEL_FILE}, so the Trainer starts from random weights unless a "
            "blessed model serves as its parent; the quickstart's gate expects the fine-tuned "
            "base model (a model from random weights at 1500 steps is usually not blessed). "
            f"Get it with `git checkout models/{posixpath.basename(shipped)}` or `make "
            "base-model` (~65 min), or set training.base_model: none to train from random "
            "weights on purpose")


def base_model_dir(setting: str, experiment: str) -> Optional[str]:
    """training.base_model -> a SavedModel folder or None (random weights): "auto" is the
    experiment's shipped base model (shipped_folder) when it is there, "none" is None, anything
    else is a folder (resolved where the Trainer runs, so "auto" finds the copy inside the
    container image)."""
    if setting == "none":
        return None
    if setting == "auto":
        shipped = shipped_folder(experiment)
        return shipped if shipped and os.path.exists(posixpath.join(shipped, SAVED_MODEL_FILE)) \
            else None
    return setting


class WarmStartError(ValueError):
    """The parent cannot initialise this training (another architecture, no weights)."""


@dataclasses.dataclass
class Parent:
    saved_model_dir: str  # a SavedModel exported by trainer/export.py
    name: str  # what the summary and the manifest call it: "registry version 3", ...
    version: Optional[int] = None  # its registry version, when registered
    model_uri: Optional[str] = None  # its Model artifact
    step: Optional[int] = None  # the step it was trained to (its deblur.json)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def _gfile():
    import tensorflow as tf

    return tf.io.gfile


def model_info(saved_model_dir: str) -> dict:
    """The export's deblur.json ({} when absent)."""
    from trainer.export import read_model_info  # names the file when it is not JSON

    return read_model_info(saved_model_dir)


def parent_step(info: dict) -> int:
    """The step the parent was trained to: deblur.json's `step`, or (exports from before it was
    recorded) its experiment's train.steps, which a finished training reaches."""
    if info.get("step") is not None:
        return int(info["step"])
    steps = ((info.get("experiment") or {}).get("train") or {}).get("steps")
    if steps is None:
        raise WarmStartError(f"the parent's {MODEL_INFO_FILE} records neither its step nor its "
                             "experiment")
    return int(steps)


def check_parent(saved_model_dir: str) -> Optional[str]:
    """None when the parent can initialise a training, else why not (one line): its folder is
    gone (no saved_model.pb), or its variables do not read back whole (TensorFlow checks each
    tensor's CRC32C as it reads it: a damaged file fails here, not as a page of traceback in
    the middle of train())."""
    import tensorflow as tf

    if not _gfile().exists(posixpath.join(saved_model_dir, SAVED_MODEL_FILE)):
        return (f"its model {saved_model_dir} is missing (no {SAVED_MODEL_FILE} there: deleted or "
                "moved?)")
    variables = posixpath.join(saved_model_dir, "variables", "variables")
    try:
        reader = tf.train.load_checkpoint(variables)
        for name in sorted(reader.get_variable_to_shape_map()):
            reader.get_tensor(name)
    except (tf.errors.OpError, ValueError, IndexError) as e:
        text = (getattr(e, "message", None) or str(e)).strip()
        first = text.splitlines()[0] if text else type(e).__name__
        if isinstance(e, IndexError):  # "Read less bytes than requested": a file cut short
            files = sorted(_gfile().glob(variables + ".data-*")) or [variables + ".data-*"]
            return (f"its variables file {', '.join(files)} is truncated (shorter than its "
                    f"index says: {first[:200]}); replace the model with an intact copy")
        return (f"its variables in {saved_model_dir}/variables do not read back ({first[:300]}); "
                "replace the model with an intact copy")
    return None


def decide(model_run_dir: str, mode: str, steps: int,
           find_parent: Optional[Callable[[], Optional[Parent]]] = None,
           write: bool = True, base: Optional[Parent] = None,
           planned: Optional[dict] = None) -> dict:
    """The warm-start record of a training into model_run_dir: {"mode", "parent" (Parent as
    JSON, or None), "start_step", "steps", "target_step", "reason"}. An existing record (a retry)
    is returned as it is; otherwise the record is `planned` (plan()'s, when the caller needed
    it first) or plan(mode, steps, find_parent, base), written before training starts (unless
    write is False: a multi-worker job's other workers, which must not write into the chief's
    folder)."""
    gfile = _gfile()
    path = posixpath.join(model_run_dir, WARM_START_FILE)
    if gfile.exists(path):
        with gfile.GFile(path) as f:
            return json.load(f)
    record = planned if planned is not None else plan(mode, steps, find_parent, base)
    if not write:
        return record
    gfile.makedirs(model_run_dir)
    with gfile.GFile(path + ".tmp", "w") as f:
        json.dump(record, f, indent=2, sort_keys=True)
    gfile.rename(path + ".tmp", path, overwrite=True)
    return record


def plan(mode: str, steps: int, find_parent: Optional[Callable[[], Optional[Parent]]] = None,
         base: Optional[Parent] = None, model=None, instead: Optional[str] = None) -> dict:
    """A new warm-start record (decide's): the parent is looked up (mode latest_blessed) and
    checked (check_parent: a missing or damaged parent is a WarmStartError naming it; with
    `model`, the training's ModelConfig, one of another architecture too, naming the setting
    that avoids it, or `instead`'s words). base: the base model (training.base_model), the
    parent when the mode is none or no blessed model exists yet (else random weights). steps:
    the steps to train, beyond the parent's step (the record's target_step)."""
    if mode not in MODES and not is_ref(mode):
        raise WarmStartError(f"warm_start must be {describe_modes()}, got {mode!r}")
    parent = find_parent() if (mode == "latest_blessed" or is_ref(mode)) and find_parent else None
    if is_ref(mode) and parent is None:
        raise WarmStartError(f"warm_start {mode}: the registry has no such model to start from")
    record = {"mode": mode, "parent": None, "start_step": 0, "steps": int(steps),
              "target_step": int(steps)}
    why_not = "training.warm_start is none" if mode == "none" else "no blessed model yet"
    hint = ("training.warm_start: none starts from " + ("the base model" if base is not None
                                                        else "random weights"))
    if parent is None and base is not None:  # the base model, when no blessed one serves
        parent = dataclasses.replace(base, name=f"{base.name} ({why_not})")
        hint = "training.base_model: none starts from random weights"
    if parent is None:
        record["reason"] = why_not
    else:
        problem = check_parent(parent.saved_model_dir)
        if problem is None and model is not None:
            diff = model_difference(model, model_info(parent.saved_model_dir))
            problem = diff and f"its model differs in {diff}"
        if problem:
            raise WarmStartError(f"cannot warm-start from {parent.name}: {problem}; nothing was "
                                 f"trained ({instead or hint})")
        parent.step = parent_step(model_info(parent.saved_model_dir))
        record.update(parent=parent.to_json(), start_step=parent.step,
                      target_step=parent.step + int(steps), reason=f"from {parent.name}")
    return record


@dataclasses.dataclass
class Prepared:
    """What prepare() hands the training."""
    exp: Any  # the Experiment train.train runs: its train.steps is the step to end at
    train_kwargs: dict  # train.train's warm_start (the parent's folder or None), export_info
    record: dict  # the warm-start record (decide's), as written into the training's folder
    out_dir: str  # the training's folder


def prepare(exp, out_dir: Union[str, Callable[[dict], str]], mode: str = "none",
            find_parent: Optional[Callable[[], Optional[Parent]]] = None,
            base_model: str = "none", write: bool = True,
            instead: Optional[str] = None) -> Prepared:
    """The warm-start setup of a training: `deblur train --warm-start` and the pipeline's
    Trainer (components/training.py) both call it.

    exp: the experiment as named and overridden, its train.steps the steps to train (beyond
    the parent's step when there is a parent). out_dir: the training's folder, or a function
    of the new record that names it (the pipeline's Trainer keys its folder on the parent).
    mode, find_parent: training.warm_start and how to find the parent it names (plan()).
    base_model: training.base_model, "auto" (the experiment's shipped base model), "none" or a
    folder: the parent when no blessed model serves. write: False for a multi-worker job's
    other workers (decide()). instead: how to train without the parent, for the error that
    refuses one (default: the pipeline's knobs).

    The parent is looked up and checked, architecture included, before anything is written;
    a folder that already holds a record (a retried or resumed training) keeps its decision.
    Returns the experiment with train.steps = the record's target_step (the parent's step +
    steps, or steps), train.train's keyword arguments, the record and the folder."""
    base_dir = base_model_dir(base_model, exp.name)
    base = Parent(base_dir, f"the base model {base_dir}") if base_dir else None
    planned = plan(mode, exp.train.steps, find_parent, base, model=exp.model, instead=instead)
    missing = base_model_missing(base_model, exp.name)
    if missing and planned["parent"] is None:  # the record carries it into the summary
        planned["warning"] = missing
        log.warning("%s", missing)
    folder = out_dir(planned) if callable(out_dir) else out_dir
    record = decide(folder, mode, exp.train.steps, write=write, planned=planned)
    trained, kwargs = training_arguments(exp, record)
    return Prepared(exp=trained, train_kwargs=kwargs, record=record, out_dir=folder)


def training_arguments(exp, record: dict):
    """(exp trained to the record's target step, train.train's keyword arguments for it: the
    parent's SavedModel folder (None: random weights) and the record for the export's
    deblur.json, so the registry manifest names the parent)."""
    return (exp.replace(train={"steps": record["target_step"]}),
            {"warm_start": (record["parent"] or {}).get("saved_model_dir"),
             "export_info": {"warm_start": record}})


def model_difference(model, info: dict) -> Optional[str]:
    """None when the parent's deblur.json (info) records the architecture of `model` (a
    ModelConfig), or none; else the fields that differ, "f (theirs there, ours here), ...". A
    field the parent's record lacks is one added since: the parent was built with its default
    (a model exported before the field existed)."""
    have = (info.get("experiment") or {}).get("model")
    if have is None:
        return None
    want = dataclasses.asdict(model)
    have = {**dataclasses.asdict(type(model)()), **have}
    have = {k: list(v) if isinstance(v, tuple) else v for k, v in have.items()}
    want = {k: list(v) if isinstance(v, tuple) else v for k, v in want.items()}
    diff = sorted(k for k in set(want) | set(have) if want.get(k) != have.get(k))
    return ", ".join(f"{k} ({have.get(k)!r} there, {want.get(k)!r} here)" for k in diff) or None


def restore(trainer, saved_model_dir: str) -> int:
    """Loads the parent's weights into the trainer's model and EMA and its step into the global
    step (the optimizer stays fresh, see the module doc). Returns the step. The weights are
    read by object path straight into the trainer's own model (no second model is built),
    then copied into the EMA."""
    import tensorflow as tf

    info = model_info(saved_model_dir)
    diff = model_difference(trainer.exp.model, info)
    if diff:
        raise WarmStartError(
            f"cannot warm-start from {saved_model_dir}: its model differs in {diff}; train "
            "this architecture from scratch once (a base model: training.base_model: none; a "
            "blessed parent: training.warm_start: none; deblur train: without --warm-start)")
    variables = posixpath.join(saved_model_dir, "variables", "variables")
    names = [n for n, _ in tf.train.list_variables(variables) if n.startswith("model/")]
    model = trainer.model
    if len(names) != len(model.variables):
        raise WarmStartError(f"cannot warm-start from {saved_model_dir}: it holds {len(names)} "
                             f"model variables, this model has {len(model.variables)}")
    try:
        tf.train.Checkpoint(model=model).read(variables).expect_partial() \
            .assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise WarmStartError(f"cannot warm-start from {saved_model_dir}: its variables do not "
                             f"fit this model ({detail[:300]})") from None
    for v, e in zip(trainer.variables, trainer.ema):
        e.assign(tf.cast(v, e.dtype))
    step = parent_step(info)
    trainer.step.assign(step)
    return step
