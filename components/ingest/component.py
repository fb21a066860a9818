"""DeblurIngest: the TFX component over components.ingest.beam_ingest (the CLI calls the same).

Output: an Examples artifact whose Split-<name>/ folders hold GZIP TFRecords of the example
format, so StatisticsGen, ExampleValidator and the trainer read it as any ExampleGen output.
The ingest summary (inputs = written + quarantined, by reason) and the quarantine list sit
beside the splits in the artifact's folder and the counts are custom properties of the
artifact, visible in ML Metadata and the Kubeflow UI. The counts are also a system.Metrics
artifact, `counts` (components/run_page.py), the table the Kubeflow run page draws.
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Dict, List, Sequence

from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components import run_page
from components.ingest.beam_ingest import (
    SUMMARY_FILE, IngestOptions, IngestSource, expand_ingest, finalize_ingest, plan_ingest)

EXAMPLES_KEY = "examples"
COUNTS_KEY = "counts"


class DeblurIngestSpec(types.ComponentSpec):
    PARAMETERS = {
        "sources": ExecutionParameter(type=str),  # JSON list of IngestSource
        "options": ExecutionParameter(type=str),  # JSON of IngestOptions
    }
    INPUTS: Dict[str, Any] = {}
    OUTPUTS = {EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
               COUNTS_KEY: ChannelParameter(type=run_page.Metrics)}


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        sources = [IngestSource.from_json(s) for s in json.loads(exec_properties["sources"])]
        options = IngestOptions(**json.loads(exec_properties["options"]))
        plan = plan_ingest(sources, options)
        with self._make_beam_pipeline() as p:
            expand_ingest(p, plan, examples.uri)
        summary = finalize_ingest(plan, examples.uri)  # raises past the quarantine bound
        examples.split_names = artifact_utils.encode_split_names(plan.splits)
        examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")
        examples.span = 0
        for key in ("inputs", "written", "quarantined"):
            examples.set_int_custom_property(key, summary[key])
        examples.set_json_value_custom_property("quarantine_by_reason", summary["quarantine_by_reason"])
        # blurry-only subsets skipped (REDS's test): named in the summary, counted here
        examples.set_int_custom_property(
            "unlabelled_skipped_files", sum(u["files"] for u in summary["unlabelled_skipped"]))
        examples.set_string_custom_property("summary_uri", f"{examples.uri}/{SUMMARY_FILE}")
        counts = artifact_utils.get_single_instance(output_dict[COUNTS_KEY])
        run_page.set_scalars(counts, "ingest: records in = written + quarantined", {
            **{k: summary[k] for k in ("inputs", "written", "quarantined")},
            **{f"written {split}": c["written"] for split, c in sorted(summary["splits"].items())},
            **{f"quarantined: {reason}": n
               for reason, n in sorted(summary["quarantine_by_reason"].items())}})


class DeblurIngest(base_beam_component.BaseBeamComponent):
    """Ingests paired blurry/sharp datasets (local or gs:// roots) into one Examples artifact.

    Beam options (Dataflow, Flink, Spark, DirectRunner workers) come from the pipeline's
    beam_pipeline_args or .with_beam_pipeline_args().
    """

    SPEC_CLASS = DeblurIngestSpec
    EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

    def __init__(self, sources: Sequence[IngestSource], options: IngestOptions = IngestOptions()):
        if not sources:
            raise ValueError("DeblurIngest needs at least one source")
        spec = DeblurIngestSpec(
            sources=json.dumps([s.to_json() for s in sources], sort_keys=True),
            options=json.dumps(dataclasses.asdict(options), sort_keys=True),
            examples=types.Channel(type=standard_artifacts.Examples),
            counts=types.Channel(type=run_page.Metrics),
        )
        super().__init__(spec=spec)


def sources_from_json(text: str) -> List[IngestSource]:
    return [IngestSource.from_json(s) for s in json.loads(text)]
