"""Run parameters: what an engineer sets per run, in the KFP UI's "Create run" form, with
`deblur submit --param NAME=VALUE`, or locally with `deblur run-local --param NAME=VALUE`.

Each parameter is one row of PARAMS: its name, the config field it stands for, and where the
value lands in the compiled pipeline (a component's exec property, or one key of that exec
property's JSON). Adding a parameter is adding a row.

    name                       config field               lands in
    data_sources               data.sources               DeblurIngest.sources (JSON list)
    train_steps                training.steps             Trainer.train_args["num_steps"]
    warm_start                 training.warm_start        Trainer.custom_config["warm_start"]
    gate_ood_lpips_max         gate.ood_lpips_max         DeblurEvaluator.gate_config[...]
    gate_input_lpips_margin    gate.input_lpips_margin    DeblurEvaluator.gate_config[...]
    gate_input_psnr_tolerance  gate.input_psnr_tolerance  DeblurEvaluator.gate_config[...]
    gate_regression_tolerance  gate.regression_tolerance  DeblurEvaluator.gate_config[...]

How each runner uses the rows:
- Kubeflow (compile): attach() gives the component an extra exec property named like the
  parameter, holding a TFX RuntimeParameter whose default is the value the component was built
  with. KubeflowV2DagRunner compiles it to a root input parameter (the UI form field) and a
  componentInputParameter of the task; pipelines/kubeflow_runner.py writes the defaults into
  the PipelineJob's runtimeConfig.parameterValues and the package's root inputDefinitions.
  In the pod, pipelines/kfp_entrypoint.py folds each parameter's value into its exec property
  (fold()) before the executor runs, so executors see their usual config and nothing else.
- Local (run-local): a parameter is the `--set FIELD=VALUE` of its field (as_overrides()).
TFX's RuntimeParameter takes int, float and str under KubeflowV2DagRunner (bool is refused),
so every parameter is one of those; a list (data_sources) travels as JSON text.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

from pipelines.config import ConfigError


@dataclasses.dataclass(frozen=True)
class RunParam:
    name: str  # the run parameter (KFP UI form field, --param NAME)
    field: str  # the config field it sets (--set FIELD=...)
    component: str  # the component id whose exec property carries it
    exec_property: str  # that exec property
    key: Optional[str]  # a key of the exec property's JSON; None: the exec property itself
    ptype: type  # int | float | str
    help: str


PARAMS: Sequence[RunParam] = (
    RunParam("data_sources", "data.sources", "DeblurIngest", "sources", None, str,
             "JSON list of ingest sources ({layout, root, subsets, dataset, domain, ...})"),
    RunParam("train_steps", "training.steps", "Trainer", "train_args", "num_steps", int,
             "training steps (after a warm start: steps more than the parent's)"),
    RunParam("warm_start", "training.warm_start", "Trainer", "custom_config", "warm_start", str,
             "none: random weights; latest_blessed: start from the weights and step of the "
             "registry's newest (blessed) model"),
    RunParam("gate_ood_lpips_max", "gate.ood_lpips_max", "DeblurEvaluator", "gate_config",
             "ood_lpips_max", float, "out-of-domain LPIPS a blessed model must be at or under"),
    RunParam("gate_input_lpips_margin", "gate.input_lpips_margin", "DeblurEvaluator",
             "gate_config", "input_lpips_margin", float,
             "LPIPS a blessed model must be under its blurry input's, in every domain"),
    RunParam("gate_input_psnr_tolerance", "gate.input_psnr_tolerance", "DeblurEvaluator",
             "gate_config", "input_psnr_tolerance", float,
             "dB of PSNR a blessed model may be under its blurry input's"),
    RunParam("gate_regression_tolerance", "gate.regression_tolerance", "DeblurEvaluator",
             "gate_config", "regression_tolerance", float,
             "out-of-domain LPIPS a new model may be worse than the latest blessed one"),
)
BY_NAME: Dict[str, RunParam] = {p.name: p for p in PARAMS}


def unknown(name: str, known: Sequence[str]) -> ConfigError:
    return ConfigError(f"--param {name}: no such run parameter; known: {', '.join(sorted(known))}")


def parse(items: Sequence[str], known: Sequence[str]) -> Dict[str, str]:
    """["NAME=VALUE", ...] -> {NAME: VALUE text}; a name not in `known` is a ConfigError."""
    out = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--param {item!r}: expected NAME=VALUE, e.g. train_steps=1000")
        if name not in known:
            raise unknown(name, known)
        out[name] = text
    return out


def convert(name: str, text: str, ptype: type) -> Any:
    """A --param value as its parameter's type (int, float or str)."""
    if ptype is str:
        return text
    try:
        value = ptype(text)
    except ValueError:
        kind = "an integer" if ptype is int else "a number"
        raise ConfigError(f"--param {name}={text}: expected {kind}") from None
    return value


def as_overrides(values: Mapping[str, str]) -> List[str]:
    """--param NAME=VALUE as the --set FIELD=VALUE of its config field (VALUE read as YAML, so
    data_sources' JSON list becomes the list of sources)."""
    out = []
    for name, text in values.items():
        if name not in BY_NAME:
            raise unknown(name, list(BY_NAME))
        out.append(f"{BY_NAME[name].field}={text}")
    return out


# ---- compile -------------------------------------------------------------------------------
def _current(value: Any, p: RunParam) -> Any:
    """The value the component was built with (its exec property, or one key of its JSON)."""
    if p.key is None:
        return value
    if hasattr(value, "DESCRIPTOR"):  # a proto (TrainArgs)
        return getattr(value, p.key)
    return json.loads(value)[p.key]


def attach(components: Sequence[Any]) -> Dict[str, Any]:
    """Gives each parameter's component an exec property `name` = RuntimeParameter(default: the
    value it was built with). Returns {name: default}. A parameter whose component is absent
    is left out (its name does not appear in the compiled spec)."""
    from tfx.orchestration import data_types

    by_id = {c.id: c for c in components}
    defaults = {}
    for p in PARAMS:
        c = by_id.get(p.component)
        if c is None:
            continue
        default = p.ptype(_current(c.exec_properties[p.exec_property], p))
        c.exec_properties[p.name] = data_types.RuntimeParameter(
            name=p.name, ptype=p.ptype, default=default, description=p.help)
        defaults[p.name] = default
    return defaults


# ---- in the pod ----------------------------------------------------------------------------
def fold(values: Dict[str, Any]) -> List[str]:
    """In an executor's parameters (name -> plain value): moves every run parameter's value into
    its exec property and drops the parameter. Returns the names folded."""
    folded = []
    for p in PARAMS:
        if p.name not in values:
            continue
        value = p.ptype(values.pop(p.name))
        if p.key is None:
            values[p.exec_property] = value
        else:
            target = json.loads(values[p.exec_property])
            target[p.key] = value
            values[p.exec_property] = json.dumps(target, sort_keys=True)
        folded.append(p.name)
    return folded
