"""Selective-Backprop: spend backward passes only on windows the model still gets wrong.

Jiang, Wong, Zhou, Andersen, Dean, Ganger, Joshi, Kaminsky, Kozuch, Lipton, Pillai (2019),
"Accelerating Deep Learning by Focusing on the Biggest Losers", arXiv:1910.00762. Their rule
keeps an example with probability ``CDF_R(L)^β``, the percentile of its loss ``L`` among the
``R`` most recent losses raised to a selectivity ``β``. The forward pass is needed anyway for
the prequential prediction, so every skipped update saves one backward pass and one optimiser
step.

Three modes:

- ``threshold`` (the original μGPT rule): skip the update exactly when the window loss is
  below ``tau`` bits.
- ``percentile`` (Jiang et al.): keep with probability ``pct(L)^beta``, where ``pct(L)`` is the
  share of the last ``history`` window losses, this one included, that are ``<= L``. The draw
  uses the Learner's seeded generator (``ctx.rng``), so runs repeat bit for bit.

- ``random`` (the control): skip with probability ``skip_rate`` whatever the loss, one draw
  of the same generator per decision. Set to the share another mode skipped, it tells what
  choosing *which* updates to skip is worth beyond skipping that many (the trade-off curve
  is in docs/results/selective-backprop.md).

The loss compared is ``ctx.window_loss_bits``: the mean loss, in bits, of the positions the
update would train on.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
from numba import njit
from pydantic import Field

from mugpt.mechanisms import Mechanism, MechanismConfig, StepContext, register
from mugpt.mechanisms.rng import next_double
from mugpt.model.constants import JIT_OPTIONS

MODES = ("threshold", "percentile", "random")
"""The modes in the order of their code in :class:`SelectState` ``cfg[0]``."""


class SelectiveBackpropConfig(MechanismConfig):
    """Settings of :class:`SelectiveBackprop`.

    Example:
        >>> SelectiveBackpropConfig(mode="percentile").beta
        3.0
    """

    mode: Literal["threshold", "percentile", "random"] = Field(
        "threshold",
        description="threshold: skip when loss < tau; percentile: Jiang et al.; random: control",
    )
    tau: float = Field(
        2.5, ge=0.0, le=40.0, description="threshold mode: skip below this many bits"
    )
    beta: float = Field(3.0, ge=0.0, le=100.0, description="percentile mode: selectivity β")
    history: int = Field(1024, ge=1, le=1_000_000, description="percentile mode: losses remembered")
    skip_rate: float = Field(
        0.5, ge=0.0, le=1.0, description="random mode: probability of skipping an update"
    )


@register
class SelectiveBackprop(Mechanism):
    """Skips the update on windows whose loss is low (threshold) or a low percentile.

    Example:
        >>> import numpy as np
        >>> from mugpt.mechanisms import StepContext
        >>> sb = SelectiveBackprop(mode="threshold", tau=2.0)
        >>> ctx = StepContext(0, 0, np.zeros(1), np.zeros(1), np.zeros(1), np.zeros(1, int),
        ...                   np.zeros((1, 1)), np.random.default_rng(0), 0.01, 32)
        >>> ctx.window_loss_bits = 1.5
        >>> sb.should_update(ctx), sb.counters()["skipped"]
        (False, 1)
    """

    name = "selective_backprop"
    strict_online = True
    Config = SelectiveBackpropConfig
    config: SelectiveBackpropConfig

    def __init__(self, config: SelectiveBackpropConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self._hist = np.zeros(self.config.history, dtype=np.float64)  # ring buffer of losses
        self._filled = 0
        self._head = 0  # next slot to write
        self.decisions = 0
        self.skipped = 0
        self.keep_prob_sum = 0.0

    # ------------------------------------------------------------------ the rule

    def keep_probability(self, loss_bits: float) -> float:
        """Records ``loss_bits`` in the history and returns ``pct(loss)^beta``."""
        self._hist[self._head] = loss_bits
        self._head = (self._head + 1) % self._hist.size
        self._filled = min(self._filled + 1, self._hist.size)
        pct = float(np.count_nonzero(self._hist[: self._filled] <= loss_bits)) / self._filled
        return pct**self.config.beta

    def should_update(self, ctx: StepContext) -> bool:
        loss = ctx.window_loss_bits
        assert loss is not None, "the Learner sets window_loss_bits before should_update"
        if self.config.mode == "threshold":
            keep = loss >= self.config.tau
            self.keep_prob_sum += float(keep)
        elif self.config.mode == "random":
            prob = 1.0 - self.config.skip_rate
            keep = bool(ctx.rng.random() < prob)
            self.keep_prob_sum += prob
        else:
            prob = self.keep_probability(loss)
            keep = bool(ctx.rng.random() < prob)
            self.keep_prob_sum += prob
        self.decisions += 1
        self.skipped += int(not keep)
        return keep

    # ------------------------------------------------------------------ settings and state

    def on_configure(self) -> None:
        size = self.config.history
        if size != self._hist.size:
            recent = self._recent()[-size:]
            self._hist = np.zeros(size, dtype=np.float64)
            self._hist[: recent.size] = recent
            self._filled = recent.size
            self._head = recent.size % size

    def _recent(self) -> np.ndarray:
        """The remembered losses, oldest first."""
        if self._filled < self._hist.size:
            return self._hist[: self._filled].copy()
        return np.roll(self._hist, -self._head)

    def compiled_state(self, context: int) -> SelectState:
        """The compiled loop's copy of this mechanism (:func:`keep_kernel`)."""
        cfg = self.config
        return SelectState(
            cfg=np.array(
                [MODES.index(cfg.mode), cfg.tau, cfg.beta, cfg.skip_rate], dtype=np.float64
            ),
            hist=self._hist,  # shared: the kernel writes the ring buffer in place
            ring=np.array([self._filled, self._head], dtype=np.int64),
            stats=np.array([self.decisions, self.skipped, self.keep_prob_sum], dtype=np.float64),
        )

    def compiled_done(self, state: SelectState) -> list[dict[str, Any]]:
        """Takes back what the compiled loop changed; returns its events (none)."""
        self._filled, self._head = int(state.ring[0]), int(state.ring[1])
        self.decisions, self.skipped = int(state.stats[0]), int(state.stats[1])
        self.keep_prob_sum = float(state.stats[2])
        return []

    def counters(self) -> dict[str, Any]:
        n = self.decisions
        return {
            "decisions": n,
            "skipped": self.skipped,
            "skip_share": self.skipped / n if n else 0.0,
            "mean_keep_probability": self.keep_prob_sum / n if n else 1.0,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "hist": self._hist.copy(),
            "filled": self._filled,
            "head": self._head,
            "decisions": self.decisions,
            "skipped": self.skipped,
            "keep_prob_sum": self.keep_prob_sum,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        hist = np.asarray(state["hist"], dtype=np.float64)
        self._hist = hist.copy()
        self._filled = int(state["filled"])
        self._head = int(state["head"])
        self.decisions = int(state["decisions"])
        self.skipped = int(state["skipped"])
        self.keep_prob_sum = float(state["keep_prob_sum"])
        self.on_configure()  # a config that differs from the saved buffer resizes it


# ---------------------------------------------------------------------------- compiled form


class SelectState(NamedTuple):
    """:class:`SelectiveBackprop` as arrays: ``cfg`` = [mode (0 threshold, 1 percentile,
    2 random: :data:`MODES`), tau, beta, skip_rate]; ``hist`` the ring of window losses; ``ring`` = [filled, head]; ``stats`` =
    [decisions, skipped, keep_prob_sum]."""

    cfg: np.ndarray
    hist: np.ndarray
    ring: np.ndarray
    stats: np.ndarray


@njit(**JIT_OPTIONS)
def keep_kernel(state: Any, loss: float, rng: Any) -> bool:  # pragma: no cover - compiled
    """:meth:`SelectiveBackprop.should_update` for a window loss of ``loss`` bits; the
    percentile mode draws from the packed Learner generator ``rng`` as the hook does."""
    stats = state.stats
    if state.cfg[0] == 0.0:
        keep = loss >= state.cfg[1]
        stats[2] += 1.0 if keep else 0.0
    elif state.cfg[0] == 2.0:
        prob = 1.0 - state.cfg[3]
        keep = next_double(rng) < prob
        stats[2] += prob
    else:
        hist, ring = state.hist, state.ring
        hist[ring[1]] = loss
        ring[1] = (ring[1] + 1) % hist.size
        ring[0] = min(ring[0] + 1, hist.size)
        count = 0
        for i in range(ring[0]):
            if hist[i] <= loss:
                count += 1
        prob = (float(count) / ring[0]) ** state.cfg[2]
        keep = next_double(rng) < prob
        stats[2] += prob
    stats[0] += 1.0
    if not keep:
        stats[1] += 1.0
    return keep
