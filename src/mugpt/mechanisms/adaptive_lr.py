"""Adaptive learning rate: detect a distribution shift in the stream, then boost the LR.

A shift detector watches the bytes and their per-byte prequential loss. When it raises an
alarm the learning rate multiplier jumps by a factor ``boost`` (up to ``cap``), and its excess
over 1 then decays with a half-life, so the model moves quickly to the new phase and settles
again.

Detectors (``detector``):

- ``blocks`` (default): a two-sample test on block statistics. The stream is cut into blocks
  of ``block_bytes`` bytes; each block gives ten numbers: the shares of its bytes in nine
  classes (lower-case letters, capitals, digits, space, newline, sentence punctuation, code
  punctuation, bytes >= 128, other) and its mean loss in bits. After every block the mean of
  each number over the last ``recent_blocks`` blocks is compared with its mean over up to
  ``reference_blocks`` blocks before them (never reaching back past the last alarm) by
  Welch's statistic ``|m_r - m_ref| / sqrt(s_r²/n_r + s_ref²/n_ref)`` (B. L. Welch, "The
  generalization of 'Student's' problem when several different population variances are
  involved", Biometrika 34, 1947), each number's spread measured on its own blocks. An alarm
  is raised when the largest of the ten exceeds ``z_threshold``; none follows within
  ``cooldown`` bytes. The test is two-sided, so a shift to an *easier* phase (the loss
  falls, the letters change) is seen as well as a harder one, and it needs no model: the
  byte classes alone carry most of its power. Runs in the compiled loop.
- ``ema``: the ratio of a fast to a slow exponential moving average of the loss
  (half-lives ``fast_half_life`` and ``slow_half_life`` bytes). An alarm is raised when the
  ratio rises above ``threshold``; the detector re-arms once the ratio has fallen back below
  ``rearm``. This is the two-speed moving-average test of trading charts applied to a loss;
  it is one-sided and cannot see a shift to an easier phase. Runs in the compiled loop.
- ``page_hinkley``: Page's cumulative-sum test (E. S. Page, "Continuous Inspection Schemes",
  Biometrika 41, 1954; D. V. Hinkley, "Inference about the change-point from cumulative sum
  tests", Biometrika 58, 1971), upward changes only, from the optional ``river`` package.
  Python only: a run with it takes the per-step Python loop.
- ``adwin``: adaptive windowing (A. Bifet & R. Gavaldà, "Learning from Time-Changing Data with
  Adaptive Windowing", SDM 2007), from ``river``; an alarm needs the fast EMA above the slow
  one, so a drop of the loss (the model getting better) is not an alarm. Python only.

``docs/results/detectors.md`` (from ``benchmarks/detectors.py``) scores them on phased streams.

Every alarm is an event ``{"kind": "alarm", "index": i, ...}`` where ``i`` is the byte whose
loss triggered it; :func:`mugpt.engine.metrics.detection_scores` scores these against the true
phase boundaries.

The LR multiplier is ``1 + e``. On an alarm ``1 + e`` becomes ``min(cap, (1 + e) · boost)``;
between alarms ``e`` halves every ``half_life`` **bytes** (``unit = "bytes"``, the default) or
every ``half_life`` **steps** (``unit = "steps"``, one step = ``update_every`` bytes). The
decay is applied in each step before that step's alarms, so the step that raises an alarm
updates with the full boost. The multiplier scales the main update only (not replay), and
only the weights of the parameter group ``params`` (``all`` by default; ``embeddings``,
``blocks`` or ``head``, as :func:`mugpt.model.params.param_span` defines them): the other
weights step at the configured lr.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Literal, NamedTuple

import numpy as np
from numba import njit
from pydantic import Field, model_validator

from mugpt.errors import ConfigError
from mugpt.mechanisms import Mechanism, MechanismConfig, StepContext, register
from mugpt.model.constants import JIT_OPTIONS
from mugpt.model.params import ParamGroup


class AdaptiveLRConfig(MechanismConfig):
    """Settings of :class:`AdaptiveLR`.

    Example:
        >>> cfg = AdaptiveLRConfig()
        >>> cfg.detector, cfg.boost, cfg.cap, cfg.half_life, cfg.unit
        ('blocks', 1.5, 4.0, 2000.0, 'bytes')
    """

    detector: Literal["blocks", "ema", "page_hinkley", "adwin"] = Field(
        "blocks",
        description="blocks | ema (built in) | page_hinkley | adwin (need `pip install river`)",
    )
    block_bytes: int = Field(128, ge=2, le=1 << 16, description="blocks: bytes per block")
    recent_blocks: int = Field(8, ge=2, le=1024, description="blocks: recent blocks tested")
    reference_blocks: int = Field(32, ge=4, le=4096, description="blocks: reference blocks")
    z_threshold: float = Field(8.0, gt=0.0, le=1e6, description="blocks: alarm when z > this")
    cooldown: int = Field(2000, ge=0, le=10**9, description="blocks: bytes between alarms")
    fast_half_life: float = Field(256.0, ge=1.0, le=1e7, description="fast loss EMA, bytes")
    slow_half_life: float = Field(4096.0, ge=2.0, le=1e8, description="slow loss EMA, bytes")
    threshold: float = Field(1.2, ge=1.0, le=10.0, description="alarm when fast/slow > this")
    rearm: float = Field(1.05, ge=0.5, le=10.0, description="re-arm when fast/slow < this")
    warmup: int = Field(1000, ge=0, le=10**9, description="bytes before the first alarm")
    boost: float = Field(1.5, ge=1.0, le=100.0, description="multiplier factor per alarm")
    cap: float = Field(4.0, ge=1.0, le=100.0, description="largest LR multiplier")
    half_life: float = Field(2000.0, gt=0.0, le=1e9, description="decay of the boost")
    unit: Literal["bytes", "steps"] = Field("bytes", description="unit of half_life")
    params: ParamGroup = Field(
        "all", description="weights the boost applies to: all | embeddings | blocks | head"
    )
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
        self._new_block_state()
        self.on_configure()

    # ------------------------------------------------------------------ the rule

    def _new_block_state(self) -> None:
        cfg = self.config
        self.block_acc = np.zeros(N_FEATURES)  # the current block's class counts, loss sum
        self.block_ring = np.zeros((cfg.recent_blocks + cfg.reference_blocks, N_FEATURES))
        # [bytes in the current block, blocks done, block of the last alarm, last statistic]
        self.block_vars = np.array([0.0, 0.0, -1.0e18, 0.0])

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

    def update_detector(self, loss_bits: float, byte: int = 0) -> bool:
        """Feeds one byte and its loss; True when the detector raises an alarm on it."""
        cfg = self.config
        if self.seen == 0:
            self.fast = self.slow = loss_bits
        else:
            self.fast += self._a_fast * (loss_bits - self.fast)
            self.slow += self._a_slow * (loss_bits - self.slow)
        self.seen += 1
        ratio = self.fast / self.slow if self.slow > 0 else 1.0
        fired = False
        if cfg.detector == "blocks":
            settings = self._block_settings
            fired = blocks_feed(settings, self.block_vars, self.block_acc, self.block_ring,
                                byte, loss_bits) and self.seen > cfg.warmup  # fmt: skip
        elif cfg.detector == "ema":
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
        new_bytes = ctx.new_bytes.tolist()
        for j, bits in enumerate(loss_bits.tolist()):
            if self.update_detector(bits, int(new_bytes[j])):
                index = ctx.position + j
                self.alarm(index)
                ctx.emit(
                    "alarm",
                    mechanism=self.name,
                    index=index,
                    detector=self.config.detector,
                    ratio=self.fast / self.slow if self.slow > 0 else 1.0,
                    statistic=float(self.block_vars[3]),
                    lr_multiplier=self.multiplier,
                )

    def lr_params(self) -> str:
        return self.config.params

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
        self._block_settings = np.array(
            [cfg.block_bytes, cfg.recent_blocks, cfg.reference_blocks, cfg.z_threshold,
             cfg.cooldown], dtype=np.float64,
        )  # fmt: skip
        if self.block_ring.shape[0] != cfg.recent_blocks + cfg.reference_blocks:
            self._new_block_state()  # a new shape of the test starts it afresh
        if cfg.detector in ("ema", "blocks"):
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
        if cfg.detector not in ("ema", "blocks"):
            return None
        unit = 0.0 if cfg.unit == "bytes" else 1.0
        settings = [self._a_fast, self._a_slow, cfg.threshold, cfg.rearm, cfg.warmup]
        settings += [cfg.boost, cfg.cap, cfg.half_life, unit, float(cfg.detector == "blocks")]
        values = [self.fast, self.slow, self.seen, float(self.armed), self.excess]
        values += [self.multiplier_sum, self.scale_calls]
        return AdaptState(
            cfg=np.array(settings, dtype=np.float64),
            vars=np.array(values, dtype=np.float64),
            alarms=np.zeros((ALARM_ROWS, 6)),
            n_alarms=np.zeros(1, dtype=np.int64),
            block_cfg=self._block_settings,
            block_vars=self.block_vars,
            block_acc=self.block_acc,
            block_ring=self.block_ring,
        )

    def compiled_done(self, state: AdaptState) -> list[dict[str, Any]]:
        """Takes back what the compiled loop changed; returns its alarms as the events the
        hook would have emitted (stamped with their step and position)."""
        v = state.vars
        self.fast, self.slow, self.seen = float(v[0]), float(v[1]), int(v[2])
        self.armed, self.excess = bool(v[3]), float(v[4])
        self.multiplier_sum, self.scale_calls = float(v[5]), int(v[6])
        events = []
        rows = state.alarms[: int(state.n_alarms[0])].tolist()
        for step, pos, index, ratio, statistic, mult in rows:
            self.alarms.append(int(index))
            events.append(
                {"pos": int(pos), "step": int(step), "kind": "alarm", "mechanism": self.name,
                 "index": int(index), "detector": self.config.detector, "ratio": ratio,
                 "statistic": statistic, "lr_multiplier": mult}
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
            "block_acc": self.block_acc.copy(),
            "block_ring": self.block_ring.copy(),
            "block_vars": self.block_vars.copy(),
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
        if "block_ring" in state:  # states saved before the block test have none
            self.block_acc = np.array(state["block_acc"], dtype=np.float64)
            self.block_ring = np.array(state["block_ring"], dtype=np.float64)
            self.block_vars = np.array(state["block_vars"], dtype=np.float64)
        else:
            self._new_block_state()
        self.on_configure()


# ---------------------------------------------------------------------------- compiled form

#: Alarms the compiled loop can hold before it hands them over (it stops between steps first).
ALARM_ROWS = 4096


class AdaptState(NamedTuple):
    """:class:`AdaptiveLR` (EMA or block detector) as arrays: ``cfg`` = [fast α, slow α,
    threshold, rearm, warmup, boost, cap, half_life, unit (0 bytes, 1 steps), detector (0 ema,
    1 blocks)]; ``vars`` = [fast, slow, seen, armed, excess, multiplier_sum, scale_calls];
    ``alarms`` rows of [step, position, byte index, ratio, statistic, multiplier],
    ``n_alarms[0]`` of them filled; the block test's arrays are the mechanism's own
    (:func:`blocks_feed`), shared, so the compiled loop updates them in place."""

    cfg: np.ndarray
    vars: np.ndarray
    alarms: np.ndarray
    n_alarms: np.ndarray
    block_cfg: np.ndarray
    block_vars: np.ndarray
    block_acc: np.ndarray
    block_ring: np.ndarray


#: Numbers per block of the ``blocks`` detector: nine byte-class shares and the mean loss.
N_FEATURES = 10


def _byte_classes() -> np.ndarray:
    """Class of each byte for the block test: 0 other, 1 >= 128 (UTF-8 beyond ASCII), 2 lower
    case, 3 capital, 4 digit, 5 space, 6 newline, 7 sentence punctuation, 8 code punctuation."""
    classes = np.zeros(256, dtype=np.int64)
    for b in range(256):
        c = chr(b)
        if b >= 128:
            classes[b] = 1
        elif "a" <= c <= "z":
            classes[b] = 2
        elif "A" <= c <= "Z":
            classes[b] = 3
        elif "0" <= c <= "9":
            classes[b] = 4
        elif c == " ":
            classes[b] = 5
        elif c == "\n":
            classes[b] = 6
        elif c in ".,;:!?'\"":
            classes[b] = 7
        elif c in "()[]{}=_<>+-*/%#@\\|&^~`$":
            classes[b] = 8
    return classes


BYTE_CLASSES = _byte_classes()


def _blocks_feed(
    settings: Any, bvars: Any, acc: Any, ring: Any, classes: Any, byte: int, bits: float
) -> bool:
    """One byte of the ``blocks`` detector; True when the block it completes raises an alarm.

    ``settings`` = [block bytes, recent blocks R, reference blocks M, z threshold, cooldown
    bytes]; ``bvars`` = [bytes in the current block, blocks done, block of the last alarm,
    the last statistic]; ``acc`` the current block's sums; ``ring`` the last R + M blocks'
    numbers, block ``i`` in row ``i % (R + M)``. The same source runs as the Python hooks'
    reference and, compiled, in the compiled loop: the sums run in one order, so both give the
    same statistic to the last bit.
    """
    size = settings[0]
    acc[classes[byte]] += 1.0
    acc[N_FEATURES - 1] += bits
    bvars[0] += 1.0
    if bvars[0] < size:
        return False
    n_rows = ring.shape[0]
    block = int(bvars[1])
    row = block % n_rows
    for f in range(N_FEATURES):
        ring[row, f] = acc[f] / size
        acc[f] = 0.0
    bvars[0] = 0.0
    bvars[1] += 1.0
    n_recent = int(settings[1])
    last = int(bvars[2])
    if (block - last) * size <= settings[4]:
        return False
    first_ref = max(last + 1, block - n_recent + 1 - int(settings[2]), 0)
    n_ref = block - n_recent + 1 - first_ref
    if n_ref < 4:
        return False
    worst = 0.0
    for f in range(N_FEATURES):
        sum_r = 0.0
        for i in range(block - n_recent + 1, block + 1):
            sum_r += ring[i % n_rows, f]
        mean_r = sum_r / n_recent
        sum_ref = 0.0
        for i in range(first_ref, first_ref + n_ref):
            sum_ref += ring[i % n_rows, f]
        mean_ref = sum_ref / n_ref
        var_r = 0.0
        for i in range(block - n_recent + 1, block + 1):
            d = ring[i % n_rows, f] - mean_r
            var_r += d * d
        var_ref = 0.0
        for i in range(first_ref, first_ref + n_ref):
            d = ring[i % n_rows, f] - mean_ref
            var_ref += d * d
        spread = var_r / (n_recent - 1) / n_recent + var_ref / (n_ref - 1) / n_ref
        z = abs(mean_r - mean_ref) / (math.sqrt(spread) + 1e-4)
        if z > worst:
            worst = z
    bvars[3] = worst
    if worst > settings[3]:
        bvars[2] = float(block)
        return True
    return False


def blocks_feed(settings: Any, bvars: Any, acc: Any, ring: Any, byte: int, bits: float) -> bool:
    """:func:`_blocks_feed` with the byte classes (the Python hooks' path)."""
    return _blocks_feed(settings, bvars, acc, ring, BYTE_CLASSES, byte, bits)


blocks_feed_kernel = njit(**JIT_OPTIONS)(_blocks_feed)


@njit(**JIT_OPTIONS)
def observe_kernel(
    state: Any, losses: Any, first: int, n: int, step: int, pos: int, new_bytes: Any
) -> None:  # pragma: no cover - compiled
    """:meth:`AdaptiveLR.observe` on ``losses[first:first + n]``, the bytes ``new_bytes[:n]``
    of one window starting at stream index ``pos``: the decay, then the detector byte by
    byte."""
    cfg, v = state.cfg, state.vars
    amount = float(n) if cfg[8] == 0.0 else 1.0
    v[4] *= 2.0 ** (-amount / cfg[7])
    blocks = cfg[9] != 0.0
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
        fired = False
        if blocks:
            fired = blocks_feed_kernel(
                state.block_cfg, state.block_vars, state.block_acc, state.block_ring,
                BYTE_CLASSES, int(new_bytes[j]), bits,
            ) and v[2] > cfg[4]  # fmt: skip
        elif v[3] != 0.0 and ratio > cfg[2] and v[2] > cfg[4]:
            v[3] = 0.0
            fired = True
        elif v[3] == 0.0 and ratio < cfg[3]:
            v[3] = 1.0
        if fired:
            v[4] = min(cfg[6], (1.0 + v[4]) * cfg[5]) - 1.0
            row = state.alarms[state.n_alarms[0]]
            row[0], row[1], row[2] = step, pos, pos + j
            row[3] = ratio
            row[4] = state.block_vars[3]
            row[5] = 1.0 + v[4]
            state.n_alarms[0] += 1


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
