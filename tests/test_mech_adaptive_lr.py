"""Adaptive LR: the block test and the dual-EMA detector, the boost with its cap and half-life, alarm events."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from mugpt.corpus import Phase, Stream, build_stream
from mugpt.engine import Learner, LearnerConfig
from mugpt.engine.metrics import detection_scores
from mugpt.errors import ConfigError
from mugpt.mechanisms import StepContext, adaptive_lr, make_mechanism
from mugpt.mechanisms.adaptive_lr import AdaptiveLR
from mugpt.model import ModelConfig, OptimConfig
from mugpt.model.params import ParamBuffer, param_span

HAS_RIVER = importlib.util.find_spec("river") is not None


def ctx_at(position: int, k: int = 1, new_bytes: np.ndarray | None = None) -> StepContext:
    return StepContext(
        step=0, position=position,
        new_bytes=np.zeros(k, np.uint8) if new_bytes is None else new_bytes, inputs=np.zeros(k, np.int64),
        targets=np.zeros(k, np.int64), new_positions=np.arange(k), hidden=np.zeros((k, 4)),
        rng=np.random.default_rng(0), lr=0.01, context=32,
    )  # fmt: skip


def feed(
    mech: AdaptiveLR, losses: np.ndarray, k: int = 1, start: int = 0, data: bytes = b""
) -> list[dict]:
    events: list[dict] = []
    symbols = np.frombuffer(data, np.uint8) if data else np.zeros(losses.size, np.uint8)
    for pos in range(0, losses.size, k):
        n = min(k, losses.size - pos)
        ctx = ctx_at(start + pos, n, symbols[pos : pos + n])
        mech.observe(ctx, losses[pos : pos + k])
        events += ctx.events
    return events


def step_losses(
    jump_at: int = 3000, n: int = 6000, low: float = 2.0, high: float = 4.0
) -> np.ndarray:
    noise = np.random.default_rng(0).normal(0.0, 0.3, n)
    return np.where(np.arange(n) < jump_at, low, high) + noise


def test_boost_multiplies_up_to_the_cap_and_decays_with_the_half_life() -> None:
    m = AdaptiveLR(boost=2.0, cap=3.0, half_life=500.0)
    m.alarm(index=10)
    assert m.multiplier == 2.0
    m.decay(500)  # one half-life: the excess halves
    assert m.multiplier == pytest.approx(1.5)
    m.decay(1000)  # two more
    assert m.multiplier == pytest.approx(1.125)
    m.alarm(index=20)
    assert m.multiplier == pytest.approx(2.25)
    m.alarm(index=30)  # 4.5 would exceed the cap
    assert m.multiplier == 3.0
    assert m.alarms == [10, 20, 30]


def test_half_life_in_bytes_or_steps() -> None:
    for unit, expected in (("bytes", 1.0 + 2.0 * 2.0 ** (-8 / 16)), ("steps", 1.0 + 2.0 * 0.5)):
        m = AdaptiveLR(boost=3.0, cap=3.0, half_life=16.0 if unit == "bytes" else 1.0, unit=unit)
        m.alarm(index=0)
        m.observe(ctx_at(0, k=8), np.full(8, 1.0))  # one step of 8 bytes, no alarm
        assert m.multiplier == pytest.approx(expected)


def test_ema_detector_fires_once_shortly_after_a_jump() -> None:
    m = AdaptiveLR(detector="ema", fast_half_life=32, slow_half_life=2048, threshold=1.25,
                   warmup=500, boost=2.0)  # fmt: skip
    events = feed(m, step_losses())
    alarms = [e["index"] for e in events if e["kind"] == "alarm"]
    assert len(alarms) == 1 and 3000 <= alarms[0] < 3000 + 100
    scores = detection_scores(alarms, [3000], n_bytes=6000, tolerance=500)
    assert (scores["detected"], scores["false_alarms"]) == (1, 0)
    assert m.multiplier > 1.0 and events[0]["lr_multiplier"] == 2.0


def test_ema_detector_is_quiet_on_a_falling_or_flat_loss() -> None:
    m = AdaptiveLR(detector="ema", warmup=0)
    falling = 8.0 * np.exp(-np.arange(5000) / 1000) + 2.0
    flat = np.random.default_rng(1).normal(3.0, 0.5, 20000)
    assert (
        feed(m, falling, k=16) == []
        and feed(AdaptiveLR(detector="ema", warmup=0), flat, k=16) == []
    )


def test_rearm_allows_a_second_alarm_after_recovery() -> None:
    m = AdaptiveLR(detector="ema", fast_half_life=32, slow_half_life=1024, threshold=1.25, warmup=0)
    losses = np.concatenate([np.full(3000, 2.0), np.full(3000, 4.0), np.full(6000, 2.0),
                             np.full(3000, 4.0)])  # fmt: skip
    alarms = [e["index"] for e in feed(m, losses, k=16) if e["kind"] == "alarm"]
    assert len(alarms) == 2 and 3000 <= alarms[0] < 3100 and 12000 <= alarms[1] < 12100


def test_alarms_scale_the_learning_rate_of_the_update_in_a_learner() -> None:
    stream = Stream(
        b"a" * 600 + bytes(range(97, 123)) * 24,
        [Phase("a", "t", 0, 600), Phase("b", "t", 600, 1224)],
        np.array([0, 600]),
    )
    mech = AdaptiveLR(detector="ema", fast_half_life=8, slow_half_life=256, warmup=100,
                      half_life=200, boost=2.0)  # fmt: skip
    learner = Learner(ModelConfig(context=16), OptimConfig(lr=0.01), [mech],
                      LearnerConfig(update_every=4))  # fmt: skip
    multipliers = []
    for pos in range(0, 1224, 4):
        out = learner.step(stream.data[pos : pos + 4], [pos in (0, 600)] + [False] * 3)
        multipliers.append(out.lr / 0.01)
    alarms = [e for e in learner.events if e["kind"] == "alarm"]
    assert alarms and 600 <= alarms[0]["index"] < 700
    assert alarms[0]["pos"] <= alarms[0]["index"] < alarms[0]["pos"] + 4
    assert multipliers[alarms[0]["step"]] == pytest.approx(2.0)  # boosted in the alarm's step
    assert max(multipliers) <= 4.0  # the cap
    assert multipliers[-1] < max(multipliers)  # decaying back


@pytest.mark.parametrize("group", ["embeddings", "blocks", "head"])
@pytest.mark.parametrize("path", ["hooks", "compiled"])
def test_a_boost_limited_to_a_group_moves_only_that_group_faster(group: str, path: str) -> None:
    """One update with the multiplier at 3: the group's weights land where a boost of every
    weight puts them, the others where no boost does (same start, same gradient)."""
    data = b"the cat sat on the mat. "

    def one_update(params: str | None) -> np.ndarray:
        mechs = []
        if params is not None:
            mech = AdaptiveLR(warmup=0, boost=3.0, params=params)
            mech.alarm(index=0)  # the multiplier is 3 for the first update
            mechs.append(mech)
        learner = Learner(ModelConfig(context=32), OptimConfig(lr=0.01), mechs,
                          LearnerConfig(update_every=len(data)))  # fmt: skip
        if path == "hooks":
            learner.step(data, [True] + [False] * (len(data) - 1))
        else:
            assert learner._compiled_mechanisms() is not None
            learner.run(Stream.from_bytes(data))
        assert learner.counters.updates == 1
        return learner.model.params.flat.copy()

    lo, hi = param_span(ModelConfig(context=32), group)
    limited, everywhere, plain = one_update(group), one_update("all"), one_update(None)
    assert np.array_equal(limited[lo:hi], everywhere[lo:hi])
    assert np.array_equal(limited[:lo], plain[:lo]) and np.array_equal(limited[hi:], plain[hi:])
    assert not np.array_equal(everywhere[lo:hi], plain[lo:hi])


def test_param_groups_cover_the_buffer_in_order_and_unknown_ones_are_refused() -> None:
    cfg = ModelConfig(n_layers=2, tied_head=False)
    spans = [param_span(cfg, g) for g in ("embeddings", "blocks", "head")]
    assert spans[0][0] == 0 and spans[0][1] == spans[1][0] and spans[1][1] == spans[2][0]
    assert spans[2][1] == cfg.n_params == param_span(cfg, "all")[1]
    buf = ParamBuffer(cfg)
    assert spans[1] == (buf.offsets["h0.ln1"], buf.offsets["ln_f"])
    with pytest.raises(ConfigError, match="parameter group 'layers' is unknown"):
        param_span(cfg, "layers")
    with pytest.raises(ConfigError, match="params"):
        make_mechanism(("adaptive_lr", {"params": "layers"}))


def test_two_mechanisms_limiting_the_lr_to_different_groups_are_refused() -> None:
    class Other(AdaptiveLR):
        name = "other_lr"

        def lr_params(self) -> str:
            return "blocks"

    learner = Learner(ModelConfig(context=16), OptimConfig(lr=0.01),
                      [AdaptiveLR(params="head"), Other()])  # fmt: skip
    with pytest.raises(ConfigError, match="different parameter groups"):
        learner.step(b"abcd", [True, False, False, False])


def test_config_bounds() -> None:
    with pytest.raises(ConfigError, match="fast_half_life"):
        AdaptiveLR(fast_half_life=100, slow_half_life=50)
    with pytest.raises(ConfigError, match="boost"):
        AdaptiveLR(boost=0.5)


def test_river_detector_without_river_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adaptive_lr, "river_available", lambda: False)
    with pytest.raises(ConfigError, match="pip install river"):
        AdaptiveLR(detector="adwin")


@pytest.mark.skipif(not HAS_RIVER, reason="the optional package river is not installed")
@pytest.mark.parametrize("detector", ["page_hinkley", "adwin"])
def test_river_detectors_find_the_jump_and_restore_their_state(detector: str) -> None:
    losses = step_losses(n=8000)
    m = AdaptiveLR(detector=detector, warmup=500)
    alarms = [e["index"] for e in feed(m, losses) if e["kind"] == "alarm"]
    scores = detection_scores(alarms, [3000], n_bytes=8000, tolerance=1000)
    assert scores["detected"] == 1 and scores["false_alarms"] <= 1
    # a detector rebuilt from a saved state continues exactly like the original
    a = AdaptiveLR(detector=detector, warmup=500)
    first = feed(a, losses[:3050])
    b = AdaptiveLR(detector=detector, warmup=500)
    b.load_state_dict(a.state_dict())
    rest_a = feed(a, losses[3050:], start=3050)
    rest_b = feed(b, losses[3050:], start=3050)
    assert [e["index"] for e in first + rest_a] == alarms
    assert rest_a == rest_b


def test_lowering_the_cap_clamps_the_current_multiplier() -> None:
    m = AdaptiveLR(boost=4.0, cap=4.0)
    m.alarm(index=0)
    m.configure(cap=2.5)
    assert m.multiplier == 2.5


def test_block_statistic_is_welchs_test_on_the_block_numbers() -> None:
    """The statistic after the sixth block equals Welch's z computed by hand with NumPy:
    recent blocks 4-5 against reference blocks 0-3, the largest of the ten numbers."""
    rng = np.random.default_rng(3)
    data = bytes(rng.choice(list(b"ab Z9\n.(\xc3"), size=24).tolist())
    losses = rng.uniform(1.0, 6.0, 24)
    m = AdaptiveLR(block_bytes=4, recent_blocks=2, reference_blocks=4, cooldown=0, warmup=0,
                   z_threshold=1e6)  # fmt: skip
    assert feed(m, losses, data=data) == []
    classes = adaptive_lr.BYTE_CLASSES[np.frombuffer(data, np.uint8)].reshape(6, 4)
    numbers = np.zeros((6, 10))
    for c in range(9):
        numbers[:, c] = (classes == c).mean(axis=1)
    numbers[:, 9] = losses.reshape(6, 4).mean(axis=1)
    recent, ref = numbers[4:], numbers[:4]
    spread = np.sqrt(recent.var(0, ddof=1) / 2 + ref.var(0, ddof=1) / 4)
    z = np.abs(recent.mean(0) - ref.mean(0)) / (spread + 1e-4)
    assert m.block_vars[3] == pytest.approx(z.max(), rel=1e-12) and z.max() > 1.0


def test_block_test_sees_a_shift_to_an_easier_phase_that_the_ema_cannot() -> None:
    """Stories, then counting with a much lower loss: the block test fires once, soon after
    the boundary, and never in the 20 kB of stories; the one-sided EMA ratio stays silent."""
    stream = build_stream("stories=stories:20k,counting=counting:6k")
    noise = np.random.default_rng(0).normal(0.0, 0.3, len(stream))
    losses = np.where(np.arange(len(stream)) < 20_000, 4.0, 1.0) + noise
    blocks = [e["index"] for e in feed(AdaptiveLR(), losses, k=4, data=stream.data)]
    assert len(blocks) == 1 and 20_000 <= blocks[0] < 22_000
    ema = feed(AdaptiveLR(detector="ema"), losses, k=4, data=stream.data)
    assert ema == []


def test_block_test_continues_exactly_from_a_saved_state() -> None:
    stream = build_stream("stories=stories:20k,counting=counting:6k")
    losses = np.random.default_rng(1).uniform(1.0, 5.0, len(stream))
    whole = AdaptiveLR()
    events = feed(whole, losses, data=stream.data)
    first = AdaptiveLR()
    cut = 20_050  # inside a block, after the boundary
    head = feed(first, losses[:cut], data=stream.data[:cut])
    second = AdaptiveLR()
    second.load_state_dict(first.state_dict())
    tail = feed(second, losses[cut:], start=cut, data=stream.data[cut:])
    assert head + tail == events and len(events) == 1
    assert np.array_equal(second.block_ring, whole.block_ring)
