"""Metrics against hand-computed values on small constructed loss arrays (DESIGN §5)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mugpt.corpus import Phase, Stream
from mugpt.engine.metrics import (
    default_window,
    detection_scores,
    detection_table,
    ema,
    final_level,
    forgetting_bpb,
    periodic_scores,
    phase_metrics,
    recovery_bytes,
    trailing_mean,
)


def test_default_window() -> None:
    assert [default_window(n) for n in (0, 3, 8, 400, 4000, 10**6)] == [1, 1, 2, 100, 1000, 1000]


def test_final_level_is_mean_of_last_quarter() -> None:
    assert final_level(np.array([9.0, 9, 9, 9, 9, 9, 2, 4])) == 3.0
    assert final_level(np.array([5.0, 7.0])) == 7.0  # at least one byte
    assert final_level(np.array([])) is None


def test_recovery_hand_computed() -> None:
    seg = np.array([10.0, 10, 10, 4, 4, 2, 2, 2, 2, 2, 2, 2])
    # final level = mean(2, 2, 2) = 2, threshold 2.2; 3-byte windows from index 0:
    # 10, 8, 6, 3.33, 2.67, 2 -> the window of bytes 5..7 is the first, so 8 bytes
    assert recovery_bytes(seg, 3) == 8
    assert recovery_bytes(seg, 1) == 6  # byte 5 is the first <= 2.2
    # within 10% *above* counts: 2.2 exactly is recovered
    assert recovery_bytes(np.array([5.0, 2.2, 2.0, 2.0]), 1) == 2


def test_not_recovered_and_short_segments() -> None:
    seg = np.array([9.0, 9, 9, 9, 9, 9, 9, 1])  # final level (9 + 1) / 2 = 5
    assert recovery_bytes(seg, 4) is None  # the best window (9, 9, 9, 1) has mean 7 > 5.5
    assert recovery_bytes(np.array([3.0, 1.0]), 10) is None  # window shortened to 2: 2 > 1.1
    assert recovery_bytes(np.array([1.0, 1.0]), 10) == 2
    assert recovery_bytes(np.array([]), 5) is None
    with pytest.raises(ValueError):
        recovery_bytes(seg, 0)


def _recovery_reference(x: np.ndarray, window: int) -> int | None:
    n = len(x)
    if n == 0:
        return None
    tail = x[n - max(1, n // 4) :]
    level = sum(tail) / len(tail)
    w = min(window, n)
    for end in range(w, n + 1):
        if sum(x[end - w : end]) / w <= 1.1 * level + 1e-9:
            return end
    return None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 16), min_size=0, max_size=60).map(lambda v: np.array(v) / 2.0),
    st.integers(1, 20),
)
def test_recovery_matches_the_definition(x: np.ndarray, window: int) -> None:
    assert recovery_bytes(x, window) == _recovery_reference(x, window)


def test_forgetting_hand_computed() -> None:
    prev = np.array([8.0, 6.0, 2.0, 1.0, 1.0])
    new = np.array([5.0, 3.0, 1.0])
    assert forgetting_bpb(prev, new, 2) == pytest.approx(4.0 - 1.0)
    assert forgetting_bpb(prev, new, 10) == pytest.approx(3.0 - 4.0 / 3.0)  # w = 3
    assert forgetting_bpb(prev, np.array([]), 2) is None


def _abab_stream() -> Stream:
    phases = [Phase("A", "s", 0, 8), Phase("B", "s", 8, 16), Phase("A", "s", 16, 24)]
    return Stream(b"x" * 24, phases, np.array([0, 8, 16]))


LOSSES = np.array(
    [
        *[6, 4, 3, 2, 2, 2, 2, 2],  # A: bpb 23/8
        *[8, 8, 5, 3, 3, 3, 3, 3],  # B: final 3, W=2 windows 8, 6.5, 4, 3 -> 5 bytes
        *[4, 2, 2, 2, 2, 2, 2, 2],  # A again: final 2; first 2 bytes 3.0 vs A's last 2.0
    ],
    dtype=np.float64,
)


def test_phase_metrics_full_run() -> None:
    rows = phase_metrics(LOSSES, _abab_stream())  # default window: min(1000, 8 // 4) = 2
    assert [r["window"] for r in rows] == [2, 2, 2]
    a1, b, a2 = rows
    assert (a1["label"], a1["start"], a1["end"], a1["bpb"]) == ("A", 0, 8, 23 / 8)
    assert a1["recovery_bytes"] is None and a1["recovered"] is None  # no boundary before it
    assert a1["forgetting_bpb"] is None and a1["revisit_of"] is None
    assert b["bpb"] == 36 / 8 and b["recovery_bytes"] == 5 and b["recovered"] is True
    assert b["forgetting_bpb"] is None
    assert a2["revisit_of"] == 0 and a2["forgetting_bpb"] == pytest.approx(3.0 - 2.0)
    assert a2["recovery_bytes"] == 3  # windows (4, 2) = 3, (2, 2) = 2 <= 2.2
    assert all(r["complete"] for r in rows)


def test_phase_metrics_explicit_window_and_not_recovered() -> None:
    losses = LOSSES.copy()
    losses[8:16] = [9, 9, 9, 9, 9, 9, 9, 1]
    b = phase_metrics(losses, _abab_stream(), window=4)[1]
    assert b["recovery_bytes"] is None and b["recovered"] is False and b["window"] == 4


def test_phase_metrics_partial_run() -> None:
    rows = phase_metrics(LOSSES[:20], _abab_stream())
    assert [r["bytes_seen"] for r in rows] == [8, 8, 4]
    assert [r["complete"] for r in rows] == [True, True, False]
    assert rows[2]["bpb"] == 10 / 4 and rows[2]["forgetting_bpb"] == pytest.approx(1.0)
    early = phase_metrics(LOSSES[:10], _abab_stream())
    assert early[1]["bytes_seen"] == 2 and early[1]["bpb"] == 8.0
    assert early[2] | {} == {
        "label": "A", "start": 16, "end": 24, "bytes_seen": 0, "complete": False, "bpb": None,
        "window": 2, "recovery_bytes": None, "recovered": None, "forgetting_bpb": None,
        "revisit_of": 0,
    }  # fmt: skip
    with pytest.raises(ValueError):
        phase_metrics(np.zeros(25), _abab_stream())


def test_detection_scores_hand_computed() -> None:
    r = detection_scores([400, 5, 120, 130, 260, 120], [100, 250], n_bytes=1000, tolerance=50)
    assert r["delays"] == [20, 10] and r["detected"] == 2 and r["missed"] == 0
    assert r["mean_delay"] == 15.0
    assert r["alarms"] == 5 and r["false_alarms"] == 3  # 5, 130 and 400; 120 counts once
    assert r["false_alarms_per_mb"] == pytest.approx(3000.0)


def test_detection_tolerance_next_boundary_and_unseen_boundaries() -> None:
    r = detection_scores([150], [100], n_bytes=1000, tolerance=50)
    assert r["delays"] == [None] and r["missed"] == 1 and r["false_alarms"] == 1
    assert r["mean_delay"] is None
    r = detection_scores([115], [100, 110], n_bytes=1000, tolerance=50)
    assert r["delays"] == [None, 5]  # an alarm after the next boundary belongs to that one
    r = detection_scores([10], [5, 5000], n_bytes=1000, tolerance=50)
    assert r["delays"] == [5]  # boundary 5000 not reached yet: not scored
    with pytest.raises(ValueError):
        detection_scores([1000], [5], n_bytes=1000, tolerance=50)
    assert detection_scores([], [], n_bytes=0, tolerance=5)["false_alarms_per_mb"] is None


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 300),
    st.lists(st.integers(0, 299), max_size=6),
    st.integers(1, 40),
    st.integers(1, 40),
)
def test_periodic_closed_form_matches_explicit_alarms(
    n: int, bounds: list[int], period: int, tolerance: int
) -> None:
    explicit = detection_scores(np.arange(0, n, period), bounds, n, tolerance)
    assert periodic_scores(period, bounds, n, tolerance) == explicit


def test_detection_table_rows() -> None:
    rows = detection_table([103, 500], [100, 300], n_bytes=1000, tolerance=50, name="cusum")
    by_name = {r["detector"]: r for r in rows}
    assert list(by_name) == ["cusum", "periodic", "always-fire", "never-fire"]
    assert by_name["cusum"]["delays"] == [3, None] and by_name["cusum"]["false_alarms"] == 1
    always = by_name["always-fire"]
    assert always["delays"] == [0, 0] and always["false_alarms"] == 998
    assert always["false_alarms_per_mb"] == pytest.approx(998_000.0)
    assert by_name["periodic"]["delays"] == [0, 0] and by_name["periodic"]["false_alarms"] == 18
    never = by_name["never-fire"]
    assert never["detected"] == 0 and never["missed"] == 2 and never["false_alarms"] == 0


def test_ema_hand_computed() -> None:
    assert ema(np.array([4.0, 0.0, 0.0, 8.0]), 0.5).tolist() == [4.0, 2.0, 1.0, 4.5]
    assert ema(np.array([1.0, 2.0]), 1.0).tolist() == [1.0, 2.0]
    assert ema(np.array([]), 0.1).size == 0
    with pytest.raises(ValueError):
        ema(np.array([1.0]), 0.0)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0, 20), min_size=1, max_size=300),
    st.sampled_from([1e-6, 0.001, 0.05, 0.5, 0.9, 0.999999]),
)
def test_ema_matches_the_recurrence(values: list[float], alpha: float) -> None:
    expected = []
    y = values[0]
    for v in values:
        y = alpha * v + (1 - alpha) * y
        expected.append(y)
    np.testing.assert_allclose(ema(np.array(values), alpha), expected, rtol=1e-9, atol=1e-9)


def test_ema_long_input_spans_many_blocks() -> None:
    x = np.random.default_rng(0).random(20_000) * 8
    y = ema(x, 0.3)
    ref = np.empty_like(x)
    prev = x[0]
    for i, v in enumerate(x):
        prev = 0.3 * v + 0.7 * prev
        ref[i] = prev
    np.testing.assert_allclose(y, ref, rtol=1e-10)


def test_trailing_mean() -> None:
    assert trailing_mean(np.array([1.0, 2.0]), 3).size == 0
