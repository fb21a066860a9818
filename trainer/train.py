"""The training loop of the guided icDPM: one custom loop under tf.distribute.

    exp = experiments.get("tiny", train={"steps": 200})
    train(exp, examples_dir="...", out_dir="...")      # the CLI and the TFX run_fn call this

- Strategy (trainer/distribute.py, make_strategy): TPUStrategy when train.tpu is set;
  MultiWorkerMirroredStrategy when TF_CONFIG (parsed once: distribute.cluster) names several
  workers (GPU pools: one process per machine, each with the same command); MirroredStrategy when several GPUs are visible (or strategy="mirrored"); the
  default strategy otherwise. Each process logs its strategy, workers and replicas at start.
- Per-example losses are summed and divided by the GLOBAL batch (tf.nn.compute_average_loss),
  so gradients are the same whatever the number of replicas or workers.
- Steps per host call: Trainer.train_loop runs train.steps_per_loop steps in a tf.range loop
  inside one tf.function, fetching its batches from the distributed iterator in the graph. A
  call ends early at the next log, checkpoint or image-summary step, so logs, summaries and
  checkpoints happen between calls and the results equal those of one step per call.
- XLA: with train.jit_compile (default per device type: JIT_COMPILE_DEFAULT) the gradients
  (forward, backward, their finiteness) and the update (Adam, EMA) are two jit-compiled
  tf.functions on either side of the finite gate.
- Non-finite values: a step whose loss or gradients hold a NaN or Inf on any replica applies
  nothing (the decision is all-reduced, so every replica takes the same branch). With
  train.on_nonfinite "stop" the loop ends at that step and train() raises TrainingStopped
  naming it, before anything is checkpointed or exported; with "skip" the batch is counted
  (Trainer.skipped_steps, checkpointed; "skipped" in the history) and training goes on, until
  more than train.max_skipped_fraction of the steps so far were skipped (TrainingStopped).
  Weights whose EMA is not finite are never checkpointed or exported (TrainingStopped).
- The diffusion noise (gamma, eps) is drawn in the input pipeline from stateless seeds keyed by
  the element index, so a batch fully determines a step and a resumed run replays the same
  noise: checkpoints hold the model, the EMA, the optimizer, the step and (with one replica)
  the input iterator. Without the iterator (several replicas) a resumed run draws its input
  from seeds of its resume step, so it does not replay the batches of the first steps.
- Multi-worker: only the chief writes OUT (checkpoints, history, TensorBoard, the export);
  every other worker restores from OUT/checkpoints and saves its own checkpoints (which
  tf.distribute needs every worker to write) into a temporary folder it removes at the end.
  All workers must see the same OUT (gs://...): after the restore the workers check that they
  are at the same step. A lost worker ends training with TrainingStopped; rerunning all
  workers resumes from the chief's newest checkpoint.
- Writes OUT/checkpoints, OUT/tensorboard, OUT/saved_model (export.py) and OUT/history.json.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from typing import Callable, Dict, List, Optional, Tuple

import keras
import tensorflow as tf
from tensorflow.io import gfile

from core import example_format as ef
from core.artifacts import (CHECKPOINTS_DIR, EXPERIMENT_FILE, HISTORY_FILE, RESUMED_FILE,
                            SAVED_MODEL_DIR, TENSORBOARD_DIR)
from metrics.lpips import LPIPS
from trainer import data as data_lib
from trainer import diffusion
from trainer.distribute import (  # noqa: F401 - train.<name> for the CLI, the run_fn, tests
    TrainingStopped, TrainingTerminated, cluster, describe_strategy, device_type, is_chief,
    is_chief_task, make_strategy, num_workers, tf_config_cluster, wait_for_peers)
from trainer.experiments import Experiment
from trainer.model import dtype_policy, policy_name, unit_loss_weight

log = logging.getLogger(__name__)

# train.jit_compile = None: XLA or not, by the device type the step runs on. TPUs compile
# everything anyway. CPU: measured no faster with XLA (tiny 0.74x, S+Guide-S about even) and
# slow to compile (S+Guide-S 930 s against 58 s; benchmarks/results/train_step_xla.md).
# GPU: not measured here (no GPU); XLA fuses the normalisations, activations and the
# optimizer's elementwise updates, which run as separate kernels otherwise.
JIT_COMPILE_DEFAULT = {"CPU": False, "GPU": True}


EXIT_TERMINATED = 128 + signal.SIGTERM  # what a process ended by SIGTERM reports
TERM_GRACE_S = 25.0  # after SIGTERM, the process is forced to end when still running by then


class TermGuard:
    """SIGTERM during train(): ends the process within TERM_GRACE_S seconds, at any point.

    - Outside the training loop (the wait for peers, building the input, restoring), the
      handler raises TrainingTerminated at once.
    - In the loop (`deferred`), it only records the request: the loop checks it between
      train_loop calls, saves a checkpoint of the current step when one is due (steps since
      the last), and raises TrainingTerminated naming it.
    - The main thread can be blocked in TensorFlow's C++ code (a collective waiting for a peer
      that hangs, a long loop call), where Python signal handlers do not run until it returns:
      signal.set_wakeup_fd makes the C-level handler wake a watcher thread at once, which
      ends the process with os._exit(EXIT_TERMINATED) if it is still running TERM_GRACE_S
      seconds later.
    MultiWorkerMirroredStrategy's coordination service installs a SIGTERM handler of its own
    (a preemption notifier that only records it): install() puts this one back after the
    strategy exists. Signal handlers belong to the main thread: elsewhere this does nothing.
    """

    def __init__(self):
        self.requested = False
        self.deferred = False
        self.active = False
        self._previous = None
        self._previous_fd = -1
        self._pair: Optional[Tuple[socket.socket, socket.socket]] = None
        self._cancel = threading.Event()

    def __enter__(self) -> "TermGuard":
        if threading.current_thread() is not threading.main_thread():
            return self
        self._previous = signal.getsignal(signal.SIGTERM)
        self._pair = socket.socketpair()
        self._pair[1].setblocking(False)
        try:
            self._previous_fd = signal.set_wakeup_fd(self._pair[1].fileno(),
                                                     warn_on_full_buffer=False)
        except ValueError:  # not the main thread of the main interpreter
            self._close()
            return self
        self.active = True
        self.install()
        threading.Thread(target=self._watch, name="sigterm-watchdog", daemon=True).start()
        return self

    def install(self) -> None:
        if self.active:
            signal.signal(signal.SIGTERM, self._handler)

    def _handler(self, signum, frame) -> None:
        self.requested = True
        if not self.deferred:
            raise TrainingTerminated("terminated by SIGTERM before training started")

    def _watch(self) -> None:
        r = self._pair[0]
        while True:
            try:
                data = r.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGTERM in data:
                break
        if self._cancel.wait(TERM_GRACE_S):
            return
        print(f"deblur: error: still running {TERM_GRACE_S:g} s after SIGTERM (blocked in "
              "TensorFlow); exiting", file=sys.stderr, flush=True)
        os._exit(EXIT_TERMINATED)

    def _close(self) -> None:
        if self._pair:
            for sock in self._pair:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
            self._pair = None

    def __exit__(self, *exc) -> None:
        if not self.active:
            return
        self.active = False
        self._cancel.set()  # train() is over: its caller ends the process (or goes on)
        signal.set_wakeup_fd(self._previous_fd)
        # a handler installed outside Python (None) cannot be put back: the default then
        signal.signal(signal.SIGTERM, self._previous if self._previous is not None
                      else signal.SIG_DFL)
        self._close()


class LearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """train.lr_schedule on the optimizer's iterations (diffusion.learning_rate). The optimizer
    starts at the lineage's global step `start` (0; a warm start's parent step, whose optimizer
    is fresh), so a cosine ends at 0 after the t.steps - start steps this run trains; `start`
    is checkpointed, so a resumed warm start keeps its schedule."""

    def __init__(self, t):
        self.base, self.warmup_steps, self.steps = t.learning_rate, t.lr_warmup_steps, t.steps
        self.cosine = t.lr_schedule == "cosine"
        self.start = tf.Variable(0, dtype=tf.int64, trainable=False, name="lr_start",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    def __call__(self, step):
        decay_steps = self.steps - self.start if self.cosine else 0
        return diffusion.learning_rate(step, self.base, self.warmup_steps, decay_steps)

    def get_config(self):
        return {"base": self.base, "warmup_steps": self.warmup_steps, "steps": self.steps,
                "cosine": self.cosine}


def add_diffusion_noise(schedule: diffusion.TrainingSchedule, seed: int):
    """Map fn over (index, batch): gamma and eps from stateless seeds of the batch index."""

    def fn(index, batch):
        key = tf.stack([tf.cast(seed, tf.int64), index])
        k1, k2 = tf.unstack(tf.random.experimental.stateless_split(tf.cast(key, tf.int64), 2))
        b = tf.shape(batch["x"])[0]
        gamma = schedule.sample_gamma(b, seed=k1)
        eps = tf.random.stateless_normal(tf.shape(batch["x"]), seed=k2)
        return {**batch, "gamma": gamma, "eps": eps}

    return fn


class Trainer:
    """Holds the model, optimizer, EMA and checkpoint of one experiment under one strategy."""

    def __init__(self, exp: Experiment, out_dir: str, strategy: Optional[tf.distribute.Strategy] = None):
        from trainer.model import GuidedDenoiser

        self.exp, self.out_dir = exp, out_dir
        self.strategy = strategy or make_strategy(exp.train)
        t = exp.train
        self.jit_compile = (t.jit_compile if t.jit_compile is not None
                            else JIT_COMPILE_DEFAULT.get(device_type(self.strategy), False))
        if self.jit_compile and self.strategy.num_replicas_in_sync > 1 and \
                device_type(self.strategy) == "CPU":
            raise ValueError("train.jit_compile on CPUs needs a single replica: XLA cannot run "
                             "the replicas' steps of several CPU devices or workers (it reads "
                             "another device's variables); use jit_compile=false there")
        self.schedule = diffusion.TrainingSchedule(exp.diffusion)
        # the perceptual term's fixed network (weights read from an installed package)
        self.lpips = LPIPS(t.lpips_net) if t.lpips_weight > 0 else None
        # The initial weights come from the Keras initializers, which draw their seeds from the
        # global RNGs: seed them so that the same experiment starts from the same weights (a
        # rerun, or an interrupted-and-resumed run, ends with the same weights).
        keras.utils.set_random_seed(t.seed)
        policy = policy_name(t.mixed_precision, device_type(self.strategy))
        self.precision = "bfloat16" if policy == "mixed_bfloat16" else "float32"
        with self.strategy.scope(), dtype_policy(policy):
            self.model = GuidedDenoiser(exp.model)
            self.variables = list(self.model.trainable_variables)
            self.lr_schedule = LearningRate(t)
            self.optimizer = keras.optimizers.Adam(
                learning_rate=self.lr_schedule,
                beta_1=t.adam_beta1, beta_2=t.adam_beta2)
            self.optimizer.build(self.variables)
            self.ema = [tf.Variable(v, trainable=False, name="ema/" + v.name.replace(":", "_"),
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                        for v in self.variables]
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
            # batches not applied because their loss or gradients were not finite
            self.skipped_steps = tf.Variable(0, dtype=tf.int64, trainable=False,
                                             name="skipped_steps",
                                             aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        # XLA: two functions around the finite gate, the gradients (with their finiteness) and
        # the update. One function with the gate inside steps as fast but compiles far longer
        # (tiny at 32x32 x 2 on this CPU: 660 s, against 73 s for the two; 250 s for one
        # function of the whole step without the gate's tf.cond)
        jit = (lambda fn: tf.function(fn, jit_compile=True)) if self.jit_compile else (lambda fn: fn)
        self._gradients_fn = jit(self._gradients_and_finite)
        self._apply_fn = jit(self.apply_gradients)

    # ---- one step ------------------------------------------------------------------------
    def _replica_step(self, batch):
        grads, out, finite = self._gradients_fn(batch)
        out["finite"] = self.apply_if_finite(grads, finite)
        return out

    def _gradients_and_finite(self, batch):
        grads, out = self.replica_gradients(batch)
        return grads, out, all_finite(out["loss"], grads)

    def metric_names(self):
        """The float metrics of a step (replica_gradients' second result), in its order."""
        names = ["loss", "loss_dpm", "loss_guidance"]
        if self.lpips is not None:
            names.append("loss_lpips")
        if self.model.guidance_net is not None:
            for k in self.exp.model.guidance_scales:
                names += [f"loss_guidance_x{k}", f"identity_x{k}"]
        return names

    def replica_gradients(self, batch):
        """One replica's gradients and metrics: its examples' losses over the GLOBAL batch, so
        the sum over replicas (the all-reduce) is the gradient of the global batch's mean."""
        t = self.exp.train
        gb = t.global_batch_size
        w = diffusion.dpm_loss_weight(self.step, t.dpm_warmup_steps)
        x_t = diffusion.add_noise(batch["x"], batch["gamma"], batch["eps"])
        with tf.GradientTape() as tape:
            eps_pred, regressions = self.model(x_t, batch["y"], batch["gamma"], batch["phi"], training=True)
            l_dpm = diffusion.l1_per_example(eps_pred, batch["eps"])
            if t.dpm_loss_weighting == "unit":
                l_dpm = l_dpm * unit_loss_weight(batch["gamma"], self.exp.model.sigma_data)
            l_denoise = l_dpm
            if self.lpips is not None:
                x0_hat = diffusion.predict_x0(x_t, batch["gamma"], eps_pred)
                l_lpips = self.lpips.loss(x0_hat, batch["x"])
                l_denoise = l_dpm + t.lpips_weight * l_lpips
            if regressions:
                l_guid = tf.add_n([diffusion.mse_per_example(regressions[k], batch["target"][k])
                                   for k in sorted(regressions)]) / float(len(regressions))
            else:
                l_guid = tf.zeros_like(l_dpm)
            per_example = l_guid + w * l_denoise
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=gb)
        grads = tape.gradient(loss, self.variables)
        out = {"loss": loss,
               "loss_dpm": tf.reduce_sum(l_dpm) / gb,
               "loss_guidance": tf.reduce_sum(l_guid) / gb}
        if self.lpips is not None:
            out["loss_lpips"] = tf.reduce_sum(l_lpips) / gb
        for k in sorted(regressions or {}):
            out[f"loss_guidance_x{k}"] = tf.reduce_sum(
                diffusion.mse_per_example(regressions[k], batch["target"][k])) / gb
            # the identity baseline: the clean blurry level (phi without its training noise) as
            # the prediction of the sharp one; y is in [-1, 1] and the luma weights sum to 1,
            # so the signed luma of y is the weighted sum of its signed channels
            tgt = batch["target"][k]
            src = batch["y"] if tgt.shape[-1] == 3 else tf.reduce_sum(
                batch["y"] * tf.constant(ef.LUMA_WEIGHTS, batch["y"].dtype), -1, keepdims=True)
            out[f"identity_x{k}"] = tf.reduce_sum(
                diffusion.mse_per_example(tf.nn.avg_pool2d(src, k, k, "VALID"), tgt)) / gb
        return grads, out

    def apply_gradients(self, grads):
        """Adam on the (all-reduced) gradients, then the EMA of the weights (train.ema_warmup:
        decay min(ema_decay, (1 + n) / (10 + n)) after the n-th applied update). Called before
        the step counter moves: this update is number step - skipped + 1 of the lineage."""
        self.optimizer.apply_gradients(zip(grads, self.variables))
        decay = float(self.exp.train.ema_decay)  # "--set train.ema_decay=0" parses as an int
        if self.exp.train.ema_warmup:
            # n counts the applied updates of the lineage, a warm start's parent's included
            # (its step is kept, trainer/warm_start.py): the parent's EMA is already an average,
            # and restarting the warm-up (the optimizer's own count starts at 0) forgot it
            # within a few updates (decay 0.18 at the first)
            n = tf.cast(self.step - self.skipped_steps + 1, tf.float32)
            decay = tf.minimum(decay, (1.0 + n) / (10.0 + n))
        for e, v in zip(self.ema, self.variables):
            e.assign(decay * e + (1.0 - decay) * tf.cast(v, e.dtype))

    def apply_if_finite(self, grads, finite):
        """apply_gradients when `finite` (this replica's all_finite) holds on EVERY replica
        (the count of replicas where it does not is all-reduced, so all replicas take the same
        branch); otherwise nothing changes. Returns that decision (a bool tensor).

        The decision is a tf.cond around the optimizer. Strategies whose optimizer update calls
        merge_call (MirroredStrategy and MultiWorkerMirroredStrategy outside XLA) cannot have
        that inside a cond in the replica context: there the cond runs in the cross-replica
        context and its true branch updates each replica (as Keras's LossScaleOptimizer does)."""
        context = tf.distribute.get_replica_context()
        bad = context.all_reduce(tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32))
        ok = tf.equal(bad, 0.0)

        def update():
            self._apply_fn(grads)
            return tf.constant(True)

        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(ok, update, lambda: tf.constant(False))
            return ok

        def cross_replica(strategy, ok, grads):
            first = strategy.experimental_local_results(ok)[0]  # the same on every replica

            def update_each():
                strategy.extended.call_for_each_replica(self._apply_fn, args=(grads,))
                return tf.constant(True)

            tf.cond(first, update_each, lambda: tf.constant(False))

        context.merge_call(cross_replica, args=(ok, grads))
        return ok

    def learning_rate(self) -> float:
        """The learning rate the last applied step used (the schedule runs on the optimizer's
        iterations, which skipped batches do not advance and which a warm start, a fresh
        optimizer at the parent's step (trainer/warm_start.py), starts again from 0)."""
        return float(self.lr_schedule(self.optimizer.iterations - 1).numpy())

    def _distributed_step(self, dist_batch):
        """One step on every replica (cross-replica context): the metrics summed over the
        replicas, and "finite" (whether the step was applied)."""
        per_replica = self.strategy.run(self._replica_step, args=(dist_batch,))
        finite = self.strategy.experimental_local_results(per_replica.pop("finite"))[0]
        metrics = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                   for k, v in per_replica.items()}
        self.step.assign_add(1)
        self.skipped_steps.assign_add(1 - tf.cast(finite, tf.int64))
        return {**metrics, "finite": finite}

    @tf.function
    def train_step(self, dist_batch):
        """One step on a batch given from the host (as the distributed dataset yields it)."""
        return self._distributed_step(dist_batch)

    @tf.function
    def train_loop(self, iterator, num_steps):
        """num_steps steps (a tensor, so one trace serves every count) on batches taken from
        `iterator` inside the graph; returns the last step's metrics. With on_nonfinite "stop"
        the loop ends at a step that was not applied (its "finite" is False)."""
        metrics = {k: tf.constant(0.0) for k in self.metric_names()}
        metrics["finite"] = tf.constant(True)
        stop = self.exp.train.on_nonfinite == "stop"
        for _ in tf.range(num_steps):
            metrics = self._distributed_step(next(iterator))
            if stop and not metrics["finite"]:
                break
        return metrics

    # ---- data ----------------------------------------------------------------------------
    def dataset(self, examples_dir: str, resume_step: int = 0):
        """The distributed training input. resume_step > 0: seeds of their own for a run that
        resumes without its input iterator (see the module docstring)."""
        t = self.exp.train
        dcfg = self.exp.data_config(examples_dir)
        seed = t.seed
        if resume_step:
            import numpy as np

            seed = int(np.random.SeedSequence([t.seed, resume_step]).generate_state(1)[0] >> 1)
        noise = add_diffusion_noise(self.schedule, seed)
        data_lib.split_files(dcfg.examples_dir, dcfg.train_split)  # a missing split, here

        def fn(input_context):
            per_replica = input_context.get_per_replica_batch_size(t.global_batch_size)
            ds = data_lib.training_dataset(dcfg, per_replica, input_context=input_context,
                                           seed=seed + input_context.input_pipeline_id)
            return ds.enumerate().map(noise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        return self.strategy.distribute_datasets_from_function(fn)


def all_finite(loss, grads):
    """Whether the loss and every entry of every gradient are finite (a bool tensor)."""
    finite = tf.math.is_finite(loss)
    for g in grads:
        finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(g)))
    return finite


def loop_length(step: int, tcfg, image_summaries: bool) -> int:
    """Steps of the next train_loop call from `step`: steps_per_loop, cut at the next log,
    checkpoint or image-summary step and at the last step."""
    events = [tcfg.log_every, tcfg.checkpoint_every] + ([tcfg.image_summary_every]
                                                        if image_summaries else [])
    nxt = min([tcfg.steps] + [(step // e + 1) * e for e in events])
    return max(1, min(tcfg.steps_per_loop, nxt - step))


# errors of a collective whose peer is gone (killed, preempted, unreachable)
_PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.DeadlineExceededError, tf.errors.CancelledError)


def train(exp: Experiment, examples_dir: str, out_dir: str,
          strategy: Optional[tf.distribute.Strategy] = None,
          progress: bool = False, on_step: Optional[Callable[[int, Dict], None]] = None,
          export_dir: Optional[str] = None, warm_start: Optional[str] = None,
          export_info: Optional[Dict] = None) -> dict:
    """Trains to exp.train.steps (resuming from OUT/checkpoints), exports the SavedModel to
    export_dir (default OUT/saved_model), returns {"history", "step", "skipped", "chief",
    "strategy"}. Raises TrainingStopped on a non-finite step (on_nonfinite "stop") or when
    another worker is lost; nothing of such a step is checkpointed or exported.

    warm_start: a SavedModel exported by this project; when OUT has no checkpoint yet, training
    starts from its weights and step (trainer/warm_start.py) instead of random weights (every
    worker restores it).
    export_info: extra keys for the export's deblur.json (the pipeline records the warm start)."""
    with TermGuard() as term:
        trainer = Trainer(exp, out_dir, strategy)
        term.install()  # MultiWorkerMirroredStrategy's coordination service took SIGTERM
        chief = is_chief(trainer.strategy)
        described = (describe_strategy(trainer.strategy, trainer.jit_compile)
                     + f", {trainer.precision}")
        # every worker saves checkpoints (tf.distribute may need all of them to take part);
        # only the chief's go to OUT
        work_dir = out_dir if chief else tempfile.mkdtemp(prefix="deblur-worker-")
        try:
            return _train(trainer, examples_dir, out_dir, work_dir, described, progress, on_step,
                          export_dir, warm_start, export_info, term)
        finally:
            if not chief:
                shutil.rmtree(work_dir, ignore_errors=True)


@dataclasses.dataclass
class _Start:
    """Where a training starts, as _restore leaves it for _loop and _export."""
    iterator: object  # the distributed input iterator
    manager: tf.train.CheckpointManager  # this process's checkpoints
    ckpt_dir: str  # OUT/checkpoints, the chief's
    restored: Optional[str]  # the checkpoint resumed from
    resumed: int  # the step training starts at
    history: List[Dict]  # the history rows up to that step
    history_path: str
    writer: object  # TensorBoard's (a no-op writer on other workers than the chief)
    chief: bool


def _train(trainer: Trainer, examples_dir: str, out_dir: str, work_dir: str, described: str,
           progress: bool, on_step, export_dir, warm_start, export_info,
           term: TermGuard) -> dict:
    """Restore (checkpoint, or warm start), the loop, the export; each worker runs all three."""
    start = _restore(trainer, examples_dir, out_dir, work_dir, described, progress, warm_start)
    step, skipped, last_checkpoint = _loop(trainer, start, examples_dir, progress, on_step, term)
    return _export(trainer, start, step, skipped, last_checkpoint, described, out_dir,
                   export_dir, export_info)


def _restore(trainer: Trainer, examples_dir: str, out_dir: str, work_dir: str, described: str,
             progress: bool, warm_start: Optional[str]) -> _Start:
    """The input, the checkpoint manager, and the state training starts from: the newest
    readable checkpoint (the workers checked to agree), else the warm-start parent, else
    random weights; the experiment and the history as far as that step (the chief's)."""
    exp, t = trainer.exp, trainer.exp.train
    chief = work_dir == out_dir
    ds = trainer.dataset(examples_dir)  # fails on bad examples before out_dir exists
    log.info("%s", described)
    if progress:
        print(f"train: {described}", file=sys.stderr, flush=True)
    iterator = iter(ds)
    if chief:
        gfile.makedirs(out_dir)  # tf.io.gfile: local paths and gs:// alike
    ckpt_items = dict(unet=trainer.model.unet, optimizer=trainer.optimizer, step=trainer.step,
                      ema=trainer.ema, skipped_steps=trainer.skipped_steps,
                      lr_start=trainer.lr_schedule.start)
    if trainer.model.guidance_net is not None:
        ckpt_items["guidance"] = trainer.model.guidance_net
    with_iterator = trainer.strategy.num_replicas_in_sync == 1 and not t.tpu
    if with_iterator:
        ckpt_items["iterator"] = iterator  # exact resume of the input pipeline
    ckpt = tf.train.Checkpoint(**ckpt_items)
    ckpt_dir = os.path.join(out_dir, CHECKPOINTS_DIR)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(work_dir, CHECKPOINTS_DIR),
                                         max_to_keep=t.keep_checkpoints if chief else 1)
    tb_dir = os.path.join(out_dir, TENSORBOARD_DIR)
    restored = restore_newest_readable(ckpt, manager if chief else tf.train.CheckpointManager(
        ckpt, ckpt_dir, max_to_keep=None))
    resumed = int(trainer.step.numpy())
    if num_workers(trainer.strategy) > 1:
        _check_workers_agree(trainer, ckpt_dir)
    if restored:
        log.warning("resumed from %s at step %d", restored, resumed)
        if resumed > t.steps:
            raise ValueError(f"{out_dir} is already trained to step {resumed}, past the "
                             f"requested {t.steps} steps; ask for at least {resumed} steps or "
                             "choose another output folder")
        if chief:
            _purge_tensorboard_after(tb_dir, resumed)
            if resumed < t.steps:
                _record_resume(out_dir, restored, resumed)
        if not with_iterator:
            iterator = iter(trainer.dataset(examples_dir, resume_step=resumed))
    elif warm_start:
        from trainer import warm_start as warm

        resumed = warm.restore(trainer, warm_start)
        trainer.lr_schedule.start.assign(resumed)
        log.warning("warm start from %s at step %d", warm_start, resumed)
        if resumed >= t.steps:
            raise ValueError(f"the warm-start model {warm_start} is trained to step {resumed}, "
                             f"not under the requested {t.steps} steps")
    history_path = os.path.join(out_dir, HISTORY_FILE)
    history = []
    if chief:
        with gfile.GFile(os.path.join(out_dir, EXPERIMENT_FILE), "w") as f:
            json.dump(exp.to_dict(), f, indent=2, sort_keys=True)
        writer = tf.summary.create_file_writer(tb_dir)
        if gfile.exists(history_path):
            with gfile.GFile(history_path) as f:
                history = json.load(f)
    else:
        writer = tf.summary.create_noop_writer()
    history = [h for h in history if h["step"] <= resumed]
    return _Start(iterator=iterator, manager=manager, ckpt_dir=ckpt_dir, restored=restored,
                  resumed=resumed, history=history, history_path=history_path, writer=writer,
                  chief=chief)


def _loop(trainer: Trainer, start: _Start, examples_dir: str, progress: bool, on_step,
          term: TermGuard) -> Tuple[int, int, Optional[int]]:
    """Trains from start.resumed to train.steps: logs, TensorBoard, image summaries,
    checkpoints, and the three ways a loop stops early (a non-finite step, a lost worker,
    SIGTERM). Returns (step, skipped steps, the last checkpointed step)."""
    t = trainer.exp.train
    iterator, manager, ckpt_dir, writer = start.iterator, start.manager, start.ckpt_dir, start.writer
    history, history_path, resumed, chief = (start.history, start.history_path, start.resumed,
                                              start.chief)
    guided = trainer.model.guidance_net is not None
    preview = None
    bar, line_every = None, 0
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=t.steps, initial=resumed, unit="step", desc="train")
    elif progress:  # a log file, not a terminal: a plain line every 5% (tqdm: ~124 B a step)
        line_every = max(1, t.steps // 20)
    t0 = time.time()
    step, skipped = resumed, int(trainer.skipped_steps.numpy())
    last_checkpoint = resumed if start.restored else None

    def save_checkpoint(step):
        _check_ema_finite(trainer, step, last_checkpoint)
        manager.save(checkpoint_number=step)
        if chief:
            with gfile.GFile(history_path + ".tmp", "w") as f:
                json.dump(history, f)
            gfile.rename(history_path + ".tmp", history_path, overwrite=True)
        return step

    term.deferred = True  # SIGTERM from here: a checkpoint if one is due, then the end
    while step < t.steps:
        n = loop_length(step, t, guided)
        try:
            metrics = trainer.train_loop(iterator, tf.constant(n, tf.int64))
            before, step = step, int(trainer.step.numpy())
        except tf.errors.OutOfRangeError:
            raise TrainingStopped(
                f"the training input of this process ran out after step {step} (a split with "
                "fewer examples than a global batch, or an empty shard for this worker)") from None
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            # a shard damaged past its first record: TensorFlow's message names no file
            dcfg = trainer.exp.data_config(examples_dir)
            damaged = data_lib.find_damaged_shard(
                data_lib.split_files(dcfg.examples_dir, dcfg.train_split))
            if damaged is None:
                raise
            raise TrainingStopped(
                f"{damaged}; training stopped at step {step}"
                + (f", checkpointed at step {last_checkpoint} in {ckpt_dir}: run the same "
                   "command again to resume once the data reads" if last_checkpoint else "")) \
                from None
        except _PEER_ERRORS as e:
            if num_workers(trainer.strategy) == 1:
                raise
            lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
            detail = next((ln for ln in lines if "task" in ln.lower()), lines[0] if lines else "")
            steps = f"step {step + 1}" if n == 1 else f"steps {step + 1}-{step + n}"
            raise TrainingStopped(
                f"lost contact with another worker during {steps} ({type(e).__name__}: "
                f"{detail[:300]}); "
                + _resume_hint(ckpt_dir, last_checkpoint, resumed)) from None
        if not bool(metrics["finite"]):
            if t.on_nonfinite == "stop":
                raise TrainingStopped(
                    f"non-finite loss or gradient at step {step} (loss "
                    f"{float(metrics['loss'].numpy())}); that step was not applied and nothing "
                    "after step " + str(last_checkpoint or 0) + " was checkpointed or exported "
                    "(train.on_nonfinite=skip skips such batches instead)")
        now_skipped = int(trainer.skipped_steps.numpy())
        if now_skipped > skipped:
            log.warning("skipped %d batch(es) with a non-finite loss or gradient in steps "
                        "%d-%d (%d in all)", now_skipped - skipped, before + 1, step, now_skipped)
            skipped = now_skipped
            _check_skipped(trainer, step, last_checkpoint)
        if step % t.log_every == 0 or step == t.steps:
            row = {"step": step, "lr": trainer.learning_rate(),
                   "w": float(diffusion.dpm_loss_weight(step - 1, t.dpm_warmup_steps).numpy()),
                   **{k: float(metrics[k].numpy()) for k in trainer.metric_names()},
                   "skipped": skipped, "seconds": round(time.time() - t0, 2)}
            history.append(row)
            with writer.as_default(step=step):
                for k, v in row.items():
                    if k not in ("step", "seconds"):
                        tf.summary.scalar(k, v)
            if on_step:
                on_step(step, row)
        if guided and step % t.image_summary_every == 0 and chief:
            if preview is None:
                preview = _preview_batch(trainer, examples_dir)
            _image_summaries(trainer, preview, writer, step)
        if step % t.checkpoint_every == 0 or step == t.steps:
            last_checkpoint = save_checkpoint(step)
        if term.requested and step < t.steps:
            if last_checkpoint != step:
                last_checkpoint = save_checkpoint(step)
            raise TrainingTerminated(
                f"terminated by SIGTERM at step {step} of {t.steps}; checkpoint of step "
                f"{step} in {ckpt_dir}: run the same command again to resume")
        loss = float(metrics["loss"].numpy())
        if bar:
            bar.update(step - before)
            bar.set_postfix(loss=f"{loss:.4f}")
        elif line_every and (step // line_every > before // line_every or step == t.steps):
            print(f"train: step {step}/{t.steps}, loss {loss:.4f}, "
                  f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    if bar:
        bar.close()
    writer.flush()
    return step, skipped, last_checkpoint


def _export(trainer: Trainer, start: _Start, step: int, skipped: int, last_checkpoint,
            described: str, out_dir: str, export_dir: Optional[str],
            export_info: Optional[Dict]) -> dict:
    """The chief exports the SavedModel (never non-finite weights); the workers end together."""
    chief = start.chief
    result = {"history": start.history, "step": step, "skipped": skipped, "chief": chief,
              "strategy": described}
    _check_ema_finite(trainer, step, last_checkpoint)  # never export non-finite weights
    if chief:
        from trainer import export

        export.export_saved_model(trainer, export_dir or os.path.join(out_dir, SAVED_MODEL_DIR),
                                  info=export_info)
    if num_workers(trainer.strategy) > 1:
        # the workers end together, once the chief has exported: a worker that returns finds
        # the export in place (TFX's Trainer checks for it on every worker)
        _all_workers_sum(trainer.strategy, lambda: tf.constant([1.0], tf.float64))
    return result


def _nothing_saved_after(last_checkpoint) -> str:
    return (f"nothing after step {last_checkpoint or 0} was checkpointed or exported")


def _check_skipped(trainer: Trainer, step: int, last_checkpoint) -> None:
    """train.on_nonfinite "skip" has a bound: TrainingStopped once more than
    train.max_skipped_fraction of the steps so far were skipped. The steps so far are the
    optimizer's applied steps plus the skipped ones (both checkpointed, both fresh at a warm
    start), so a resumed run keeps counting and a warm start does not count its parent's."""
    t = trainer.exp.train
    skipped = int(trainer.skipped_steps.numpy())
    total = skipped + int(trainer.optimizer.iterations.numpy())
    if total and skipped > t.max_skipped_fraction * total:
        raise TrainingStopped(
            f"{skipped} of the {total} steps so far had a non-finite loss or gradient and were "
            f"skipped (up to step {step}), more than train.max_skipped_fraction="
            f"{t.max_skipped_fraction:g}; {_nothing_saved_after(last_checkpoint)} "
            "(lower the learning rate, or check the data)")
    _check_ema_finite(trainer, step, last_checkpoint)


def _check_ema_finite(trainer: Trainer, step: int, last_checkpoint) -> None:
    """The EMA weights, what the export serves, must be finite before a checkpoint or an
    export holds them (non-finite steps are never applied, but finite ones can overflow)."""
    bad = [e.name for e in trainer.ema if not bool(tf.reduce_all(tf.math.is_finite(e)).numpy())]
    if bad:
        raise TrainingStopped(
            f"the EMA weights are not finite at step {step} ({len(bad)} of {len(trainer.ema)} "
            f"variables, e.g. {bad[0]}); {_nothing_saved_after(last_checkpoint)} "
            "(lower the learning rate, or check the data)")


def _all_workers_sum(strategy: tf.distribute.Strategy, fn) -> list:
    """The sum over every replica of every worker of fn() (a float64 vector), as floats."""
    reduced = tf.function(lambda: strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(fn),
                                                  axis=None))()
    return [float(x) for x in reduced.numpy()]


def _resume_hint(ckpt_dir: str, last_checkpoint: Optional[int], start_step: int) -> str:
    """What a rerun of all workers resumes from, after a lost worker: the newest checkpoint
    that exists (named by its path), or that none was written yet (OUT/checkpoints is made by
    the first save), or, on a worker that does not see the chief's folder (another machine),
    the chief's checkpoint of that step in the chief's folder."""
    newest = tf.train.latest_checkpoint(ckpt_dir) if gfile.isdir(ckpt_dir) else None
    if newest:
        return (f"run all workers again to resume from the newest checkpoint, {newest} "
                f"(step {newest.rsplit('-', 1)[-1]})")
    if last_checkpoint is None:
        return (f"no checkpoint was written yet: run all workers again to start over from "
                f"step {start_step}")
    return (f"run all workers again to resume from the chief's checkpoint of step "
            f"{last_checkpoint} in {ckpt_dir} (on the chief's machine, not visible here)")


def _check_workers_agree(trainer: Trainer, ckpt_dir: str) -> None:
    """Every worker restored the same step (they read the chief's checkpoints: OUT must be one
    folder all of them see, e.g. on gs://), else a ValueError on every worker: the sums of the
    replicas' steps and of their squares are equal only when all steps are (Cauchy-Schwarz)."""
    def local():
        v = tf.cast(trainer.step, tf.float64)
        return tf.stack([v, v * v, tf.constant(1.0, tf.float64)])

    total, squares, n = _all_workers_sum(trainer.strategy, local)
    if n * squares != total * total:
        raise ValueError(
            f"the workers restored different steps (this one {int(trainer.step.numpy())}, the "
            f"mean {total / n:g}) from {ckpt_dir}: every worker must get the same --out, on a "
            "file system all of them see (e.g. gs://)")


def _record_resume(out_dir: str, checkpoint: str, step: int) -> None:
    """OUT/resumed.json: every resume of this training from its checkpoints (an interrupted
    run's), so that what reports the run (the pipeline summary) does not call it a training
    from random weights or from its warm-start parent alone."""
    path = os.path.join(out_dir, RESUMED_FILE)
    records = []
    if gfile.exists(path):
        with gfile.GFile(path) as f:
            records = json.load(f)
    records.append({"step": int(step), "checkpoint": os.path.basename(checkpoint),
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    with gfile.GFile(path + ".tmp", "w") as f:
        json.dump(records, f, indent=1)
    gfile.rename(path + ".tmp", path, overwrite=True)


def restore_newest_readable(ckpt: tf.train.Checkpoint, manager: tf.train.CheckpointManager):
    """Restores the newest checkpoint that reads back whole; returns its path (None: none yet).

    A checkpoint damaged on disk (a truncated or overwritten file) is skipped with a warning
    naming it, and the previous one is tried: a killed run loses the steps since that one,
    not the run. When none reads, a ValueError names them all."""
    bad = []
    for path in reversed(manager.checkpoints):  # newest first
        try:
            ckpt.restore(path).assert_existing_objects_matched()
        except (tf.errors.OpError, IndexError, ValueError, AssertionError) as e:
            reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, reason)
            bad.append(f"{os.path.basename(path)} ({reason})")
            continue
        return path
    if bad:
        raise ValueError(f"no readable checkpoint in {manager.directory}: " + "; ".join(bad)
                         + ". Move the folder away to train from step 0")
    return None


def _purge_tensorboard_after(tb_dir: str, step: int) -> None:
    """A resumed run replays the steps after its checkpoint, which the killed run may already
    have logged: the existing event files lose their events past the resume step (each file
    rewritten next to itself, then renamed over it), so TensorBoard shows each step once."""
    from tensorflow.core.util import event_pb2

    if not gfile.isdir(tb_dir):
        return
    for name in gfile.listdir(tb_dir):
        path = os.path.join(tb_dir, name)
        if "tfevents" not in name or gfile.isdir(path):
            continue
        records = list(tf.data.TFRecordDataset(path).as_numpy_iterator())
        keep = [r for r in records if event_pb2.Event.FromString(r).step <= step]
        if len(keep) == len(records):
            continue
        with tf.io.TFRecordWriter(path + ".tmp") as w:
            for r in keep:
                w.write(r)
        gfile.rename(path + ".tmp", path, overwrite=True)


def _preview_batch(trainer: Trainer, examples_dir: str, n: int = 4) -> dict:
    """n training crops of the train split, drawn once (seeded) for the image summaries: the
    same crops at every summary step, so TensorBoard shows the regressions improving on them."""
    dcfg = dataclasses.replace(trainer.exp.data_config(examples_dir), shuffle_buffer=1)
    ds = data_lib.training_dataset(dcfg, n, seed=trainer.exp.train.seed)
    return next(iter(ds.take(1)))


def _image_summaries(trainer: Trainer, batch, writer, step: int) -> None:
    """phi_k(y) | R_k(H_k(phi_k(y))) | phi_k(x) side by side for the preview crops, per scale."""
    phi, target = batch["phi"], batch["target"]
    _, regressions = trainer.model.guide(phi, training=False)
    with writer.as_default(step=step):
        for k, reg in regressions.items():
            src = phi[k] if phi[k].shape[-1] == reg.shape[-1] else tf.image.grayscale_to_rgb(phi[k])
            row = tf.concat([src, tf.cast(reg, tf.float32), target[k]], axis=2)
            tf.summary.image(f"guidance_x{k}/input|regression|target",
                             tf.clip_by_value((row + 1.0) / 2.0, 0.0, 1.0),
                             max_outputs=int(row.shape[0]))
