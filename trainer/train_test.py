"""The training loop (train.py) and its export (export.py, sampling.py), end to end on CPU.

Every check here needs a TensorFlow process of its own: two logical CPUs have to be configured
before TensorFlow starts, a run has to be SIGKILLed, two processes have to train together as
workers, and the SavedModel has to be loaded by a process that never imported this project.
Tracing a training step costs tens of CPU seconds, so the module fixture `jobs` starts the
subprocesses of the selected tests together, on background threads, and each test waits for
the jobs it checks:

  mirrored     one script: two steps under MirroredStrategy over two logical CPUs, each also
               taken by one device from the same state (full batch; and the applied
               gradients), then three free-running steps of both from one state
  two_workers  the same script in two processes under MultiWorkerMirroredStrategy (TF_CONFIG
               with two localhost workers); the chief compares with one device
  workers_cli  `deblur train` as two workers with the same --out: the non-chief worker holds
               still after step 3 and is SIGKILLed, the chief must stop in one line; then both
               are started again and resume from the chief's step-2 checkpoint to the end
  reference    an uninterrupted run of STEPS steps (checkpoint every 2)
  loop         the same run at steps_per_loop 4: the reference's final state, bit for bit
  resume       the same run, SIGKILLed after its first checkpoint (it holds still after step 3,
               so the kill lands between checkpoints every time), then rerun: it has to go on
               from step 2 and end with the reference's weights, bit for bit
  export       loads the resumed run's SavedModel in a process that can import TensorFlow,
               numpy and PIL but not this project, and deblurs with both signatures
  bf16         two steps in mixed bfloat16 with an export; `signatures` loads it and the
               float32 export (resume) without the project and compares their interfaces
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

from components.ingest.beam_ingest import run_ingest
from components.ingest.sources import IngestOptions, IngestSource
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
DISTRIBUTED = {"model": MODEL, "data": {"crop_size": CROP}, "train": {"global_batch_size": 4}}
FREE_STEPS = 3
# steps_per_loop 4 with a log at 5 and checkpoints at 6: calls of 4 (cut at the image summary
# at 4), 1 and 1 steps
LOOP = {**TRAIN, "train": {**TRAIN["train"], "steps_per_loop": 4, "log_every": 5,
                           "checkpoint_every": 6}}
BF16 = {**TRAIN, "train": {**TRAIN["train"], "steps": 2, "mixed_precision": "bfloat16"}}
PROJECT = ("core", "metrics", "trainer", "components", "pipelines", "deblur", "tests", "benchmarks")
# which background jobs each test waits for (only the selected tests' jobs are started)
NEEDS = {"test_mirrored_step_matches_the_default_strategy": {"mirrored"},
         "test_two_workers_match_one_process": {"two_workers"},
         "test_two_workers_write_once_stop_on_a_lost_worker_and_resume": {"workers_cli"},
         "test_a_worker_lost_before_any_checkpoint_says_none_was_written": {"workers_early"},
         "test_a_damaged_checkpoint_falls_back_to_the_previous_one": {"reference"},
         "test_resume_after_sigkill_ends_with_the_uninterrupted_weights": {"reference", "resume"},
         "test_steps_per_loop_ends_with_the_one_step_weights": {"reference", "loop"},
         "test_saved_model_deblurs_without_the_project": {"resume", "export"},
         "test_bfloat16_trains_and_exports_the_float32_interface": {"bf16", "resume",
                                                                     "signatures"}}

# ---- the subprocess programs (JSON arguments in argv[1]) ---------------------------------

TRAIN_RUN = r"""
import json, sys, time
from trainer import experiments, train
a = json.loads(sys.argv[1])
exp = experiments.get("tiny", **a["overrides"])
if not a["export"]:  # the reference run: the export reads the EMA, it changes no training state
    from trainer import export
    export.export_saved_model = lambda trainer, path, **kw: path
def on_step(step, row):
    print(json.dumps({"step": step, "loss": row["loss"]}), flush=True)
    if step == a["pause_at"]:  # checkpoint 2 is written, step 3 is not: hold until SIGKILL
        print("PAUSED", flush=True)
        time.sleep(3600)
result = train.train(exp, a["examples"], a["out"], on_step=on_step)
print(json.dumps({"done": result["step"]}), flush=True)
"""

DISTRIBUTED_STEP = r"""
import json, os, pickle, sys
import numpy as np
import tensorflow as tf

a = json.loads(sys.argv[1])
if a["strategy"] == "mirrored":  # two logical CPUs, before anything initialises the devices
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from trainer import data as data_lib, diffusion, experiments, train

exp = experiments.get("tiny", **a["overrides"])
# the strategy first: MultiWorkerMirroredStrategy (TF_CONFIG names this process's peer) starts
# its collectives before other TensorFlow work
strategy = (tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]) if a["strategy"] == "mirrored"
            else train.make_strategy(exp.train))
print("strategy", train.describe_strategy(strategy, False), file=sys.stderr, flush=True)
gb = exp.train.global_batch_size
noise = train.add_diffusion_noise(diffusion.TrainingSchedule(exp.diffusion), exp.train.seed)
ds = data_lib.training_dataset(exp.data_config(a["examples"]), gb, seed=0).enumerate().map(noise)
batches = [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds.take(2 + a["free_steps"])]

class Recording(train.Trainer):
    # a Trainer whose step also returns the gradients it applied (summed over the replicas),
    # while `record` is set when the step is traced

    record = True

    def _replica_step(self, batch):
        if not self.record:
            return super()._replica_step(batch)
        grads, out = self.replica_gradients(batch)
        out["finite"] = self.apply_if_finite(grads, train.all_finite(out["loss"], grads))
        return {**out, **{f"grad/{i}": g for i, g in enumerate(grads)}}

dis = Recording(exp, a["out"], strategy)
# the full batch on one device, and one device applying dis's gradients (both local: a worker
# that does not report leaves them out)
ref = Recording(exp, a["out"], tf.distribute.get_strategy()) if a["report"] else None
mic = train.Trainer(exp, a["out"], tf.distribute.get_strategy()) if a["report"] else None
dis.step.assign(30)  # w(step) > 0: the diffusion loss takes part (w = 0 at step 0)
replicas = strategy.num_replicas_in_sync
n = gb // replicas  # replica r gets examples [r n, (r + 1) n) of the global batch

def state(t):
    return list(t.model.weights) + list(t.ema) + list(t.optimizer.variables) + [t.step]

def local(v):
    v = v.value if isinstance(v, keras.Variable) else v
    return [np.asarray(c) for c in strategy.experimental_local_results(v)]

def split(m):
    return ({k: float(v) for k, v in m.items() if not k.startswith("grad/")},
            [np.asarray(m[f"grad/{i}"]) for i in range(len(dis.variables))])

def assign(t, values):
    for mine, value in zip(state(t), values):
        mine.assign(value)

apply_step = a["report"] and tf.function(
    lambda grads: (mic.apply_gradients(grads), mic.step.assign_add(1)))
res = {"replicas": replicas, "workers": train.num_workers(strategy), "chief": train.is_chief(strategy),
       "sizes": [len(state(dis)), len(dis.model.weights), len(dis.ema)],
       "init": [np.array(v.numpy()) for v in dis.model.weights], "steps": []}
for batch in batches[:2]:
    before = [np.array(v.numpy()) for v in state(dis)]
    dis_metrics, dis_grads = split(dis.train_step(strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.nest.map_structure(
            lambda v: tf.constant(v[ctx.replica_id_in_sync_group * n:][:n]), batch))))
    if not a["report"]:
        continue
    for t in (ref, mic):  # every step starts from the distributed run's state
        assign(t, before)
    ref_metrics, ref_grads = split(ref.train_step(tf.nest.map_structure(tf.constant, batch)))
    apply_step([tf.constant(g) for g in dis_grads])
    res["steps"].append({
        "ref_metrics": ref_metrics, "dis_metrics": dis_metrics,
        "ref_grads": ref_grads, "dis_grads": dis_grads,
        "mic_state": [np.array(v.numpy()) for v in state(mic)],
        "dis_state": [np.array(v.numpy()) for v in state(dis)],
        "copies_per_variable": min(len(local(v)) for v in state(dis)),
        "replica_spread": max(float(np.max(np.abs(c - local(v)[0])))
                              for v in state(dis) for c in local(v))})
# the export reads the EMA of the distributed variables
from trainer import export
res["exported_ema"] = [np.array(v.numpy()) for v in export.ema_model(dis).trainable_variables]

# free-running: both from the same state, free_steps steps in train_loop calls of 1 then the
# rest, each taking its batches from a dataset in the graph (this process's share of them)
if a["report"]:
    assign(ref, [np.array(v.numpy()) for v in state(dis)])
start = [np.array(v.numpy()) for v in dis.model.trainable_variables]
rest = tf.data.Dataset.from_tensor_slices(
    tf.nest.map_structure(lambda *xs: np.stack(xs), *batches[2:]))
def shares(ctx):  # a pipeline's replicas take its consecutive elements, in replica order
    per = replicas // ctx.num_input_pipelines
    return rest.flat_map(lambda b: tf.data.Dataset.range(per).map(lambda j: tf.nest.map_structure(
        lambda v: v[(ctx.input_pipeline_id * per + j) * n:][:n], b)))

dist = iter(strategy.distribute_datasets_from_function(shares))
full = iter(rest)
dis.record = False
free = {"dis_loss": [], "ref_loss": []}
for k in (1, a["free_steps"] - 1):
    free["dis_loss"].append(float(dis.train_loop(dist, tf.constant(k, tf.int64))["loss"]))
    if a["report"]:
        ref.record = False
        free["ref_loss"].append(float(ref.train_loop(full, tf.constant(k, tf.int64))["loss"]))
free["start"] = start
free["dis"] = [np.array(v.numpy()) for v in dis.model.trainable_variables]
free["steps"] = [int(dis.step.numpy())]
if a["report"]:
    free["ref"] = [np.array(v.numpy()) for v in ref.model.trainable_variables]
    free["steps"].append(int(ref.step.numpy()))
res["free"] = free
res["final_state"] = [np.array(v.numpy()) for v in state(dis)]
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


WORKER_CLI = r"""
import json, sys, time
a = json.loads(sys.argv[1])
from trainer import train
if a["pause_at"]:  # hold still after that step until SIGKILL (the other worker then waits)
    run = train.train

    def paused(*args, **kwargs):
        def on_step(step, row):
            if step == a["pause_at"]:
                print("PAUSED", flush=True)
                time.sleep(3600)
        return run(*args, on_step=on_step, **kwargs)

    train.train = paused
from deblur import cli
sys.exit(cli.main(a["argv"]))
"""

SIGNATURES = r"""
import json, sys
import numpy as np
import tensorflow as tf

def spec(x):
    return [str(x.dtype.name), None if x.shape.rank is None else x.shape.as_list()]

def interface(path):
    model = tf.saved_model.load(path)
    out = {}
    for name, fn in sorted(model.signatures.items()):
        out[name] = {"in": {k: spec(v) for k, v in sorted(fn.structured_input_signature[1].items())},
                     "out": {k: spec(v) for k, v in sorted(fn.structured_outputs.items())}}
    for name in ("deblur_batch", "guide_features", "predict_noise"):
        fn = getattr(model, name).concrete_functions[0]
        out[name] = {"in": [spec(v) for v in tf.nest.flatten(fn.structured_input_signature)],
                     "out": [spec(v) for v in tf.nest.flatten(fn.structured_outputs)]}
    image = np.random.default_rng(0).integers(0, 256, (13, 21, 3), dtype=np.uint8)
    served = model.signatures["serving_default"](image=tf.constant(image))["image"]
    out["served"] = spec(served)
    return out

a = json.loads(sys.argv[1])
print(json.dumps({k: interface(v) for k, v in a["saved_models"].items()}))
"""


# ---- running them ----------------------------------------------------------------------

class Procs:
    """Starts subprocesses with stdout/stderr in files; kills the ones still alive at teardown."""

    def __init__(self, log_dir: str):
        self.log_dir, self.procs, self.lock, self.closed = log_dir, [], threading.Lock(), False

    def start(self, name: str, program: str, args: dict, project: bool = True,
              env: dict = None):
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
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

    def wait_for_pause(self, paused, ckpt_state: str, also=()):
        """Polls the files until `paused` printed PAUSED and ckpt_state exists; an
        AssertionError with the stderr of `paused` or of one of `also` that exits first."""
        while not (os.path.exists(ckpt_state) and "PAUSED" in self.output(paused)):
            for p in (paused, *also):
                if p.poll() is not None:
                    raise AssertionError(f"{p.name} exited with {p.returncode}:\n"
                                         + self.output(p, "err")[-4000:])
            if time.time() - paused.started > TIMEOUT:
                raise AssertionError(f"{paused.name}: no checkpoint and pause after {TIMEOUT} s")
            time.sleep(0.5)

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


def _distributed_args(examples: str, work: str, name: str, strategy: str,
                      report: bool = True) -> dict:
    return {"strategy": strategy, "overrides": DISTRIBUTED, "examples": examples,
            "out": os.path.join(work, name), "result": os.path.join(work, f"{name}.pkl"),
            "free_steps": FREE_STEPS, "report": report}


def _load_pickle(path: str):
    with open(path, "rb") as f:
        return pickle.load(f)


def _mirrored_job(procs: Procs, examples: str, work: str) -> dict:
    a = _distributed_args(examples, work, "mirrored", "mirrored")
    procs.finish(procs.start("mirrored", DISTRIBUTED_STEP, a))
    return _load_pickle(a["result"])


def _free_ports(n: int):
    """n distinct localhost ports nothing listens on now, below the ephemeral range (where the
    kernel picks the ports of outgoing connections, so a port there can be taken at any
    moment). Another process can still take one before the worker binds it: the callers start
    again on new ports when a worker says so (_PORT_TAKEN)."""
    import random
    import socket

    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        ephemeral = int(f.read().split()[0])
    ports = []
    while len(ports) < n:
        port = random.randrange(10000, max(10001 + n, ephemeral))
        with socket.socket() as sock:
            try:
                sock.bind(("localhost", port))
            except OSError:
                continue
        if port not in ports:
            ports.append(port)
    return ports


_PORT_TAKEN = ("Address already in use", "Could not start gRPC server", "could not serve on")


def _tf_config(ports, index: int) -> dict:
    return {"TF_CONFIG": json.dumps({"cluster": {"worker": [f"localhost:{p}" for p in ports]},
                                     "task": {"type": "worker", "index": index}})}


def _start_workers(procs: Procs, name: str, program: str, args, env=None, attempts: int = 3):
    """Two worker processes (args[i], env[i]) on fresh ports; started again on other ports when
    one could not bind its port (taken between _free_ports and its start)."""
    for attempt in range(attempts):
        ports = _free_ports(2)
        started = [procs.start(f"{name}{i}.{attempt}", program, args[i],
                               env={**_tf_config(ports, i), **((env or [{}, {}])[i])})
                   for i in range(2)]
        while True:  # until both run past their server start, or one failed to bind
            errs = [procs.output(p, "err") for p in started]
            taken = any(t in e for e in errs for t in _PORT_TAKEN)
            if taken or all("strategy" in e or p.poll() is not None
                            for p, e in zip(started, errs)):
                break
            if time.time() - started[0].started > TIMEOUT:
                raise AssertionError(f"{name}: the workers did not start in {TIMEOUT} s")
            time.sleep(0.5)
        if not taken:
            return started
        for p in started:
            procs.kill(p)
    raise AssertionError(f"{name}: no free ports in {attempts} attempts")


def _two_workers_job(procs: Procs, examples: str, work: str) -> list:
    args = [_distributed_args(examples, work, f"worker{i}", "multi_worker", report=i == 0)
            for i in range(2)]
    for p in _start_workers(procs, "two_workers", DISTRIBUTED_STEP, args):
        procs.finish(p)
    return [_load_pickle(a["result"]) for a in args]


def _worker_argv(examples: str, out: str) -> list:
    return ["train", "--examples", examples, "--out", out, "--set", f"model={json.dumps(MODEL)}",
            "--set", f"data.crop_size={CROP}", "--set", "train.global_batch_size=4",
            "--set", f"train.steps={STEPS}", "--set", f"train.checkpoint_every={CHECKPOINT_EVERY}",
            "--set", "train.log_every=1"]


def _workers_cli_job(procs: Procs, examples: str, work: str) -> dict:
    out = os.path.join(work, "workers")
    argv = _worker_argv(examples, out)
    tmp = [os.path.join(work, f"worker1.tmp{k}") for k in (0, 1)]
    for d in tmp:
        os.makedirs(d)
    # the non-chief worker holds still after step 3; the chief then waits in step 4
    chief, other = _start_workers(
        procs, "killed", WORKER_CLI, [{"argv": argv, "pause_at": 0},
                                      {"argv": argv, "pause_at": PAUSE_AT}],
        env=[{}, {"TMPDIR": tmp[0]}])
    ckpt_state = os.path.join(out, "checkpoints", "checkpoint")
    procs.wait_for_pause(other, ckpt_state, also=(chief,))
    procs.kill(other)  # SIGKILL
    try:
        chief.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        procs.kill(chief)
        raise AssertionError(f"the chief went on for {TIMEOUT} s after its peer was killed")
    killed = {"returncode": chief.returncode, "err": procs.output(chief, "err"),
              "checkpoints": sorted(os.listdir(os.path.dirname(ckpt_state))),
              "history": _read_json(os.path.join(out, "history.json"))}
    again = _start_workers(procs, "again", WORKER_CLI, [{"argv": argv, "pause_at": 0}] * 2,
                           env=[{}, {"TMPDIR": tmp[1]}])
    runs = [{"out": procs.finish(p), "err": procs.output(p, "err")} for p in again]
    return {"out": out, "killed": killed, "again": runs, "worker_tmp": sorted(os.listdir(tmp[1]))}


def _workers_early_job(procs: Procs, examples: str, work: str) -> dict:
    """`deblur train` as two workers; the non-chief holds still after step 1, before the first
    checkpoint (step 2), and is SIGKILLed: what the chief says."""
    out = os.path.join(work, "workers_early")
    argv = _worker_argv(examples, out)
    tmp = os.path.join(work, "early.tmp")
    os.makedirs(tmp)
    chief, other = _start_workers(
        procs, "early", WORKER_CLI, [{"argv": argv, "pause_at": 0},
                                     {"argv": argv, "pause_at": 1}], env=[{}, {"TMPDIR": tmp}])
    while "PAUSED" not in procs.output(other):
        for p in (chief, other):
            if p.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.returncode}:\n"
                                     + procs.output(p, "err")[-4000:])
        if time.time() - other.started > TIMEOUT:
            raise AssertionError(f"{other.name}: no pause after {TIMEOUT} s")
        time.sleep(0.5)
    procs.kill(other)  # SIGKILL
    try:
        chief.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        procs.kill(chief)
        raise AssertionError(f"the chief went on for {TIMEOUT} s after its peer was killed")
    return {"out": out, "returncode": chief.returncode, "err": procs.output(chief, "err")}


def _reference_job(procs: Procs, examples: str, work: str) -> dict:
    out = os.path.join(work, "reference")
    args = _run_args(examples, out, export=False)
    stdout = procs.finish(procs.start("reference", TRAIN_RUN, args))
    return {"out": out, "lines": _json_lines(stdout)}


def _loop_job(procs: Procs, examples: str, work: str) -> dict:
    out = os.path.join(work, "loop")
    args = {**_run_args(examples, out, export=False), "overrides": LOOP}
    stdout = procs.finish(procs.start("loop", TRAIN_RUN, args))
    return {"out": out, "lines": _json_lines(stdout)}


def _bf16_job(procs: Procs, examples: str, work: str) -> dict:
    out = os.path.join(work, "bf16")
    stdout = procs.finish(procs.start("bf16", TRAIN_RUN, {**_run_args(examples, out),
                                                          "overrides": BF16}))
    return {"out": out, "lines": _json_lines(stdout)}


def _signatures_job(procs: Procs, bf16_future, resume_future) -> dict:
    bf16, resumed = bf16_future.result(timeout=TIMEOUT), resume_future.result(timeout=3 * TIMEOUT)
    stdout = procs.finish(procs.start("signatures", SIGNATURES, {"saved_models": {
        "bfloat16": os.path.join(bf16["out"], "saved_model"),
        "float32": os.path.join(resumed["out"], "saved_model")}}, project=False))
    return _json_lines(stdout)[-1]


def _resume_job(procs: Procs, examples: str, work: str) -> dict:
    out = os.path.join(work, "resumed")
    ckpt_state = os.path.join(out, "checkpoints", "checkpoint")
    p = procs.start("killed", TRAIN_RUN, _run_args(examples, out, pause_at=PAUSE_AT))
    procs.wait_for_pause(p, ckpt_state)
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
    # at most 5 jobs at once (the jobs waiting for others last): up to 7 TensorFlow processes
    pool = ThreadPoolExecutor(max_workers=5)
    futures = {}
    for name, job in (("mirrored", _mirrored_job), ("reference", _reference_job),
                      ("resume", _resume_job), ("two_workers", _two_workers_job),
                      ("workers_cli", _workers_cli_job), ("workers_early", _workers_early_job),
                      ("loop", _loop_job),
                      ("bf16", _bf16_job)):
        if name in wanted:
            futures[name] = pool.submit(job, procs, examples, work)
    if "export" in wanted:
        futures["export"] = pool.submit(_export_job, procs, futures["resume"], src)
    if "signatures" in wanted:
        futures["signatures"] = pool.submit(_signatures_job, procs, futures["bf16"],
                                            futures["resume"])
    yield futures
    procs.kill_all()
    pool.shutdown(wait=True)


# ---- the tests -------------------------------------------------------------------------

def _assert_matches_one_device(r: dict) -> None:
    """The comparisons of a distributed run's result (DISTRIBUTED_STEP) with one device; their
    tolerances are argued in test_mirrored_step_matches_the_default_strategy."""
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
        assert step["replica_spread"] == 0.0
    first = r["steps"][0]["dis_state"]
    moved = max(float(np.max(np.abs(first[j] - r["init"][j]))) for j in range(n_weights))
    assert moved > 1e-6, "the step did not change the weights"
    for got, want in zip(r["exported_ema"], r["steps"][-1]["dis_state"][n_weights:n_weights + n_ema]):
        np.testing.assert_array_equal(got, want)
    free = r["free"]
    assert free["steps"] == [32 + FREE_STEPS] * 2
    np.testing.assert_allclose(free["dis_loss"], free["ref_loss"], rtol=1e-5)
    updates = [np.concatenate([(w - w0).ravel() for w, w0 in zip(free[run], free["start"])])
               .astype(np.float64) for run in ("dis", "ref")]
    assert np.linalg.norm(updates[0] - updates[1]) <= 1e-4 * np.linalg.norm(updates[1])


@pytest.mark.slow
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

    Free-running: both runs then take FREE_STEPS steps from one state on the same global
    batches (train_loop calls of 1 and 2 steps, batches from the iterator in the graph), each
    on its own state. Step by step they differ only by the gradients' summation order (the
    bound above), which Adam passes on: an entry's update lr * m / (sqrt(v) + eps) changes
    relatively as much as its gradient, except where its second moment is itself at rounding
    level, where it can change by up to ~lr. The relative 2-norm of the difference of the two
    runs' whole updates (w_end - w_start) measured 2.2e-6 (mirrored) and 2.1e-6 (two workers),
    no entry more than 3e-8 apart for updates of ~1e-3 each; the bound 1e-4 leaves 45x, and a
    missing all-reduce (each replica applying its own half's gradient) is O(1). (A loss scaled
    by the replica's batch would pass here, Adam being scale-free: the losses catch it.) The
    first free step's loss starts from one state (rtol 1e-5 as above); the third starts from
    weights 5e-9 apart in relative 2-norm (measured), far inside the same rtol.
    """
    r = jobs["mirrored"].result(timeout=TIMEOUT)
    _assert_matches_one_device(r)
    assert all(step["copies_per_variable"] == 2 for step in r["steps"])


@pytest.mark.slow
def test_two_workers_match_one_process(jobs):
    """Two processes under MultiWorkerMirroredStrategy (TF_CONFIG, RING all-reduce over gRPC
    on localhost), each feeding its half of every global batch, do what one device does: the
    comparisons and tolerances of the mirrored test (the chief reports them). Both workers end
    with the same state, bit for bit (the all-reduced gradients are the same numbers)."""
    chief, other = jobs["two_workers"].result(timeout=2 * TIMEOUT)
    assert (chief["workers"], chief["chief"], other["chief"]) == (2, True, False)
    _assert_matches_one_device(chief)
    for j, (a, b) in enumerate(zip(chief["final_state"], other["final_state"])):
        np.testing.assert_array_equal(a, b, err_msg=f"state {j}")


@pytest.mark.slow
def test_two_workers_write_once_stop_on_a_lost_worker_and_resume(jobs):
    """`deblur train` on two workers with the same --out: each logs its strategy, workers and
    replicas; only the chief writes --out (the other one's checkpoints go to its TMPDIR and are
    removed); a SIGKILLed worker ends the chief's run in one line naming the step and the
    checkpoint to resume from; both started again resume from it and finish the run."""
    r = jobs["workers_cli"].result(timeout=4 * TIMEOUT)
    out, killed = r["out"], r["killed"]
    errors = [ln for ln in killed["err"].splitlines() if ln.startswith("deblur: error:")]
    assert killed["returncode"] == 1 and len(errors) == 1, killed["err"][-3000:]
    assert errors[0].startswith(f"deblur: error: lost contact with another worker during step "
                                f"{PAUSE_AT + 1} ("), errors[0]
    # the checkpoint it names exists (the folder alone was named before)
    assert errors[0].endswith(f"resume from the newest checkpoint, {out}/checkpoints/ckpt-2 "
                              "(step 2)"), errors[0]
    assert killed["checkpoints"] == ["checkpoint", "ckpt-2.data-00000-of-00001", "ckpt-2.index"]
    assert [h["step"] for h in killed["history"]] == [1, 2]
    line = "MultiWorkerMirroredStrategy: 2 worker(s), 2 replica(s) in sync on CPU, XLA off"
    for i, run in enumerate(r["again"]):
        assert f"train: strategy {line}; task worker {i}" in run["err"], run["err"][-3000:]
        assert f"resumed from {out}/checkpoints/ckpt-2 at step 2" in run["err"]
        assert f"trained tiny to step {STEPS}" in run["out"]
    assert "not the chief" in r["again"][1]["err"] and "not the chief" in r["again"][1]["out"]
    assert r["worker_tmp"] == []  # the other worker's temporary checkpoints are gone
    assert sorted(os.listdir(out)) == ["checkpoints", "experiment.json", "history.json",
                                       "resumed.json", "saved_model", "tensorboard"]
    assert [r["step"] for r in _read_json(os.path.join(out, "resumed.json"))] == [2]
    assert sorted(f for f in os.listdir(os.path.join(out, "checkpoints"))
                  if f.endswith(".index")) == ["ckpt-2.index", "ckpt-4.index", "ckpt-6.index"]
    assert [h["step"] for h in _read_json(os.path.join(out, "history.json"))] == list(
        range(1, STEPS + 1))
    assert os.path.exists(os.path.join(out, "saved_model", "deblur.json"))


@pytest.mark.slow
def test_a_worker_lost_before_any_checkpoint_says_none_was_written(jobs):
    """The lost-worker line named OUT/checkpoints to resume from when no checkpoint had been
    written and that folder did not exist; now it says so, and what a rerun does."""
    r = jobs["workers_early"].result(timeout=2 * TIMEOUT)
    errors = _error_lines(r["err"])
    assert r["returncode"] == 1 and len(errors) == 1, r["err"][-3000:]
    assert errors[0].startswith("deblur: error: lost contact with another worker during step "
                                "2 ("), errors[0]
    assert errors[0].endswith("; no checkpoint was written yet: run all workers again to "
                              "start over from step 0"), errors[0]
    assert not os.path.exists(os.path.join(r["out"], "checkpoints"))


@pytest.mark.slow
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


def _assert_same_final_checkpoint(out_a: str, out_b: str, ignore=()) -> None:
    """Both runs end at ckpt-STEPS with the same state, bit for bit: seeded initial weights,
    stateless per-element randomness, the input iterator restored from the checkpoint,
    deterministic CPU kernels. `ignore`: names that may differ (e.g. save_counter)."""
    import tensorflow as tf

    paths = [tf.train.latest_checkpoint(os.path.join(out, "checkpoints")) for out in (out_a, out_b)]
    assert [os.path.basename(p) for p in paths] == [f"ckpt-{STEPS}"] * 2
    readers = [tf.train.load_checkpoint(p) for p in paths]
    dtypes = readers[0].get_variable_to_dtype_map()
    assert dtypes == readers[1].get_variable_to_dtype_map()
    compared = 0
    for name, dtype in dtypes.items():
        if dtype in (tf.variant, tf.string) or name.split("/")[0] in ignore:
            continue  # the iterator's state, the object graph
        np.testing.assert_array_equal(readers[0].get_tensor(name), readers[1].get_tensor(name),
                                      err_msg=name)
        compared += 1
    n_ema = sum(name.startswith("ema/") for name in dtypes)
    assert n_ema > 0 and compared > 4 * n_ema  # the model (via the optimizer), EMA, Adam m, v
    assert int(readers[0].get_tensor("step/.ATTRIBUTES/VARIABLE_VALUE")) == STEPS


@pytest.mark.slow
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
    monkeypatch.setattr("trainer.export.export_saved_model", lambda trainer, path, **kw: path)
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


@pytest.mark.slow
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

    monkeypatch.setattr("trainer.export.export_saved_model", lambda trainer, path, **kw: path)
    exp = experiments.get("tiny", **TRAIN).replace(train={"steps": 40, "checkpoint_every": 40})
    train_lib.train(exp, ingested[1], str(tmp_path / "run"), progress=True)
    err = capsys.readouterr().err  # pytest's capture: not a terminal
    lines = [ln for ln in err.splitlines() if ln.startswith("train: step ")]
    assert [ln.split()[2] for ln in lines] == [f"{s}/40," for s in range(2, 41, 2)]
    assert "\r" not in err and "it/s" not in err and "step/s" not in err


@pytest.mark.slow
def test_steps_per_loop_ends_with_the_one_step_weights(jobs):
    """steps_per_loop 4 (calls of 4, 1 and 1 steps: cut at the image summary at 4 and the log at
    5) ends with the state of one step per call, bit for bit: the same step graph on the same
    batches from the same iterator, in a tf.range loop. The rows it logs are the reference's."""
    ref, loop = jobs["reference"].result(timeout=TIMEOUT), jobs["loop"].result(timeout=TIMEOUT)
    assert [line["step"] for line in loop["lines"] if "step" in line] == [5, 6]
    _assert_same_final_checkpoint(loop["out"], ref["out"], ignore=("save_counter",))
    strip = lambda h: {k: v for k, v in h.items() if k != "seconds"}  # noqa: E731
    ref_rows = {h["step"]: strip(h) for h in _read_json(os.path.join(ref["out"], "history.json"))}
    rows = [strip(h) for h in _read_json(os.path.join(loop["out"], "history.json"))]
    assert rows == [ref_rows[5], ref_rows[6]]


@pytest.mark.slow
def test_bfloat16_trains_and_exports_the_float32_interface(jobs):
    """Mixed bfloat16 on this CPU (AVX512_BF16): finite losses, and an export whose signatures
    and functions take and return exactly what the float32 one's do (the export builds the EMA
    model in float32, whatever the training policy)."""
    bf16 = jobs["bf16"].result(timeout=TIMEOUT)
    losses = [line["loss"] for line in bf16["lines"] if "step" in line]
    assert len(losses) == 2 and np.all(np.isfinite(losses)), bf16["lines"]
    experiment = _read_json(os.path.join(bf16["out"], "saved_model", "deblur.json"))["experiment"]
    assert experiment["train"]["mixed_precision"] == "bfloat16"
    got = jobs["signatures"].result(timeout=3 * TIMEOUT)
    assert got["bfloat16"] == got["float32"]
    assert got["bfloat16"]["served"] == ["uint8", [13, 21, 3]]
    assert got["float32"]["serving_default"]["out"] == {"image": ["uint8", [None, None, 3]]}


def _nan_at(monkeypatch, index: int) -> None:
    """The training input's batch `index` (0-based) gets NaN sharp crops."""
    import tensorflow as tf

    from trainer import train as train_lib

    noise = train_lib.add_diffusion_noise

    def poisoned(schedule, seed):
        fn = noise(schedule, seed)

        def with_nan(i, batch):
            out = fn(i, batch)
            nan = tf.fill(tf.shape(out["x"]), float("nan"))
            return {**out, "x": tf.where(tf.equal(i, index), nan, out["x"])}

        return with_nan

    monkeypatch.setattr(train_lib, "add_diffusion_noise", poisoned)


def test_a_non_finite_step_stops_or_is_skipped_and_never_saved(ingested, tmp_path, monkeypatch):
    """A NaN in the third batch: with on_nonfinite "stop" training ends at step 3 in one line,
    inside a 4-step loop call, with no checkpoint and no export (the first checkpoint was due
    at 4); with "skip" the batch is counted, nothing of it applied, and the run ends with
    finite weights in its checkpoints and export."""
    import tensorflow as tf

    from trainer import experiments
    from trainer import train as train_lib

    exported = []
    monkeypatch.setattr("trainer.export.export_saved_model",
                        lambda trainer, path, **kw: exported.append(
                            [np.asarray(e.numpy()) for e in trainer.ema]) or path)
    _nan_at(monkeypatch, 2)
    exp = experiments.get("tiny", **TRAIN).replace(train={
        "steps_per_loop": 4, "checkpoint_every": 4, "log_every": 4, "image_summary_every": 100})
    stop = str(tmp_path / "stop")
    with pytest.raises(train_lib.TrainingStopped) as e:
        train_lib.train(exp, ingested[1], stop)
    assert str(e.value).startswith("non-finite loss or gradient at step 3 (loss nan); that "
                                   "step was not applied and nothing after step 0 was "
                                   "checkpointed or exported"), str(e.value)
    assert "\n" not in str(e.value)
    assert not os.path.exists(os.path.join(stop, "checkpoints")) and exported == []
    # "skip" within its bound: 1 of the 4 steps of the first call is 25%
    skip = str(tmp_path / "skip")
    result = train_lib.train(exp.replace(train={"on_nonfinite": "skip",
                                                "max_skipped_fraction": 0.5}), ingested[1], skip)
    assert result["step"] == STEPS and result["skipped"] == 1
    assert [(h["step"], h["skipped"]) for h in result["history"]] == [(4, 1), (6, 1)]
    assert len(exported) == 1 and all(np.all(np.isfinite(e)) for e in exported[0])
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(os.path.join(skip, "checkpoints")))
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype.is_floating:
            assert np.all(np.isfinite(reader.get_tensor(name))), name
    assert int(reader.get_tensor("skipped_steps/.ATTRIBUTES/VARIABLE_VALUE")) == 1
    # the skipped batch did not move the optimizer (its iterations: 5 of the 6 steps)
    assert int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE")) == STEPS - 1
    # past the default bound (0.01 of the steps so far), "skip" stops too: a run that skipped
    # 18 of 20 batches exported a NaN model with rc 0
    bound = str(tmp_path / "bound")
    with pytest.raises(train_lib.TrainingStopped) as e:
        train_lib.train(exp.replace(train={"on_nonfinite": "skip"}), ingested[1], bound)
    assert str(e.value).startswith(
        "1 of the 4 steps so far had a non-finite loss or gradient and were skipped (up to "
        "step 4), more than train.max_skipped_fraction=0.01; nothing after step 0 was "
        "checkpointed or exported"), str(e.value)
    assert not os.path.exists(os.path.join(bound, "checkpoints")) and len(exported) == 1


def test_non_finite_ema_weights_are_never_checkpointed_or_exported(ingested, tmp_path,
                                                                   monkeypatch):
    """Finite steps can still overflow the weights: the EMA (what the export serves) is
    checked before every checkpoint and before the export."""
    from trainer import experiments
    from trainer import train as train_lib

    exported = []
    monkeypatch.setattr("trainer.export.export_saved_model",
                        lambda trainer, path, **kw: exported.append(path) or path)
    apply = train_lib.Trainer.apply_gradients

    def overflowing(self, grads):
        apply(self, grads)
        self.ema[0].assign(self.ema[0] * float("inf"))

    monkeypatch.setattr(train_lib.Trainer, "apply_gradients", overflowing)
    exp = experiments.get("tiny", **TRAIN).replace(train={
        "steps": 2, "checkpoint_every": 2, "log_every": 2, "image_summary_every": 100,
        "on_nonfinite": "skip"})
    out = str(tmp_path / "out")
    with pytest.raises(train_lib.TrainingStopped) as e:
        train_lib.train(exp, ingested[1], out)
    assert str(e.value).startswith("the EMA weights are not finite at step 2 (1 of "), str(e.value)
    assert "nothing after step 0 was checkpointed or exported" in str(e.value)
    assert not os.path.exists(os.path.join(out, "checkpoints")) and exported == []


def test_train_set_overrides_the_experiment_like_run_local(tmp_path, capsys):
    """`deblur train --set SECTION.FIELD=VALUE`: values read as YAML (run-local's parser), a
    --set wins over a flag, and a typo or a wrong type fails in one line before training."""
    from deblur import cli
    from deblur.commands import train as train_commands

    base = ["train", "--examples", str(tmp_path), "--out", str(tmp_path / "o")]
    args = cli.build_parser().parse_args(base + [
        "--steps", "5", "--set", "train.steps=7", "--set", "train.steps_per_loop=10",
        "--set", "train.jit_compile=false", "--set", "model.guidance=none",
        "--set", "model.channel_multipliers=[1, 2]", "--set", "train.on_nonfinite=skip"])
    exp = train_commands.train_experiment(args)
    assert (exp.train.steps, exp.train.steps_per_loop, exp.train.jit_compile) == (7, 10, False)
    assert exp.train.on_nonfinite == "skip"
    assert (exp.model.guidance, exp.model.channel_multipliers) == ("none", (1, 2))
    for item, message in (("train.stepz=3", "train: unknown field(s) stepz"),
                          ("train.steps=many", "train.steps: expected int, got str 'many'"),
                          ("trainsteps", "--set 'trainsteps': expected KEY=VALUE"),
                          ("optimizer.lr=1", "unknown experiment section 'optimizer'"),
                          ("train.on_nonfinite=ignore", "on_nonfinite must be one of stop, skip"),
                          ("train.max_skipped_fraction=2", "max_skipped_fraction must be in [0, 1]"),
                          ("train.peer_timeout_s=0", "peer_timeout_s must be > 0 seconds")):
        assert cli.main(base + ["--set", item]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "o").exists()


def test_tf_config_decides_the_strategy(monkeypatch):
    """Several workers in TF_CONFIG: MultiWorkerMirroredStrategy (tested above with real
    processes); what it cannot run is refused in one line before any strategy is made."""
    from trainer import experiments
    from trainer import train as train_lib

    def cluster(cfg):
        monkeypatch.setenv("TF_CONFIG", json.dumps(cfg))
        return train_lib.tf_config_cluster()

    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert train_lib.tf_config_cluster() == {"workers": 1, "task": None}
    vertex = {"cluster": {"chief": ["a:1"], "worker": ["b:1", "c:1"]},
              "task": {"type": "worker", "index": 1}}
    assert cluster(vertex) == {"workers": 3, "task": ("worker", 1)}
    assert not train_lib.is_chief_task()
    cluster({**vertex, "task": {"type": "chief", "index": 0}})
    assert train_lib.is_chief_task()
    gke = {"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "worker", "index": 0}}
    assert cluster(gke) == {"workers": 2, "task": ("worker", 0)} and train_lib.is_chief_task()
    for cfg, message in (
            ({"cluster": {"worker": ["a:1"], "ps": ["b:1"]}, "task": {"type": "worker"}},
             "names ps tasks"),
            ({"cluster": {"worker": ["a:1", "b:1"]}, "task": {"type": "evaluator"}},
             "task must be a chief or a worker"),
            ("not json", "TF_CONFIG is not a JSON object")):
        monkeypatch.setenv("TF_CONFIG", cfg if isinstance(cfg, str) else json.dumps(cfg))
        with pytest.raises(ValueError, match=message):
            train_lib.tf_config_cluster()
    monkeypatch.setenv("TF_CONFIG", json.dumps(vertex))
    with pytest.raises(ValueError, match="names 3 workers but train.strategy is 'mirrored'"):
        train_lib.make_strategy(experiments.get("tiny", train={"strategy": "mirrored"}).train)


def test_loop_length_stops_at_every_event():
    from trainer import experiments
    from trainer.train import loop_length

    t = experiments.get("tiny", train={"steps": 25, "steps_per_loop": 10, "log_every": 4,
                                       "checkpoint_every": 10, "image_summary_every": 6}).train
    steps, step = [], 0
    while step < t.steps:
        step += loop_length(step, t, image_summaries=True)
        steps.append(step)
    assert steps == [4, 6, 8, 10, 12, 16, 18, 20, 24, 25]
    assert loop_length(0, t, image_summaries=False) == 4
    big = t.__class__(**{**t.__dict__, "log_every": 100, "checkpoint_every": 100})
    assert [loop_length(s, big, False) for s in (0, 10, 20)] == [10, 10, 5]


# ---- peers that never join, SIGTERM ------------------------------------------------------

def _error_lines(err: str):
    return [ln for ln in err.splitlines() if ln.startswith("deblur: error:")]


@pytest.mark.slow
def test_a_worker_whose_peer_never_starts_exits_1_naming_it(ingested, tmp_path):
    """Worker 0 whose worker 1 never starts waited for ever (13 minutes, "Coordination agent
    has successfully connected"), and so did a worker whose chief never starts: past
    train.peer_timeout_s each exits 1 in one line naming the missing task."""
    procs = Procs(str(tmp_path))
    try:
        cases = []
        for name, cluster, task, missing in (
                ("worker0", "worker", ("worker", 0), ("worker", 1)),
                ("worker_no_chief", "chief", ("worker", 0), ("chief", 0))):
            ports = _free_ports(2)
            config = {"cluster": ({"worker": [f"localhost:{p}" for p in ports]} if cluster == "worker"
                                  else {"chief": [f"localhost:{ports[0]}"],
                                        "worker": [f"localhost:{ports[1]}"]}),
                      "task": {"type": task[0], "index": task[1]}}
            argv = _worker_argv(ingested[1], str(tmp_path / name)) + [
                "--set", "train.peer_timeout_s=5"]
            p = procs.start(name, WORKER_CLI, {"argv": argv, "pause_at": 0},
                            env={"TF_CONFIG": json.dumps(config)})
            port = ports[1] if cluster == "worker" else ports[0]
            cases.append((p, name, task, missing, port))
        for p, name, task, missing, port in cases:
            p.wait(timeout=TIMEOUT)
            err = procs.output(p, "err")
            assert p.returncode == 1, err[-3000:]
            assert _error_lines(err) == [
                f"deblur: error: {task[0]} {task[1]} waited 5 s (train.peer_timeout_s) for the "
                f"other workers in TF_CONFIG; missing: {missing[0]} {missing[1]} "
                f"(localhost:{port}); nothing was trained (start every task, or check their "
                "addresses)"], err[-3000:]
            assert "Traceback" not in err and not os.path.exists(tmp_path / name / "checkpoints")
    finally:
        procs.kill_all()


@pytest.mark.slow
def test_sigterm_ends_a_worker_waiting_for_its_peers_at_once(ingested, tmp_path):
    """`timeout`'s SIGTERM did nothing to a worker waiting for its peer (the coordination
    service's preemption notifier takes SIGTERM), only SIGKILL ended it."""
    import socket

    procs = Procs(str(tmp_path))
    try:
        ports = _free_ports(2)
        argv = _worker_argv(ingested[1], str(tmp_path / "out"))  # peer_timeout_s: 600
        p = procs.start("waiting", WORKER_CLI, {"argv": argv, "pause_at": 0},
                        env=_tf_config(ports, 0))
        while True:  # its port answers once it waits for its peer
            assert p.poll() is None, procs.output(p, "err")[-3000:]
            assert time.time() - p.started < TIMEOUT
            try:
                socket.create_connection(("localhost", ports[0]), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        time.sleep(2)
        sent = time.time()
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=60)
        assert time.time() - sent < 30
        err = procs.output(p, "err")
        assert p.returncode == 143, err[-3000:]
        assert _error_lines(err) == ["deblur: error: terminated by SIGTERM before training "
                                     "started"], err[-3000:]
    finally:
        procs.kill_all()


class _NotAWorker:
    """A plain TCP listener on a free port: it accepts and says nothing ("silent"), or answers
    every connection with a line that is not HTTP/2 ("garbage"); what a wrong port in TF_CONFIG
    finds (another program there). "handshake_only" answers the HTTP/2 handshake and nothing
    more: a gRPC server that never joins TensorFlow's start-up."""

    def __init__(self, kind: str):
        import socket

        self.sock = socket.socket()
        self.sock.bind(("localhost", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.kind, self.conns = kind, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # closed
                return
            self.conns.append(conn)  # held open: the peer waits for an answer
            try:
                if self.kind == "garbage":
                    conn.sendall(b"SSH-2.0-OpenSSH_8.9\r\n")
                elif self.kind == "handshake_only":  # a gRPC server's first frame, then nothing
                    threading.Thread(target=self._settings, args=(conn,), daemon=True).start()
            except OSError:
                pass

    @staticmethod
    def _settings(conn):
        from trainer import distribute

        try:
            conn.settimeout(30)
            if distribute._recv_exactly(conn, len(distribute.H2_PREFACE)) == distribute.H2_PREFACE:
                conn.sendall(distribute.H2_SETTINGS)
        except OSError:
            pass

    def close(self):
        self.sock.close()
        for c in self.conns:
            c.close()


HANG_WAIT = 300  # seconds: before the fix these workers never ended


def _config_with_peer(own_port: int, peer_port: int) -> dict:
    return {"TF_CONFIG": json.dumps({"cluster": {"worker": [f"localhost:{own_port}",
                                                            f"localhost:{peer_port}"]},
                                     "task": {"type": "worker", "index": 0}})}


@pytest.mark.slow
def test_a_peer_port_that_is_not_a_tensorflow_worker_ends_worker_0_in_one_line(ingested,
                                                                               tmp_path):
    """A peer address where a plain TCP listener accepts (silent, or answering garbage) hung
    worker 0 for ever inside TensorFlow's start-up, deaf to train.peer_timeout_s and SIGTERM
    (alive 105 s after SIGTERM). The wait checks a gRPC handshake: past the timeout it exits 1
    in one line naming the peer, and SIGTERM ends it at once. A peer that answers the
    handshake but never joins is bounded by the start-up watchdog (one line, exit 1)."""
    from trainer import distribute

    procs = Procs(str(tmp_path))
    peers = {kind: _NotAWorker(kind) for kind in ("silent", "garbage", "handshake_only")}
    try:
        started = []
        for kind, peer in list(peers.items())[:2]:
            own, = _free_ports(1)
            argv = _worker_argv(ingested[1], str(tmp_path / kind)) + [
                "--set", "train.peer_timeout_s=5"]
            started.append((kind, peer.port, procs.start(
                kind, WORKER_CLI, {"argv": argv, "pause_at": 0},
                env=_config_with_peer(own, peer.port))))
        own, = _free_ports(1)
        late = (procs.start("handshake_only", WORKER_CLI, {
            "argv": _worker_argv(ingested[1], str(tmp_path / "late")) + [
                "--set", "train.peer_timeout_s=5"], "pause_at": 0},
            env=_config_with_peer(own, peers["handshake_only"].port)),
            peers["handshake_only"].port)
        for kind, port, p in started:
            try:
                p.wait(timeout=HANG_WAIT)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{kind}: worker 0 still running after {HANG_WAIT} s")
            err = procs.output(p, "err")
            assert p.returncode == 1, (kind, err[-3000:])
            assert _error_lines(err) == [
                "deblur: error: worker 0 waited 5 s (train.peer_timeout_s) for the other workers "
                f"in TF_CONFIG; missing: worker 1 (localhost:{port} accepts connections but "
                "does not answer as a TensorFlow worker: no gRPC handshake); nothing was "
                "trained (start every task, or check their addresses)"], (kind, err[-3000:])
            assert "Traceback" not in err and not os.path.exists(tmp_path / kind / "checkpoints")
        # a peer that passes the handshake but never joins: TensorFlow's start-up holds the
        # GIL while it waits; the start-up watchdog ends it in one line, exit 1
        p, port = late
        try:
            p.wait(timeout=HANG_WAIT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"handshake_only: worker 0 still running after {HANG_WAIT} s")
        err = procs.output(p, "err")
        assert p.returncode == 1, err[-3000:]
        assert _error_lines(err) == [
            "deblur: error: worker 0: TensorFlow's multi-worker start-up did not end within 5 s "
            f"(train.peer_timeout_s) with worker 1 (localhost:{port}), which answered as gRPC "
            "servers; nothing was trained (check that each address is a worker of this job, and "
            "start them all again)"], err[-3000:]
        # SIGTERM while it waits (peer_timeout_s 600): it ends at once
        own, = _free_ports(1)
        p = procs.start("sigterm", WORKER_CLI,
                        {"argv": _worker_argv(ingested[1], str(tmp_path / "sigterm")),
                         "pause_at": 0}, env=_config_with_peer(own, peers["silent"].port))
        while distribute._handshake(f"localhost:{own}", 1.0) != distribute.ANSWERS:
            assert p.poll() is None, procs.output(p, "err")[-3000:]  # waiting for its peer
            assert time.time() - p.started < TIMEOUT
            time.sleep(0.5)
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            raise AssertionError("worker 0 still running 60 s after SIGTERM")
        err = procs.output(p, "err")
        assert p.returncode == 143, err[-3000:]
        assert _error_lines(err) == ["deblur: error: terminated by SIGTERM before training "
                                     "started"], err[-3000:]
    finally:
        procs.kill_all()
        for peer in peers.values():
            peer.close()


@pytest.mark.slow
def test_sigterm_ends_a_process_blocked_in_a_step_within_30_s(ingested, tmp_path):
    """The main thread can be blocked where no Python signal handler runs (here: on_step
    sleeping, which resumes after the handler; in real runs, a collective inside TensorFlow):
    the watchdog thread ends the process 25 s after SIGTERM."""
    procs = Procs(str(tmp_path))
    try:
        out = str(tmp_path / "out")
        p = procs.start("blocked", TRAIN_RUN, _run_args(ingested[1], out, pause_at=PAUSE_AT))
        procs.wait_for_pause(p, os.path.join(out, "checkpoints", "checkpoint"))
        sent = time.time()
        os.kill(p.pid, signal.SIGTERM)
        p.wait(timeout=60)
        took = time.time() - sent
        err = procs.output(p, "err")
        assert p.returncode == 143 and 20 < took < 30, (p.returncode, took, err[-3000:])
        assert "deblur: error: still running 25 s after SIGTERM (blocked in TensorFlow); " \
               "exiting" in err
    finally:
        procs.kill_all()


@pytest.mark.slow
def test_sigterm_in_the_loop_saves_a_checkpoint_and_ends(ingested, tmp_path):
    """Kubernetes sends SIGTERM before SIGKILL: training stops after the current loop call,
    saves the checkpoint that is due (steps since the last one) and ends in one line."""
    from trainer import experiments
    from trainer import train as train_lib

    def on_step(step, row):
        if step == PAUSE_AT:  # checkpoint 2 is written, 3 is not
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    out = str(tmp_path / "out")
    with pytest.raises(train_lib.TrainingTerminated) as e:
        train_lib.train(experiments.get("tiny", **TRAIN), ingested[1], out, on_step=on_step)
    assert str(e.value) == (f"terminated by SIGTERM at step {PAUSE_AT} of {STEPS}; checkpoint "
                            f"of step {PAUSE_AT} in {out}/checkpoints: run the same command "
                            "again to resume")
    assert signal.getsignal(signal.SIGTERM) == before  # put back
    assert sorted(f for f in os.listdir(os.path.join(out, "checkpoints"))
                  if f.endswith(".index")) == ["ckpt-2.index", f"ckpt-{PAUSE_AT}.index"]
    assert [h["step"] for h in _read_json(os.path.join(out, "history.json"))] == [1, 2, 3]
    assert not os.path.exists(os.path.join(out, "saved_model"))
    # the same command again resumes from that checkpoint, and says so in resumed.json (the
    # pipeline summary reads it: not "from random weights")
    assert not os.path.exists(os.path.join(out, "resumed.json"))
    result = train_lib.train(experiments.get("tiny", **TRAIN), ingested[1], out)
    assert result["step"] == STEPS and result["history"][0]["step"] == 1
    resumes = _read_json(os.path.join(out, "resumed.json"))
    assert [(r["step"], r["checkpoint"]) for r in resumes] == [(PAUSE_AT, f"ckpt-{PAUSE_AT}")]


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_warmup_follows_the_num_updates_rule(warmup):
    """train.ema_warmup: after the n-th applied update the EMA takes decay min(ema_decay,
    (1 + n) / (10 + n)), computed here by hand from the weights after each update; without it
    the decay is ema_decay throughout."""
    import tensorflow as tf

    from trainer import experiments, train

    exp = experiments.get("tiny", model=MODEL, data={"crop_size": CROP}, train={
        "ema_decay": 0.5 if not warmup else 0.999, "ema_warmup": warmup})
    trainer = train.Trainer(exp, "", None)
    want = [e.numpy().astype(np.float64) for e in trainer.ema]
    rng = np.random.default_rng(0)
    for n in range(1, 4):
        trainer.apply_gradients([tf.constant(rng.normal(size=v.shape), v.dtype)
                                 for v in trainer.variables])
        trainer.step.assign_add(1)  # as the train step does after the update
        decay = min(0.999, (1 + n) / (10 + n)) if warmup else 0.5  # 0.1818, 0.25, 0.3077
        want = [decay * w + (1 - decay) * v.numpy() for w, v in zip(want, trainer.variables)]
        for got, w in zip(trainer.ema, want):
            np.testing.assert_allclose(got.numpy(), w, rtol=1e-5, atol=1e-6)


def test_a_warm_started_ema_keeps_its_decay():
    """A warm start keeps the parent's step (trainer/warm_start.py) and sets the EMA to the
    parent's EMA: the EMA warm-up must count the parent's updates, so the child's first update
    already takes ema_decay (0.999), not the fresh start's 1/10 + ... (0.18), which would
    replace the parent's average by the first noisy weights."""
    import tensorflow as tf

    from trainer import experiments, train

    exp = experiments.get("tiny", model=MODEL, data={"crop_size": CROP},
                          train={"ema_decay": 0.999, "ema_warmup": True})
    trainer = train.Trainer(exp, "", None)
    trainer.step.assign(18000)  # what warm_start.restore does with the parent's step
    before = [e.numpy().astype(np.float64) for e in trainer.ema]
    rng = np.random.default_rng(0)
    trainer.apply_gradients([tf.constant(rng.normal(size=v.shape), v.dtype)
                             for v in trainer.variables])
    for got, b, v in zip(trainer.ema, before, trainer.variables):
        np.testing.assert_allclose(got.numpy(), 0.999 * b + 0.001 * v.numpy(), rtol=1e-5,
                                   atol=1e-6)


def test_an_integer_ema_decay_is_a_decay_too():
    """`--set train.ema_decay=0` parses as the int 0: with the EMA warm-up on, the EMA is then
    the weights themselves after every update (it once failed in tf.minimum(int, float))."""
    import tensorflow as tf

    from trainer import experiments, train

    exp = experiments.get("tiny", model=MODEL, data={"crop_size": CROP},
                          train={"ema_decay": 0, "ema_warmup": True})
    trainer = train.Trainer(exp, "", None)
    rng = np.random.default_rng(1)
    grads = [tf.constant(rng.normal(size=v.shape), v.dtype) for v in trainer.variables]
    tf.function(trainer.apply_gradients)(grads)  # traced, as the train step runs it
    for e, v in zip(trainer.ema, trainer.variables):
        np.testing.assert_array_equal(e.numpy(), v.numpy())


def test_the_lpips_term_scores_the_x0_estimate():
    """train.lpips_weight adds lpips_weight x LPIPS(x0_hat, x) per example, x0_hat the sharp
    image the step's eps_hat implies: loss_lpips equals metrics' LPIPS-Alex of that estimate
    (its checked public call), the total loss grows by exactly that term, and the gradients
    change with it."""
    import tensorflow as tf

    from metrics.lpips import LPIPS
    from trainer import diffusion, experiments, train

    rng = np.random.default_rng(0)
    size = 64  # LPIPS-Alex needs >= 31 px
    exp0 = experiments.get("local", data={"crop_size": size},
                           train={"dpm_warmup_steps": 0, "mixed_precision": "float32"})
    x = tf.constant(rng.uniform(-0.3, 0.3, (2, size, size, 3)), tf.float32)
    y = tf.constant(x.numpy() + rng.normal(0, 0.05, x.shape), tf.float32)
    batch = {"x": x, "y": y, "gamma": tf.constant([0.9, 0.3]),
             "eps": tf.constant(rng.normal(size=x.shape), tf.float32),
             "phi": {k: tf.constant(rng.uniform(0, 1, (2, size // k, size // k, 1)), tf.float32)
                     for k in exp0.model.guidance_scales},
             "target": {k: tf.constant(rng.uniform(-1, 1, (2, size // k, size // k, 1)),
                                       tf.float32) for k in exp0.model.guidance_scales}}
    results = {}
    for weight in (0.0, 0.5):
        trainer = train.Trainer(exp0.replace(train={"lpips_weight": weight}), "", None)
        results[weight] = trainer.replica_gradients(batch)
    grads0, out0 = results[0.0]
    grads, out = results[0.5]
    assert "loss_lpips" not in out0 and "loss_lpips" in trainer.metric_names()
    # the same initial weights (seeded), so the same eps_hat: recompute x0_hat independently
    x_t = diffusion.add_noise(x, batch["gamma"], batch["eps"])
    eps_hat, _ = trainer.model(x_t, y, batch["gamma"], batch["phi"], training=True)
    g = batch["gamma"].numpy()[:, None, None, None]
    x0_hat = (x_t.numpy() - np.sqrt(1 - g) * eps_hat.numpy()) / np.sqrt(g)
    expected = LPIPS("alex")(tf.constant(x0_hat, tf.float32), x).numpy()  # checks [-1, 1]
    assert expected.min() > 0.0
    gb = exp0.train.global_batch_size
    np.testing.assert_allclose(out["loss_lpips"].numpy(), expected.sum() / gb, rtol=1e-4)
    np.testing.assert_allclose(out["loss"].numpy() - out0["loss"].numpy(),
                               0.5 * expected.sum() / gb, rtol=1e-3)
    assert any(not np.allclose(a.numpy(), b.numpy()) for a, b in zip(grads, grads0))


def test_a_bad_lpips_setting_is_refused():
    from trainer import experiments

    with pytest.raises(ValueError, match="lpips_net must be alex or vgg"):
        experiments.get("tiny", train={"lpips_net": "squeeze"})
    with pytest.raises(ValueError, match="lpips_weight must be >= 0"):
        experiments.get("tiny", train={"lpips_weight": -1.0})


def test_a_cosine_schedule_is_what_the_optimizer_applies():
    from trainer import experiments
    from trainer import train as train_lib

    with pytest.raises(ValueError, match="lr_schedule must be one of constant, cosine"):
        experiments.get("tiny", train={"lr_schedule": "linear"})
    t = experiments.get("local", train={"lr_schedule": "cosine", "steps": 1050}).train
    sched = train_lib.LearningRate(t)
    # half way through the cosine (50 warm-up steps, then 1000): half the base rate
    assert float(sched(550)) == pytest.approx(t.learning_rate / 2, rel=1e-5)
    assert float(sched(1050)) == 0.0
    # a warm start from a parent at step 18000 trains steps - 18000 = 1050 steps: the same
    # cosine on its fresh optimizer's iterations
    t = experiments.get("local", train={"lr_schedule": "cosine", "steps": 19050}).train
    sched = train_lib.LearningRate(t)
    sched.start.assign(18000)
    assert float(sched(550)) == pytest.approx(t.learning_rate / 2, rel=1e-5)
    assert float(sched(1050)) == 0.0
    constant = train_lib.LearningRate(
        experiments.get("local", train={"steps": 1050, "lr_schedule": "constant"}).train)
    assert float(constant(1049)) == pytest.approx(t.learning_rate)
