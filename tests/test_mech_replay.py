"""Experience replay: Algorithm R reservoir, priority sampling, replay schedule, own optimiser."""

from __future__ import annotations

import numpy as np
import pytest

from mugpt.corpus import Stream
from mugpt.engine import Learner, LearnerConfig
from mugpt.mechanisms import make_mechanism
from mugpt.mechanisms.replay import Replay
from mugpt.model import BOS, ModelConfig

TEXT = b"the cat sat on the mat. the dog sat on the log. " * 8


def window_id(i: int) -> np.ndarray:
    """A window whose symbols encode the integer i (two base-256 digits)."""
    return np.array([BOS, i // 256, i % 256])


def stored_ids(r: Replay) -> list[int]:
    return [int(r.window(s)[1]) * 256 + int(r.window(s)[2]) for s in range(r.filled)]


def test_reservoir_never_exceeds_capacity_and_fills_first() -> None:
    r = Replay(capacity=10)
    rng = np.random.default_rng(0)
    slots = [r.offer(window_id(i), 1.0, rng) for i in range(10)]
    assert slots == list(range(10))  # the first `capacity` windows fill the slots in order
    for i in range(10, 500):
        r.offer(window_id(i), 1.0, rng)
    assert r.filled == 10 and r.seen == 500
    assert len(set(stored_ids(r))) == 10


def test_reservoir_is_a_uniform_sample_of_everything_offered() -> None:
    # Algorithm R keeps each of n windows with probability capacity / n
    n, cap, trials = 200, 20, 400
    counts = np.zeros(n)
    rng = np.random.default_rng(123)
    for _ in range(trials):
        r = Replay(capacity=cap)
        for i in range(n):
            r.offer(window_id(i), 1.0, rng)
        counts[stored_ids(r)] += 1
    expected = trials * cap / n  # 40 per window
    # early, middle and late quarters are kept equally often (each ≈ 50 windows × 40)
    quarters = counts.reshape(4, -1).sum(axis=1)
    sd = np.sqrt(quarters.mean() * (1 - cap / n))
    assert np.all(np.abs(quarters - expected * n / 4) < 5 * sd), quarters
    # and the per-window counts look binomial(trials, cap/n): chi-square near its df
    chi2 = float(((counts - expected) ** 2 / (expected * (1 - cap / n))).sum())
    assert 0.6 * n < chi2 < 1.5 * n, chi2


def test_priority_sampling_is_proportional_to_loss_to_the_alpha() -> None:
    rng = np.random.default_rng(5)
    for alpha, expected in [(1.0, [0.1, 0.2, 0.3, 0.4]), (2.0, [1 / 30, 4 / 30, 9 / 30, 16 / 30]),
                            (0.0, [0.25] * 4)]:  # fmt: skip
        r = Replay(capacity=4, alpha=alpha)
        for i, loss in enumerate([1.0, 2.0, 3.0, 4.0]):
            r.offer(window_id(i), loss, rng)
        assert r.priorities() == pytest.approx(expected)
        draws = r.sample(rng, 40000)
        freq = np.bincount(draws, minlength=4) / draws.size
        assert freq == pytest.approx(expected, abs=0.01)


def test_replay_runs_k_updates_every_n_steps_on_stored_windows() -> None:
    mech = make_mechanism("replay:capacity=16,k=2,every=3,start_after=5")
    learner = Learner(ModelConfig(context=8), mechanisms=[mech])
    for i in range(30):
        learner.step(TEXT[i : i + 1])
    # steps 0..29; replay when at least 5 windows are stored (after step 4) and step % 3 == 0
    due = [s for s in range(30) if s >= 5 and s % 3 == 0]
    assert learner.counters.replay_updates == 2 * len(due)
    assert mech.counters()["replays"] == 2 * len(due)
    assert [e["count"] for e in learner.events if e["kind"] == "replay"] == [2] * len(due)
    assert not mech.strict_online and mech.describe()["strict_online"] is False


def test_windows_hold_the_symbols_trained_on() -> None:
    mech = Replay(capacity=64, start_after=1000)
    learner = Learner(ModelConfig(context=8), mechanisms=[mech])
    for i in range(12):
        learner.step(TEXT[i : i + 1])
        window = learner.history[-9:]
        assert np.array_equal(mech.window(i), window)
    assert mech.window(0).tolist() == [BOS, TEXT[0]]


def test_replayed_losses_refresh_the_priorities() -> None:
    mech = Replay(capacity=8, k=1, every=1, start_after=1, alpha=1.0)
    learner = Learner(ModelConfig(context=8), mechanisms=[mech])
    for i in range(6):
        learner.step(TEXT[i : i + 1])
    before = mech._loss[: mech.filled].copy()
    bits_before, n_before = mech.replay_bits_sum, mech.replay_bits_n
    learner.step(TEXT[6:7])
    changed = np.flatnonzero(mech._loss[: before.size] != before)
    assert changed.size == 1  # the one replayed window got its new loss
    assert mech.replay_bits_n == n_before + 1
    assert mech._loss[changed[0]] == pytest.approx(mech.replay_bits_sum - bits_before)


def test_own_optimizer_keeps_a_separate_state() -> None:
    mech = make_mechanism("replay:capacity=32,k=1,every=2,start_after=2,own_optimizer=true")
    learner = Learner(ModelConfig(context=8), mechanisms=[mech], learner_cfg=LearnerConfig())
    learner.run(Stream.from_bytes(TEXT[:40]))
    opt = mech.extra_optimizer()
    assert opt is not None and opt is not learner.optimizer
    assert opt.t == learner.counters.replay_updates > 0
    assert learner.optimizer.t == learner.counters.updates
    shared = make_mechanism("replay:own_optimizer=false")
    assert shared.extra_optimizer() is None


def test_capacity_change_keeps_stored_windows_and_bounds() -> None:
    r = Replay(capacity=8)
    rng = np.random.default_rng(0)
    for i in range(8):
        r.offer(window_id(i), float(i), rng, width=4)
    r.configure(capacity=3)
    assert r.filled == 3 and stored_ids(r) == [0, 1, 2]
    r.configure(capacity=6)
    assert r.filled == 3 and r._buf.shape == (6, 4)
    assert r.offer(window_id(99), 1.0, rng) == 3  # grows into the free slots


def test_draws_are_the_generators_doubles_mapped_by_the_shared_helpers() -> None:
    """Each draw is one ``rng.random()``: a slot by priority is the first entry of the
    normalised running sum above it; Algorithm R's index is floor(u·seen)."""
    r = Replay(capacity=4, alpha=1.0)
    rng = np.random.default_rng(9)
    for i, loss in enumerate([1.0, 2.0, 3.0, 4.0]):
        r.offer(window_id(i), loss, rng)
    u = np.random.default_rng(11).random(6)
    drawn = r.sample(np.random.default_rng(11), 6)
    cdf = np.cumsum([1.0, 2.0, 3.0, 4.0]) / 10.0
    assert drawn.tolist() == [int(np.searchsorted(cdf, x, side="right")) for x in u]
    j = int(np.random.default_rng(12).random() * 5)  # the fifth window offered
    assert r.offer(window_id(9), 1.0, np.random.default_rng(12)) == (j if j < 4 else -1)


def _ctx(step: int, inputs: np.ndarray, targets: np.ndarray, rng: np.random.Generator):  # type: ignore[no-untyped-def]
    from mugpt.mechanisms import StepContext

    return StepContext(step, 0, np.zeros(1, np.uint8), inputs, targets, np.zeros(1, np.int64),
                       np.zeros((1, 4)), rng, 0.01, 8)  # fmt: skip


def test_the_control_replays_the_current_window_on_the_same_schedule() -> None:
    """source = current: k copies of the step's own window exactly when buffer replay would
    run, nothing stored, no random draw."""
    buffer = Replay(capacity=4, k=3, every=2, start_after=3)
    control = Replay(capacity=4, k=3, every=2, start_after=3, source="current")
    rng_b, rng_c = np.random.default_rng(1), np.random.default_rng(1)
    untouched = np.random.default_rng(1).bit_generator.state
    for step in range(12):
        inputs = np.array([BOS, 97 + step, 98 + step])
        targets = np.array([97 + step, 98 + step, 99 + step])
        got_b = buffer.extra_windows(_ctx(step, inputs, targets, rng_b))
        got_c = control.extra_windows(_ctx(step, inputs, targets, rng_c))
        assert len(got_c) == len(got_b) == (3 if step >= 3 and step % 2 == 0 else 0)
        for w in got_c:
            assert w.tolist() == [BOS, 97 + step, 98 + step, 99 + step]
        control.replayed(_ctx(step, inputs, targets, rng_c), [1.5] * len(got_c))
    assert rng_c.bit_generator.state == untouched  # the control draws nothing
    assert rng_b.bit_generator.state != untouched  # buffer replay did draw
    c = control.counters()
    assert (c["stored"], c["windows_seen"], c["replays"]) == (0, 12, 3 * 4)  # steps 4, 6, 8, 10
    assert c["mean_replay_loss_bits"] == 1.5


def test_the_control_makes_as_many_extra_updates_as_replay_in_a_learner() -> None:
    counts = {}
    for source in ("buffer", "current"):
        mech = make_mechanism(f"replay:capacity=16,k=2,every=3,start_after=5,source={source}")
        learner = Learner(ModelConfig(context=8), mechanisms=[mech])
        for i in range(30):
            learner.step(TEXT[i : i + 1])
        counts[source] = (learner.counters.replay_updates, learner.counters.backward_passes)
    due = [s for s in range(30) if s >= 5 and s % 3 == 0]
    assert counts["buffer"] == counts["current"] == (2 * len(due), 30 + 2 * len(due))
