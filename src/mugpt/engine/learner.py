"""The prequential Learner: predict → record the loss → update (Dawid 1984).

Every byte is scored with the parameters as they were before any update used it, so the
mean loss is an honest code length (bits per byte) and needs no held-out split.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mugpt.engine.loop import batch_loss_bits, loss_bits_of, window_loss_bits
from mugpt.engine.window import history_append, step_end, step_symbols, whole_steps_end
from mugpt.errors import ConfigError
from mugpt.mechanisms import Mechanism, StepContext
from mugpt.model import BOS, GPT, ModelConfig, OptimConfig, Optimizer, UpdateInfo
from mugpt.model.config import _from_dict
from mugpt.model.protocol import Model

if TYPE_CHECKING:
    from mugpt.corpus import Stream

WINDOW_LOSSES = ("all", "new")
BACKENDS = ("auto", "numba", "numpy")


@dataclass(frozen=True)
class LearnerConfig:
    """How the stream is consumed.

    ``update_every`` (k): bytes predicted per step before the (at most one) update; k = 1 is
    the strict per-byte protocol. ``window_loss``: ``"all"`` trains on every position of the
    window (the full causal block), ``"new"`` only on the k newest. ``seed`` seeds the
    Learner's generator used by mechanisms. ``backend``: ``"numba"`` runs the compiled kernels
    of :mod:`mugpt.model.fast`, ``"numpy"`` the reference NumPy model, ``"auto"`` numba when it
    imports. ``batch_streams`` (B): :meth:`Learner.run` splits the bytes it reads into B
    contiguous sub-streams learned as one batch with shared weights (NNCP, Bellard 2019);
    each sub-stream stays strictly prequential and losses are reported in stream order.
    ``substream_bytes`` (S): with B > 1, 0 splits each call's bytes once; S > 0 reads the
    stream in blocks of B·S bytes aligned to stream position 0, each split into B sub-streams
    of S bytes, so a run made in calls that end on block boundaries (the lab's time slices,
    a sweep's checkpoints) equals a run made in one call.

    Example:
        >>> LearnerConfig(update_every=0)
        Traceback (most recent call last):
        ...
        mugpt.errors.ConfigError: update_every=0 must be an integer >= 1
        >>> LearnerConfig(batch_streams=16).batch_streams
        16
        >>> LearnerConfig(batch_streams=4, substream_bytes=1024).block_bytes
        4096
    """

    update_every: int = 1
    window_loss: str = "all"
    seed: int = 0
    backend: str = "auto"
    batch_streams: int = 1
    substream_bytes: int = 0

    def __post_init__(self) -> None:
        k = self.update_every
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ConfigError(f"update_every={k!r} must be an integer >= 1")
        if self.window_loss not in WINDOW_LOSSES:
            raise ConfigError(
                f"window_loss={self.window_loss!r} is unknown; choose one of {WINDOW_LOSSES}"
            )
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend={self.backend!r} is unknown; choose one of {BACKENDS}")
        b = self.batch_streams
        if not isinstance(b, int) or isinstance(b, bool) or not 1 <= b <= 4096:
            raise ConfigError(f"batch_streams={b!r} must be an integer in [1, 4096] (1 = off)")
        s = self.substream_bytes
        if not isinstance(s, int) or isinstance(s, bool) or not 0 <= s <= 1 << 40:
            raise ConfigError(
                f"substream_bytes={s!r} must be an integer >= 0 (0 = split each call once)"
            )

    @property
    def block_bytes(self) -> int:
        """Bytes per block of sub-streams (B·S), or 0 when calls are split whole."""
        return self.batch_streams * self.substream_bytes if self.batch_streams > 1 else 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LearnerConfig:
        return _from_dict(cls, values, "learner")


@dataclass
class StepOutput:
    """What one step produced (the lab reads it for its views)."""

    position: int  # bytes consumed before this step
    new_bytes: np.ndarray  # (k,)
    loss_bits: np.ndarray  # (k,) the recorded prequential losses
    probs: np.ndarray  # (k, V) the predictions that were scored
    updated: bool
    replays: int
    grad_norm: float | None
    lr: float
    window_loss_bits: float
    events: list[dict[str, Any]]


@dataclass
class Counters:
    steps: int = 0
    updates: int = 0  # optimiser updates applied on the main window
    skipped: int = 0  # updates a mechanism declined
    nonfinite: int = 0  # updates dropped because the gradient was NaN/inf
    replay_updates: int = 0  # updates on extra windows
    forward_passes: int = 0
    backward_passes: int = 0

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass
class RunResult:
    """The outcome of :meth:`Learner.run`: per-byte losses and what it took to get them."""

    losses: np.ndarray  # (n,) bits per byte, in stream order, from byte 0
    counters: dict[str, int]
    seconds: float  # wall time of this call's loop
    bytes_this_call: int
    stream: Stream | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    mechanisms: list[dict[str, Any]] = field(default_factory=list)
    compile_seconds: float = 0.0  # of ``seconds``: compiling or loading kernels on first use

    @property
    def bytes(self) -> int:
        return int(self.losses.size)

    @property
    def bpb(self) -> float:
        return float(self.losses.mean()) if self.losses.size else float("nan")

    @property
    def bytes_per_s(self) -> float:
        """Bytes learned per second of this call, not counting first-use compilation."""
        learning = self.seconds - self.compile_seconds
        return self.bytes_this_call / learning if learning > 0 else 0.0

    @property
    def phase_ids(self) -> np.ndarray:
        if self.stream is None:
            return np.zeros(self.losses.size, dtype=np.int32)
        return self.stream.phase_ids()[: self.losses.size]


ProgressFn = Callable[[int, int, float], None]


@contextlib.contextmanager
def compile_timer() -> Iterator[Any]:
    """Measures the time spent compiling kernels, or loading them from numba's cache, while
    the block runs (``.done``: any was; ``.duration``: seconds). A run's speed excludes it, so
    a first run and the next report the same bytes/s.

    Example:
        >>> with compile_timer() as compiling:
        ...     pass
        >>> compiling.done
        False
    """
    try:
        from numba.core import event
    except ImportError:  # pragma: no cover - numba is a dependency
        yield _NoTimer()
        return
    with event.install_timer("numba:compiler_lock", lambda _seconds: None) as timer:
        yield timer


class _NoTimer:
    done = False
    duration = 0.0


def resolve_backend(name: str) -> str:
    """``"auto"`` → ``"numba"`` when the compiled kernels import, else ``"numpy"``.

    Example:
        >>> resolve_backend("numpy")
        'numpy'
    """
    if name == "numpy":
        return "numpy"
    try:
        import mugpt.model.fast  # noqa: F401
    except ImportError as exc:
        if name == "numba":
            raise ConfigError(
                f"backend='numba' needs numba ({exc}); install numba or use backend='numpy'"
            ) from None
        return "numpy"
    return "numba"


class Learner:
    """A model, its optimiser and mechanisms, reading a byte stream prequentially.

    Example:
        >>> from mugpt.corpus import Stream
        >>> learner = Learner(ModelConfig(), OptimConfig(lr=0.01))
        >>> result = learner.run(Stream.from_bytes(b"abcabcabcabc" * 20))
        >>> result.bytes, result.counters["updates"]
        (240, 240)
        >>> bool(result.losses[-24:].mean() < result.losses[:24].mean())  # it learned
        True
    """

    def __init__(
        self,
        model_cfg: ModelConfig | None = None,
        optim_cfg: OptimConfig | None = None,
        mechanisms: Sequence[Mechanism] = (),
        learner_cfg: LearnerConfig | None = None,
    ) -> None:
        self.model_cfg = model_cfg or ModelConfig()
        self.optim_cfg = optim_cfg or OptimConfig()
        self.cfg = learner_cfg or LearnerConfig()
        if self.cfg.update_every > self.model_cfg.context:
            raise ConfigError(
                f"update_every={self.cfg.update_every} must not exceed the context "
                f"({self.model_cfg.context}): a step predicts at most one window of bytes"
            )
        names = [m.name for m in mechanisms]
        if len(set(names)) != len(names):
            raise ConfigError(f"each mechanism may appear once; got {names}")
        self.backend = resolve_backend(self.cfg.backend)
        self.model: Model
        if self.backend == "numba":
            from mugpt.model.fast import FastGPT

            self.model = FastGPT(self.model_cfg)
        else:
            self.model = GPT(self.model_cfg)
        dtype = self.model.dtype
        self.optimizer = Optimizer(self.optim_cfg, self.model_cfg.n_params, dtype)
        self.grads = self.model.params.like()
        self.mechanisms: list[Mechanism] = list(mechanisms)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.lr = self.optim_cfg.lr
        self.counters = Counters()
        self.position = 0
        self.events: list[dict[str, Any]] = []
        self._loss_log: list[np.ndarray] = []
        ctx = self.model_cfg.context
        self._hist = np.full(4 * (ctx + 1), BOS, dtype=np.int64)
        self._hist_len = 0
        self.last: StepOutput | None = None
        self.last_acts: Any = None  # Activations of the last step's main window
        self.lr_effective = self.lr
        self.checkpoint_extra: dict[str, Any] = {}

    # ------------------------------------------------------------------ the protocol

    @property
    def history(self) -> np.ndarray:
        """The symbols the model can still see (at most context + 1), BOS included."""
        return self._hist[: self._hist_len]

    def _append(self, symbols: np.ndarray) -> None:
        self._hist_len = history_append(self._hist, self._hist_len, symbols, self.model_cfg.context)

    def step(
        self, new_bytes: bytes | np.ndarray, doc_start: Sequence[bool] | np.ndarray | None = None
    ) -> StepOutput:
        """Predicts ``new_bytes`` (k ≤ context of them) from what came before, records each
        byte's loss, then makes at most one update on the window (plus any replays).

        ``doc_start[i]`` marks that a new document starts at byte i: a BOS goes before it.
        The very first byte of a Learner's life always gets a BOS.
        """
        cfg = self.model_cfg
        data = (
            np.frombuffer(new_bytes, dtype=np.uint8)
            if isinstance(new_bytes, bytes | bytearray)
            else np.asarray(new_bytes)
        )
        k = int(data.size)
        assert k >= 1, "a step needs at least one byte"
        starts = np.zeros(k, dtype=bool) if doc_start is None else np.asarray(doc_start, bool)
        symbols = step_symbols(data, starts, self.position == 0 and self._hist_len == 0)
        n_bos = symbols.size - k
        if symbols.size > cfg.context:
            raise ConfigError(
                f"a step of {k} bytes and {n_bos} document starts exceeds the context "
                f"({cfg.context}); use fewer bytes per step"
            )
        self._append(symbols)
        window = self.history[-(cfg.context + 1) :]
        inputs, targets = window[:-1], window[1:]
        n = inputs.size
        # new symbols occupy the last symbols.size targets; keep those that are bytes
        new_slots = np.arange(max(0, n - symbols.size), n)
        new_positions = new_slots[targets[new_slots] != BOS]
        assert new_positions.size == k

        self.model.pin(None)  # this step replaces the last one's activations
        acts = self.model.forward(inputs[None, :])
        self.counters.forward_passes += 1
        ctx = StepContext(
            step=self.counters.steps,
            position=self.position,
            new_bytes=data,
            inputs=inputs,
            targets=targets,
            new_positions=new_positions,
            hidden=acts.hidden[0],
            rng=self.rng,
            optimizer=self.optimizer,
            lr=self.lr,
            context=cfg.context,
        )
        active = [m for m in self.mechanisms if m.enabled]

        # 1. predictions (possibly adjusted), 2. recorded losses
        probs = acts.probs[0, new_positions].astype(np.float64)  # (k, V)
        for mech in active:
            probs = mech.adjust_prediction(ctx, probs)
        loss_bits = self._loss_bits(probs, data)
        ctx.loss_bits = loss_bits
        self._loss_log.append(loss_bits)
        for mech in active:
            mech.observe(ctx, loss_bits)

        # 3-5. the update on the window
        weights = (targets != BOS).astype(np.float64)
        if self.cfg.window_loss == "new":
            only_new = np.zeros_like(weights)
            only_new[new_positions] = 1.0
            weights = only_new
        ctx.window_loss_bits = float(window_loss_bits(acts.probs[0], targets, weights))
        grad_norm = self._update(acts, targets[None, :], weights[None, :], active, ctx)
        update = grad_norm is not None
        replays = self._replay(active, ctx)  # 6. extra windows

        self.counters.steps += 1
        stamp = {"pos": self.position, "step": ctx.step}
        for event in ctx.events:
            self.events.append({**stamp, **event})
        self.position += k
        self.last_acts = acts
        self.model.pin(acts)  # kept valid for the lab's views until the next step
        self.last = StepOutput(
            position=ctx.position,
            new_bytes=data,
            loss_bits=loss_bits,
            probs=probs,
            updated=update,
            replays=replays,
            grad_norm=grad_norm,
            lr=self.lr_effective,
            window_loss_bits=ctx.window_loss_bits,
            events=ctx.events,
        )
        return self.last

    def _update(
        self,
        acts: Any,
        targets: np.ndarray,
        weights: np.ndarray,
        active: list[Mechanism],
        ctx: StepContext,
    ) -> float | None:
        """Steps 3-5 of a step: unless a mechanism declines, one update on the windows
        (targets and weights (B, n)) at the mechanisms' lr scale. Returns the optimiser's
        gradient norm, or None when the update was declined."""
        if not all(mech.should_update(ctx) for mech in active):
            self.counters.skipped += 1
            self.lr_effective = 0.0
            return None
        scale = 1.0
        for mech in active:
            scale *= mech.lr_scale(ctx)
        grad_norm = self._apply_update(acts, targets, weights, scale, active, ctx)
        self.lr_effective = self.lr * scale
        return grad_norm

    def _replay(self, active: list[Mechanism], ctx: StepContext) -> int:
        """Step 6: the mechanisms' extra windows, one update each; returns how many."""
        replays = 0
        for mech in active:
            windows = mech.extra_windows(ctx)
            opt = mech.extra_optimizer()
            extra_bits = [self._train_extra(np.asarray(w, dtype=np.int64), opt) for w in windows]
            replays += len(windows)
            if windows:
                mech.replayed(ctx, extra_bits)
        if replays:
            ctx.emit("replay", count=replays)
        return replays

    def _apply_update(
        self,
        acts: Any,
        targets: np.ndarray,
        weights: np.ndarray,
        lr_scale: float,
        active: list[Mechanism],
        ctx: StepContext,
    ) -> float:
        """Backward on the windows (targets, weights (B, n)), the mechanisms' gradient
        transforms, one optimiser update; returns the optimiser's gradient norm."""
        grads = self.grads
        grads.flat[:] = 0.0
        self.model.backward(acts, targets, weights, grads)
        self.counters.backward_passes += 1
        ctx.grad_norm = self._grad_norm(grads.flat)
        for mech in active:
            mech.transform_grads(ctx, grads.flat)
        info = self._optimizer_step(self.optimizer, lr_scale)
        if info.applied:
            self.counters.updates += 1
        else:
            self.counters.nonfinite += 1
        return info.grad_norm

    def _loss_bits(self, probs: np.ndarray, data: np.ndarray) -> np.ndarray:
        """−log2 p(byte) of each scored byte (probs (k, V) float64)."""
        out = np.empty(data.size, dtype=np.float64)
        loss_bits_of(probs, np.ascontiguousarray(data, dtype=np.uint8), out)
        return out

    def _grad_norm(self, g: np.ndarray) -> float:
        return self.model.grad_norm(g)

    def _optimizer_step(self, optimizer: Optimizer, lr_scale: float = 1.0) -> UpdateInfo:
        """``optimizer.step`` on the current gradient (the model's own kernel)."""
        return self.model.optimizer_step(optimizer, self.grads.flat, lr_scale)

    def _train_extra(self, symbols: np.ndarray, optimizer: Optimizer | None) -> float:
        """One update on an extra window; returns its mean loss in bits before the update."""
        assert 2 <= symbols.size <= self.model_cfg.context + 1, symbols.size
        inputs, targets = symbols[:-1], symbols[1:]
        weights = (targets != BOS).astype(np.float64)
        if not weights.any():
            return float("nan")
        model = self.model.twin()  # the main window's activations stay for the lab's views
        acts = model.forward(inputs[None, :])
        self.counters.forward_passes += 1
        self.grads.flat[:] = 0.0
        nats = model.backward(acts, targets[None, :], weights[None, :], self.grads)
        self.counters.backward_passes += 1
        info = self._optimizer_step(optimizer or self.optimizer)
        if info.applied:
            self.counters.replay_updates += 1
        else:
            self.counters.nonfinite += 1
        return float(nats / np.log(2.0))

    def predict_next(self) -> np.ndarray:
        """The model's distribution (V,) for the next byte given the history, with no update
        and no mechanism adjustment (used for sampling and inspection)."""
        hist = self.history
        if hist.size == 0:
            hist = np.array([BOS])
        acts = self.model.forward(hist[-self.model_cfg.context :][None, :])
        return acts.probs[0, -1].astype(np.float64)

    # ------------------------------------------------------------------ whole streams

    def run(
        self,
        stream: Stream,
        max_bytes: int | None = None,
        progress: ProgressFn | None = None,
        progress_every: float = 0.2,
        scored: np.ndarray | None = None,
    ) -> RunResult:
        """Reads ``stream`` from the Learner's position to its end (or ``max_bytes`` in all),
        ``update_every`` bytes per step, and returns the losses of every byte read so far.

        ``scored`` (B = 1 only), an (n, V) float64 array, receives the row each byte of this
        call was scored with (after the mechanisms' adjustments): row i for the call's byte i.
        The range coder codes them.

        A call stops only between steps: with ``max_bytes`` short of the stream's end it stops
        at the last step boundary at or before ``max_bytes`` (with B > 1 and S > 0, the last
        block boundary), unless less than one step is left. So a run continued by another
        call, or resumed from a checkpoint saved after this one, equals an uninterrupted run
        bit for bit (:mod:`mugpt.engine.window` holds the rule).

        With ``batch_streams`` B > 1 the bytes this call reads are split into B contiguous
        sub-streams that advance together (each starts with BOS, except the first, which
        continues the Learner's history); afterwards the Learner continues after the last.
        On the numba backend with no active mechanism the whole loop runs compiled."""
        data = np.frombuffer(stream.data, dtype=np.uint8)
        starts = np.zeros(data.size + 1, dtype=bool)
        starts[np.asarray(stream.doc_starts, dtype=np.int64)] = True
        begin = self.position
        end = self._stop_at(starts, data.size, max_bytes)
        t0 = time.perf_counter()
        compiled = self._compiled_mechanisms()
        if scored is not None:
            if self.cfg.batch_streams > 1:
                raise ConfigError("scored rows are kept for one stream only (batch_streams=1)")
            assert scored.shape[0] >= end - begin and scored.dtype == np.float64, scored.shape
        block = self.cfg.block_bytes
        if block and progress is not None:
            report = progress

            def progress(pos: int, _block_end: int, bpb: float) -> None:
                report(pos, end, bpb)  # progress towards the call's end, not the block's

        with compile_timer() as compiling:
            while True:
                # with blocks of sub-streams, one block at a time (blocks are aligned to 0)
                stop = end if block == 0 else min(end, (self.position // block + 1) * block)
                rows = None if scored is None else scored[self.position - begin :]
                if compiled is not None:
                    self._run_compiled(data, starts, stop, progress, progress_every, compiled, rows)
                elif self.cfg.batch_streams > 1:
                    self._run_batched(data, starts, stop, progress, progress_every)
                else:
                    self._run_steps(data, starts, stop, progress, progress_every, rows)
                if self.position >= end:
                    break
        seconds = time.perf_counter() - t0
        return RunResult(
            losses=self.losses,
            counters=self.counters.to_dict(),
            seconds=seconds,
            bytes_this_call=self.position - begin,
            stream=stream,
            events=list(self.events),
            mechanisms=[m.describe() for m in self.mechanisms],
            compile_seconds=min(compiling.duration if compiling.done else 0.0, seconds),
        )

    def advance(
        self, data: np.ndarray, starts: np.ndarray, end: int, scored: np.ndarray | None = None
    ) -> None:
        """Learns ``data[position:end]`` in steps, on the fastest path that runs this Learner
        (the compiled loop when every active mechanism has kernels), as :meth:`run` does with
        B = 1. ``data`` holds the bytes (uint8) and ``starts`` (bool, one longer) marks
        document starts; ``end`` should be a step boundary (the range coder decodes one
        step at a time). ``scored`` as in :meth:`run`.

        Example:
            >>> import numpy as np
            >>> learner = Learner(learner_cfg=LearnerConfig(update_every=4))
            >>> data = np.frombuffer(b"abcdabcd", dtype=np.uint8)
            >>> learner.advance(data, np.zeros(9, dtype=bool), 3)  # the first step: BOS + 3
            >>> learner.position, learner.counters.steps
            (3, 1)
        """
        if self.cfg.batch_streams > 1:
            raise ConfigError("advance reads one stream (batch_streams=1)")
        compiled = self._compiled_mechanisms()
        if compiled is not None:
            self._run_compiled(data, starts, end, None, 1.0, compiled, scored)
        else:
            self._run_steps(data, starts, end, None, 1.0, scored)

    def _stop_at(self, starts: np.ndarray, size: int, max_bytes: int | None) -> int:
        """Where a call told to stop after ``max_bytes`` in all stops: on a step boundary
        (B = 1) or a block boundary (B > 1 with S > 0), so that the next call, or a run
        resumed from a checkpoint saved now, makes the same steps as an uninterrupted run."""
        if max_bytes is None or max_bytes >= size:
            return size
        cap = max(self.position, max_bytes)
        if self.cfg.batch_streams > 1:
            block = self.cfg.block_bytes
            stop = (cap // block) * block if block else cap
            return stop if stop > self.position else cap
        first = self.position == 0 and self._hist_len == 0
        k, context = self.cfg.update_every, self.model_cfg.context
        return whole_steps_end(starts, self.position, cap, size, k, context, first)

    def _run_steps(
        self,
        data: np.ndarray,
        starts: np.ndarray,
        end: int,
        progress: ProgressFn | None,
        progress_every: float,
        scored: np.ndarray | None = None,
    ) -> None:
        """The loop of :meth:`step` calls (any backend, any mechanism)."""
        k, ctx_len = self.cfg.update_every, self.model_cfg.context
        last_report = time.perf_counter()
        begin = self.position
        while self.position < end:
            pos = self.position
            stop = step_end(starts, pos, end, k, ctx_len, pos == 0 and self._hist_len == 0)
            out = self.step(data[pos:stop], starts[pos:stop])
            if scored is not None:
                scored[pos - begin : stop - begin] = out.probs
            if progress is not None:
                now = time.perf_counter()
                if now - last_report >= progress_every or self.position >= end:
                    last_report = now
                    progress(self.position, end, self.running_bpb())

    def _run_batched(
        self,
        data: np.ndarray,
        starts: np.ndarray,
        end: int,
        progress: ProgressFn | None,
        progress_every: float,
    ) -> None:
        """B sub-streams stepped together in Python (any backend, any mechanism).

        Without mechanisms it computes exactly what :meth:`_run_compiled` computes. With
        mechanisms, ``adjust_prediction`` and ``observe`` run for each sub-stream in order,
        with that sub-stream's context; the update hooks (``should_update``, ``lr_scale``,
        ``transform_grads``, ``extra_windows``) run once per step with the context of the
        last sub-stream of the step, whose ``loss_bits`` and ``window_loss_bits`` cover the
        whole batch."""
        begin = self.position
        n = end - begin
        if n <= 0:
            return
        cfg = self.model_cfg
        T, k = cfg.context, self.cfg.update_every
        n_seg = min(self.cfg.batch_streams, n)
        bounds = begin + (np.arange(n_seg + 1, dtype=np.int64) * n) // n_seg
        seg_pos, seg_end = bounds[:-1].copy(), bounds[1:].copy()
        hists = [np.full(self._hist.size, BOS, dtype=np.int64) for _ in range(n_seg)]
        hist_len = [0] * n_seg
        hists[0][: self._hist_len] = self._hist[: self._hist_len]
        hist_len[0] = self._hist_len
        losses = np.full(n, np.nan)
        last_report = time.perf_counter()
        while True:
            active_segs = [s for s in range(n_seg) if seg_pos[s] < seg_end[s]]
            if not active_segs:
                break
            rows = []  # per window: inputs, targets, new positions, bytes, first byte index
            for sgi in active_segs:
                pos = int(seg_pos[sgi])
                first = hist_len[sgi] == 0
                stop = step_end(starts, pos, int(seg_end[sgi]), k, T, first)
                symbols = step_symbols(data[pos:stop], starts[pos:stop], first)
                h = hists[sgi]
                hl = history_append(h, hist_len[sgi], symbols, T)
                hist_len[sgi] = hl
                window = h[max(0, hl - (T + 1)) : hl]
                inputs, targets = window[:-1], window[1:]
                slots = np.arange(max(0, inputs.size - symbols.size), inputs.size)
                new_positions = slots[targets[slots] != BOS]
                rows.append((inputs, targets, new_positions, data[pos:stop], pos))
                seg_pos[sgi] = stop
            n_max = max(r[0].size for r in rows)
            idx = np.zeros((len(rows), n_max), dtype=np.int64)
            tgt = np.zeros((len(rows), n_max), dtype=np.int64)
            weights = np.zeros((len(rows), n_max))
            for w, (inputs, targets, new_positions, _, _) in enumerate(rows):
                idx[w, : inputs.size] = inputs
                tgt[w, : targets.size] = targets
                if self.cfg.window_loss == "new":
                    weights[w, new_positions] = 1.0
                else:
                    weights[w, : targets.size] = targets != BOS
            self.model.pin(None)  # this step replaces the last one's activations
            acts = self.model.forward(idx)
            self.counters.forward_passes += 1
            active = [m for m in self.mechanisms if m.enabled]
            ctx: StepContext | None = None
            step_losses = []
            for w, (inputs, targets, new_positions, chunk_bytes, pos) in enumerate(rows):
                ctx = StepContext(
                    step=self.counters.steps,
                    position=pos,
                    new_bytes=chunk_bytes,
                    inputs=inputs,
                    targets=targets,
                    new_positions=new_positions,
                    hidden=acts.hidden[w, : inputs.size],
                    rng=self.rng,
                    optimizer=self.optimizer,
                    lr=self.lr,
                    context=T,
                )
                probs = acts.probs[w, new_positions].astype(np.float64)
                for mech in active:
                    probs = mech.adjust_prediction(ctx, probs)
                loss_bits = self._loss_bits(probs, chunk_bytes)
                ctx.loss_bits = loss_bits
                losses[pos - begin : pos - begin + loss_bits.size] = loss_bits
                step_losses.append(loss_bits)
                for mech in active:
                    mech.observe(ctx, loss_bits)
                for event in ctx.events:  # each window's events, stamped with its position
                    self.events.append({"pos": pos, "step": ctx.step, **event})
                ctx.events.clear()
            assert ctx is not None
            ctx.loss_bits = np.concatenate(step_losses)
            ctx.new_bytes = np.concatenate([r[3] for r in rows])
            ctx.window_loss_bits = float(batch_loss_bits(acts.probs, tgt, weights, len(rows)))
            grad_norm = self._update(acts, tgt, weights, active, ctx)
            replays = self._replay(active, ctx)
            for event in ctx.events:
                self.events.append({"pos": ctx.position, "step": ctx.step, **event})
            self.counters.steps += 1
            self.last_acts = acts
            self.model.pin(acts)  # kept valid for the lab's views until the next step
            self.last = StepOutput(
                position=ctx.position,
                new_bytes=rows[-1][3],
                loss_bits=step_losses[-1],
                probs=probs,
                updated=grad_norm is not None,
                replays=replays,
                grad_norm=grad_norm,
                lr=self.lr_effective,
                window_loss_bits=ctx.window_loss_bits,
                events=ctx.events,
            )
            if progress is not None:
                now = time.perf_counter()
                if now - last_report >= progress_every:
                    last_report = now
                    done = int((seg_pos - bounds[:-1]).sum())
                    filled = losses[np.isfinite(losses)]
                    progress(begin + done, end, float(filled.mean()) if filled.size else float("nan"))  # fmt: skip
        self._loss_log.append(losses)
        last = n_seg - 1
        self._hist[:] = hists[last]
        self._hist_len = hist_len[last]
        self.position = end
        if progress is not None:
            progress(self.position, end, self.running_bpb())

    def _compiled_mechanisms(self) -> list[tuple[Mechanism, Any]] | None:
        """The active mechanisms with their compiled states, when the compiled loop can run
        this Learner (numba backend, every active mechanism with kernels), else None."""
        if self.model.backend != "numba":
            return None
        from mugpt.engine.loop import KERNELS

        parts = []
        for mech in self.mechanisms:
            if not mech.enabled:
                continue
            if mech.name not in KERNELS or not hasattr(mech, "compiled_state"):
                return None
            state = mech.compiled_state(self.model_cfg.context)
            if state is None:  # e.g. a detector that exists in Python only
                return None
            parts.append((mech, state))
        return parts

    def _run_compiled(
        self,
        data: np.ndarray,
        starts: np.ndarray,
        end: int,
        progress: ProgressFn | None,
        progress_every: float,
        parts: list[tuple[Mechanism, Any]],
        scored: np.ndarray | None = None,
    ) -> None:
        """The same protocol as :meth:`_run_steps` and :meth:`_run_batched`, bit for bit, in
        :func:`mugpt.engine.loop.run_steps`, in chunks of steps; between chunks it reports
        progress and takes the mechanisms' events."""
        from mugpt.engine import loop
        from mugpt.mechanisms import rng as packed_rng
        from mugpt.model.fast import FastGPT, optimizer_hyper

        fm = self.model
        assert isinstance(fm, FastGPT), "the compiled loop runs the compiled model"
        begin = self.position
        n = end - begin
        if n <= 0:
            return
        cfg, opt = self.model_cfg, self.optimizer
        self.model.release()  # the kernels below overwrite the workspace
        n_seg = min(self.cfg.batch_streams, n)
        bounds = begin + (np.arange(n_seg + 1, dtype=np.int64) * n) // n_seg
        seg_pos, seg_end = bounds[:-1].copy(), bounds[1:].copy()
        if n_seg == 1:
            hist = self._hist.reshape(1, -1)  # the Learner's own history, updated in place
        else:
            hist = np.full((n_seg, self._hist.size), BOS, dtype=np.int64)
            hist[0, : self._hist_len] = self._hist[: self._hist_len]
        hist_len = np.zeros(n_seg, dtype=np.int64)
        hist_len[0] = self._hist_len
        fm.ensure_batch(n_seg)
        model = loop.ModelArrays(fm.params.flat, fm.offsets, fm.dims, fm.ws)
        optim = loop.OptimArrays(
            self.grads.flat, opt.m, opt.v, optimizer_hyper(opt.cfg),
            np.array([opt.t, opt.nonfinite_steps, opt.clipped_steps], dtype=np.int64),
        )  # fmt: skip
        stream = loop.StreamArrays(data, starts, seg_pos, seg_end, hist, hist_len)
        losses = np.full(n, np.nan)
        counts = [getattr(self.counters, f.name) for f in dataclasses.fields(Counters)]
        out = loop.Outputs(
            losses=losses,
            base=begin,
            counters=np.array(counts, dtype=np.int64),
            rec=np.zeros((n_seg * cfg.context, 3), dtype=np.int64),
            rows=np.zeros((cfg.context, cfg.vocab_size)),
            info=np.zeros(loop.N_INFO),
            scored=np.zeros((0, cfg.vocab_size)) if scored is None else scored,
        )
        states = loop.no_mechanisms()._asdict()
        fields = loop.FIELDS  # a mechanism's name → its field of loop.Mechanisms
        for mech, state in parts:
            states[fields[mech.name]] = state
        states["order"] = np.array([loop.KERNELS.index(m.name) for m, _ in parts], dtype=np.int64)
        states["rng"] = packed_rng.pack(self.rng)
        mechs = loop.Mechanisms(**states)
        chunk = 16  # steps per compiled call; grows to about one progress interval
        done_upto = 0  # B = 1: losses[:done_upto] already handed to the loss log
        last_report = time.perf_counter()
        try:
            while True:
                t_call = time.perf_counter()
                made = loop.run_steps(
                    model, optim, stream, out, mechs, self.cfg.update_every,
                    self.cfg.window_loss == "new", chunk,
                )  # fmt: skip
                # events and counters, in the Learner's order; the events in step order
                self.events.extend(loop.in_step_order([m.compiled_done(s) for m, s in parts]))
                if made == 0:
                    break
                elapsed = time.perf_counter() - t_call
                if progress is not None:
                    chunk = int(min(max(chunk * progress_every / max(elapsed, 1e-6), 1), 1 << 20))
                else:
                    chunk = min(chunk * 4, 1 << 20)
                if n_seg == 1:
                    upto = int(seg_pos[0] - begin)
                    self._loss_log.append(losses[done_upto:upto].copy())
                    done_upto = upto
                    self.position = int(seg_pos[0])
                if progress is not None:
                    now = time.perf_counter()
                    if now - last_report >= progress_every:
                        last_report = now
                        pos_now = self.position if n_seg == 1 else begin + int((seg_pos - bounds[:-1]).sum())  # fmt: skip
                        filled = losses[np.isfinite(losses)]
                        progress(pos_now, end, float(filled.mean()) if filled.size else float("nan"))  # fmt: skip
        finally:
            packed_rng.unpack(mechs.rng, self.rng)
        if n_seg > 1:
            self._loss_log.append(losses)
            last = n_seg - 1
            self._hist[:] = hist[last]
            self._hist_len = int(hist_len[last])
        else:
            self._hist_len = int(hist_len[0])
        self.position = end
        for f, value in zip(dataclasses.fields(Counters), out.counters):
            setattr(self.counters, f.name, int(value))
        opt.t, opt.nonfinite_steps, opt.clipped_steps = (int(x) for x in optim.ostate)
        self._finish_compiled(data, out)
        if progress is not None:
            progress(self.position, end, self.running_bpb())

    def _finish_compiled(self, data: np.ndarray, out: Any) -> None:
        """``last``, ``last_acts`` and ``lr_effective`` after a compiled run: its last step
        (the last window's activations, rows and records)."""
        from mugpt.engine import loop
        from mugpt.model.fast import FastActivations, FastGPT

        assert isinstance(self.model, FastGPT)
        ws, info = self.model.ws, out.info
        n_rec, n_win = int(info[loop.I_RECORDS]), int(info[loop.I_WINDOWS])
        recs = out.rec[:n_rec]
        recs = recs[recs[:, 0] == n_win - 1]
        window = n_win - 1
        index = recs[:, 2]
        n_in = int(min(self._hist_len, self.model_cfg.context + 1) - 1)
        norm = float(info[loop.I_GRAD_NORM])
        self.lr_effective = self.lr * float(info[loop.I_LR_SCALE])
        self.last_acts = FastActivations(
            idx=ws.idx[window : window + 1, :n_in].copy(),
            probs=ws.probs[window : window + 1, :n_in].copy(),
            hidden=ws.hidden[window : window + 1, :n_in].copy(),
            workspace=None,
            att=ws.att[:, window : window + 1, :, :n_in, :n_in].copy(),
        )
        self.last = StepOutput(
            position=int(index[0]),
            new_bytes=data[index].copy(),
            loss_bits=out.losses[index - out.base].copy(),
            probs=out.rows[: index.size].copy(),
            updated=not math.isnan(norm),
            replays=int(info[loop.I_REPLAYS]),
            grad_norm=None if math.isnan(norm) else norm,
            lr=self.lr_effective,
            window_loss_bits=float(info[loop.I_WINDOW_LOSS]),
            events=[e for e in self.events if e.get("step") == self.counters.steps - 1],
        )

    @property
    def losses(self) -> np.ndarray:
        """Every recorded per-byte loss in bits, in order."""
        if len(self._loss_log) > 1:
            self._loss_log = [np.concatenate(self._loss_log)]
        return self._loss_log[0].copy() if self._loss_log else np.zeros(0)

    def running_bpb(self) -> float:
        total = sum(float(a.sum()) for a in self._loss_log)
        n = sum(a.size for a in self._loss_log)
        return total / n if n else float("nan")

    # ------------------------------------------------------------------ live control

    def set_lr(self, lr: float) -> None:
        """Changes the base learning rate from the next step on (recorded as an event)."""
        if not (isinstance(lr, int | float) and 0 < lr <= 10):
            raise ConfigError(f"lr={lr!r} must be a positive number (try 1e-3 .. 1e-1)")
        self.lr = float(lr)
        self.optimizer.cfg = dataclasses.replace(self.optimizer.cfg, lr=float(lr))
        self.events.append(
            {"pos": self.position, "step": self.counters.steps, "kind": "set_lr", "lr": float(lr)}
        )

    def mechanism(self, name: str) -> Mechanism:
        for mech in self.mechanisms:
            if mech.name == name:
                return mech
        raise ConfigError(
            f"no mechanism {name!r} in this run; present: {[m.name for m in self.mechanisms]}"
        )

    def add_mechanism(self, mech: Mechanism) -> None:
        if any(m.name == mech.name for m in self.mechanisms):
            raise ConfigError(f"mechanism {mech.name!r} is already present; configure it instead")
        self.mechanisms.append(mech)
        self._event(
            "mechanism", name=mech.name, enabled=mech.enabled, config=mech.config.model_dump()
        )

    def set_mechanism(self, name: str, enabled: bool | None = None, **params: Any) -> None:
        """Turns a mechanism on/off and/or changes its parameters; takes effect at the next
        step and is recorded as an event."""
        mech = self.mechanism(name)
        if params:
            mech.configure(**params)
        if enabled is not None:
            mech.enabled = bool(enabled)
        self._event("mechanism", name=name, enabled=mech.enabled, config=mech.config.model_dump())

    def _event(self, kind: str, **data: Any) -> None:
        self.events.append(
            {"pos": self.position, "step": self.counters.steps, "kind": kind, **data}
        )

    def config_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_cfg.to_dict(),
            "optim": self.optim_cfg.to_dict(),
            "learner": self.cfg.to_dict(),
            "mechanisms": [
                {"name": m.name, "enabled": m.enabled, **m.config.model_dump()}
                for m in self.mechanisms
            ],
        }
