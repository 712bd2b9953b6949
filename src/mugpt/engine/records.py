"""The Learner's records: its settings, what a step produced, its counters, a run's result.

Kept apart from the live object (:mod:`mugpt.engine.learner`) and the run loops
(:mod:`mugpt.engine.runs`), which both use them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mugpt.errors import ConfigError
from mugpt.model.config import _from_dict

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
    a sweep's checkpoints) equals a run made in one call. ``freeze_network``: the network's
    weights never change (no backward pass, no optimiser step, no replay); the mechanisms
    that predict (``ngram_mix``'s counts and mixer, the memories) still learn, so
    bpb(frozen) − bpb(normal) is what the network's learning is worth to a run.

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
    freeze_network: bool = False

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
        if not isinstance(self.freeze_network, bool):
            raise ConfigError(f"freeze_network={self.freeze_network!r} must be true or false")

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
