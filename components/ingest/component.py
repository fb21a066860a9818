"""DeblurIngest: the TFX component over components.ingest.beam_ingest (the CLI calls the same).

Output: an Examples artifact whose Split-<name>/ folders hold GZIP TFRecords of the example
format, so StatisticsGen, ExampleValidator and the trainer read it as any ExampleGen output.
The ingest summary (inputs = written + quarantined, by reason) and the quarantine list sit
beside the splits in the artifact's folder and the counts are custom properties of the
artifact, visible in ML Metadata and the Kubeflow UI. The counts are also a system.Metrics
artifact, `counts` (components/run_page.py), the table the Kubeflow run page draws.

Caching: `input_fingerprint` is the fingerprint of the inputs (beam_ingest.input_fingerprint:
the listing's names, sizes and modification times per unit) computed by whoever starts the
run: `deblur run-local` before the pipeline, a task of the run itself on Kubeflow
(pipelines/kubeflow/compiler.py). As an exec property it is part of the cache key (TFX's local
one and KFP's), so a cached ingest is reused exactly while the inputs are unchanged. The
executor lists the inputs again and fails if they changed since: examples must never be
recorded under the key of other data. Unchanged units (one per source, or per span folder)
are taken from the unit store <pipeline root>/DeblurIngest/units (beam_ingest's module doc);
Beam runs only over the new or changed ones.
"""
from __future__ import annotations

import dataclasses
import json
import posixpath
from typing import Any, Dict, Sequence

from tfx import types
from tfx.components.util import examples_utils
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_artifacts
from tfx.types.component_spec import ChannelParameter, ExecutionParameter

from components import run_page
from components.ingest.beam_ingest import run_ingest
from components.ingest.sources import IngestOptions, IngestSource
from core.artifacts import SUMMARY_FILE

EXAMPLES_KEY = "examples"
COUNTS_KEY = "counts"


class DeblurIngestSpec(types.ComponentSpec):
    PARAMETERS = {
        "sources": ExecutionParameter(type=str),  # JSON list of IngestSource
        "options": ExecutionParameter(type=str),  # JSON of IngestOptions
        # what the cache key sees of the inputs ("" : not computed; the run does not cache)
        "input_fingerprint": ExecutionParameter(type=str, optional=True),
        # where ingested units are kept across runs ("": beside this run's outputs)
        "unit_store": ExecutionParameter(type=str, optional=True),
    }
    INPUTS: Dict[str, Any] = {}
    OUTPUTS = {EXAMPLES_KEY: ChannelParameter(type=standard_artifacts.Examples),
               COUNTS_KEY: ChannelParameter(type=run_page.Metrics)}


def unit_store(pipeline_root: str) -> str:
    """The unit store of a pipeline: <pipeline root>/DeblurIngest/units. Given to the component
    (its outputs' URIs differ between orchestrators: <root>/DeblurIngest/examples/<execution> under
    LocalDagRunner, <root>/<pipeline>/<run id>/DeblurIngest/examples on KFP, a folder per run)."""
    return posixpath.join(pipeline_root.rstrip("/"), "DeblurIngest", "units")


class Executor(base_beam_executor.BaseBeamExecutor):
    def Do(self, input_dict, output_dict, exec_properties):
        examples = artifact_utils.get_single_instance(output_dict[EXAMPLES_KEY])
        sources = [IngestSource.from_json(s) for s in json.loads(exec_properties["sources"])]
        options = IngestOptions(**json.loads(exec_properties["options"]))
        # "<fingerprint> no-cache <nonce>" on Kubeflow for a run with caching off
        # (pipelines/kubeflow/fingerprint.py): the nonce is for KFP's cache key only
        expected = (exec_properties.get("input_fingerprint") or "").split(" ", 1)[0]
        # without a store, every unit is decoded (into a private one, moved into place); every
        # unit may come from the store: no Beam pipeline at all then. Raises past the
        # quarantine bound, or when the inputs changed since the run computed `expected`.
        summary = run_ingest(sources, examples.uri, options,
                             store=exec_properties.get("unit_store") or None,
                             make_pipeline=self._make_beam_pipeline,
                             expected_fingerprint=expected)
        examples.split_names = artifact_utils.encode_split_names(list(summary["splits"]))
        examples_utils.set_payload_format(examples, example_gen_pb2.PayloadFormat.FORMAT_TF_EXAMPLE)
        examples_utils.set_file_format(examples, "tfrecords_gzip")
        spans = [u["span"] for u in summary["units"] if u["span"] is not None]
        examples.span = max(spans) if spans else 0  # TFX's span: the newest one ingested
        for key in ("inputs", "written", "quarantined"):
            examples.set_int_custom_property(key, summary[key])
        examples.set_int_custom_property("processed_inputs", summary["processed"]["inputs"])
        examples.set_int_custom_property("reused_inputs", summary["reused"]["inputs"])
        examples.set_string_custom_property("input_fingerprint", summary["fingerprint"])
        examples.set_json_value_custom_property("quarantine_by_reason", summary["quarantine_by_reason"])
        # blurry-only subsets skipped (REDS's test): named in the summary, counted here
        examples.set_int_custom_property(
            "unlabelled_skipped_files", sum(u["files"] for u in summary["unlabelled_skipped"]))
        examples.set_string_custom_property("summary_uri", f"{examples.uri}/{SUMMARY_FILE}")
        counts = artifact_utils.get_single_instance(output_dict[COUNTS_KEY])
        run_page.set_scalars(counts, "ingest: records in = written + quarantined", {
            **{k: summary[k] for k in ("inputs", "written", "quarantined")},
            "decoded now": summary["processed"]["inputs"],
            "reused (unchanged units)": summary["reused"]["inputs"],
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

    def __init__(self, sources: Sequence[IngestSource], options: IngestOptions = IngestOptions(),
                 input_fingerprint: str = "", unit_store: str = ""):
        if not sources:
            raise ValueError("DeblurIngest needs at least one source")
        spec = DeblurIngestSpec(
            sources=json.dumps([s.to_json() for s in sources], sort_keys=True),
            options=json.dumps(dataclasses.asdict(options), sort_keys=True),
            input_fingerprint=input_fingerprint, unit_store=unit_store,
            examples=types.Channel(type=standard_artifacts.Examples),
            counts=types.Channel(type=run_page.Metrics),
        )
        super().__init__(spec=spec)
