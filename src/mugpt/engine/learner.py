"""The prequential Learner: predict → record the loss → update (Dawid 1984).

Every byte is scored with the parameters as they were before any update used it, so the
mean loss is an honest code length (bits per byte) and needs no held-out split.

This module holds the live object: a step (:meth:`Learner.step`) with its mechanism hooks,
live control (``set_lr``, ``set_mechanism``) and events. Reading whole streams is
:mod:`mugpt.engine.runs`; the settings and records are :mod:`mugpt.engine.records`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from mugpt.engine.loop import loss_bits_of, window_loss_bits
from mugpt.engine.records import (
    BACKENDS,
    WINDOW_LOSSES,
    Counters,
    LearnerConfig,
    ProgressFn,
    RunResult,
    StepOutput,
)
from mugpt.engine.runs import StreamRuns, compile_timer
from mugpt.engine.window import history_append, step_symbols
from mugpt.errors import ConfigError
from mugpt.mechanisms import Mechanism, StepContext
from mugpt.model import BOS, GPT, ModelConfig, OptimConfig, Optimizer, UpdateInfo
from mugpt.model.params import param_span
from mugpt.model.protocol import Model

__all__ = [
    "BACKENDS",
    "WINDOW_LOSSES",
    "Counters",
    "Learner",
    "LearnerConfig",
    "ProgressFn",
    "RunResult",
    "StepOutput",
    "compile_timer",
    "resolve_backend",
]


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


class Learner(StreamRuns):
    """A model, its optimiser and mechanisms, reading a byte stream prequentially.

    Without ``optim_cfg`` it trains as the original μGPT and the seed preset do: SGD with
    global-norm clipping (:func:`mugpt.engine.config.seed_optim`).

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
        if optim_cfg is None:
            from mugpt.engine.config import seed_optim

            optim_cfg = seed_optim()
        self.optim_cfg = optim_cfg
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
        gradient norm, or None when the update was declined or the network is frozen."""
        if self.cfg.freeze_network:
            self.lr_effective = 0.0
            return None
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

    def _lr_span(self, active: list[Mechanism]) -> tuple[int, int] | None:
        """The flat-weight range the mechanisms' lr scale applies to (None: every weight),
        from the one parameter group a mechanism limits it to (``Mechanism.lr_params``)."""
        groups = {mech.lr_params() for mech in active} - {"all"}
        if not groups:
            return None
        if len(groups) > 1:
            raise ConfigError(
                f"the mechanisms limit the lr scale to different parameter groups "
                f"{sorted(groups)}; give them one group"
            )
        return param_span(self.model_cfg, groups.pop())

    def _replay(self, active: list[Mechanism], ctx: StepContext) -> int:
        """Step 6: the mechanisms' extra windows, one update each; returns how many (none
        while the network is frozen: they would train it)."""
        replays = 0
        if self.cfg.freeze_network:
            return replays
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
        info = self._optimizer_step(self.optimizer, lr_scale, self._lr_span(active))
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

    def _optimizer_step(
        self,
        optimizer: Optimizer,
        lr_scale: float = 1.0,
        span: tuple[int, int] | None = None,
    ) -> UpdateInfo:
        """``optimizer.step`` on the current gradient (the model's own kernel); ``lr_scale``
        applies to the weights in ``span`` (all when None)."""
        return self.model.optimizer_step(optimizer, self.grads.flat, lr_scale, span)

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

    def use_backend(self, backend: str, reason: str = "") -> None:
        """Continues on the other implementation of the same network from the next step:
        ``"numba"`` (the compiled FastGPT, so :meth:`run` takes the compiled loop) or
        ``"numpy"`` (the reference GPT). The new model holds this Learner's own parameter
        buffer, and the optimiser, mechanisms, history and losses stay as they are, so the
        weights and optimiser state carry over exactly. Recorded as an ``engine`` event.
        Call it between steps (after :meth:`step` or :meth:`run` returned).

        Example:
            >>> from mugpt.corpus import Stream
            >>> learner = Learner(learner_cfg=LearnerConfig(backend="numpy"))
            >>> _ = learner.run(Stream.from_bytes(b"hello " * 8), max_bytes=10)
            >>> before = learner.model.params.flat.copy()
            >>> learner.use_backend("numba")
            >>> learner.model.backend, bool((learner.model.params.flat == before).all())
            ('numba', True)
            >>> learner.events[-1]["kind"], learner.events[-1]["pos"]
            ('engine', 10)
        """
        if backend == self.model.backend:
            return
        if backend == "numba":
            from mugpt.model.fast import FastGPT

            model: Model = FastGPT(self.model_cfg, self.model.params)
        elif backend == "numpy":
            model = GPT(self.model_cfg, self.model.params)
        else:
            raise ConfigError(f"backend {backend!r} is unknown; choose 'numba' or 'numpy'")
        previous = self.model.backend
        self.model.release()  # the last step's activations stay readable (the lab's views)
        self.model = model
        self.backend = backend
        self.cfg = dataclasses.replace(self.cfg, backend=backend)
        self._event("engine", backend=backend, previous=previous, reason=reason)

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
