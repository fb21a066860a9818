"""pipelines/local_runner.py's pieces, each alone (the whole run-local is
tests/test_pipeline_local.py's): the two locks, the private $TMPDIR, the synthetic data's
reuse, and the clean-up of executions a killed run left behind, on a real SQLite ML Metadata
store."""
from __future__ import annotations

import os
import tempfile

import pytest

from pipelines import config as config_lib
from pipelines import local_runner as lr


def test_one_run_local_per_work_dir(tmp_path):
    """flock locks belong to an open file, so a second open in this very process is refused as
    another process would be; the refusal names the holder; the lock goes with the block."""
    with lr.work_dir_lock(str(tmp_path)):
        with pytest.raises(lr.LocalRunError, match=rf"work dir {tmp_path} \(pid {os.getpid()}, "
                                                   r"started \d{4}-\d\d-\d\d"):
            with lr.work_dir_lock(str(tmp_path)):
                pass
    with lr.work_dir_lock(str(tmp_path)):  # released
        pass


def test_one_run_local_per_metadata_store_whatever_its_work_dir(tmp_path):
    store = str(tmp_path / "shared" / "metadata.sqlite")
    with lr.metadata_lock(store, str(tmp_path / "a")):
        with pytest.raises(lr.LocalRunError) as e:
            with lr.metadata_lock(store, str(tmp_path / "b")):
                pass
    message = str(e.value)
    assert f"ML Metadata store {store}" in message
    assert f"work dir {tmp_path / 'a'}, pid {os.getpid()}" in message  # the holder's, not b's
    assert "runner.metadata_path" in message


def test_private_tmpdir_is_removed_and_the_environment_restored_even_on_error(monkeypatch):
    monkeypatch.setenv("TMPDIR", "/tmp")
    before = tempfile.tempdir
    with pytest.raises(RuntimeError):
        with lr.private_tmpdir() as private:
            assert os.environ["TMPDIR"] == private == tempfile.gettempdir()
            open(os.path.join(private, "left-behind"), "w").close()
            raise RuntimeError("a failed component")
    assert not os.path.exists(private)
    assert os.environ["TMPDIR"] == "/tmp" and tempfile.tempdir == before
    monkeypatch.delenv("TMPDIR")
    with lr.private_tmpdir():
        pass
    assert "TMPDIR" not in os.environ


def test_synthetic_data_is_reused_only_with_the_same_parameters(tmp_path, monkeypatch):
    from core import synth

    cfg = config_lib.load(None, [f"runner.work_dir={tmp_path}"])
    made, said = [], []
    def generate(root, **kw):  # what the real one leaves: the folder (and the data sets)
        os.makedirs(root, exist_ok=True)
        made.append(kw)
        return {"root": root}

    monkeypatch.setattr(synth, "generate", generate)
    lr.ensure_synthetic_data(cfg, said.append)
    assert len(made) == 1 and made[0]["pairs"] == cfg.data.synthetic.pairs
    lr.ensure_synthetic_data(cfg, said.append)  # the marker matches: nothing generated
    assert len(made) == 1 and said[-1] == f"synthetic data: reusing {cfg.synthetic_root()}"
    cfg.data.synthetic.seed += 1  # another draw: generated again
    lr.ensure_synthetic_data(cfg, said.append)
    assert len(made) == 2 and made[1]["seed"] == cfg.data.synthetic.seed


def test_abandoned_executions_are_cancelled_with_the_reason(tmp_path):
    from ml_metadata.proto import metadata_store_pb2 as pb

    from components.metadata_store import open_store

    assert lr.cancel_abandoned_executions(None) == []
    store = open_store(str(tmp_path / "metadata.sqlite"), readonly=False)
    type_id = store.put_execution_type(pb.ExecutionType(name="tfx.components.Trainer"))
    states = [pb.Execution.RUNNING, pb.Execution.NEW, pb.Execution.COMPLETE, pb.Execution.CACHED]
    ids = store.put_executions([pb.Execution(type_id=type_id, last_known_state=s)
                                for s in states])
    marked = lr.cancel_abandoned_executions(store)
    assert marked == [("Trainer", ids[0]), ("Trainer", ids[1])]
    after = {e.id: e for e in store.get_executions()}
    for i, state in zip(ids, [pb.Execution.CANCELED, pb.Execution.CANCELED,
                              pb.Execution.COMPLETE, pb.Execution.CACHED]):
        assert after[i].last_known_state == state
    assert after[ids[0]].custom_properties["deblur_abandoned"].string_value == lr.ABANDONED
    assert "deblur_abandoned" not in after[ids[2]].custom_properties
    assert lr.cancel_abandoned_executions(store) == []  # nothing left to mark
