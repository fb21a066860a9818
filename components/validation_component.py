"""TFX wrappers of components.validation: ValidationGate and DomainDriftReport."""

import json
import os

from tfx.dsl.component.experimental.annotations import InputArtifact, OutputArtifact, Parameter
from tfx.dsl.component.experimental.decorators import component
from tfx.dsl.io import fileio
from tfx.types import artifact, artifact_utils, standard_artifacts

from components import run_page, validation


class DomainDrift(artifact.Artifact):
    """JSON report of TFDV drift of each split against the in-domain baseline split."""

    # "<namespace>.<Type>": KubeflowV2DagRunner accepts only custom artifact type names of this
    # form (its schema-title rule ^[a-z][a-z0-9-_]{2,20}[.][A-Z][a-zA-Z0-9-_]{2,49}$).
    TYPE_NAME = "deblur.DomainDrift"


class DataValidationError(RuntimeError):
    pass


@component
def ValidationGate(anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]) -> None:
    """Fails the run when ExampleValidator found any anomaly, naming each one."""
    splits = artifact_utils.decode_split_names(anomalies.split_names)
    found = validation.anomalies_by_split(anomalies.uri, splits)
    bad = {s: msgs for s, msgs in found.items() if msgs}
    if bad:
        lines = [f"{s}: {m}" for s, msgs in bad.items() for m in msgs]
        raise DataValidationError(
            f"ExampleValidator found {len(lines)} anomalies; the pipeline stops here:\n  "
            + "\n  ".join(lines))


@component
def DomainDriftReport(
    statistics: InputArtifact[standard_artifacts.ExampleStatistics],
    schema: InputArtifact[standard_artifacts.Schema],
    report: OutputArtifact[DomainDrift],
    drift_table: OutputArtifact[run_page.Markdown],
    baseline_split: Parameter[str] = "train",
) -> None:
    """Writes domain_drift.json: TFDV drift of every split against baseline_split; the same as
    a Markdown table for the Kubeflow run page (drift_table)."""
    splits = artifact_utils.decode_split_names(statistics.split_names)
    if baseline_split not in splits:
        raise ValueError(f"baseline split {baseline_split!r} not in statistics splits {splits}")
    schema_path = os.path.join(schema.uri, "schema.pbtxt")
    result = validation.domain_drift(statistics.uri, schema_path, baseline_split, splits)
    with fileio.open(os.path.join(report.uri, validation.DRIFT_FILE), "w") as f:
        json.dump(result, f, indent=2, sort_keys=True)
    report.set_json_value_custom_property(
        "drifted", {s: r["drifted"] for s, r in result["splits"].items()})
    run_page.write_text(drift_table, "domain drift", validation.drift_markdown(result))
