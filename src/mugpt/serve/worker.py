"""One run in its own process: learn in time slices, obey commands, publish aggregated updates.

The server starts :func:`worker_main` in a separate process (multiprocessing, ``forkserver``
context, or ``spawn`` where there is no fork server) and talks to it over two one-way pipes:

- server → worker: ``{"rid": int, "cmd": {...}}`` — a validated command (see ``protocol``) or
  one of the internal ``export`` / ``stop`` commands;
- worker → server: ``ready``, ``update``, ``reset``, ``reply`` and ``failed`` messages (dicts).

The loop does not depend on how fast the engine is: it learns for about ``slice_seconds``
(growing or shrinking the number of bytes per ``Learner.run`` call to fit), looks at its
commands, and publishes at most ``publish_hz`` updates per second. Each update aggregates what
happened since the previous one: per-byte losses (or their per-bin means when there are many),
the bytes read with their surprisal, the next-byte distribution, attention of the last window,
learning rate, gradient norm, events and counters, the model diagram's live numbers and,
with ngram_mix on, the experts of the next step; per-phase metrics and the classic
compressors' figures are recomputed every so often, the latter in a background thread. The
messages' shapes are the models of :mod:`mugpt.serve.protocol`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
import threading
import time
import traceback
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.errors import ConfigError, MugptError

#: Display EMA of the per-byte loss: y += alpha · (x - y), a time constant of ~100 bytes.
EMA_ALPHA = 0.01
#: At most this many loss bins per update; more bytes are averaged into wider bins.
MAX_BINS_PER_UPDATE = 160
#: At most this many of the bytes read since the last update are sent as text.
MAX_TEXT_PER_UPDATE = 600
#: Attention maps are sent at most this often (seconds), for at most this many positions.
ATTENTION_EVERY = 0.5
ATTENTION_POSITIONS = 48
#: Per-phase metrics are recomputed at most this often (seconds).
PHASES_EVERY = 1.0
#: At most this many events per update (replay events are counted in the loss bins instead).
MAX_EVENTS_PER_UPDATE = 100
TOP_K = 10
#: At most this many bytes of the next step get an experts view (ngram_mix on), at most this
#: often (seconds): a step of 24 bytes takes about 8 ms to replay.
EXPERT_BYTES = 32
EXPERTS_EVERY = 0.2
FIRST_STEP_NOTICE = 3.0
"""A first learning call longer than this (seconds) is announced in the terminal."""
WORKER_NICENESS = 5
"""Workers run at a lower CPU priority than the server (Unix ``nice``)."""


def worker_main(commands: Connection, out: Connection, spec: dict[str, Any]) -> None:
    """Entry point of a run's process: reads commands from ``commands``, writes messages to
    ``out``. ``spec`` holds ``config`` (a RunConfig dict), ``run_dir``, ``publish_hz``,
    ``slice_seconds``, ``max_stream_bytes``, ``paused`` and ``max_bytes_per_s``. Any error
    ends the run with a ``failed`` message naming it."""
    if hasattr(os, "nice"):
        # learning is background work: the server that draws it must stay responsive
        with contextlib.suppress(OSError):
            os.nice(WORKER_NICENESS)
    try:
        RunWorker(commands, out, spec).loop()
    except (EOFError, BrokenPipeError, ConnectionResetError, KeyboardInterrupt):
        return  # the server went away: nothing to report to
    except BaseException as exc:
        message = str(exc) if isinstance(exc, MugptError) else f"{type(exc).__name__}: {exc}"
        with contextlib.suppress(OSError, EOFError):
            out.send({"type": "failed", "error": message, "traceback": traceback.format_exc()})
    finally:
        for conn in (commands, out):
            with contextlib.suppress(OSError):
                conn.close()


WARM_STATUS_ENV = "MUGPT_SERVE_WARM_STATUS"
"""Names the file where the compile process reports its progress (the server and the run
workers read it)."""
WARM_OWNER_ENV = "MUGPT_SERVE_WARM_OWNER"
"""The server's process id: no report is written once it has gone."""
WARM_STAGES = (
    "loading the engine",
    "compiling the learning loop",
    "compiling the prediction",
)
"""The compile process's stages until the compiled engine is ready for a hand-over."""
COMPILE_PROFILE = ((0, 0.0), (30, 0.28), (56, 0.68), (57, 1.0))
"""(kernels compiled, fraction of the time until ready) of a cold compile of the default run
(numba 0.68, measured on this project's 2-core machine): the learning loop's own kernel,
compiled last, takes a third of the time. It turns the kernel count into an estimate."""
TYPICAL_COMPILE_S = 50.0
"""Seconds a cold compile of the default run takes until ready on an idle 2-core machine
(measured; a busy machine takes several times longer)."""
COMPILE_NICENESS = 2 * WORKER_NICENESS
"""The compile process yields to the server and to the runs' workers (Unix ``nice``): on a
busy machine the first learning update comes first, the hand-over later."""


def read_warm_report() -> dict[str, Any] | None:
    """The compile process's last report (None before its first, or with no lab around)."""
    import json

    path = os.environ.get(WARM_STATUS_ENV)
    if not path:
        return None
    try:
        with open(path, encoding="utf-8") as fh:
            report = json.load(fh)
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def write_warm_report(report: dict[str, Any]) -> None:
    """Writes a report to the file named by ``MUGPT_SERVE_WARM_STATUS`` atomically (a reader
    sees the old or the new report, never half of one), unless the server has gone."""
    import json

    path = os.environ.get(WARM_STATUS_ENV)
    if not path:
        return
    owner = os.environ.get(WARM_OWNER_ENV, "")
    if owner.isdigit():
        try:
            os.kill(int(owner), 0)
        except ProcessLookupError:
            return  # the server has gone (and removed the file): leave nothing behind
        except OSError:
            pass  # alive, or not ours to signal
    partial = f"{path}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        with open(partial, "w", encoding="utf-8") as fh:
            json.dump(report, fh)
        os.replace(partial, path)


def compile_estimate(kernels: int, seconds: float) -> float:
    """Seconds a compile that had compiled ``kernels`` kernels after ``seconds`` takes in all,
    by :data:`COMPILE_PROFILE` (before the first kernel: :data:`TYPICAL_COMPILE_S`).

    >>> compile_estimate(0, 1.0)
    50.0
    >>> round(compile_estimate(30, 28.0), 1)
    100.0
    """
    if kernels <= 0:
        return TYPICAL_COMPILE_S
    points = COMPILE_PROFILE
    for (k0, f0), (k1, f1) in itertools.pairwise(points):
        if kernels <= k1:
            fraction = f0 + (f1 - f0) * (kernels - k0) / (k1 - k0)
            break
    else:
        fraction = 1.0
    return max(seconds, seconds / max(fraction, 0.05))


class _Progress:
    """Counts numba's compiles (``numba:compile`` events) and reports each finished kernel."""

    def __init__(self, started: float, report: bool) -> None:
        self.started = started
        self.report = report
        self.step = 0
        self.kernels = 0
        self.current = ""
        self.last_kernel_at = 0.0
        self.finished = False

    def stage(self, step: int, state: str = "compiling", **extra: Any) -> None:
        self.step = step
        self.write(state, **extra)
        self.finished = state in ("ready", "failed")

    def kernel_done(self, name: str) -> None:
        if self.finished:
            # kernels compiled after the engine is ready (the single step's, cached for
            # later runs) must not turn the final "ready" back into "compiling": the
            # server would read a compile that ended without a verdict as a failure
            return
        self.kernels += 1
        self.current = name
        self.last_kernel_at = time.time() - self.started
        self.write("compiling")

    def write(self, state: str, **extra: Any) -> None:
        if not self.report:
            return
        step = self.step
        stage = WARM_STAGES[step] if step < len(WARM_STAGES) else "ready"
        total = compile_estimate(self.kernels, self.last_kernel_at)
        write_warm_report(
            {
                "state": state,
                "stage": stage,
                "step": step,
                "steps": len(WARM_STAGES),
                "kernels": self.kernels,
                "current": self.current,
                "eta": self.started + total,
                "started": self.started,
                "updated": time.time(),
                **extra,
            }
        )


def warm_up(report: bool = True, config: Any = None, step: bool = True) -> float:
    """Runs a tiny learner of ``config`` (default: the lab's default run) through the paths
    a worker uses (the compiled loop, a prediction and, with ``step``, a single step), so
    that their kernels are compiled into numba's on-disk cache, or loaded from it. With
    ``report``, each stage and each compiled kernel is reported to the file named by
    ``MUGPT_SERVE_WARM_STATUS``. Returns the seconds it took; raises what the engine raised."""
    from numba.core import event

    started = time.time()
    progress = _Progress(started, report)

    class Listener(event.Listener):
        def on_start(self, ev: Any) -> None:
            pass

        def on_end(self, ev: Any) -> None:
            dispatcher = ev.data.get("dispatcher")
            func = getattr(dispatcher, "py_func", None)
            progress.kernel_done(getattr(func, "__name__", "?").lstrip("_"))

    listener = Listener()
    if report:
        event.register("numba:compile", listener)
    try:
        progress.stage(0)
        from mugpt.corpus import Stream
        from mugpt.engine.config import RunConfig
        from mugpt.mechanisms import available

        available()
        cfg = RunConfig() if config is None else config
        learner = cfg.build_learner()
        progress.stage(1)
        text = Stream.from_bytes(b"warm up the kernels, once.\n" * 4)
        learner.run(text, max_bytes=max(60, cfg.learner.block_bytes))
        progress.stage(2)
        learner.predict_next()
        seconds = time.time() - started
        progress.stage(len(WARM_STAGES), "ready", seconds=round(seconds, 1))
        if step:  # kernels of Python-only mechanisms' runs: cached, not waited for
            learner.step(b"ok")
        return seconds
    finally:
        if report:
            event.unregister("numba:compile", listener)


def warm_reference() -> None:
    """Compiles (or loads) the few small kernels the NumPy reference path calls (the window
    rule, the loss in bits): a run on the reference model starts learning at once after."""
    from mugpt.corpus import Stream
    from mugpt.engine.config import RunConfig

    cfg = RunConfig()
    cfg = cfg.replace(learner=dataclasses.replace(cfg.learner, backend="numpy"))
    learner = cfg.build_learner()
    learner.run(Stream.from_bytes(b"warm up, once.\n" * 4), max_bytes=40)
    learner.predict_next()


def compile_main() -> None:
    """The lab's compile process (started by the server, see :mod:`mugpt.serve.runs`):
    compiles the engine's kernels into numba's on-disk cache and reports its progress, while
    the runs learn on the reference path. It ends when done, and at once when its parent
    (the server) has gone."""
    parent = os.getppid()

    def watch_parent() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent:
                os._exit(3)  # the server has gone: nobody needs this compile any more

    threading.Thread(target=watch_parent, name="mugpt-compile-watch", daemon=True).start()
    if hasattr(os, "nice"):
        with contextlib.suppress(OSError):
            os.nice(COMPILE_NICENESS)
    started = time.time()
    try:
        if os.environ.get("MUGPT_SERVE_FAIL_COMPILE") == "1":  # the tests' failing compile
            raise RuntimeError("compiling was made to fail (MUGPT_SERVE_FAIL_COMPILE=1)")
        warm_up(report=True)
    except Exception as exc:
        write_warm_report(
            {
                "state": "failed",
                "stage": "failed",
                "step": 0,
                "steps": len(WARM_STAGES),
                "error": f"{type(exc).__name__}: {exc}",
                "started": started,
                "updated": time.time(),
            }
        )
        raise SystemExit(1) from None


PREPARE_WAIT = 60.0
"""A run started once the engine is ready waits for its kernels (already in the fork
server's memory, or loaded from numba's cache: a fraction of a second to a few seconds) up
to this long, so that it starts compiled; it starts on the reference path instead as soon
as they turn out to need compiling (a configuration beyond the default run's)."""
WATCH_EVERY = 0.25
"""How often (seconds) a run on the reference path looks at the compile process's report."""


def _wait_unless_compiling(prep: _Preparer) -> None:
    """Waits until ``prep`` has loaded its kernels, unless it starts compiling one (numba's
    ``numba:compile`` event: only loading from the cache is worth waiting for) or
    :data:`PREPARE_WAIT` has passed."""
    from numba.core import event

    compiling = threading.Event()

    class Listener(event.Listener):
        def on_start(self, ev: Any) -> None:
            compiling.set()

        def on_end(self, ev: Any) -> None:
            pass

    with event.install_listener("numba:compile", Listener()):
        deadline = time.monotonic() + PREPARE_WAIT
        while not compiling.is_set() and time.monotonic() < deadline:
            if prep.finished.wait(0.02):
                return


class _Preparer(threading.Thread):
    """Gets the compiled engine ready for one run, in the background: waits until the
    compile process reports ready (or failed), then loads this run's kernels from numba's
    cache (or compiles what its configuration needs beyond the default run) on a tiny learner
    of the same configuration. The run meanwhile learns on the reference path."""

    def __init__(self, cfg: Any, signature: Any) -> None:
        super().__init__(name="mugpt-prepare", daemon=True)
        self.cfg = cfg
        self.signature = signature
        self.phase = "waiting"  # waiting for the compile process, loading, done
        self.ok = False
        self.error: str | None = None
        self.seconds = 0.0
        self.finished = threading.Event()
        self.cancelled = threading.Event()

    def run(self) -> None:
        try:
            while not self.cancelled.is_set():
                report = read_warm_report() or {}
                state = report.get("state")
                if state == "ready":
                    break
                if state == "failed":
                    why = report.get("error") or "it stopped"
                    self.error = f"compiling the engine failed ({why})"
                    return
                self.cancelled.wait(WATCH_EVERY)
            if self.cancelled.is_set():
                return
            self.phase = "loading"
            self.seconds = warm_up(report=False, config=self.cfg, step=False)
            self.ok = True
        except Exception as exc:
            self.error = f"loading the compiled engine failed ({type(exc).__name__}: {exc})"
        finally:
            self.phase = "done"
            self.finished.set()


class _Bins:
    """Per-byte losses aggregated into bins: start index, count, mean, EMA at the bin's end,
    and how many updates were skipped and replay updates made while learning its bytes."""

    def __init__(self) -> None:
        self.x: list[int] = []
        self.n: list[int] = []
        self.mean: list[float] = []
        self.min: list[float] = []
        self.max: list[float] = []
        self.ema: list[float] = []
        self.skips: list[int] = []
        self.replays: list[int] = []

    def to_dict(self) -> dict[str, list[Any]]:
        return {
            "x": self.x,
            "n": self.n,
            "mean": [round(v, 4) for v in self.mean],
            "min": [round(v, 4) for v in self.min],
            "max": [round(v, 4) for v in self.max],
            "ema": [round(v, 4) for v in self.ema],
            "skips": self.skips,
            "replays": self.replays,
        }


class RunWorker:
    """The state of one live run inside its worker process."""

    def __init__(self, commands: Connection, out: Connection, spec: dict[str, Any]) -> None:
        from mugpt.engine.config import RunConfig

        self.commands = commands
        self.out = out
        self.cfg = RunConfig.from_dict(spec["config"])
        self.run_dir = Path(spec["run_dir"])
        self.publish_interval = 1.0 / float(spec.get("publish_hz", 10.0))
        self.slice_seconds = float(spec.get("slice_seconds", 0.05))
        self.stream = self.cfg.build_stream()
        limit = int(spec.get("max_stream_bytes", 0) or 0)
        if limit and len(self.stream) > limit:
            raise ConfigError(
                f"the stream has {len(self.stream):,} bytes; this server allows at most "
                f"{limit:,} (start it with --max-stream-bytes to raise the limit)"
            )
        if len(self.stream) == 0:
            raise ConfigError("the stream is empty; give it at least one byte")
        self.data = np.frombuffer(self.stream.data, dtype=np.uint8)
        self.total = len(self.stream)
        self.state = "paused" if spec.get("paused") else "running"
        self.throttle: float | None = spec.get("max_bytes_per_s")
        self.stopping = False
        self.check_messages = bool(spec.get("check_messages"))
        self.first_step = True
        self.config_changed = False
        self.baseline_lock = threading.Lock()
        self.born = time.monotonic()
        self.prep: _Preparer | None = None
        self.engine = "compiled"  # or waiting / loading (on the reference path), reference
        self.engine_detail = ""
        self._fresh()
        self.send(
            {
                "type": "ready",
                "stream": self.stream.to_dict(),
                "total": self.total,
                "params": self.cfg.model.n_params,
                "config": self.cfg.to_dict(),
                "mechanisms": self._mechanisms(),
                "state": self.state,
                "engine": self._engine_info(),
            }
        )

    def _fresh(self) -> None:
        """A new Learner at byte 0 with the current configuration."""
        self.learner = self._build_learner()
        self.losses = np.zeros(0)
        self.total_bits = 0.0
        self.ema: float | None = None
        self.bins = _Bins()
        self.text_bytes: deque[tuple[int, int, float]] = deque(maxlen=MAX_TEXT_PER_UPDATE)
        self.events_sent = 0
        self.step_budget = 0
        self.chunk = self.cfg.learner.update_every
        self.learn_seconds = 0.0
        self.speed: deque[tuple[float, int]] = deque(maxlen=64)
        self.tokens = 0.0
        self.tokens_time = time.monotonic()
        self.dirty = True
        self.next_publish = 0.0
        self.last_attention = 0.0
        self.last_experts = 0.0
        self.last_phases = 0.0
        self.phases_dirty = True
        with self.baseline_lock:
            self.baseline_result: dict[str, Any] | None = None
        self.baseline_thread: threading.Thread | None = None
        self.baseline_next = 1000
        self._prev_counts = (0, 0)
        self.generation = getattr(self, "generation", -1) + 1

    # ------------------------------------------------------------------ the engine

    def _hands_over(self) -> bool:
        """Whether this run starts on the reference path and moves to the compiled engine
        when it is ready: in the lab (the compile process reports to a file), with the
        default backend choice ("auto"), where the compiled kernels exist."""
        from mugpt.engine.learner import resolve_backend

        if not os.environ.get(WARM_STATUS_ENV) or self.cfg.learner.backend != "auto":
            return False
        return resolve_backend("auto") == "numba"

    def _signature(self) -> Any:
        """What decides which compiled kernels a run needs (their types, not their sizes)."""
        mechs = tuple((m["name"], bool(m.get("enabled", True))) for m in self.cfg.mechanisms)
        return (self.cfg.model.dtype, self.cfg.learner.batch_streams > 1, mechs)

    def _prepare(self) -> _Preparer:
        if self.prep is not None:
            self.prep.cancelled.set()
        self.prep = _Preparer(self.cfg, self._signature())
        self.prep.start()
        return self.prep

    def _build_learner(self) -> Any:
        """The run's Learner: compiled when its kernels are ready (or when it does not hand
        over), else on the reference path, with a preparer getting the compiled engine ready."""
        if not self._hands_over():
            self.engine = "compiled" if self.cfg.learner.backend != "numpy" else "reference"
            self.engine_detail = "" if self.engine == "compiled" else "backend=numpy was asked"
            return self.cfg.build_learner()
        prep = self.prep
        if prep is None or prep.signature != self._signature():
            prep = self._prepare()
        report = read_warm_report() or {}
        if report.get("state") == "ready":
            _wait_unless_compiling(prep)
        if prep.ok:
            self.engine, self.engine_detail = "compiled", ""
            return self.cfg.build_learner()
        self._reference_state()
        learner_cfg = dataclasses.replace(self.cfg.learner, backend="numpy")
        return self.cfg.replace(learner=learner_cfg).build_learner()

    def _reference_state(self) -> None:
        prep = self.prep
        if prep is not None and prep.finished.is_set() and not prep.ok:
            self.engine = "reference"
            self.engine_detail = str(prep.error)
        elif prep is not None and prep.phase == "loading":
            self.engine = "loading"
            self.engine_detail = "loading the compiled kernels this run needs"
        else:
            self.engine = "waiting"
            self.engine_detail = "learning on the NumPy reference path while the engine compiles"

    def _engine_info(self) -> dict[str, Any]:
        return {
            "backend": self.learner.model.backend,
            "state": self.engine,
            "detail": self.engine_detail,
        }

    def hand_over(self) -> bool:
        """Between two steps: moves the run to the compiled engine once its kernels are ready
        (the same weights and optimiser state; an ``engine`` event records it). Returns
        whether it did."""
        prep = self.prep
        if self.engine not in ("waiting", "loading") or prep is None:
            return False
        before = self.engine
        if not prep.finished.is_set():
            self._reference_state()
        elif prep.ok and prep.signature != self._signature():
            self._prepare()  # a mechanism changed meanwhile: get its kernels too
            self._reference_state()
        elif prep.ok:
            waited = time.monotonic() - self.born
            self.learner.use_backend("numba", reason="the compiled engine is ready")
            self.engine, self.engine_detail = "compiled", ""
            self.dirty = True
            print(
                f"mugpt serve: run {self.run_dir.name}: switched to the compiled engine at byte "
                f"{self.pos:,} (after {waited:.1f} s on the NumPy reference path)",
                flush=True,
            )
            return True
        else:
            self._reference_state()
            print(
                f"mugpt serve: run {self.run_dir.name}: stays on the NumPy reference path: "
                f"{self.engine_detail}",
                flush=True,
            )
        if self.engine != before:
            self.dirty = True
        return False

    # ------------------------------------------------------------------ plumbing

    def send(self, message: dict[str, Any]) -> None:
        """Sends a message to the server; with ``check_messages`` it is first validated
        against its model in :mod:`mugpt.serve.protocol` (a mismatch fails the run)."""
        from mugpt.serve.protocol import check_message, clean

        message = clean(message)
        if self.check_messages:
            check_message(message, worker=True)
        self.out.send(message)

    def _mechanisms(self) -> list[dict[str, Any]]:
        return [m.describe() for m in self.learner.mechanisms]

    @property
    def pos(self) -> int:
        return int(self.learner.position)

    def can_learn(self) -> bool:
        return self.pos < self.total and (self.state == "running" or self.step_budget > 0)

    # ------------------------------------------------------------------ the loop

    def loop(self) -> None:
        while not self.stopping:
            self.hand_over()
            wait = 0.0
            if self.can_learn():
                wait = self.learn_slice()
            else:
                wait = 1.0
            now = time.monotonic()
            if self.dirty:
                wait = min(wait, max(0.0, self.next_publish - now))
            self.handle_commands(wait)
            if self.stopping:
                break
            now = time.monotonic()
            if self.dirty and now >= self.next_publish:
                self.publish()
                self.next_publish = now + self.publish_interval

    def handle_commands(self, wait: float) -> None:
        """Applies every waiting command; waits up to ``wait`` seconds for the first one."""
        if not self.commands.poll(wait):
            return
        while self.commands.poll(0):
            message = self.commands.recv()
            self.apply(message.get("rid"), message["cmd"])
            if self.stopping:
                return

    def learn_slice(self) -> float:
        """Learns for about ``slice_seconds``; returns how long to wait before learning more
        (non-zero only when a throttle holds it back)."""
        k = self.cfg.learner.update_every
        deadline = time.monotonic() + self.slice_seconds
        while self.can_learn():
            now = time.monotonic()
            if now >= deadline:
                return 0.0
            n = self.chunk
            if self.step_budget:
                n = min(n, self.step_budget)
            if self.throttle:
                self.tokens = min(
                    self.tokens + (now - self.tokens_time) * self.throttle,
                    max(float(k), self.throttle * self.slice_seconds),
                )
                self.tokens_time = now
                allowed = int(self.tokens)
                if allowed < min(n, k):
                    return min(0.25, (min(n, k) - self.tokens) / self.throttle)
                n = min(n, allowed)
            block = self.cfg.learner.block_bytes
            if block:  # whole blocks of sub-streams, laid out as in a straight run
                n = max(block, n - n % block)
            elif n > k:
                n -= n % k  # whole steps, so the run splits into the same steps as a straight one
            start = self.pos
            t0 = time.perf_counter()
            if self.first_step:
                result = self._first_run(min(start + n, self.total))
            else:
                result = self.learner.run(self.stream, max_bytes=min(start + n, self.total))
            dt = time.perf_counter() - t0
            self.learn_seconds += dt
            done = self.pos - start
            if self.throttle:
                self.tokens -= done
            if self.step_budget:
                self.step_budget = max(0, self.step_budget - done)
            # fit the bytes per call to about a quarter of a slice
            if dt < self.slice_seconds / 8 and self.chunk < 1 << 20:
                self.chunk *= 2
            elif dt > self.slice_seconds / 2 and self.chunk > k:
                self.chunk = max(k, self.chunk // 2)
            self.record(start, result)
            if self.pos >= self.total:
                self.finish()
        return 0.0

    def _first_run(self, max_bytes: int) -> Any:
        """The run's first learning call: if it takes longer than ``FIRST_STEP_NOTICE``
        seconds (kernels this configuration needs compiling on first use), the terminal says
        so, and says again when it is done."""
        self.first_step = False
        run_id = self.run_dir.name
        t0 = time.monotonic()

        def say() -> None:
            print(
                f"mugpt serve: run {run_id}: compiling the kernels its configuration needs "
                "(first use on this machine; cached afterwards)...",
                flush=True,
            )

        timer = threading.Timer(FIRST_STEP_NOTICE, say)
        timer.daemon = True
        timer.start()
        try:
            return self.learner.run(self.stream, max_bytes=max_bytes)
        finally:
            timer.cancel()
            if time.monotonic() - t0 >= FIRST_STEP_NOTICE:
                print(
                    f"mugpt serve: run {run_id}: learning after {time.monotonic() - t0:.1f} s",
                    flush=True,
                )

    def record(self, start: int, result: Any) -> None:
        """Adds the bytes [start, pos) just learned to the pending update."""
        end = self.pos
        self.losses = result.losses
        if end <= start:
            return
        segment = np.asarray(self.losses[start:end], dtype=np.float64)
        self.total_bits += float(segment.sum())
        counters = self.learner.counters
        prev = self._prev_counts
        skips, replays = counters.skipped - prev[0], counters.replay_updates - prev[1]
        self._prev_counts = (counters.skipped, counters.replay_updates)
        self._add_bins(start, segment, max(0, skips), max(0, replays))
        keep = segment[-MAX_TEXT_PER_UPDATE:]
        first = end - keep.size
        for i, bits in enumerate(keep):
            self.text_bytes.append((first + i, int(self.data[first + i]), float(bits)))
        self.speed.append((time.monotonic(), end))
        self.phases_dirty = True
        self.dirty = True

    def _add_bins(self, start: int, segment: np.ndarray, skips: int, replays: int) -> None:
        bins = self.bins
        # bins of at least `stride` bytes keep an update under MAX_BINS_PER_UPDATE entries
        pending = sum(bins.n) + segment.size
        stride = max(1, math.ceil(pending / MAX_BINS_PER_UPDATE))
        if bins.n and bins.n[0] < stride:
            self._rebin(stride)
        decay = 1.0 - EMA_ALPHA
        for lo in range(0, segment.size, stride):
            part = segment[lo : lo + stride]
            m = part.size
            prev = self.ema if self.ema is not None else float(part[0])
            # closed form of m EMA steps: decay^m·prev + alpha·Σ decay^(m-1-i)·x_i
            weights = EMA_ALPHA * decay ** np.arange(m - 1, -1, -1, dtype=np.float64)
            self.ema = float(decay**m * prev + weights @ part)
            bins.x.append(start + lo)
            bins.n.append(m)
            bins.mean.append(float(part.mean()))
            bins.min.append(float(part.min()))
            bins.max.append(float(part.max()))
            bins.ema.append(self.ema)
            bins.skips.append(0)
            bins.replays.append(0)
        bins.skips[-1] += skips
        bins.replays[-1] += replays

    def _rebin(self, stride: int) -> None:
        """Merges neighbouring pending bins until each holds at least ``stride`` bytes."""
        old = self.bins
        new = _Bins()
        for i in range(len(old.n)):
            if new.n and new.n[-1] < stride:
                total = new.n[-1] + old.n[i]
                new.mean[-1] = (new.mean[-1] * new.n[-1] + old.mean[i] * old.n[i]) / total
                new.n[-1] = total
                new.min[-1] = min(new.min[-1], old.min[i])
                new.max[-1] = max(new.max[-1], old.max[i])
                new.ema[-1] = old.ema[i]
                new.skips[-1] += old.skips[i]
                new.replays[-1] += old.replays[i]
            else:
                new.x.append(old.x[i])
                new.n.append(old.n[i])
                new.mean.append(old.mean[i])
                new.min.append(old.min[i])
                new.max.append(old.max[i])
                new.ema.append(old.ema[i])
                new.skips.append(old.skips[i])
                new.replays.append(old.replays[i])
        self.bins = new

    def finish(self) -> None:
        self.state = "finished"
        self.step_budget = 0
        self.dirty = True
        self.phases_dirty = True
        self._start_baselines(force=True)
        with contextlib.suppress(OSError, MugptError):
            self.write_files(("all",))  # if it fails, an export will say why when asked

    # ------------------------------------------------------------------ publishing

    def publish(self) -> None:
        self.dirty = False
        now = time.monotonic()
        learner = self.learner
        pos = self.pos
        last = learner.last
        message: dict[str, Any] = {
            "type": "update",
            "generation": self.generation,
            "state": self.state,
            "pos": pos,
            "total": self.total,
            "bpb": self.total_bits / pos if pos else None,
            "bytes_per_s": self._bytes_per_s(),
            "max_bytes_per_s": self.throttle,
            "loss": self.bins.to_dict(),
            "text": [list(t) for t in self.text_bytes],
            "lr": float(learner.lr) if last is None else float(last.lr),
            "base_lr": float(learner.lr),
            "grad_norm": None if last is None else last.grad_norm,
            "counters": learner.counters.to_dict(),
            "engine": self._engine_info(),
        }
        for t in message["text"]:
            t[2] = round(t[2], 2)
        self.bins = _Bins()
        self.text_bytes.clear()
        events = learner.events[self.events_sent :]
        self.events_sent = len(learner.events)
        shown = [e for e in events if e.get("kind") != "replay"]
        message["events"] = shown[-MAX_EVENTS_PER_UPDATE:]
        message["events_dropped"] = max(0, len(shown) - MAX_EVENTS_PER_UPDATE)
        if any(e.get("kind") == "mechanism" for e in events):
            message["mechanisms"] = self._mechanisms()
        if self.config_changed:
            message["config"] = self.cfg.to_dict()
            self.config_changed = False
        if pos > 0 or learner.last is not None:
            message["topk"] = self._topk()
            message["next_byte"] = int(self.data[pos]) if pos < self.total else None
        if now - self.last_attention >= ATTENTION_EVERY:
            attention = self._attention()
            if attention is not None:
                message["attention"] = attention
                self.last_attention = now
                view = self._model_view()
                if view is not None:
                    message["model_view"] = view
        if now - self.last_experts >= EXPERTS_EVERY or self.state != "running":
            experts = self._experts()
            if experts is not None:
                message["experts"] = experts
                self.last_experts = now
        if self.phases_dirty and (
            now - self.last_phases >= PHASES_EVERY or self.state != "running"
        ):
            message["phases"] = self._phases()
            self.phases_dirty = False
            self.last_phases = now
        with self.baseline_lock:  # the last result first: the next computation replaces it
            if self.baseline_result is not None:
                message["baselines"] = self.baseline_result
                self.baseline_result = None
        self._start_baselines()
        self.send(message)

    def _bytes_per_s(self) -> float | None:
        if len(self.speed) < 2:
            return None
        (t0, p0), (t1, p1) = self.speed[0], self.speed[-1]
        return (p1 - p0) / (t1 - t0) if t1 > t0 else None

    def _topk(self) -> list[list[float]]:
        probs = self.learner.predict_next()
        order = np.argsort(-probs, kind="stable")[:TOP_K]
        return [[int(s), round(float(probs[s]), 5)] for s in order]

    def _attention(self) -> dict[str, Any] | None:
        acts = self.learner.last_acts
        if acts is None:
            return None
        try:
            n_layers = self.cfg.model.n_layers
            layers = list(range(n_layers))
            if n_layers * self.cfg.model.n_heads > 16:
                layers = [n_layers - 1]
            maps = []
            for layer in layers:
                att = np.asarray(acts.attention(layer))[0]  # (H, T, T)
                att = att[:, -ATTENTION_POSITIONS:, -ATTENTION_POSITIONS:]
                # percent as integers: a quarter of the JSON of three decimals
                maps.append({"layer": layer, "heads": np.rint(att * 100).astype(int).tolist()})
            idx = getattr(acts, "idx", None)
            if idx is not None:
                tokens = np.asarray(idx)[0][-ATTENTION_POSITIONS:]
            else:
                tokens = self.learner.history[-ATTENTION_POSITIONS - 1 : -1]
            return {"layers": maps, "tokens": [int(t) for t in tokens], "scale": 100}
        except (AttributeError, IndexError, TypeError, ValueError):
            return None  # an engine without attention maps: the page shows none

    def _window(self) -> np.ndarray:
        """The symbols the model sees now (BOS alone before the first byte)."""
        hist = np.asarray(self.learner.history)
        if hist.size == 0:
            from mugpt.model.constants import BOS

            return np.array([BOS])
        return hist[-self.cfg.model.context :]

    def _model_view(self) -> dict[str, Any] | None:
        """The model diagram's live numbers on the last window (see serve/diagram.py)."""
        from mugpt.serve.diagram import live_view

        acts = self.learner.last_acts
        idx = getattr(acts, "idx", None)
        window = np.asarray(idx)[0] if idx is not None else self._window()
        try:
            return live_view(self.learner.model.params, self.cfg.model, window)
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return None  # a model without the named weights: the diagram stays unlit

    def _experts(self) -> dict[str, Any] | None:
        """With ngram_mix on: for each byte of the next step (at most ``EXPERT_BYTES``), each
        expert's probability of it, the mixer's weights and the winner, replayed read-only
        on a copy of the mechanism's state (serve/experts.py); the first byte's view in full,
        the step's winners as ``[index, byte, winner]``."""
        from mugpt.serve.experts import CountState, experts_view, step_inputs, step_views

        learner = self.learner
        mech = next((m for m in learner.mechanisms if m.name == "ngram_mix" and m.enabled), None)
        state = CountState.of(mech) if mech is not None else None
        if state is None or self.cfg.learner.batch_streams > 1:
            return None  # with sub-streams the next step is B windows: not drawn
        pos = self.pos
        n = min(self.cfg.learner.update_every, self.total - pos, EXPERT_BYTES)
        starts = np.asarray(self.stream.doc_starts)
        later = starts[(starts > pos) & (starts < pos + n)]
        if later.size:  # the step's window holds a BOS there: stop before it
            n = int(later[0]) - pos
        hist = np.asarray(learner.history)
        try:
            if n <= 0:  # the stream's end: nothing left to predict
                window = self._window()
                probs = np.asarray(learner.model.forward(window[None, :]).probs[0, -1])
                return {**experts_view(state, probs, window, None, pos), "step": []}
            new = self.data[pos : pos + n].astype(np.int64)
            doc_start = bool(pos > 0 and np.any(starts == pos))
            inputs, rows = step_inputs(hist, new, self.cfg.model.context, doc_start)
            model_rows = np.asarray(learner.model.forward(inputs[None, :]).probs[0, rows])
            cfg = mech.config  # type: ignore[union-attr]
            views = step_views(
                state, model_rows, inputs, rows, new.tolist(), pos, float(cfg.lr),
                int(cfg.count_limit),
            )  # fmt: skip
        except (AttributeError, IndexError, KeyError, TypeError, ValueError):
            return None
        first = dict(views[0])
        first["step"] = [[v["pos"], v["byte"], v["winner"]] for v in views]
        return first

    def _phases(self) -> list[dict[str, Any]]:
        from mugpt.engine.metrics import phase_metrics

        return phase_metrics(self.losses[: self.pos], self.stream)

    def _start_baselines(self, force: bool = False) -> None:
        """Starts computing gzip/xz/PPMd in a thread on the first n bytes, at geometrically
        spaced n (1,000 bytes, then 1.5× but at least 2,000 more each time), once the run
        has read them: on the scheduled n rather than on all bytes seen so far, so that the
        curves start near byte 0 however many bytes the first steps took; a run ahead of
        the schedule catches up a point per status message. ``force`` (the run's end)
        computes on every byte seen."""
        pos = self.pos
        if pos == 0 or (pos < self.baseline_next and not force):
            return
        if self.baseline_thread is not None and self.baseline_thread.is_alive():
            return
        with self.baseline_lock:
            if self.baseline_result is not None and not force:
                return  # the last point is not sent yet: the next one would replace it
        n = pos if force else min(pos, self.baseline_next)
        self.baseline_next = max(int(n * 1.5), n + 2000)
        data = self.stream.data[:n]
        generation = self.generation

        def compute() -> None:
            from mugpt.engine.baselines import baseline_bpb

            result = {"n": n, "bpb": baseline_bpb(data)}
            with self.baseline_lock:
                if generation == self.generation:
                    self.baseline_result = result
                    self.dirty = True

        self.baseline_thread = threading.Thread(target=compute, daemon=True)
        self.baseline_thread.start()

    # ------------------------------------------------------------------ commands

    def apply(self, rid: Any, raw: dict[str, Any]) -> None:
        """Validates a command into its class (protocol.WorkerCommand), applies it and
        answers with a ``reply`` (``ok`` false and the error if it could not)."""
        from mugpt.serve.protocol import CommandError, parse_worker_command

        kind = str(raw.get("type", "?"))
        try:
            result = self._apply(parse_worker_command(raw)) or {}
        except (MugptError, CommandError) as exc:
            self.send(
                {"type": "reply", "rid": rid, "ok": False, "command": kind, "error": str(exc)}
            )
            return
        except (TypeError, ValueError) as exc:
            self.send(
                {
                    "type": "reply",
                    "rid": rid,
                    "ok": False,
                    "command": kind,
                    "error": f"{kind}: {exc}",
                }
            )
            return
        self.dirty = True
        self.send({"type": "reply", "rid": rid, "ok": True, "command": kind, "result": result})

    def _apply(self, cmd: Any) -> dict[str, Any] | None:
        """Dispatches on the command's class."""
        from mugpt.serve import protocol as P

        learner = self.learner
        match cmd:
            case P.Pause():
                self.state = "paused" if self.state != "finished" else self.state
                self.step_budget = 0
            case P.Resume():
                if self.state == "finished":
                    raise ConfigError("the run has read its whole stream; reset it to start again")
                self.state = "running"
                self.tokens_time = time.monotonic()
            case P.Step(bytes=n):
                if self.state == "finished":
                    raise ConfigError("the run has read its whole stream; reset it to start again")
                self.state = "paused"
                self.step_budget += int(n)
            case P.Throttle(max_bytes_per_s=cap):
                self.throttle = cap
                self.tokens, self.tokens_time = 0.0, time.monotonic()
                learner.events.append(
                    {
                        "pos": self.pos,
                        "step": learner.counters.steps,
                        "kind": "throttle",
                        "max_bytes_per_s": self.throttle,
                    }
                )
            case P.Reset():
                was_paused = self.state == "paused"
                self._fresh()
                self.state = "paused" if was_paused else "running"
                self.send({"type": "reset", "generation": self.generation, "state": self.state})
            case P.SetMechanism(name=name, enabled=enabled, params=params):
                self._set_mechanism(name, enabled, params or {})
                self.config_changed = True
                return {"mechanisms": self._mechanisms()}
            case P.SetLR(lr=lr):
                learner.set_lr(float(lr))
                self.cfg = self.cfg.with_overrides({"optim.lr": float(lr)})
                self.config_changed = True
            case P.Sample():
                return self._sample(cmd.model_dump())
            case P.Export(what=what):
                return {"paths": self.write_files((what,))}
            case P.StopWorker(write=write):
                files: dict[str, str] = {}
                try:
                    if write:
                        files = self.write_files(("all",))
                finally:
                    self.stopping = True
                    if self.prep is not None:
                        self.prep.cancelled.set()
                return {"paths": files}
            case _:
                raise ConfigError(f"unknown command {type(cmd).__name__}")
        return None

    def _set_mechanism(self, name: str, enabled: bool | None, params: dict[str, Any]) -> None:
        from mugpt.mechanisms import make_mechanism

        learner = self.learner
        if any(m.name == name for m in learner.mechanisms):
            learner.set_mechanism(name, enabled, **params)
        else:
            mech = make_mechanism((name, dict(params)))
            if enabled is not None:
                mech.enabled = bool(enabled)
            learner.add_mechanism(mech)
        self.cfg = self.cfg.replace(
            mechanisms=[
                {"name": m.name, "enabled": m.enabled, **m.config.model_dump()}
                for m in learner.mechanisms
            ]
        )

    def _sample(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from mugpt.model import generate, show_bytes

        prompt = str(cmd.get("prompt", "")).encode("utf-8")
        t0 = time.perf_counter()
        out = generate(
            self.learner.model,
            prompt,
            int(cmd.get("length", 200)),
            temperature=float(cmd.get("temperature", 1.0)),
            top_k=int(cmd.get("top_k", 0)),
            top_p=float(cmd.get("top_p", 1.0)),
            seed=cmd.get("seed"),
            history=self.learner.history,
        )
        return {
            "text": show_bytes(out),
            "bytes": len(out),
            "prompt": show_bytes(prompt),
            "at_byte": self.pos,
            "seconds": round(time.perf_counter() - t0, 3),
        }

    # ------------------------------------------------------------------ files

    def write_files(self, what: tuple[str, ...]) -> dict[str, str]:
        """Writes the asked files of the run directory (each atomically) and returns their
        paths; ``("all",)`` writes the whole directory of the run-directory contract."""
        import json
        import os

        from mugpt.engine.checkpoint import atomic_write_bytes, save_checkpoint
        from mugpt.engine.rundir import FILES, write_log_csv, write_run_dir

        if what == ("all",):
            summary = self.summary()
            write_run_dir(
                self.run_dir,
                self.learner,
                self.result(),
                self.cfg,
                summary,
                force=True,
                extra_config={"stream": self.stream.spec},
            )
            return {name: str(self.run_dir / name) for name in FILES}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        paths: dict[str, str] = {}
        for name in what:
            if name == "config":
                path = self.run_dir / "config.json"
                values = {**self.cfg.to_dict(), "stream": self.stream.spec}
                atomic_write_bytes(path, json.dumps(values, indent=2).encode())
            elif name == "summary":
                path = self.run_dir / "summary.json"
                atomic_write_bytes(path, json.dumps(self.summary(), indent=2).encode())
            elif name == "log":
                path = self.run_dir / "log.csv"
                partial = self.run_dir / f".log.csv.{os.getpid()}.tmp"
                names = [p.label for p in self.stream.phases]
                labels = [names[i] for i in self.stream.phase_ids()[: self.pos].tolist()]
                try:
                    write_log_csv(partial, self.learner.losses, self.stream.data, labels)
                    os.replace(partial, path)
                finally:
                    partial.unlink(missing_ok=True)
            elif name == "checkpoint":
                path = self.run_dir / "checkpoint.npz"
                save_checkpoint(
                    self.learner,
                    path,
                    extra={"run_config": self.cfg.to_dict(), "stream": self.stream.spec},
                )
            else:
                raise ConfigError(f"cannot export {name!r}; choose log, summary or checkpoint")
            paths[name] = str(path)
        return paths

    def result(self) -> Any:
        """The run so far as a RunResult (what summaries and run directories are built from)."""
        from mugpt.engine.learner import RunResult

        learner = self.learner
        return RunResult(
            losses=learner.losses,
            counters=learner.counters.to_dict(),
            seconds=self.learn_seconds,
            bytes_this_call=self.pos,
            stream=self.stream,
            events=list(learner.events),
            mechanisms=self._mechanisms(),
        )

    def summary(self) -> dict[str, Any]:
        from mugpt.engine.summary import build_summary

        summary = build_summary(self.result(), self.cfg)
        summary["state"] = self.state
        summary["stream_bytes"] = self.total
        return summary
