"""The file contract's files (core/artifacts.py) read through TFX's fileio: local paths, gs://
and every file system TensorFlow knows, as TFX's own components read their artifacts.

core.artifacts.read_json is the one JSON reader (its errors: "<what> <path> does not exist",
"<what> <path> is not valid JSON: ..."); core imports no TFX, so the components and the
Kubeflow run-page components that read artifacts under TFX bind it to fileio here, once.
Other bindings keep their own file system on purpose: the ingest reads through Beam's
FileSystems (its workers' file system; a damaged record there means "redo the unit",
components/ingest/beam_ingest.py read_json_or_none), the registry and its pusher through
google-cloud-storage (components/registry/registry.py Storage), the local run summary plain
local files (pipelines/summary.py).
"""
from __future__ import annotations

from typing import Any, Optional

from tfx.dsl.io import fileio

from core import artifacts

_read_text = artifacts.text_reader(fileio)


def read_text(path: str) -> Optional[str]:
    """The text of the file at path, or None when there is none (TFX's fileio)."""
    return _read_text(path)


def read_json(path: str, what: str = "file", required: bool = False) -> Optional[Any]:
    """The parsed JSON at path (TFX's fileio); None when it does not exist, a ValueError
    naming it when `required`, or when it is not valid JSON (core.artifacts.read_json)."""
    return artifacts.read_json(path, _read_text, what, required)
