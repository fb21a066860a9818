"""The training loop of the guided icDPM: one custom loop under tf.distribute.

    exp = experiments.get("tiny"); exp = exp.replace_train(steps=200)
    train(exp, examples_dir="...", out_dir="...")      # the CLI and the TFX run_fn call this

- Strategy: TPUStrategy when train.tpu is set, MirroredStrategy when several GPUs are visible
  (or strategy="mirrored"), the default strategy otherwise.
- Per-example losses are summed and divided by the GLOBAL batch (tf.nn.compute_average_loss),
  so gradients are the same whatever the number of replicas.
- The diffusion noise (gamma, eps) is drawn in the input pipeline from stateless seeds keyed by
  the element index, so a batch fully determines a step and a resumed run replays the same
  noise: checkpoints hold the model, the EMA, the optimizer, the step and (with the default
  strategy) the input iterator.
- Writes OUT/checkpoints, OUT/tensorboard, OUT/saved_model (export.py) and OUT/history.json.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Callable, Dict, Optional

import keras
import tensorflow as tf
from tensorflow.io import gfile

from core import example_format as ef
from trainer import data as data_lib
from trainer import diffusion
from trainer.experiments import Experiment

log = logging.getLogger(__name__)


def make_strategy(tcfg) -> tf.distribute.Strategy:
    if tcfg.tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tcfg.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if tcfg.strategy == "mirrored" or (tcfg.strategy == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    if tcfg.strategy not in ("auto", "default", "mirrored"):
        raise ValueError(f"unknown strategy {tcfg.strategy!r}")
    return tf.distribute.get_strategy()


class WarmupConstant(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up over warmup_steps, then constant (diffusion.learning_rate)."""

    def __init__(self, base: float, warmup_steps: int):
        self.base, self.warmup_steps = base, warmup_steps

    def __call__(self, step):
        return diffusion.learning_rate(step, self.base, self.warmup_steps)

    def get_config(self):
        return {"base": self.base, "warmup_steps": self.warmup_steps}


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
        if t.mixed_precision == "bfloat16":
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        self.schedule = diffusion.TrainingSchedule(exp.diffusion)
        # The initial weights come from the Keras initializers, which draw their seeds from the
        # global RNGs: seed them so that the same experiment starts from the same weights (a
        # rerun, or an interrupted-and-resumed run, ends with the same weights).
        keras.utils.set_random_seed(t.seed)
        with self.strategy.scope():
            self.model = GuidedDenoiser(exp.model)
            self.variables = list(self.model.trainable_variables)
            self.optimizer = keras.optimizers.Adam(
                learning_rate=WarmupConstant(t.learning_rate, t.lr_warmup_steps),
                beta_1=t.adam_beta1, beta_2=t.adam_beta2)
            self.optimizer.build(self.variables)
            self.ema = [tf.Variable(v, trainable=False, name="ema/" + v.name.replace(":", "_"),
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
                        for v in self.variables]
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step",
                                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)

    # ---- one step ------------------------------------------------------------------------
    def _replica_step(self, batch):
        grads, out = self.replica_gradients(batch)
        self.apply_gradients(grads)
        return out

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
            if regressions:
                l_guid = tf.add_n([diffusion.mse_per_example(regressions[k], batch["target"][k])
                                   for k in sorted(regressions)]) / float(len(regressions))
            else:
                l_guid = tf.zeros_like(l_dpm)
            per_example = l_guid + w * l_dpm
            loss = tf.nn.compute_average_loss(per_example, global_batch_size=gb)
        grads = tape.gradient(loss, self.variables)
        out = {"loss": loss,
               "loss_dpm": tf.reduce_sum(l_dpm) / gb,
               "loss_guidance": tf.reduce_sum(l_guid) / gb}
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
        """Adam on the (all-reduced) gradients, then the EMA of the weights."""
        self.optimizer.apply_gradients(zip(grads, self.variables))
        decay = self.exp.train.ema_decay
        for e, v in zip(self.ema, self.variables):
            e.assign(decay * e + (1.0 - decay) * tf.cast(v, e.dtype))

    def learning_rate(self) -> float:
        """The learning rate the last step used."""
        t = self.exp.train
        return float(diffusion.learning_rate(self.step - 1, t.learning_rate, t.lr_warmup_steps).numpy())

    @tf.function
    def train_step(self, dist_batch):
        per_replica = self.strategy.run(self._replica_step, args=(dist_batch,))
        metrics = {k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, v, axis=None)
                   for k, v in per_replica.items()}
        self.step.assign_add(1)
        return metrics

    # ---- data ----------------------------------------------------------------------------
    def dataset(self, examples_dir: str):
        t = self.exp.train
        dcfg = self.exp.data_config(examples_dir)
        noise = add_diffusion_noise(self.schedule, t.seed)

        def fn(input_context):
            per_replica = input_context.get_per_replica_batch_size(t.global_batch_size)
            ds = data_lib.training_dataset(dcfg, per_replica, input_context=input_context,
                                           seed=t.seed + input_context.input_pipeline_id)
            return ds.enumerate().map(noise, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

        return self.strategy.distribute_datasets_from_function(fn)


def train(exp: Experiment, examples_dir: str, out_dir: str,
          strategy: Optional[tf.distribute.Strategy] = None,
          progress: bool = False, on_step: Optional[Callable[[int, Dict], None]] = None,
          export_dir: Optional[str] = None) -> dict:
    """Trains to exp.train.steps (resuming from OUT/checkpoints), exports the SavedModel to
    export_dir (default OUT/saved_model), returns the history."""
    t = exp.train
    trainer = Trainer(exp, out_dir, strategy)
    ds = trainer.dataset(examples_dir)  # fails on bad examples before out_dir exists
    iterator = iter(ds)
    gfile.makedirs(out_dir)  # tf.io.gfile: local paths and gs:// alike
    ckpt_items = dict(unet=trainer.model.unet, optimizer=trainer.optimizer, step=trainer.step,
                      ema=trainer.ema)
    if trainer.model.guidance_net is not None:
        ckpt_items["guidance"] = trainer.model.guidance_net
    if trainer.strategy.num_replicas_in_sync == 1 and not t.tpu:
        ckpt_items["iterator"] = iterator  # exact resume of the input pipeline
    ckpt = tf.train.Checkpoint(**ckpt_items)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(out_dir, "checkpoints"),
                                         max_to_keep=t.keep_checkpoints)
    tb_dir = os.path.join(out_dir, "tensorboard")
    restored = restore_newest_readable(ckpt, manager)
    if restored:
        resumed = int(trainer.step.numpy())
        log.warning("resumed from %s at step %d", restored, resumed)
        if resumed > t.steps:
            raise ValueError(f"{out_dir} is already trained to step {resumed}, past the "
                             f"requested {t.steps} steps; ask for at least {resumed} steps or "
                             "choose another output folder")
        _purge_tensorboard_after(tb_dir, resumed)
    with gfile.GFile(os.path.join(out_dir, "experiment.json"), "w") as f:
        json.dump(exp.to_dict(), f, indent=2, sort_keys=True)
    writer = tf.summary.create_file_writer(tb_dir)
    history_path = os.path.join(out_dir, "history.json")
    history = []
    if gfile.exists(history_path):
        with gfile.GFile(history_path) as f:
            history = json.load(f)
    history = [h for h in history if h["step"] <= int(trainer.step.numpy())]
    bar, line_every = None, 0
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=t.steps, initial=int(trainer.step.numpy()), unit="step", desc="train")
    elif progress:  # a log file, not a terminal: a plain line every 5% (tqdm: ~124 B a step)
        line_every = max(1, t.steps // 20)
    t0 = time.time()
    while int(trainer.step.numpy()) < t.steps:
        batch = next(iterator)
        metrics = trainer.train_step(batch)
        step = int(trainer.step.numpy())
        if step % t.log_every == 0 or step == t.steps:
            row = {"step": step, "lr": trainer.learning_rate(),
                   "w": float(diffusion.dpm_loss_weight(step - 1, t.dpm_warmup_steps).numpy()),
                   **{k: float(v.numpy()) for k, v in metrics.items()},
                   "seconds": round(time.time() - t0, 2)}
            history.append(row)
            with writer.as_default(step=step):
                for k, v in row.items():
                    if k not in ("step", "seconds"):
                        tf.summary.scalar(k, v)
            if on_step:
                on_step(step, row)
        if step % t.image_summary_every == 0 and trainer.model.guidance_net is not None:
            _image_summaries(trainer, batch, writer, step)
        if step % t.checkpoint_every == 0 or step == t.steps:
            manager.save(checkpoint_number=step)
            with gfile.GFile(history_path + ".tmp", "w") as f:
                json.dump(history, f)
            gfile.rename(history_path + ".tmp", history_path, overwrite=True)
        if bar:
            bar.update(1)
            bar.set_postfix(loss=f"{float(metrics['loss'].numpy()):.4f}")
        elif line_every and (step % line_every == 0 or step == t.steps):
            print(f"train: step {step}/{t.steps}, loss {float(metrics['loss'].numpy()):.4f}, "
                  f"{time.time() - t0:.0f} s", file=sys.stderr, flush=True)
    if bar:
        bar.close()
    writer.flush()
    from trainer import export

    export.export_saved_model(trainer, export_dir or os.path.join(out_dir, "saved_model"))
    return {"history": history, "step": int(trainer.step.numpy())}


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


def _image_summaries(trainer: Trainer, batch, writer, step: int, n: int = 4) -> None:
    """phi_k(y) | R_k(H_k(phi_k(y))) | phi_k(x) side by side for the first n crops, per scale."""
    local = lambda v: trainer.strategy.experimental_local_results(v)[0][:n]  # noqa: E731
    phi = {k: local(v) for k, v in batch["phi"].items()}
    target = {k: local(v) for k, v in batch["target"].items()}
    _, regressions = trainer.model.guide(phi, training=False)
    with writer.as_default(step=step):
        for k, reg in regressions.items():
            src = phi[k] if phi[k].shape[-1] == reg.shape[-1] else tf.image.grayscale_to_rgb(phi[k])
            row = tf.concat([src, tf.cast(reg, tf.float32), target[k]], axis=2)
            tf.summary.image(f"guidance_x{k}/input|regression|target",
                             tf.clip_by_value((row + 1.0) / 2.0, 0.0, 1.0), max_outputs=n)
