"""Type checks of config values against dataclass field hints, shared by the pipeline config
(pipelines/config.py) and the experiments (trainer/experiments.py): a value from YAML, JSON or
a `--set KEY=VALUE` must have its field's type before any code uses it."""
from __future__ import annotations

import typing

_SCALARS = {str: (str,), int: (int,), float: (int, float), bool: (bool,)}


def check_scalar(hint, value, where: str, error=ValueError) -> None:
    """A str/int/float/bool field (or Optional of one) must get that type: a typo'd YAML value
    or a --set on the wrong key fails here, as `error` (a ValueError class), rather than deep
    inside the code that uses it. Other hints (tuples, mappings, dataclasses) are not checked."""
    args = typing.get_args(hint)
    optional = typing.get_origin(hint) is typing.Union and type(None) in args
    base = next((a for a in args if a is not type(None)), None) if optional else hint
    if base not in _SCALARS or (optional and value is None):
        return
    ok = isinstance(value, _SCALARS[base]) and not (base in (int, float) and isinstance(value, bool))
    if not ok:
        raise error(f"{where}: expected {base.__name__}, got {type(value).__name__} {value!r}")
