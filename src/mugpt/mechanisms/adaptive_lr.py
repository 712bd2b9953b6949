"""Adaptive learning rate: detect a distribution shift in the loss, then boost the LR.

A shift detector watches the per-byte prequential loss. When it raises an alarm the learning
rate multiplier jumps by a factor ``boost`` (up to ``cap``), and its excess over 1 then decays
with a half-life, so the model moves quickly to the new phase and settles again.

Detectors (``detector``):

- ``ema`` (default): the ratio of a fast to a slow exponential moving average of the loss
  (half-lives ``fast_half_life`` and ``slow_half_life`` bytes). An alarm is raised when the
  ratio rises above ``threshold``; the detector re-arms once the ratio has fallen back below
  ``rearm``. This is the two-speed moving-average test of trading charts applied to a loss.
- ``page_hinkley``: Page's cumulative-sum test (E. S. Page, "Continuous Inspection Schemes",
  Biometrika 41, 1954; D. V. Hinkley, "Inference about the change-point from cumulative sum
  tests", Biometrika 58, 1971), upward changes only, from the optional ``river`` package.
- ``adwin``: adaptive windowing (A. Bifet & R. Gavaldà, "Learning from Time-Changing Data with
  Adaptive Windowing", SDM 2007), from ``river``; an alarm needs the fast EMA above the slow
  one, so a drop of the loss (the model getting better) is not an alarm.

Every alarm is an event ``{"kind": "alarm", "index": i, ...}`` where ``i`` is the byte whose
loss triggered it; :func:`mugpt.engine.metrics.detection_scores` scores these against the true
phase boundaries.

The LR multiplier is ``1 + e``. On an alarm ``1 + e`` becomes ``min(cap, (1 + e) · boost)``;
between alarms ``e`` halves every ``half_life`` **bytes** (``unit = "bytes"``, the default) or
every ``half_life`` **steps** (``unit = "steps"``, one step = ``update_every`` bytes). The
decay is applied in each step before that step's alarms, so the step that raises an alarm
updates with the full boost. The multiplier scales the main update only (not replay).
"""

from __future__ import annotations

import importlib.util
from typing import Any, Literal, NamedTuple

import numpy as np
from numba import njit
from pydantic import Field, model_validator

from mugpt.errors import ConfigError
from mugpt.mechanisms import Mechanism, MechanismConfig, StepContext, register
from mugpt.model.constants import JIT_OPTIONS


class AdaptiveLRConfig(MechanismConfig):
    """Settings of :class:`AdaptiveLR`.

    Example:
        >>> cfg = AdaptiveLRConfig()
        >>> cfg.detector, cfg.boost, cfg.cap, cfg.half_life, cfg.unit
        ('ema', 1.5, 4.0, 2000.0, 'bytes')
    """

    detector: Literal["ema", "page_hinkley", "adwin"] = Field(
        "ema", description="ema (built in) | page_hinkley | adwin (need `pip install river`)"
    )
    fast_half_life: float = Field(256.0, ge=1.0, le=1e7, description="fast loss EMA, bytes")
    slow_half_life: float = Field(4096.0, ge=2.0, le=1e8, description="slow loss EMA, bytes")
    threshold: float = Field(1.2, ge=1.0, le=10.0, description="alarm when fast/slow > this")
    rearm: float = Field(1.05, ge=0.5, le=10.0, description="re-arm when fast/slow < this")
    warmup: int = Field(1000, ge=0, le=10**9, description="bytes before the first alarm")
    boost: float = Field(1.5, ge=1.0, le=100.0, description="multiplier factor per alarm")
    cap: float = Field(4.0, ge=1.0, le=100.0, description="largest LR multiplier")
    half_life: float = Field(2000.0, gt=0.0, le=1e9, description="decay of the boost")
    unit: Literal["bytes", "steps"] = Field("bytes", description="unit of half_life")
    ph_threshold: float = Field(200.0, gt=0.0, le=1e9, description="Page-Hinkley λ (bits)")
    ph_delta: float = Field(0.05, ge=0.0, le=100.0, description="Page-Hinkley δ (bits)")
    adwin_delta: float = Field(0.002, gt=0.0, lt=1.0, description="ADWIN confidence δ")

    @model_validator(mode="after")
    def _check(self) -> AdaptiveLRConfig:
        if self.fast_half_life >= self.slow_half_life:
            raise ValueError("fast_half_life must be shorter than slow_half_life")
        if self.rearm > self.threshold:
            raise ValueError("rearm must not exceed threshold")
        return self


def _alpha(half_life: float) -> float:
    """EMA weight of a new value for a given half-life in samples."""
    return 1.0 - 2.0 ** (-1.0 / half_life)


@register
class AdaptiveLR(Mechanism):
    """Boosts the learning rate after a detected shift; the boost decays with a half-life.

    Example:
        >>> m = AdaptiveLR(warmup=0, boost=3.0, cap=4.0, half_life=100.0)
        >>> m.alarm(index=0)
        >>> m.multiplier
        3.0
        >>> m.decay(100)
        >>> m.multiplier
        2.0
    """

    name = "adaptive_lr"
    strict_online = True
    Config = AdaptiveLRConfig
    config: AdaptiveLRConfig

    def __init__(self, config: AdaptiveLRConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.fast = 0.0
        self.slow = 0.0
        self.seen = 0  # bytes observed
        self.armed = True
        self.excess = 0.0  # multiplier - 1
        self.alarms: list[int] = []
        self.multiplier_sum = 0.0  # over lr_scale calls, for the mean multiplier
        self.scale_calls = 0
        self._river: Any = None
        self._river_log: list[float] = []  # values fed since the detector's last reset
        self.on_configure()

    # ------------------------------------------------------------------ the rule

    @property
    def multiplier(self) -> float:
        return 1.0 + self.excess

    def decay(self, amount: float) -> None:
        """Lets ``amount`` bytes or steps (see ``unit``) of decay pass."""
        self.excess *= 2.0 ** (-amount / self.config.half_life)

    def alarm(self, index: int) -> None:
        """Raises the multiplier for an alarm at byte ``index``."""
        cfg = self.config
        self.excess = min(cfg.cap, self.multiplier * cfg.boost) - 1.0
        self.alarms.append(int(index))

    def update_detector(self, loss_bits: float) -> bool:
        """Feeds one byte's loss; True when the detector raises an alarm on it."""
        cfg = self.config
        if self.seen == 0:
            self.fast = self.slow = loss_bits
        else:
            self.fast += self._a_fast * (loss_bits - self.fast)
            self.slow += self._a_slow * (loss_bits - self.slow)
        self.seen += 1
        ratio = self.fast / self.slow if self.slow > 0 else 1.0
        fired = False
        if cfg.detector == "ema":
            if self.armed and ratio > cfg.threshold and self.seen > cfg.warmup:
                fired = True
                self.armed = False
            elif not self.armed and ratio < cfg.rearm:
                self.armed = True
        else:
            fired = self._feed_river(loss_bits) and self.seen > cfg.warmup
            if cfg.detector == "adwin" and self.fast <= self.slow:
                fired = False  # the loss went down: the model improved, not a shift
        return fired

    def _feed_river(self, value: float) -> bool:
        det = self._river
        if det.drift_detected:
            self._river_log.clear()  # river resets the detector on this update
        det.update(value)
        self._river_log.append(value)
        return bool(det.drift_detected)

    # ------------------------------------------------------------------ hooks

    def observe(self, ctx: StepContext, loss_bits: np.ndarray) -> None:
        k = int(loss_bits.size)
        self.decay(k if self.config.unit == "bytes" else 1)
        for j, bits in enumerate(loss_bits.tolist()):
            if self.update_detector(bits):
                index = ctx.position + j
                self.alarm(index)
                ctx.emit(
                    "alarm",
                    mechanism=self.name,
                    index=index,
                    detector=self.config.detector,
                    ratio=self.fast / self.slow if self.slow > 0 else 1.0,
                    lr_multiplier=self.multiplier,
                )

    def lr_scale(self, ctx: StepContext) -> float:
        self.multiplier_sum += self.multiplier
        self.scale_calls += 1
        return self.multiplier

    # ------------------------------------------------------------------ settings and state

    def on_configure(self) -> None:
        cfg = self.config
        self._a_fast = _alpha(cfg.fast_half_life)
        self._a_slow = _alpha(cfg.slow_half_life)
        self.excess = min(self.excess, cfg.cap - 1.0)
        if cfg.detector == "ema":
            self._river = None
            self._river_log = []
        else:
            self._river = _make_river(cfg)
            for value in self._river_log:  # rebuild the detector's state from what it saw
                self._river.update(value)

    def compiled_state(self, context: int) -> AdaptState | None:
        """The compiled loop's copy of this mechanism (:func:`observe_kernel`,
        :func:`scale_kernel`); None for the river detectors, which run in Python only."""
        cfg = self.config
        if cfg.detector != "ema":
            return None
        unit = 0.0 if cfg.unit == "bytes" else 1.0
        settings = [self._a_fast, self._a_slow, cfg.threshold, cfg.rearm, cfg.warmup]
        settings += [cfg.boost, cfg.cap, cfg.half_life, unit]
        values = [self.fast, self.slow, self.seen, float(self.armed), self.excess]
        values += [self.multiplier_sum, self.scale_calls]
        return AdaptState(
            cfg=np.array(settings, dtype=np.float64),
            vars=np.array(values, dtype=np.float64),
            alarms=np.zeros((ALARM_ROWS, 5)),
            n_alarms=np.zeros(1, dtype=np.int64),
        )

    def compiled_done(self, state: AdaptState) -> list[dict[str, Any]]:
        """Takes back what the compiled loop changed; returns its alarms as the events the
        hook would have emitted (stamped with their step and position)."""
        v = state.vars
        self.fast, self.slow, self.seen = float(v[0]), float(v[1]), int(v[2])
        self.armed, self.excess = bool(v[3]), float(v[4])
        self.multiplier_sum, self.scale_calls = float(v[5]), int(v[6])
        events = []
        for step, pos, index, ratio, mult in state.alarms[: int(state.n_alarms[0])].tolist():
            self.alarms.append(int(index))
            events.append(
                {"pos": int(pos), "step": int(step), "kind": "alarm", "mechanism": self.name,
                 "index": int(index), "detector": "ema", "ratio": ratio, "lr_multiplier": mult}
            )  # fmt: skip
        state.n_alarms[0] = 0
        return events

    def counters(self) -> dict[str, Any]:
        return {
            "alarms": len(self.alarms),
            "alarm_positions": self.alarms[:100],
            "lr_multiplier": self.multiplier,
            "mean_lr_multiplier": (
                self.multiplier_sum / self.scale_calls if self.scale_calls else 1.0
            ),
            "fast_ema_bits": self.fast,
            "slow_ema_bits": self.slow,
        }

    def state_dict(self) -> dict[str, Any]:
        return {
            "fast": self.fast,
            "slow": self.slow,
            "seen": self.seen,
            "armed": self.armed,
            "excess": self.excess,
            "alarms": np.asarray(self.alarms, dtype=np.int64),
            "multiplier_sum": self.multiplier_sum,
            "scale_calls": self.scale_calls,
            "river_log": np.asarray(self._river_log, dtype=np.float64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fast = float(state["fast"])
        self.slow = float(state["slow"])
        self.seen = int(state["seen"])
        self.armed = bool(state["armed"])
        self.excess = float(state["excess"])
        self.alarms = [int(a) for a in np.asarray(state["alarms"]).tolist()]
        self.multiplier_sum = float(state["multiplier_sum"])
        self.scale_calls = int(state["scale_calls"])
        self._river_log = [float(v) for v in np.asarray(state["river_log"]).tolist()]
        self.on_configure()


# ---------------------------------------------------------------------------- compiled form

#: Alarms the compiled loop can hold before it hands them over (it stops between steps first).
ALARM_ROWS = 4096


class AdaptState(NamedTuple):
    """:class:`AdaptiveLR` (EMA detector) as arrays: ``cfg`` = [fast α, slow α, threshold,
    rearm, warmup, boost, cap, half_life, unit (0 bytes, 1 steps)]; ``vars`` = [fast, slow,
    seen, armed, excess, multiplier_sum, scale_calls]; ``alarms`` rows of [step, position,
    byte index, ratio, multiplier], ``n_alarms[0]`` of them filled."""

    cfg: np.ndarray
    vars: np.ndarray
    alarms: np.ndarray
    n_alarms: np.ndarray


@njit(**JIT_OPTIONS)
def observe_kernel(
    state: Any, losses: Any, first: int, n: int, step: int, pos: int
) -> None:  # pragma: no cover - compiled
    """:meth:`AdaptiveLR.observe` on ``losses[first:first + n]``, the bytes of one window
    starting at stream index ``pos``: the decay, then the detector byte by byte."""
    cfg, v = state.cfg, state.vars
    amount = float(n) if cfg[8] == 0.0 else 1.0
    v[4] *= 2.0 ** (-amount / cfg[7])
    for j in range(n):
        bits = losses[first + j]
        if v[2] == 0.0:
            v[0] = bits
            v[1] = bits
        else:
            v[0] += cfg[0] * (bits - v[0])
            v[1] += cfg[1] * (bits - v[1])
        v[2] += 1.0
        ratio = v[0] / v[1] if v[1] > 0 else 1.0
        if v[3] != 0.0 and ratio > cfg[2] and v[2] > cfg[4]:
            v[3] = 0.0
            v[4] = min(cfg[6], (1.0 + v[4]) * cfg[5]) - 1.0
            row = state.alarms[state.n_alarms[0]]
            row[0], row[1], row[2] = step, pos, pos + j
            row[3] = v[0] / v[1] if v[1] > 0 else 1.0
            row[4] = 1.0 + v[4]
            state.n_alarms[0] += 1
        elif v[3] == 0.0 and ratio < cfg[3]:
            v[3] = 1.0


@njit(**JIT_OPTIONS)
def scale_kernel(state: Any) -> float:  # pragma: no cover - compiled
    """:meth:`AdaptiveLR.lr_scale`: the multiplier, counted for its mean."""
    v = state.vars
    mult = 1.0 + v[4]
    v[5] += mult
    v[6] += 1.0
    return mult


def river_available() -> bool:
    """True when the optional ``river`` package (ADWIN, Page-Hinkley) is installed."""
    return importlib.util.find_spec("river") is not None


def _make_river(cfg: AdaptiveLRConfig) -> Any:
    if not river_available():
        raise ConfigError(
            f"detector={cfg.detector!r} needs the optional package river: "
            "`pip install river` (or use detector=ema)"
        )
    from river import drift

    if cfg.detector == "adwin":
        return drift.ADWIN(delta=cfg.adwin_delta)
    return drift.PageHinkley(
        min_instances=30, delta=cfg.ph_delta, threshold=cfg.ph_threshold, alpha=1.0, mode="up"
    )
