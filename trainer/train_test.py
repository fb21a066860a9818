"""The training loop (train.py) and its export (export.py, sampling.py), end to end on CPU.

Every check here needs a TensorFlow process of its own: two logical CPUs have to be configured
before TensorFlow starts, a run has to be SIGKILLed, and the SavedModel has to be loaded by a
process that never imported this project. Tracing a training step costs tens of CPU seconds,
so the module fixture `jobs` starts the subprocesses of the selected tests together, on
background threads, and each test waits for the jobs it checks:

  mirrored   one script: two steps under MirroredStrategy over two logical CPUs, each also taken
             by one device from the same state (full batch; and the applied gradients)
  reference  an uninterrupted run of STEPS steps (checkpoint every 2)
  resume     the same run, SIGKILLed after its first checkpoint (it holds still after step 3,
             so the kill lands between checkpoints every time), then rerun: it has to go on
             from step 2 and end with the reference's weights, bit for bit
  export     loads the resumed run's SavedModel in a process that can import TensorFlow, numpy
             and PIL but not this project, and deblurs with both signatures
"""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from components.ingest.beam_ingest import IngestOptions, IngestSource, run_ingest
from tests import fixtures as fx

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 600  # seconds, per subprocess: a loaded 2-core machine is slow to trace the step
STEPS, CHECKPOINT_EVERY, PAUSE_AT = 6, 2, 3
CROP = 32
# The "tiny" experiment with a smaller UNet: one level, guidance="input". These tests are about
# the loop (loss scaling, gradient all-reduce, optimizer, EMA, step counter, checkpoints, the
# input iterator) and the export (padding, phi, the sampler, the signatures), which do not
# depend on the architecture; this model keeps every part of them (multiscale phi {2, 4, 8},
# regressions in the loss and in the UNet's input, multiple 8) and traces in less than half
# the time of the tiny UNet (measured: the module takes 1.5 min instead of 3.5 min on a busy
# 2-core machine). model_test.py covers the architectures; MODEL = {} runs the real tiny one.
MODEL = {"guidance": "input", "channel_multipliers": [1], "num_middle_blocks": 0}
TRAIN = {"model": MODEL, "data": {"crop_size": CROP},
         "train": {"steps": STEPS, "global_batch_size": 4, "checkpoint_every": CHECKPOINT_EVERY,
                   "log_every": 1, "image_summary_every": 4}}
MIRRORED = {"model": MODEL, "data": {"crop_size": CROP}, "train": {"global_batch_size": 4}}
PROJECT = ("core", "metrics", "trainer", "components", "pipelines", "deblur", "tests", "benchmarks")
# which background jobs each test waits for (only the selected tests' jobs are started)
NEEDS = {"test_mirrored_step_matches_the_default_strategy": {"mirrored"},
         "test_a_damaged_checkpoint_falls_back_to_the_previous_one": {"reference"},
         "test_resume_after_sigkill_ends_with_the_uninterrupted_weights": {"reference", "resume"},
         "test_saved_model_deblurs_without_the_project": {"resume", "export"}}

# ---- the subprocess programs (JSON arguments in argv[1]) ---------------------------------

TRAIN_RUN = r"""
import json, sys, time
from trainer import experiments, train
a = json.loads(sys.argv[1])
exp = experiments.get("tiny", **a["overrides"])
if not a["export"]:  # the reference run: the export reads the EMA, it changes no training state
    from trainer import export
    export.export_saved_model = lambda trainer, path, defaults=None: path
def on_step(step, row):
    print(json.dumps({"step": step, "loss": row["loss"]}), flush=True)
    if step == a["pause_at"]:  # checkpoint 2 is written, step 3 is not: hold until SIGKILL
        print("PAUSED", flush=True)
        time.sleep(3600)
result = train.train(exp, a["examples"], a["out"], on_step=on_step)
print(json.dumps({"done": result["step"]}), flush=True)
"""

MIRRORED_STEP = r"""
import json, pickle, sys
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]  # before anything initialises the devices
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from trainer import data as data_lib, diffusion, experiments, train

a = json.loads(sys.argv[1])
exp = experiments.get("tiny", **a["overrides"])
gb = exp.train.global_batch_size
noise = train.add_diffusion_noise(diffusion.TrainingSchedule(exp.diffusion), exp.train.seed)
ds = data_lib.training_dataset(exp.data_config(a["examples"]), gb, seed=0).enumerate().map(noise)
batches = [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds.take(2)]

class Recording(train.Trainer):
    # a Trainer whose step also returns the gradients it applied (summed over the replicas)

    def _replica_step(self, batch):
        grads, out = self.replica_gradients(batch)
        self.apply_gradients(grads)
        return {**out, **{f"grad/{i}": g for i, g in enumerate(grads)}}

mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
dis = Recording(exp, a["out"], mirrored)
ref = Recording(exp, a["out"], tf.distribute.get_strategy())   # the full batch, one device
mic = train.Trainer(exp, a["out"], tf.distribute.get_strategy())  # applies dis's gradients
dis.step.assign(30)  # w(step) > 0: the diffusion loss takes part (w = 0 at step 0)

def state(t):
    return list(t.model.weights) + list(t.ema) + list(t.optimizer.variables) + [t.step]

def copies(v):
    v = v.value if isinstance(v, keras.Variable) else v
    return [np.asarray(c) for c in mirrored.experimental_local_results(v)]

def split(m):
    return ({k: float(v) for k, v in m.items() if not k.startswith("grad/")},
            [np.asarray(m[f"grad/{i}"]) for i in range(len(dis.variables))])

apply_step = tf.function(lambda grads: (mic.apply_gradients(grads), mic.step.assign_add(1)))
res = {"replicas": mirrored.num_replicas_in_sync, "sizes": [len(state(ref)), len(ref.model.weights),
                                                            len(ref.ema)],
       "init": [np.array(v.numpy()) for v in dis.model.weights], "steps": []}
for batch in batches:
    before = [np.array(v.numpy()) for v in state(dis)]
    for t in (ref, mic):  # every step starts from the mirrored run's state
        for mine, value in zip(state(t), before):
            mine.assign(value)
    n = gb // 2  # replica r gets examples [r n, (r + 1) n) of the global batch
    dis_metrics, dis_grads = split(dis.train_step(mirrored.experimental_distribute_values_from_function(
        lambda ctx: tf.nest.map_structure(
            lambda v: tf.constant(v[ctx.replica_id_in_sync_group * n:][:n]), batch))))
    ref_metrics, ref_grads = split(ref.train_step(tf.nest.map_structure(tf.constant, batch)))
    apply_step([tf.constant(g) for g in dis_grads])
    res["steps"].append({
        "ref_metrics": ref_metrics, "dis_metrics": dis_metrics,
        "ref_grads": ref_grads, "dis_grads": dis_grads,
        "mic_state": [np.array(v.numpy()) for v in state(mic)],
        "dis_state": [np.array(v.numpy()) for v in state(dis)],
        "copies_per_variable": min(len(copies(v)) for v in state(dis)),
        "replica_spread": max(float(np.max(np.abs(c - copies(v)[0])))
                              for v in state(dis) for c in copies(v))})
# the export reads the EMA of the mirrored variables
from trainer import export
res["exported_ema"] = [np.array(v.numpy()) for v in export.ema_model(dis).trainable_variables]
with open(a["result"], "wb") as f:
    pickle.dump(res, f)
"""

LOAD_SAVED_MODEL = r"""
import json, sys

class NoProject:  # any import of the project's packages fails in this process
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in PROJECT:
            raise ImportError(f"{name}: this process must not use the project")
PROJECT = set(json.loads(sys.argv[1])["project"])
sys.meta_path.insert(0, NoProject())

import numpy as np
import tensorflow as tf
from PIL import Image

a = json.loads(sys.argv[1])
model = tf.saved_model.load(a["saved_model"])
img = np.asarray(Image.open(a["png"]).convert("RGB"))
first, second = img[:37, :53], img[5:34, 10:80]  # neither side a multiple of 8

def deblur(seed, image=first, samples=2):
    return model.signatures["deblur"](
        image=tf.constant(image), steps=tf.constant(3, tf.int32), max_noise=tf.constant(0.5),
        samples=tf.constant(samples, tf.int32), seed=tf.constant(seed, tf.int64),
        deterministic=tf.constant(False))["image"].numpy()

a1, a2, b = deblur([1, 2]), deblur([1, 2]), deblur([3, 4])
served = model.signatures["serving_default"](image=tf.constant(second))["image"].numpy()
small = deblur([1, 2], img[:5, :3], samples=1)  # sides smaller than the padding to 8
try:
    deblur([1, 2], samples=0)
    no_samples = "accepted"
except tf.errors.InvalidArgumentError as e:
    no_samples = e.message
print(json.dumps({
    "signatures": sorted(model.signatures),
    "deblur": {"in": first.shape, "out": a1.shape, "dtype": str(a1.dtype), "std": float(a1.std())},
    "same_seed_equal": bool(np.array_equal(a1, a2)),
    "other_seed_mean_abs_diff": float(np.mean(np.abs(a1.astype(int) - b))),
    "serving_default": {"in": second.shape, "out": served.shape, "dtype": str(served.dtype),
                        "std": float(served.std())},
    "small": {"in": img[:5, :3].shape, "out": small.shape, "dtype": str(small.dtype)},
    "samples_0": no_samples,
    "project_modules": sorted(m for m in sys.modules if m.split(".")[0] in PROJECT)}))
"""


# ---- running them ----------------------------------------------------------------------

class Procs:
    """Starts subprocesses with stdout/stderr in files; kills the ones still alive at teardown."""

    def __init__(self, log_dir: str):
        self.log_dir, self.procs, self.lock, self.closed = log_dir, [], threading.Lock(), False

    def start(self, name: str, program: str, args: dict, project: bool = True):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("PYTHONPATH", None)
        if project:  # the tree under test, even if another checkout is installed editable
            env["PYTHONPATH"] = REPO
        cwd = os.path.join(self.log_dir, name + ".cwd")
        os.makedirs(cwd, exist_ok=True)
        out, err = (open(os.path.join(self.log_dir, f"{name}.{s}"), "w") for s in ("out", "err"))
        with self.lock:
            if self.closed:
                raise RuntimeError("the module's tests are over")
            # a session of its own: SIGKILL goes to its process group, grandchildren included
            p = subprocess.Popen([sys.executable, "-c", program, json.dumps(args)], cwd=cwd,
                                 env=env, stdout=out, stderr=err, start_new_session=True)
            p.name, p.started = name, time.time()
            self.procs.append(p)
        out.close()
        err.close()
        return p

    def output(self, p, stream: str = "out") -> str:
        with open(os.path.join(self.log_dir, f"{p.name}.{stream}")) as f:
            return f.read()

    def finish(self, p, timeout: float = TIMEOUT) -> str:
        """Waits for p; its stdout if it succeeded, else an AssertionError with its stderr."""
        try:
            p.wait(timeout=max(1.0, timeout - (time.time() - p.started)))
        except subprocess.TimeoutExpired:
            self.kill(p)
            raise AssertionError(f"{p.name}: no result after {timeout} s")
        if p.returncode != 0:
            raise AssertionError(f"{p.name} exited with {p.returncode}:\n"
                                 + self.output(p, "err")[-4000:])
        return self.output(p)

    @staticmethod
    def kill(p):
        if p.poll() is None:  # not reaped yet, so the pid and its group are still ours
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        p.wait()

    def kill_all(self):
        with self.lock:
            self.closed = True
            for p in self.procs:
                self.kill(p)


def _run_args(examples: str, out: str, pause_at: int = 0, export: bool = True) -> dict:
    return {"overrides": TRAIN, "examples": examples, "out": out, "pause_at": pause_at,
            "export": export}


def _read_json(path: str):
    with open(path) as f:
        return json.load(f)


def _json_lines(text: str):
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _mirrored_job(procs: Procs, examples: str, work: str) -> dict:
    result = os.path.join(work, "mirrored.pkl")
    procs.finish(procs.start("mirrored", MIRRORED_STEP, {
        "overrides": MIRRORED, "examples": examples, "out": os.path.join(work, "mirrored"),
        "result": result}))
    with open(result, "rb") as f:
        return pickle.load(f)


def _reference_job(procs: Procs, examples: str, work: str) -> dict:
    out = os.path.join(work, "reference")
    args = _run_args(examples, out, export=False)
    stdout = procs.finish(procs.start("reference", TRAIN_RUN, args))
    return {"out": out, "lines": _json_lines(stdout)}


def _resume_job(procs: Procs, examples: str, work: str) -> dict:
    out = os.path.join(work, "resumed")
    ckpt_state = os.path.join(out, "checkpoints", "checkpoint")
    p = procs.start("killed", TRAIN_RUN, _run_args(examples, out, pause_at=PAUSE_AT))
    while not (os.path.exists(ckpt_state) and "PAUSED" in procs.output(p)):  # poll the files
        if p.poll() is not None:
            raise AssertionError(f"the run to kill exited with {p.returncode}:\n"
                                 + procs.output(p, "err")[-4000:])
        if time.time() - p.started > TIMEOUT:
            raise AssertionError(f"no checkpoint after {TIMEOUT} s")
        time.sleep(0.5)
    at_kill = {"checkpoints": sorted(os.listdir(os.path.dirname(ckpt_state))),
               "history": _read_json(os.path.join(out, "history.json"))}
    procs.kill(p)  # SIGKILL, mid-training
    killed = {"returncode": p.returncode, "lines": _json_lines(procs.output(p)), **at_kill}
    again = procs.start("resumed", TRAIN_RUN, _run_args(examples, out))
    stdout = procs.finish(again)
    return {"out": out, "killed": killed, "lines": _json_lines(stdout),
            "log": procs.output(again, "err")}


def _export_job(procs: Procs, resume_future, src: str) -> dict:
    resumed = resume_future.result(timeout=3 * TIMEOUT)
    png = os.path.join(src, "GOPRO_Large", "train", "SEQ", "blur", "0.png")
    stdout = procs.finish(procs.start("export", LOAD_SAVED_MODEL, {
        "saved_model": os.path.join(resumed["out"], "saved_model"), "png": png,
        "project": list(PROJECT)}, project=False))
    return _json_lines(stdout)[-1]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """6 GoPro pairs of 64 x 96, ingested with 32-pixel training crops."""
    src = tmp_path_factory.mktemp("src")
    d = src / "GOPRO_Large" / "train" / "SEQ"
    for i in range(6):
        fx.write_pair(str(d / "blur" / f"{i}.png"), str(d / "sharp" / f"{i}.png"), (64, 96), i)
    out = str(tmp_path_factory.mktemp("examples"))
    run_ingest([IngestSource("gopro", str(src))], out, IngestOptions(train_crop_size=CROP))
    return str(src), out


@pytest.fixture(scope="module")
def jobs(request, ingested, tmp_path_factory):
    """{job: Future} for the jobs the selected tests of this module need, all started now."""
    wanted = set()
    for item in request.session.items:
        if item.path == request.path:
            wanted |= NEEDS.get(item.originalname, set())
    src, examples = ingested
    work = str(tmp_path_factory.mktemp("train"))
    procs = Procs(work)
    pool = ThreadPoolExecutor(max_workers=4)
    futures = {}
    if "mirrored" in wanted:
        futures["mirrored"] = pool.submit(_mirrored_job, procs, examples, work)
    if "reference" in wanted:
        futures["reference"] = pool.submit(_reference_job, procs, examples, work)
    if "resume" in wanted:
        futures["resume"] = pool.submit(_resume_job, procs, examples, work)
    if "export" in wanted:
        futures["export"] = pool.submit(_export_job, procs, futures["resume"], src)
    yield futures
    procs.kill_all()
    pool.shutdown(wait=True)


# ---- the tests -------------------------------------------------------------------------

def test_mirrored_step_matches_the_default_strategy(jobs):
    """Two replicas do what one device does, each part compared where the comparison is sound.

    The update: one device applying the gradients the mirrored step applied (their sum over the
    replicas) to the same state does the same operations on the same numbers, so every weight,
    EMA entry, Adam moment and the step counter must equal the mirrored run's bit for bit.

    The gradients: the mirrored step's sum over two halves against the full batch's gradient on
    one device. They are the same sums in another order (measured: the second replica's graph
    also accumulates the backward pass's branches in another order), so single entries that
    nearly cancel (e.g. a bias in front of a normalization, whose exact gradient is 0) can
    differ by any relative amount: comparing them entry by entry, or Adam's moments made of
    them, is a coin flip. The relative 2-norm of the whole difference is bounded instead by the
    rounding of all entries together (measured 3.1e-7 and 3.5e-7 at the two steps), while the faults
    this test exists for (a loss scaled by the replica's batch instead of the global one, a
    missing all-reduce) make it >= 0.5. Metrics are means of non-negative terms (L1, MSE), so
    their relative rounding error under any order is about log2(n) * 2^-24 (~1e-6) for the
    n = 4 x 32 x 32 x 3 terms; rtol 1e-5 holds them.
    """
    r = jobs["mirrored"].result(timeout=TIMEOUT)
    assert r["replicas"] == 2
    n_state, n_weights, n_ema = r["sizes"]
    for i, step in enumerate(r["steps"]):
        assert step["ref_metrics"].keys() == step["dis_metrics"].keys()
        for k, v in step["ref_metrics"].items():
            np.testing.assert_allclose(step["dis_metrics"][k], v, rtol=1e-5, err_msg=k)
        ref = np.concatenate([g.ravel() for g in step["ref_grads"]]).astype(np.float64)
        dis = np.concatenate([g.ravel() for g in step["dis_grads"]]).astype(np.float64)
        assert np.linalg.norm(dis - ref) <= 1e-5 * np.linalg.norm(ref), f"step {i + 1}"
        mic, dis = step["mic_state"], step["dis_state"]
        assert len(mic) == len(dis) == n_state
        for j in range(n_state):  # weights, EMA, optimizer (iterations, m, v), step counter
            np.testing.assert_array_equal(dis[j], mic[j], err_msg=f"step {i + 1}, state {j}")
        assert int(dis[-1]) == 31 + i  # the step counter
        assert step["copies_per_variable"] == 2 and step["replica_spread"] == 0.0
    first = r["steps"][0]["dis_state"]
    moved = max(float(np.max(np.abs(first[j] - r["init"][j]))) for j in range(n_weights))
    assert moved > 1e-6, "the step did not change the weights"
    for got, want in zip(r["exported_ema"], r["steps"][-1]["dis_state"][n_weights:n_weights + n_ema]):
        np.testing.assert_array_equal(got, want)


def test_resume_after_sigkill_ends_with_the_uninterrupted_weights(jobs, ingested):
    import tensorflow as tf

    ref, res = jobs["reference"].result(timeout=TIMEOUT), jobs["resume"].result(timeout=2 * TIMEOUT)
    killed = res["killed"]
    assert killed["returncode"] == -signal.SIGKILL
    # killed after step 3, with the step-2 checkpoint as the latest one
    assert [r["step"] for r in killed["lines"] if "step" in r] == [1, 2, 3]
    assert "ckpt-2.index" in killed["checkpoints"] and "ckpt-4.index" not in killed["checkpoints"]
    assert [h["step"] for h in killed["history"]] == [1, 2]
    # the rerun continued from step 2 (not 0, not 3) and stopped at STEPS, with an export
    assert "resumed from" in res["log"] and "ckpt-2 at step 2" in res["log"], res["log"][-2000:]
    assert [r["step"] for r in res["lines"] if "step" in r] == list(range(3, STEPS + 1))
    assert res["lines"][-1] == {"done": STEPS}
    assert os.path.exists(os.path.join(res["out"], "saved_model", "saved_model.pb"))
    assert os.path.exists(os.path.join(res["out"], "saved_model", "deblur.json"))
    # the same losses, step by step (history.json: steps 1-2 from the killed run, 3-6 rerun)
    history = _read_json(os.path.join(res["out"], "history.json"))
    ref_history = _read_json(os.path.join(ref["out"], "history.json"))
    steps = list(range(1, STEPS + 1))
    assert [h["step"] for h in history] == [h["step"] for h in ref_history] == steps
    strip = lambda h: {k: v for k, v in h.items() if k != "seconds"}  # noqa: E731
    assert [strip(h) for h in history] == [strip(h) for h in ref_history]
    # and the same final state, bit for bit: seeded initial weights, stateless per-element
    # randomness, the input iterator restored from the checkpoint, deterministic CPU kernels
    _assert_same_final_checkpoint(res["out"], ref["out"])
    # asking a run that is at step 6 for 4 steps is a mistake, not a silent no-op that rewrote
    # experiment.json with steps 4
    from trainer import experiments
    from trainer import train as train_lib

    before = _read_json(os.path.join(res["out"], "experiment.json"))
    with pytest.raises(ValueError, match=f"already trained to step {STEPS}, past the requested 4"):
        train_lib.train(experiments.get("tiny", **TRAIN).replace(train={"steps": 4}),
                        ingested[1], res["out"])
    assert _read_json(os.path.join(res["out"], "experiment.json")) == before


def _assert_same_final_checkpoint(out_a: str, out_b: str) -> None:
    """Both runs end at ckpt-STEPS with the same state, bit for bit: seeded initial weights,
    stateless per-element randomness, the input iterator restored from the checkpoint,
    deterministic CPU kernels."""
    import tensorflow as tf

    paths = [tf.train.latest_checkpoint(os.path.join(out, "checkpoints")) for out in (out_a, out_b)]
    assert [os.path.basename(p) for p in paths] == [f"ckpt-{STEPS}"] * 2
    readers = [tf.train.load_checkpoint(p) for p in paths]
    dtypes = readers[0].get_variable_to_dtype_map()
    assert dtypes == readers[1].get_variable_to_dtype_map()
    compared = 0
    for name, dtype in dtypes.items():
        if dtype in (tf.variant, tf.string):  # the iterator's state, the object graph
            continue
        np.testing.assert_array_equal(readers[0].get_tensor(name), readers[1].get_tensor(name),
                                      err_msg=name)
        compared += 1
    n_ema = sum(name.startswith("ema/") for name in dtypes)
    assert n_ema > 0 and compared > 4 * n_ema  # the model (via the optimizer), EMA, Adam m, v
    assert int(readers[0].get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == STEPS


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(jobs, ingested, tmp_path, caplog,
                                                            monkeypatch):
    """The newest checkpoint's data file truncated (a disk full, a killed copy): training warns,
    naming it, resumes from the one before and ends where the uninterrupted run ended; with
    every checkpoint damaged it fails in one line naming them."""
    import glob
    import logging
    import shutil

    from trainer import experiments
    from trainer import train as train_lib

    ref = jobs["reference"].result(timeout=TIMEOUT)
    run = str(tmp_path / "run")
    shutil.copytree(ref["out"], run)

    def damage(step):
        data = glob.glob(os.path.join(run, "checkpoints", f"ckpt-{step}.data-*"))[0]
        with open(data, "r+b") as f:
            f.truncate(os.path.getsize(data) // 2)

    damage(STEPS)
    monkeypatch.setattr("trainer.export.export_saved_model", lambda trainer, path, defaults=None: path)
    exp = experiments.get("tiny", **TRAIN)
    with caplog.at_level(logging.WARNING, logger="trainer.train"):
        result = train_lib.train(exp, ingested[1], run)
    assert f"checkpoint {run}/checkpoints/ckpt-{STEPS} is unreadable" in caplog.text
    assert f"resumed from {run}/checkpoints/ckpt-{STEPS - CHECKPOINT_EVERY} at step " \
           f"{STEPS - CHECKPOINT_EVERY}" in caplog.text
    assert result["step"] == STEPS
    _assert_same_final_checkpoint(run, ref["out"])
    for step in range(CHECKPOINT_EVERY, STEPS + 1, CHECKPOINT_EVERY):
        damage(step)
    with pytest.raises(ValueError, match=r"no readable checkpoint in .*ckpt-6 \(.*ckpt-2 \("):
        train_lib.train(exp, ingested[1], run)


def test_saved_model_deblurs_without_the_project(jobs):
    r = jobs["export"].result(timeout=3 * TIMEOUT)
    assert r["signatures"] == ["deblur", "serving_default"]
    for sig in ("deblur", "serving_default"):
        assert r[sig]["out"] == r[sig]["in"] and r[sig]["dtype"] == "uint8", r[sig]
        assert r[sig]["std"] > 0, r[sig]
    assert r["small"]["out"] == r["small"]["in"] and r["small"]["dtype"] == "uint8", r["small"]
    assert "samples must be >= 1" in r["samples_0"]
    assert r["same_seed_equal"]
    assert r["other_seed_mean_abs_diff"] > 0
    assert r["project_modules"] == []


def test_train_cli_one_line_errors(tmp_path, capsys):
    from deblur import cli

    missing = tmp_path / "nowhere"
    assert cli.main(["train", "--examples", str(missing), "--out", str(tmp_path / "o1")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"deblur: error: --examples {missing} is not a directory"
    (tmp_path / "empty").mkdir()
    assert cli.main(["train", "--examples", str(tmp_path / "empty"), "--out", str(tmp_path / "o2"),
                     "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("deblur: error: no TFRecord files"), err
    assert not (tmp_path / "o2").exists()  # a failed train leaves no empty --out behind


def test_tensorboard_shows_each_step_once_after_a_resume(tmp_path):
    """The killed run logged steps past its last checkpoint; the resumed run logs them again.
    Only the resumed run's values of those steps remain."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import event_accumulator as ea

    from trainer.train import _purge_tensorboard_after

    tb = str(tmp_path / "tensorboard")
    killed = tf.summary.create_file_writer(tb)
    with killed.as_default():
        for step in (1, 2, 3, 4):  # checkpoint at 2, killed after 4
            tf.summary.scalar("loss", float(step), step=step)
    killed.close()
    _purge_tensorboard_after(tb, 2)
    resumed = tf.summary.create_file_writer(tb)
    with resumed.as_default():
        for step in (3, 4, 5):
            tf.summary.scalar("loss", 10.0 * step, step=step)
    resumed.close()
    acc = ea.EventAccumulator(tb, size_guidance={ea.TENSORS: 0}, purge_orphaned_data=False)
    acc.Reload()
    got = sorted((e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors("loss"))
    assert got == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]


def test_progress_in_a_log_file_is_a_plain_line_every_5_percent(ingested, tmp_path, capsys,
                                                                monkeypatch):
    """tqdm wrote ~124 bytes a step into non-interactive logs (~124 MB at 1M steps)."""
    from trainer import experiments
    from trainer import train as train_lib

    monkeypatch.setattr("trainer.export.export_saved_model", lambda trainer, path, defaults=None: path)
    exp = experiments.get("tiny", **TRAIN).replace(train={"steps": 40, "checkpoint_every": 40})
    train_lib.train(exp, ingested[1], str(tmp_path / "run"), progress=True)
    err = capsys.readouterr().err  # pytest's capture: not a terminal
    lines = [ln for ln in err.splitlines() if ln.startswith("train: step ")]
    assert [ln.split()[2] for ln in lines] == [f"{s}/40," for s in range(2, 41, 2)]
    assert "\r" not in err and "it/s" not in err and "step/s" not in err
