"""Where training runs: TF_CONFIG's cluster, parsed in one place, and the tf.distribute strategy.

- cluster(): the Cluster of TF_CONFIG (chief and worker tasks with their addresses, this task),
  parsed once per TF_CONFIG value however often it is asked for (a multi-worker start asks
  from make_strategy, num_workers, describe_strategy, is_chief_task and wait_for_peers).
- wait_for_peers: before MultiWorkerMirroredStrategy exists, waits in Python for the other
  tasks (TrainingStopped naming the missing ones after train.peer_timeout_s).
- make_strategy: TPUStrategy when train.tpu is set; MultiWorkerMirroredStrategy when TF_CONFIG
  names several workers; MirroredStrategy when several GPUs are visible (or
  strategy="mirrored"); the default strategy otherwise.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import socket
import threading
import time
from typing import Dict, Optional, Tuple

import tensorflow as tf

log = logging.getLogger("trainer.train")  # its lines read as the training's


class TrainingStopped(RuntimeError):
    """Training ended on its own rule (a non-finite loss, a lost worker); one line."""


class TrainingTerminated(TrainingStopped):
    """SIGTERM ended training (Kubernetes sends it before SIGKILL; a preemption; `timeout`)."""


@dataclasses.dataclass(frozen=True)
class Cluster:
    """TF_CONFIG's chief and worker tasks as (type, index, address), chief first, and this
    process's task (type, index); no TF_CONFIG: no tasks, task None, one worker."""
    tasks: Tuple[Tuple[str, int, str], ...] = ()
    task: Optional[Tuple[str, int]] = None

    @property
    def workers(self) -> int:
        return max(1, len(self.tasks))

    @property
    def has_chief(self) -> bool:
        return any(kind == "chief" for kind, _, _ in self.tasks)

    @property
    def address(self) -> Optional[str]:
        """This task's address in TF_CONFIG."""
        return next((a for k, i, a in self.tasks if (k, i) == self.task), None)

    @property
    def is_chief_task(self) -> bool:
        if self.workers == 1:
            return True
        kind, index = self.task
        return kind == "chief" or (not self.has_chief and kind == "worker" and index == 0)

    def as_dict(self) -> Dict[str, object]:
        return {"workers": self.workers, "task": self.task}


def cluster() -> Cluster:
    """The Cluster of the TF_CONFIG environment variable (ValueError, in one line, for what
    training cannot run: parameter servers, evaluators, text that is not JSON)."""
    return parse_tf_config(os.environ.get("TF_CONFIG", "").strip())


@functools.lru_cache(maxsize=4)
def parse_tf_config(text: str) -> Cluster:
    if not text:
        return Cluster()
    try:
        cfg = json.loads(text)
        spec = cfg.get("cluster") or {}
        task = cfg.get("task") or {}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"TF_CONFIG is not a JSON object with cluster and task: {e}") from None
    unsupported = sorted(set(spec) - {"chief", "worker"})
    if unsupported:
        raise ValueError(f"TF_CONFIG names {', '.join(unsupported)} tasks; training runs only "
                         "chief and worker tasks (MultiWorkerMirroredStrategy), no parameter "
                         "servers or side-car evaluators")
    tasks = tuple((kind, i, str(addr)) for kind in ("chief", "worker")
                  for i, addr in enumerate(spec.get(kind) or ()))
    kind = task.get("type") if isinstance(task, dict) else None
    if tasks and kind not in ("chief", "worker"):
        raise ValueError(f"TF_CONFIG's task must be a chief or a worker, got {task!r}")
    return Cluster(tasks, (kind, int(task.get("index", 0))) if tasks else None)


def _host_port(address: str) -> Tuple[str, int]:
    address = address.split("://", 1)[-1]
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "localhost", int(port)


# HTTP/2 (gRPC's transport, cleartext with prior knowledge): the client's connection preface
# and an empty SETTINGS frame; a server's first frame is its own SETTINGS frame (RFC 9113 3.4)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
H2_SETTINGS = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type 4, flags 0, stream 0
NO_ANSWER, NOT_GRPC, ANSWERS = "no answer", "not gRPC", "answers"


def _recv_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _handshake(address: str, timeout: float) -> str:
    """ANSWERS when address answers as a gRPC server (a TensorFlow worker's server, or a peer
    waiting here: _PortAnswer): the HTTP/2 preface and SETTINGS get a SETTINGS frame back
    within timeout; NOT_GRPC when it accepts the connection but says nothing, or something
    else (another service on that port); NO_ANSWER when nothing accepts."""
    try:
        conn = socket.create_connection(_host_port(address), timeout=timeout)
    except (OSError, ValueError):
        return NO_ANSWER
    with conn:
        try:
            conn.sendall(H2_PREFACE + H2_SETTINGS)
            head = _recv_exactly(conn, 9)
        except OSError:  # a timeout, or reset by a server that refuses this preface
            return NOT_GRPC
    # a frame header: 24-bit length, type (4: SETTINGS), flags, 31-bit stream id (0)
    if len(head) == 9 and head[3] == 4 and head[5:9] == b"\x00\x00\x00\x00":
        return ANSWERS
    return NOT_GRPC


class _PortAnswer:
    """Answers the peers' handshake (_handshake: an HTTP/2 SETTINGS frame) on this task's
    TF_CONFIG port while it waits for them, so that they see it before its gRPC server exists;
    closed before the strategy binds the port. None of it when the port is taken (TensorFlow
    then says so)."""

    def __init__(self, address: str):
        self._stop = threading.Event()
        self._sock = None
        try:
            sock = socket.socket(socket.AF_INET6 if ":" in _host_port(address)[0] else socket.AF_INET)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("", _host_port(address)[1]))
            sock.listen(16)
            sock.settimeout(0.2)
        except (OSError, ValueError):
            return
        self._sock = sock
        self._thread = threading.Thread(target=self._serve, name="peer-wait", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:  # the prober closes first (no TIME_WAIT on this port)
                conn.settimeout(1.0)
                try:  # the prober's handshake (_handshake) gets a gRPC server's first frame
                    if _recv_exactly(conn, len(H2_PREFACE)) == H2_PREFACE:
                        conn.sendall(H2_SETTINGS)
                        while conn.recv(64):
                            pass
                except OSError:
                    pass

    def close(self) -> None:
        if self._sock is not None:
            self._stop.set()
            self._thread.join(timeout=5)
            self._sock.close()


def wait_for_peers(timeout_s: float, poll_s: float = 0.5) -> None:
    """Before MultiWorkerMirroredStrategy exists: waits until every other TF_CONFIG task
    answers on its port as a gRPC server (_handshake: its TensorFlow server, or this same wait
    there), else raises TrainingStopped naming the missing tasks after timeout_s
    (train.peer_timeout_s). A port that accepts connections but is no gRPC server (another
    program there) is named as such: TensorFlow would wait for it for ever.

    The strategy's constructor waits for its peers inside TensorFlow's C++ code, holding the
    GIL (measured: worker 0 alone prints "Coordination agent has successfully connected" and
    waits for ever; no Python thread or signal handler runs meanwhile, and the coordination
    service's register timeout does not end the leader's wait), so the wait happens here,
    in Python, where the timeout and SIGTERM work. A peer that answers and dies before its own
    strategy exists still leaves the others waiting in TensorFlow."""
    c = cluster()
    tasks, me = list(c.tasks), c.task
    own = c.address
    peers = [(k, i, a) for k, i, a in tasks if (k, i) != me]
    if not peers:
        return
    answer = _PortAnswer(own) if own else None
    t0 = time.monotonic()
    deadline = t0 + timeout_s
    missing = peers
    answer_of = {}
    logged = False
    try:
        while True:
            for p in missing:
                answer_of[p] = _handshake(p[2], max(0.1, min(2.0, deadline - time.monotonic())))
            missing = [p for p in missing if answer_of[p] != ANSWERS]
            if not missing:
                log.info("all %d workers in TF_CONFIG answer (%.1f s)", len(tasks),
                         time.monotonic() - t0)
                return
            now = time.monotonic()
            if now >= deadline:
                who = f"{me[0]} {me[1]}" if me else "this task"
                raise TrainingStopped(
                    f"{who} waited {timeout_s:g} s (train.peer_timeout_s) for the other "
                    f"workers in TF_CONFIG; missing: "
                    + ", ".join(f"{k} {i} ({a})" if answer_of[(k, i, a)] == NO_ANSWER else
                                f"{k} {i} ({a} accepts connections but does not answer as a "
                                "TensorFlow worker: no gRPC handshake)" for k, i, a in missing)
                    + "; nothing was trained (start every task, or check their addresses)")
            if not logged and now - t0 > 10:
                log.warning("waiting up to %g s for %s", timeout_s,
                            ", ".join(f"{k} {i} ({a})" for k, i, a in missing))
                logged = True
            time.sleep(min(poll_s, max(0.0, deadline - now)))
    finally:
        if answer is not None:
            answer.close()


# ---- TensorFlow's start-up ------------------------------------------------------------------

# the watchdog process: prints the line at the deadline unless its stdin says the start-up ended
_WATCHDOG = r"""
import select, sys
ready, _, _ = select.select([0], [], [], float(sys.argv[1]))
if ready:  # "done", or EOF: the start-up ended, or the process is gone
    sys.exit(0)
sys.stderr.write(sys.argv[2] + "\n")
sys.stderr.flush()
sys.exit(1)
"""
WATCHDOG_GRACE_S = 2.0  # between the line and the end of the process


def _startup_message(c: Cluster, timeout_s: float) -> str:
    who = f"{c.task[0]} {c.task[1]}" if c.task else "this task"
    peers = ", ".join(f"{k} {i} ({a})" for k, i, a in c.tasks if (k, i) != c.task)
    return (f"deblur: error: {who}: TensorFlow's multi-worker start-up did not end within "
            f"{timeout_s:g} s (train.peer_timeout_s) with {peers}, which answered as gRPC "
            "servers; nothing was trained (check that each address is a worker of this job, "
            "and start them all again)")


class StartupWatchdog:
    """Bounds MultiWorkerMirroredStrategy's start-up, which waits for the peers inside
    TensorFlow's C++ code holding the GIL (no Python thread runs meanwhile; measured), e.g.
    for a peer that answers the handshake of wait_for_peers but never joins: a watchdog
    process (no GIL of ours) prints the one-line error after `seconds`, and faulthandler's C
    watchdog thread ends this process with exit code 1 WATCHDOG_GRACE_S later. A start-up that
    ends in between, after the line, ends the process with exit code 1 too, so the line never
    lies. SIGTERM in that window is taken by TensorFlow's preemption notifier (not bounded
    here)."""

    def __init__(self, seconds: float, message: str):
        self.seconds, self.message = float(seconds), message
        self._proc = self._pipe = self._devnull = None

    def __enter__(self) -> "StartupWatchdog":
        import faulthandler
        import subprocess
        import sys

        r, w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(self.seconds), self.message], stdin=r,
                stdout=subprocess.DEVNULL, close_fds=True)
        finally:
            os.close(r)
        self._pipe = w
        self._devnull = open(os.devnull, "w")
        faulthandler.dump_traceback_later(self.seconds + WATCHDOG_GRACE_S, exit=True,
                                          file=self._devnull)
        return self

    def __exit__(self, *exc) -> None:
        import faulthandler
        import subprocess

        faulthandler.cancel_dump_traceback_later()
        try:
            os.write(self._pipe, b"done\n")
        except OSError:
            pass
        os.close(self._pipe)
        try:
            code = self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        self._devnull.close()
        if code == 1:  # it printed the line as the start-up ended: keep its word
            os._exit(1)


# ---- strategy --------------------------------------------------------------------------------

def tf_config_cluster() -> Dict[str, object]:
    """{"workers": chief + worker tasks in TF_CONFIG, "task": (type, index) or None}."""
    return cluster().as_dict()


def is_chief_task() -> bool:
    """Whether this process is the chief by TF_CONFIG, before any strategy exists: the chief
    task, or worker 0 when there is none (MultiWorkerMirroredStrategy's rule); no TF_CONFIG or
    a single worker: the only process."""
    return cluster().is_chief_task


def make_strategy(tcfg) -> tf.distribute.Strategy:
    if tcfg.tpu:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tcfg.tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    c = cluster()
    workers = c.workers
    if tcfg.strategy == "multi_worker" or (tcfg.strategy == "auto" and workers > 1):
        # RING on CPUs, NCCL on GPUs; a lost peer is found by the coordination service's
        # heartbeats, which fail the collectives that wait for it
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.AUTO)
        watchdog = None
        if c.workers > 1:
            wait_for_peers(tcfg.peer_timeout_s)
            watchdog = StartupWatchdog(tcfg.peer_timeout_s,
                                       _startup_message(c, tcfg.peer_timeout_s))
        try:
            if watchdog is None:
                return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
            with watchdog:
                return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        except tf.errors.UnknownError as e:  # "Could not start gRPC server"
            if c.task is None:
                raise
            kind, index = c.task
            address = c.address
            raise ValueError(f"this worker ({kind} {index}) could not serve on {address} from "
                             f"TF_CONFIG ({e.message.strip()}): the port is taken or the address "
                             "is not this machine's") from None
    if workers > 1:
        raise ValueError(f"TF_CONFIG names {workers} workers but train.strategy is "
                         f"{tcfg.strategy!r}; use auto or multi_worker")
    if tcfg.strategy == "mirrored" or (tcfg.strategy == "auto" and len(tf.config.list_logical_devices("GPU")) > 1):
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def num_workers(strategy: tf.distribute.Strategy) -> int:
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return cluster().workers
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return int(strategy.extended.num_hosts)
    return 1


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """The process that writes the outputs (the only process, except under multi-worker)."""
    return bool(strategy.extended.should_checkpoint)


def device_type(strategy: tf.distribute.Strategy) -> str:
    if isinstance(strategy, tf.distribute.TPUStrategy):
        return "TPU"
    return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def describe_strategy(strategy: tf.distribute.Strategy, jit_compile: bool) -> str:
    task = cluster().task if isinstance(
        strategy, tf.distribute.MultiWorkerMirroredStrategy) else None
    who = f"; task {task[0]} {task[1]}" if task else ""
    role = "" if is_chief(strategy) else " (not the chief: writes only to a temporary folder)"
    name = ("MultiWorkerMirroredStrategy"
            if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            else "default (one device)" if type(strategy).__name__.startswith("_Default")
            else type(strategy).__name__)
    return (f"strategy {name}: {num_workers(strategy)} worker(s), "
            f"{strategy.num_replicas_in_sync} replica(s) in sync on {device_type(strategy)}, "
            f"XLA {'on' if jit_compile else 'off'}{who}{role}")
