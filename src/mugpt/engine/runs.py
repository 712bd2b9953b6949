"""The Learner's run loops: a whole stream read in steps, on the fastest path that runs it.

:class:`StreamRuns` is the part of :class:`mugpt.engine.learner.Learner` that reads a stream
(``run``, ``advance``): the step loop of the live object's :meth:`~Learner.step` calls (any
backend, any mechanism), the batched loop of B sub-streams in Python, and the compiled loop of
:mod:`mugpt.engine.loop` when every active mechanism has kernels. All three follow the window
rule of :mod:`mugpt.engine.window` and give the same bits.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from mugpt.engine.loop import batch_loss_bits
from mugpt.engine.records import Counters, ProgressFn, RunResult, StepOutput
from mugpt.engine.window import history_append, step_end, step_symbols, whole_steps_end
from mugpt.errors import ConfigError
from mugpt.mechanisms import Mechanism, StepContext
from mugpt.model import BOS

if TYPE_CHECKING:
    from mugpt.corpus import Stream
    from mugpt.engine.records import LearnerConfig
    from mugpt.model import ModelConfig, Optimizer, ParamBuffer
    from mugpt.model.protocol import Model


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


class StreamRuns:
    """The run loops of :class:`~mugpt.engine.learner.Learner` (a mixin: it uses the
    Learner's state and its :meth:`~mugpt.engine.learner.Learner.step`)."""

    if TYPE_CHECKING:  # the Learner's state and the parts of a step the loops use
        model: Model
        model_cfg: ModelConfig
        cfg: LearnerConfig
        optimizer: Optimizer
        grads: ParamBuffer
        mechanisms: list[Mechanism]
        rng: np.random.Generator
        lr: float
        lr_effective: float
        counters: Counters
        position: int
        events: list[dict[str, Any]]
        last: StepOutput | None
        last_acts: Any
        _hist: np.ndarray
        _hist_len: int
        _loss_log: list[np.ndarray]

        @property
        def losses(self) -> np.ndarray: ...
        def running_bpb(self) -> float: ...
        def step(self, new_bytes: bytes | np.ndarray, doc_start: Any = None) -> StepOutput: ...
        def _update(self, acts: Any, targets: np.ndarray, weights: np.ndarray, active: list[Mechanism], ctx: StepContext) -> float | None: ...  # fmt: skip
        def _replay(self, active: list[Mechanism], ctx: StepContext) -> int: ...
        def _loss_bits(self, probs: np.ndarray, data: np.ndarray) -> np.ndarray: ...
        def _lr_span(self, active: list[Mechanism]) -> tuple[int, int] | None: ...

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
        On the numba backend the whole loop runs compiled when every active mechanism has
        kernels (all seven built-in ones do; the river detectors of adaptive_lr do not)."""
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
            self._read(data, starts, end, progress, progress_every, compiled, scored)
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
        self,
        data: np.ndarray,
        starts: np.ndarray,
        end: int,
        scored: np.ndarray | None = None,
        steps: Any = None,
    ) -> None:
        """Learns ``data[position:end]`` in steps, on the fastest path that runs this Learner
        (the compiled loop when every active mechanism has kernels), as :meth:`run` does.
        ``data`` holds the bytes (uint8) and ``starts`` (bool, one longer) marks document
        starts; ``end`` should be a step boundary with B = 1, and with B > 1 the end of what
        is split into sub-streams (the stream's end, or a block's). ``scored`` (B = 1) as in
        :meth:`run`. ``steps``, on the compiled path only, stands in for
        :func:`mugpt.engine.loop.run_steps` (same arguments): the range coder's steps, which
        code, or decode, the bytes they learn (:mod:`mugpt.compress.steps`).

        Example:
            >>> import numpy as np
            >>> from mugpt.engine import Learner, LearnerConfig
            >>> learner = Learner(learner_cfg=LearnerConfig(update_every=4))
            >>> data = np.frombuffer(b"abcdabcd", dtype=np.uint8)
            >>> learner.advance(data, np.zeros(9, dtype=bool), 3)  # the first step: BOS + 3
            >>> learner.position, learner.counters.steps
            (3, 1)
        """
        if scored is not None and self.cfg.batch_streams > 1:
            raise ConfigError("scored rows are kept for one stream only (batch_streams=1)")
        compiled = self._compiled_mechanisms()
        if compiled is None and steps is not None:
            raise ConfigError("steps stand in for the compiled loop, which cannot run this Learner")  # fmt: skip
        self._read(data, starts, end, None, 1.0, compiled, scored, steps)

    def _read(
        self,
        data: np.ndarray,
        starts: np.ndarray,
        end: int,
        progress: ProgressFn | None,
        progress_every: float,
        compiled: list[tuple[Mechanism, Any]] | None,
        scored: np.ndarray | None = None,
        steps: Any = None,
    ) -> None:
        """Learns ``data[position:end]`` on the path that runs this Learner (compiled,
        batched or step by step); with blocks of sub-streams (B > 1, S > 0) one block at a
        time, blocks aligned to stream position 0."""
        begin = self.position
        block = self.cfg.block_bytes
        while True:
            stop = end if block == 0 else min(end, (self.position // block + 1) * block)
            rows = None if scored is None else scored[self.position - begin :]
            if compiled is not None:
                self._run_compiled(data, starts, stop, progress, progress_every, compiled, rows, steps)  # fmt: skip
            elif self.cfg.batch_streams > 1:
                self._run_batched(data, starts, stop, progress, progress_every)
            else:
                self._run_steps(data, starts, stop, progress, progress_every, rows)
            if self.position >= end:
                break

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
        steps: Any = None,
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
        span = self._lr_span([m for m, _ in parts]) or (0, cfg.n_params)
        optim = loop.OptimArrays(
            self.grads.flat, opt.m, opt.v, optimizer_hyper(opt.cfg),
            np.array([opt.t, opt.nonfinite_steps, opt.clipped_steps], dtype=np.int64),
            np.array(span, dtype=np.int64),
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
            info=np.zeros(loop.N_INFO),  # info[I_FROZEN] set below
            scored=np.zeros((0, cfg.vocab_size)) if scored is None else scored,
            scored_at=np.zeros(0 if scored is None else scored.shape[0], dtype=np.int64),
            n_scored=np.zeros(1, dtype=np.int64),
        )
        states = loop.no_mechanisms()._asdict()
        fields = loop.FIELDS  # a mechanism's name → its field of loop.Mechanisms
        for mech, state in parts:
            states[fields[mech.name]] = state
        states["order"] = np.array([loop.KERNELS.index(m.name) for m, _ in parts], dtype=np.int64)
        states["rng"] = packed_rng.pack(self.rng)
        mechs = loop.Mechanisms(**states)
        out.info[loop.I_FROZEN] = float(self.cfg.freeze_network)
        chunk = 16  # steps per compiled call; grows to about one progress interval
        done_upto = 0  # B = 1: losses[:done_upto] already handed to the loss log
        last_report = time.perf_counter()
        try:
            while True:
                t_call = time.perf_counter()
                made = (loop.run_steps if steps is None else steps)(
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
