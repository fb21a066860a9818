"""The file contract between the pipeline's steps: the names of the files each step writes into
its artifact folder, the paths built from them, and the image file extensions the command line
reads and writes.

Every producer and every consumer takes its names from here, so a name is spelled once. No
TensorFlow and no Beam: a path may be local or gs://, and a caller that reads gs:// passes its
own `read_text` to `read_json`, the one JSON reader (components/artifact_io.py binds it to
TFX's fileio for the components, components/ingest/beam_ingest.py to Beam's FileSystems,
components/registry/pusher.py to the registry's Storage).
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Callable, Iterable, List, Optional

# An ingest output (an Examples artifact): <uri>/Split-<split>/*.gz and these files.
SPLIT_PREFIX = "Split-"
SUMMARY_FILE = "summary.json"          # the ingest summary (counts, units, fingerprint)
QUARANTINE_DIR = "quarantine"
QUARANTINE_FILE = "quarantine.jsonl"   # quarantine/quarantine.jsonl; a unit store entry's own
COUNTS_DIR = "counts"
COUNTS_PREFIX = "counts"               # counts/counts*.jsonl: the Beam counts' text files
UNIT_FILE = "unit.json"                # a unit store entry's record

# A training output (a ModelRun): history, the experiment, the warm start and resumes.
HISTORY_FILE = "history.json"
EXPERIMENT_FILE = "experiment.json"
WARM_START_FILE = "warm_start.json"
RESUMED_FILE = "resumed.json"
CHECKPOINTS_DIR = "checkpoints"
TENSORBOARD_DIR = "tensorboard"
SAVED_MODEL_DIR = "saved_model"        # the command line's export (the pipeline's: Format-Serving)
# The Trainer's trainings in progress, outside any execution's output until they finish:
# <pipeline's folder>/Trainer/checkpoints/<key>/ (components/training.py)
TRAININGS_DIR = "checkpoints"

# An exported model: the SavedModel folder holds the model's record next to its graph.
SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_TEXT_FILE = "saved_model.pbtxt"  # the graph in text form (TensorFlow loads either)
MODEL_INFO_FILE = "deblur.json"

# The evaluator's outputs (ModelEvaluation, ModelBlessing) and the pusher's record.
EVALUATION_FILE = "evaluation.json"
BLESSING_FILE = "blessing.json"
DOMAIN_GAP_FILE = "domain_gap.json"
PUSH_RECORD_FILE = "push.json"

# A local pipeline run's folder (pipelines/local_runner.py): <work_dir>/summary.json.
RUN_SUMMARY_FILE = "summary.json"

# A Kubeflow run's folder, <pipeline root>/<pipeline>/<run id> (pipelines/kubeflow/run_summary.py):
# the run's Markdown summary, written by RunSummary when every task succeeded and by the exit
# task RunEnd otherwise, so that one path tells what the run did whatever its outcome.
KFP_RUN_SUMMARY_FILE = "summary.md"
# <run folder>/<task>/task_error.json: a task's one-line error, written by
# pipelines/kubeflow/entrypoint.py when the executor raises (RunEnd reads it)
TASK_ERROR_FILE = "task_error.json"

# Image files the command line reads (folders of images) and writes (predict's OUT).
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")


def join(uri: str, *names: str) -> str:
    """uri/names..., for a local path or a gs:// URI (never a backslash, one slash each)."""
    return "/".join([uri.rstrip("/")] + [n.strip("/") for n in names])


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def kfp_task_folder(output_uri: str, output_key: str) -> str:
    """<run folder>/<task> from a KFP task's output artifact URI and its output key. KFP's
    driver writes <run folder>/<task>/<output key> up to backend 2.3, and from 2.4 (fix of
    kubeflow/pipelines#10186) <run folder>/<task>/<uuid>/<output key>, a uuid per execution;
    both are taken (driver.go provisionOutputs)."""
    folder = output_uri.rstrip("/")
    if folder.endswith("/" + output_key):
        folder = folder[:-len(output_key) - 1]
    head, _, last = folder.rpartition("/")
    return head if head and _UUID.match(last) else folder


def kfp_run_folder(output_uri: str, output_key: str) -> str:
    """<pipeline root>/<pipeline>/<run id> from a task's output artifact URI (kfp_task_folder)."""
    return kfp_task_folder(output_uri, output_key).rpartition("/")[0]


def kfp_run_summary_path(run_folder: str) -> str:
    """<run folder>/summary.md: the run's summary whatever its outcome (KFP_RUN_SUMMARY_FILE)."""
    return join(run_folder, KFP_RUN_SUMMARY_FILE)


def split_dir(examples_uri: str, split: str) -> str:
    """<examples uri>/Split-<split>: the folder of one split's shards (TFX's layout)."""
    return join(examples_uri, f"{SPLIT_PREFIX}{split}")


def split_names(entries: Iterable[str]) -> List[str]:
    """The split names of an Examples folder's listing (entries such as 'Split-train/')."""
    return sorted(e.rstrip("/")[len(SPLIT_PREFIX):] for e in entries
                  if e.startswith(SPLIT_PREFIX))


def model_info_path(saved_model_dir: str) -> str:
    return join(saved_model_dir, MODEL_INFO_FILE)


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _read_local_text(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return f.read()


def text_reader(fs) -> Callable[[str], Optional[str]]:
    """read_text over a file system module with exists(path) and open(path), such as TFX's
    fileio (local, gs:// and every file system TensorFlow knows)."""
    def read_text(path: str) -> Optional[str]:
        if not fs.exists(path):
            return None
        with fs.open(path, "r") as f:
            return f.read()
    return read_text


def read_json(path: str, read_text: Callable[[str], Optional[str]] = _read_local_text,
              what: str = "file", required: bool = False) -> Optional[Any]:
    """The parsed JSON at `path`; None when it does not exist (ValueError when `required`).
    A file that is not valid JSON is a ValueError naming it. `read_text(path)` returns the
    text or None when there is no such file (the default reads local paths)."""
    text = read_text(path)
    if text is None:
        if required:
            raise ValueError(f"{what} {path} does not exist")
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path} is not valid JSON: {e}") from None
