"""Local running: `deblur run-local`'s whole job on the embedded default, the pipeline under
LocalDagRunner with SQLite ML Metadata, and what surrounds it.

run_local(config) holds the work dir's lock (one run-local per work dir) and the ML Metadata
store's (one run-local per store, whatever its work dir), generates the
synthetic data when the config names no sources, marks the executions a killed earlier run
left RUNNING as CANCELED, runs the pipeline in a private $TMPDIR, and builds the summary of
this process's own pipeline run from ML Metadata (written to <work_dir>/summary.json). A run
that cannot start is a LocalRunError. Nothing here is specific to an orchestrator but the
local one; the CLI only parses arguments and prints.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from typing import Callable, Optional, Tuple

from components.metadata_store import open_store, sqlite_config
from core.artifacts import RUN_SUMMARY_FILE  # <work_dir>/summary.json: the run's summary
from pipelines.config import PipelineConfig
from pipelines.pipeline import create_pipeline
from trainer import warm_start

LOCK_FILE = ".run-local.lock"
SYNTH_MARKER = "synth.json"


class LocalRunError(Exception):
    """A run-local that cannot start (another one holds the work dir): one line, exit 2."""


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def run(config: PipelineConfig) -> str:
    """Lists the inputs for their fingerprint (the ingest's cache key sees it), then runs the
    pipeline. Returns the fingerprint."""
    from tfx.orchestration.local.local_dag_runner import LocalDagRunner

    from components.ingest.beam_ingest import plan_ingest

    work = config.runner
    metadata_path = os.path.abspath(work.resolved_metadata_path())
    os.makedirs(os.path.dirname(metadata_path), exist_ok=True)
    plan = plan_ingest(config.ingest_sources(), config.ingest)
    fingerprint = plan.fingerprint()
    logging.getLogger("deblur.progress").info(  # deblur run-local prints these
        "inputs: %d pairs in %d unit(s), fingerprint %s; caching %s", len(plan.candidates),
        len(plan.units), fingerprint[:12], "on" if work.enable_cache else "off")
    pipeline = create_pipeline(
        config,
        metadata_connection_config=sqlite_config(metadata_path),
        pipeline_root=os.path.abspath(work.resolved_pipeline_root()),
        input_fingerprint=fingerprint,
    )
    LocalDagRunner().run(pipeline)
    return fingerprint


def run_local(config: PipelineConfig, started: Optional[float] = None,
              say: Callable[[str], None] = _stderr) -> Tuple[dict, str]:
    """The whole local run (the module doc); `say(line)` hears its progress. Returns (the
    summary, the path it was written to). `started`: when the wall time the summary reports
    began (default: now)."""
    from pipelines import summary as summary_lib

    t0 = time.time() if started is None else started
    work_dir = config.runner.work_dir
    metadata_path = os.path.abspath(config.runner.resolved_metadata_path())
    with work_dir_lock(work_dir), metadata_lock(metadata_path, work_dir):
        missing = warm_start.base_model_missing(config.training.base_model_setting(),
                                                config.training.experiment)
        if missing:
            say(f"WARNING: {missing}")
        if not config.data.sources:
            ensure_synthetic_data(config, say)
        # one connection before the run (none before the first): a killed earlier run left
        # its executions RUNNING, under the lock they are dead; and the runs so far
        store = open_store(metadata_path, readonly=False) \
            if os.path.exists(metadata_path) else None
        for kind, eid in cancel_abandoned_executions(store):
            say(f"ML Metadata: {kind} execution {eid} of an interrupted run marked CANCELED")
        before = set(summary_lib.pipeline_run_names(store))
        del store
        with private_tmpdir():
            run(config)
        # one after it: this process's own run (the lock makes it the only new one), not the
        # store's newest
        s = summary_lib.build_summary(metadata_path, config.runner.pipeline_name,
                                      runs_before=before)
        s["seconds"] = round(time.time() - t0, 1)
        out = os.path.join(work_dir, RUN_SUMMARY_FILE)
        with open(out, "w") as f:
            json.dump(s, f, indent=2, sort_keys=True)
    return s, out


@contextlib.contextmanager
def work_dir_lock(work_dir: str):
    """One run-local per work dir at a time: two would share one SQLite ML Metadata store, one
    registry and one summary.json. An flock, so a killed run's lock goes with its process."""
    os.makedirs(work_dir, exist_ok=True)
    with _flock(os.path.join(work_dir, LOCK_FILE), f"pid {os.getpid()}", lambda holder: (
            f"another deblur run-local is running on work dir {work_dir} ({holder}); wait "
            "for it to end, or pass another --work-dir")):
        yield


@contextlib.contextmanager
def metadata_lock(metadata_path: str, work_dir: str):
    """One run-local per ML Metadata store at a time, whatever its work dir: runs that share
    runner.metadata_path would take each other's live executions for a dead run's and mark
    them CANCELED (cancel_abandoned_executions), and read each other's runs. An flock on
    <metadata_path>.lock beside the SQLite file, held for the whole run; the lock file names
    the holder's work dir and pid, which the refusal repeats."""
    os.makedirs(os.path.dirname(metadata_path) or ".", exist_ok=True)
    with _flock(metadata_path + ".lock",
                f"work dir {os.path.abspath(work_dir)}, pid {os.getpid()}", lambda holder: (
                    f"another deblur run-local is using the ML Metadata store {metadata_path} "
                    f"({holder}); wait for it to end, or give this run its own "
                    "runner.metadata_path")):
        yield


@contextlib.contextmanager
def _flock(path: str, holder: str, refusal: Callable[[str], str]):
    """An exclusive flock on `path` for the block, or LocalRunError(refusal(what the holder
    wrote into the file)) at once. The holder writes `holder` and the time into the file."""
    import fcntl

    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        other = f.read().strip() or "another process"
        f.close()
        raise LocalRunError(refusal(other)) from None
    f.seek(0)
    f.truncate()
    f.write(f"{holder}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    try:
        yield
    finally:
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


@contextlib.contextmanager
def private_tmpdir():
    """A temporary folder of the run's own for what libraries leave in $TMPDIR (TFX builds an
    ephemeral package of ~98 MB for every Beam-based component run: tmp*/build/tfx), removed
    when the run ends, however it ends."""
    private = tempfile.mkdtemp(prefix="deblur-run-local-")
    saved_env, saved_module = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = private, private
    try:
        yield private
    finally:
        tempfile.tempdir = saved_module
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(private, ignore_errors=True)


def ensure_synthetic_data(config: PipelineConfig, say: Callable[[str], None] = _stderr) -> None:
    """The config's synthetic data sets, generated unless its folder holds them already (a
    marker records the parameters they were made with)."""
    from core import synth

    root = config.synthetic_root()
    s = config.data.synthetic
    marker = os.path.join(root, SYNTH_MARKER)
    want = {"pairs": s.pairs, "test_pairs": s.test_pairs, "size": list(s.size), "seed": s.seed}
    if os.path.exists(marker):
        with open(marker) as f:
            if json.load(f).get("params") == want:
                say(f"synthetic data: reusing {root}")
                return
    say(f"synthetic data: generating {s.pairs} train (val_fraction {s.val_fraction} of its "
        f"sequences held out as val) + {s.test_pairs} test in-domain and {s.test_pairs} "
        f"val_ood + {s.test_pairs} test_ood out-of-domain pairs of {s.size[0]}x{s.size[1]} "
        f"in {root}")
    summary = synth.generate(root, pairs=s.pairs, size=tuple(s.size), seed=s.seed,
                             test_pairs=s.test_pairs, progress=True)
    with open(marker, "w") as f:
        json.dump({"params": want, "summary": summary}, f, indent=2)


ABANDONED = "abandoned: its run-local process ended without finishing it (killed?)"


def cancel_abandoned_executions(store):
    """Marks executions left NEW or RUNNING by a run-local that died (SIGKILL, power loss) as
    CANCELED, with the reason in the custom property `deblur_abandoned`, so ML Metadata does not
    keep a zombie. Only safe while no other run uses the store: run-local holds the store's
    lock (metadata_lock) when it calls this. `store`: a read-write MetadataStore, or None (no store yet).
    Returns [(execution type, id)] of those it marked."""
    if store is None:
        return []
    from ml_metadata.proto import metadata_store_pb2

    live = (metadata_store_pb2.Execution.NEW, metadata_store_pb2.Execution.RUNNING)
    types = {t.id: t.name for t in store.get_execution_types()}
    dead = [e for e in store.get_executions() if e.last_known_state in live]
    for e in dead:
        e.last_known_state = metadata_store_pb2.Execution.CANCELED
        e.custom_properties["deblur_abandoned"].string_value = ABANDONED
    if dead:
        store.put_executions(dead)
    return [(types.get(e.type_id, "?").split(".")[-1], e.id) for e in dead]
