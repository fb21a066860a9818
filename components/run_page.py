"""Artifacts the Kubeflow Pipelines run page draws: system.Metrics, system.Markdown, system.HTML.

The KFP v2 frontend (kubeflow/pipelines frontend/src/components/viewers/
MetricsVisualizations.tsx) visualises an execution's output artifacts only when their ML
Metadata type is one of system.Metrics (a table of the artifact's custom properties, titled by
its `display_name`), system.ClassificationMetrics, system.HTML or system.Markdown (the file AT
the artifact's URI, read through the UI's artifact proxy). Every tfx.* type shows "There is no
metrics artifact available in this step".

How a TFX component emits them under KubeflowV2DagRunner (TFX 1.16, read in
tfx/orchestration/kubeflow/v2/compiler_utils.py): an artifact class that is not one of TFX's
first-party types compiles to the generic schema with its TYPE_NAME as the schema title, and
the title must match ^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$, which "system.Metrics"
does. The KFP launcher records an output artifact under the schema title as its MLMD type name,
so these classes land in ML Metadata as system.Metrics / system.Markdown / system.HTML, the
types the frontend looks for. At run time TFX's container entrypoint imports an artifact class
by its schema title, which for these is no import path: pipelines/kubeflow/entrypoint.py maps the
titles to the classes below. Under LocalDagRunner they are ordinary custom
types in the SQLite store.

Markdown and HTML are ValueArtifacts: the artifact's URI is the file itself (what the frontend
reads), under LocalDagRunner as under KFP. Metrics keeps its scalars in custom properties; its
URI holds nothing.
"""
from __future__ import annotations

from typing import Mapping

from tfx.dsl.io import fileio
from tfx.types import artifact, value_artifact


class Metrics(artifact.Artifact):
    """Scalars in custom properties (float), titled by the `display_name` custom property."""

    TYPE_NAME = "system.Metrics"


class _Text(value_artifact.ValueArtifact):
    def encode(self, value: str) -> bytes:
        return value.encode("utf-8")

    def decode(self, serialized_value: bytes) -> str:
        return serialized_value.decode("utf-8")


class Markdown(_Text):
    TYPE_NAME = "system.Markdown"


class HTML(_Text):
    TYPE_NAME = "system.HTML"


DISPLAY_NAME = "display_name"  # the custom property the frontend titles an artifact with


def set_scalars(metrics: Metrics, display_name: str, scalars: Mapping[str, float]) -> None:
    """The rows of the run page's "Scalar Metrics: <display_name>" table."""
    metrics.set_string_custom_property(DISPLAY_NAME, display_name)
    for name, value in scalars.items():
        metrics.set_float_custom_property(name, float(value))


def write_text(out: _Text, display_name: str, text: str) -> None:
    """The file at the artifact's URI (Markdown or HTML), titled display_name."""
    out.set_string_custom_property(DISPLAY_NAME, display_name)
    parent = out.uri.rsplit("/", 1)[0]
    if parent:
        fileio.makedirs(parent)
    with fileio.open(out.uri, "w") as f:
        f.write(text)

