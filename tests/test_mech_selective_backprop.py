"""Selective-Backprop (Jiang et al. 2019): the skip rule on hand-built window losses."""

from __future__ import annotations

import numpy as np
import pytest

from mugpt.corpus import Stream
from mugpt.engine import Learner, LearnerConfig
from mugpt.errors import ConfigError
from mugpt.mechanisms import StepContext, make_mechanism
from mugpt.mechanisms.selective_backprop import SelectiveBackprop
from mugpt.model import OptimConfig


def ctx_with(loss: float, rng: np.random.Generator | None = None) -> StepContext:
    ctx = StepContext(
        step=0, position=0, new_bytes=np.zeros(1, np.uint8), inputs=np.zeros(1, np.int64),
        targets=np.zeros(1, np.int64), new_positions=np.zeros(1, np.int64),
        hidden=np.zeros((1, 4)), rng=rng or np.random.default_rng(0), lr=0.01, context=8,
    )  # fmt: skip
    ctx.window_loss_bits = loss
    return ctx


def test_threshold_skips_exactly_when_the_window_loss_is_below_tau() -> None:
    sb = SelectiveBackprop(mode="threshold", tau=2.0)
    losses = [1.0, 1.999999, 2.0, 2.000001, 5.0, 0.0]
    decisions = [sb.should_update(ctx_with(x)) for x in losses]
    assert decisions == [False, False, True, True, True, False]
    c = sb.counters()
    assert (c["decisions"], c["skipped"], c["skip_share"]) == (6, 3, 0.5)


def test_percentile_probability_is_the_share_of_recent_losses_at_or_below_to_the_beta() -> None:
    sb = SelectiveBackprop(mode="percentile", beta=3.0, history=4)
    assert sb.keep_probability(1.0) == 1.0  # the only loss seen is the largest
    assert sb.keep_probability(2.0) == 1.0
    assert sb.keep_probability(0.5) == pytest.approx((1 / 3) ** 3)
    assert sb.keep_probability(1.5) == pytest.approx((3 / 4) ** 3)  # {1, 0.5, 1.5} ≤ 1.5 of 4
    # the ring forgets the oldest: history is now {2.0, 0.5, 1.5, 1.2}
    assert sb.keep_probability(1.2) == pytest.approx((2 / 4) ** 3)


def test_percentile_draws_from_the_learner_generator() -> None:
    sb = SelectiveBackprop(mode="percentile", beta=2.0, history=8)
    rng, twin = np.random.default_rng(7), np.random.default_rng(7)
    mirror = SelectiveBackprop(mode="percentile", beta=2.0, history=8)
    for loss in [3.0, 1.0, 2.0, 0.5, 4.0, 2.5, 0.1, 1.7, 3.3, 0.9] * 3:
        expected = twin.random() < mirror.keep_probability(loss)
        assert sb.should_update(ctx_with(loss, rng)) == expected


def test_percentile_keep_rate_matches_the_expected_probability() -> None:
    # with i.i.d. losses, pct(L) is uniform, so E[pct^beta] = 1 / (beta + 1)
    sb = SelectiveBackprop(mode="percentile", beta=3.0, history=1024)
    rng = np.random.default_rng(1)
    losses = np.random.default_rng(2).exponential(size=20000)
    kept = sum(sb.should_update(ctx_with(float(x), rng)) for x in losses)
    assert kept / losses.size == pytest.approx(0.25, abs=0.02)
    assert sb.counters()["skip_share"] == pytest.approx(1 - kept / losses.size)


def test_learner_skips_the_update_and_counts_it() -> None:
    stream = Stream.from_bytes(b"abcabcabc" * 20)
    # Adam at 0.01 learns the pattern within the run, so that some steps fall below tau
    learner = Learner(optim_cfg=OptimConfig(lr=0.01),
                      mechanisms=[make_mechanism("selective_backprop:tau=4.0")],
                      learner_cfg=LearnerConfig(update_every=4))  # fmt: skip
    learner.run(stream)
    mech = learner.mechanism("selective_backprop")
    assert mech.counters()["skipped"] == learner.counters.skipped > 0
    assert learner.counters.updates + learner.counters.skipped == learner.counters.steps


def test_history_resize_keeps_the_most_recent_losses() -> None:
    sb = SelectiveBackprop(mode="percentile", history=4)
    for x in [1.0, 2.0, 3.0, 4.0, 5.0]:
        sb.keep_probability(x)
    sb.configure(history=2)
    assert sb._recent().tolist() == [4.0, 5.0]
    sb.configure(history=3)
    assert sb._recent().tolist() == [4.0, 5.0]


def test_bad_settings_name_the_key() -> None:
    with pytest.raises(ConfigError, match="tau"):
        SelectiveBackprop(tau=-1)
    with pytest.raises(ConfigError, match="mode"):
        make_mechanism("selective_backprop:mode=median")


def test_random_mode_skips_at_its_rate_whatever_the_loss() -> None:
    """mode = random keeps an update when the generator's double is below 1 − skip_rate: the
    same draws give the same decisions for any losses, at the configured share."""
    n = 20000
    rng_a, rng_b, twin = (np.random.default_rng(4) for _ in range(3))
    low = SelectiveBackprop(mode="random", skip_rate=0.25)
    high = SelectiveBackprop(mode="random", skip_rate=0.25)
    losses = np.random.default_rng(5).exponential(size=n)
    a = [low.should_update(ctx_with(float(x), rng_a)) for x in losses]
    b = [high.should_update(ctx_with(float(10 * x + 3), rng_b)) for x in losses[::-1]]
    assert a == b == [bool(u < 0.75) for u in twin.random(n)]
    # binomial(20000, 0.25): sd of the share ≈ 0.003
    assert low.counters()["skip_share"] == pytest.approx(0.25, abs=0.015)
    assert low.counters()["mean_keep_probability"] == pytest.approx(0.75)


def test_random_mode_at_the_ends_never_or_always_skips() -> None:
    never = SelectiveBackprop(mode="random", skip_rate=0.0)
    always = SelectiveBackprop(mode="random", skip_rate=1.0)
    rng = np.random.default_rng(0)
    assert all(never.should_update(ctx_with(0.0, rng)) for _ in range(200))
    assert not any(always.should_update(ctx_with(9.0, rng)) for _ in range(200))
    with pytest.raises(ConfigError, match="skip_rate"):
        SelectiveBackprop(mode="random", skip_rate=1.5)
