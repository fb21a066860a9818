"""Run parameters: what an engineer sets per run, in the KFP UI's "Create run" form, with
`deblur submit --param NAME=VALUE`, or locally with `deblur run-local --param NAME=VALUE`.

Each parameter is one row of PARAMS: its name, the config field it stands for, and where the
value lands in the compiled pipeline (a component's exec property, or one key of that exec
property's JSON). Adding a parameter is adding a row.

    name                       config field               lands in
    data_sources               data.sources               DeblurIngest.sources (JSON list)
    train_steps                training.train.steps       Trainer.train_args["num_steps"]
    warm_start                 training.warm_start        Trainer.custom_config["warm_start"]
    gate_ood_lpips_max         gate.ood_lpips_max         DeblurEvaluator.gate_config[...]
    gate_input_lpips_margin    gate.input_lpips_margin    DeblurEvaluator.gate_config[...]
    gate_input_psnr_tolerance  gate.input_psnr_tolerance  DeblurEvaluator.gate_config[...]
    gate_regression_tolerance  gate.regression_tolerance  DeblurEvaluator.gate_config[...]

How each runner uses the rows:
- Kubeflow (compile): attach() gives the component an extra exec property named like the
  parameter, holding a TFX RuntimeParameter whose default is the value the component was built
  with. KubeflowV2DagRunner compiles it to a root input parameter (the UI form field) and a
  componentInputParameter of the task; pipelines/kubeflow/compiler.py writes the defaults into
  the PipelineJob's runtimeConfig.parameterValues and the package's root inputDefinitions.
  In the pod, pipelines/kubeflow/entrypoint.py folds each parameter's value into its exec property
  (fold()) before the executor runs, so executors see their usual config and nothing else.
- Local (run-local): a parameter is the `--set FIELD=VALUE` of its field (as_overrides()).
TFX's RuntimeParameter takes int, float and str under KubeflowV2DagRunner (bool is refused),
so every parameter is one of those; a list (data_sources) travels as JSON text.
The names are an interface of their own (the KFP UI's form, schedules, scripts): they stay
when a config field is renamed, as train_steps did when training.steps became
training.train.steps (docs/configuration.md).
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
    allowed: str = ""  # what the value may be, for the one-line errors and the run page


PARAMS: Sequence[RunParam] = (
    RunParam("data_sources", "data.sources", "DeblurIngest", "sources", None, str,
             "JSON list of ingest sources ({layout, root, subsets, dataset, domain, ...}), or "
             "the gs:// path of a .json/.yaml file holding that list",
             'a non-empty JSON list of sources, each {"layout": gopro|realblur|hide|reds|folder, '
             '"root": "gs://...", ...}, every root on gs:// and not empty, or the gs:// path of '
             'a .json/.yaml file holding it'),
    RunParam("train_steps", "training.train.steps", "Trainer", "train_args", "num_steps", int,
             "training steps (after a warm start: steps more than the parent's)",
             "an integer >= 1"),
    RunParam("warm_start", "training.warm_start", "Trainer", "custom_config", "warm_start", str,
             "none: the base model or random weights; latest_blessed: start from the weights "
             "and step of the registry's newest (blessed) model; @production (a registry ref: "
             "NAME@ALIAS, NAME/N): that version", "none, latest_blessed or a registry ref"),
    RunParam("gate_ood_lpips_max", "gate.ood_lpips_max", "DeblurEvaluator", "gate_config",
             "ood_lpips_max", float, "out-of-domain LPIPS a blessed model must be at or under",
             "a number > 0 (LPIPS, e.g. 0.2)"),
    RunParam("gate_input_lpips_margin", "gate.input_lpips_margin", "DeblurEvaluator",
             "gate_config", "input_lpips_margin", float,
             "LPIPS a blessed model must be under its blurry input's, in every domain",
             "a finite number (LPIPS; negative lets a model worse than its input pass)"),
    RunParam("gate_input_psnr_tolerance", "gate.input_psnr_tolerance", "DeblurEvaluator",
             "gate_config", "input_psnr_tolerance", float,
             "dB of PSNR a blessed model may be under its blurry input's",
             "a finite number (dB, e.g. 0.0)"),
    RunParam("gate_regression_tolerance", "gate.regression_tolerance", "DeblurEvaluator",
             "gate_config", "regression_tolerance", float,
             "out-of-domain LPIPS a new model may be worse than the latest blessed one",
             "a finite number (LPIPS, e.g. 0.005)"),
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
        if name == "data_sources":
            text = data_sources_text(text)
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
        if p.name == "data_sources":
            value = data_sources_text(value)  # a sources file: its list
        if p.key is None:
            values[p.exec_property] = value
        else:
            target = json.loads(values[p.exec_property])
            target[p.key] = value
            values[p.exec_property] = json.dumps(target, sort_keys=True)
        folded.append(p.name)
    return folded


# ---- checks: `deblur submit --param` and the run's first task (pipelines/kubeflow/check.py) ---------
# Not a config field: a root parameter of the compiled Kubeflow pipeline. "off" makes the
# fingerprint task salt its output, so the ingest and everything downstream run again
# (pipelines/kubeflow/compiler.py add_cache_parameter; `deblur submit --no-cache`).
CACHE = "cache"
CACHE_VALUES = ("on", "off")
# DeblurInputFingerprint's output "" (cache=on) or a nonce (off), an extra input parameter of
# every cached task not otherwise keyed on `cache` (pipelines/kubeflow/compiler.py add_cache_salt)
CACHE_SALT = "cache_salt"
CACHE_HELP = ("on: reuse the tasks whose inputs did not change; off: this run computes "
              "everything again (the KFP cache is keyed on the inputs' fingerprint)")


def allowed(name: str) -> str:
    if name == CACHE:
        return " or ".join(CACHE_VALUES)
    p = BY_NAME.get(name)
    return p.allowed if p is not None else "any value"


SOURCES_FILE_SUFFIXES = (".json", ".yaml", ".yml")


def is_sources_file(text: Any) -> bool:
    """The short form of data_sources: a path (gs:// on the cluster) of a .json/.yaml file that
    holds the list, instead of the list itself (the KFP UI's form shows one text field)."""
    return (isinstance(text, str) and not text.lstrip().startswith(("[", "{"))
            and text.strip().lower().endswith(SOURCES_FILE_SUFFIXES))


def data_sources_text(text: Any) -> Any:
    """The data_sources value as the JSON list text: a sources file is read (TensorFlow's file
    system: gs:// in the pods, a local path on this machine), anything else is returned as it
    is, for check_data_sources to judge. One place, so the check task, the fingerprint task and
    the ingest read the same list. An unreadable or malformed file is a one-line ConfigError."""
    if not is_sources_file(text):
        return text
    path = text.strip()
    try:
        import tensorflow as tf

        with tf.io.gfile.GFile(path, "r") as f:
            content = f.read()
    except Exception as e:  # noqa: BLE001 - NotFound, PermissionDenied, ...: one line
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"data_sources={path}: the sources file cannot be read ({why})") from None
    import yaml

    try:
        value = yaml.safe_load(content)  # JSON is YAML
    except yaml.YAMLError as e:
        raise ConfigError(f"data_sources={path}: not JSON or YAML "
                          f"({str(e).splitlines()[0]})") from None
    if not isinstance(value, list):
        raise ConfigError(f"data_sources={path}: the file holds a {type(value).__name__}, not "
                          f"a list of sources")
    return json.dumps(value, sort_keys=True)


def check_data_sources(text: Any, gcs_only: bool = True) -> List[Any]:
    """The data_sources run parameter as IngestSources; a ConfigError naming the parameter (and
    the sources file, for the short form) and what is allowed when it is not a non-empty JSON
    list of valid sources whose roots are on gs:// (the pods cannot read this machine's
    paths)."""
    if not is_sources_file(text):
        return _check_sources_list(text, gcs_only)
    if gcs_only and not text.strip().startswith("gs://"):
        raise ConfigError(f"data_sources={text.strip()}: the sources file must be on gs:// (the "
                          f"pipeline's pods cannot read a path of another machine)")
    listed = data_sources_text(text)
    try:
        return _check_sources_list(listed, gcs_only)
    except ConfigError as e:
        raise ConfigError(f"{e} (in {text.strip()})") from None


def _check_sources_list(text: Any, gcs_only: bool) -> List[Any]:
    from components.ingest.sources import IngestSource

    want = f"expected {BY_NAME['data_sources'].allowed}"
    if isinstance(text, str):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise ConfigError(f"data_sources={shown}: not JSON ({e.msg} at character {e.pos}); "
                              f"{want}") from None
    else:
        value = text
    if not isinstance(value, list):
        raise ConfigError(f"data_sources: a JSON {type(value).__name__}, not a list; {want}")
    if not value:
        raise ConfigError(f"data_sources: the list is empty, so there is nothing to ingest; "
                          f"{want}")
    sources = []
    for i, s in enumerate(value):
        if not isinstance(s, dict):
            raise ConfigError(f"data_sources[{i}]: {json.dumps(s)[:60]} is not a JSON object; "
                              f"{want}")
        try:
            src = IngestSource(**s)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"data_sources[{i}]: {e}") from None
        if gcs_only and not str(src.root).startswith("gs://"):
            raise ConfigError(f"data_sources[{i}].root {src.root}: not a gs:// URI (the "
                              f"pipeline's pods cannot read a path of another machine)")
        sources.append(src)
    return sources


def check_value(name: str, value: Any, config_dict: Optional[Dict[str, Any]] = None,
                ptype: Optional[type] = None, gcs_only: bool = True) -> Any:
    """One run parameter's value (text or typed) as its type, after the checks `--param` makes:
    the type, then what the config refuses (train_steps 0, a negative LPIPS threshold...) on
    `config_dict` with this value set. A ConfigError names the parameter on failure."""
    if name == CACHE:
        if value not in CACHE_VALUES:
            raise ConfigError(f"{CACHE}={value}: expected {allowed(CACHE)}")
        return value
    if name not in BY_NAME:
        raise unknown(name, list(BY_NAME) + [CACHE])
    p = BY_NAME[name]
    ptype = ptype or p.ptype
    if ptype is not str and not isinstance(value, str):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                ptype is int and float(value) != int(value)):
            raise ConfigError(f"{name}={value}: expected {p.allowed}")
        typed = ptype(value)
    else:
        text = value if isinstance(value, str) else json.dumps(value)
        if ptype is int and isinstance(value, str):  # the launcher may write 5000 as 5000.0
            try:
                f = float(text)
                text = str(int(f)) if f.is_integer() else text
            except ValueError:
                pass
        try:
            typed = convert(name, text, ptype)
        except ConfigError:
            raise ConfigError(f"{name}={text}: expected {p.allowed}") from None
    if name == "data_sources":
        check_data_sources(typed, gcs_only=gcs_only)
    if config_dict is not None:
        from pipelines import config as config_lib

        text = typed if isinstance(typed, str) else repr(typed)
        try:
            config_lib.from_dict(config_lib.apply_overrides(config_dict, [f"{p.field}={text}"]))
        except ConfigError as e:
            raise ConfigError(f"{name}={text}: {e} (allowed: {p.allowed})") from None
    return typed


def check_values(values: Mapping[str, Any], config_dict: Optional[Dict[str, Any]] = None,
                 types: Optional[Mapping[str, type]] = None,
                 gcs_only: bool = True) -> Dict[str, str]:
    """{name: one-line problem} for every value that check_value refuses ({}: all good)."""
    problems = {}
    for name, value in values.items():
        try:
            check_value(name, value, config_dict, (types or {}).get(name), gcs_only)
        except ConfigError as e:
            problems[name] = str(e)
    return problems
