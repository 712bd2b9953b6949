"""Continuous cache (Grave et al. 2017): the mixture formula by hand, causality, resizing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mugpt.corpus import Stream
from mugpt.engine import Learner, LearnerConfig
from mugpt.mechanisms import StepContext
from mugpt.mechanisms.cache import ContinuousCache, PairMemory
from mugpt.model import ModelConfig

UNIFORM = np.full((1, 257), 1.0 / 257)
TEXT = b"abracadabra, abracadabra! " * 12


def test_cache_probability_matches_a_hand_computation() -> None:
    theta, lam = 0.7, 0.3
    cache = ContinuousCache(size=16, theta=theta, lam=lam)
    h1, h2, h3 = [1.0, 0.0, 2.0], [0.0, 1.0, -1.0], [0.5, 0.5, 0.5]
    cache.memory.add(np.array([h1, h2, h3]), np.array([ord("a"), ord("b"), ord("a")]))
    h = np.array([0.2, -0.4, 1.0])
    s1, s2, s3 = (math.exp(theta * float(np.dot(h, v))) for v in (h1, h2, h3))
    p_a, p_b = (s1 + s3) / (s1 + s2 + s3), s2 / (s1 + s2 + s3)
    model = np.random.default_rng(0).dirichlet(np.ones(257))[None, :]
    out = cache.mix(h[None, :], model, np.zeros(0, int))
    assert cache.last_p_cache is not None
    assert cache.last_p_cache[0, ord("a")] == pytest.approx(p_a, rel=1e-12)
    assert cache.last_p_cache[0, ord("b")] == pytest.approx(p_b, rel=1e-12)
    expected = (1 - lam) * model[0]
    expected[ord("a")] += lam * p_a
    expected[ord("b")] += lam * p_b
    assert out[0] == pytest.approx(expected, rel=1e-12)
    assert out.sum() == pytest.approx(1.0)


def test_empty_cache_leaves_the_prediction_unchanged() -> None:
    cache = ContinuousCache()
    model = np.random.default_rng(1).dirichlet(np.ones(257), size=1)
    assert np.array_equal(cache.mix(np.ones((1, 4)), model, np.zeros(0, int)), model)


def test_within_a_step_byte_j_sees_only_the_pairs_of_earlier_bytes() -> None:
    cache = ContinuousCache(size=8, theta=0.0, lam=1.0)  # theta 0: every visible pair counts 1
    queries = np.ones((4, 3))
    out = cache.mix(queries, np.repeat(UNIFORM, 4, axis=0), np.array([10, 11, 12, 13]))
    assert np.array_equal(out[0], UNIFORM[0])  # nothing before byte 0
    assert out[1, 10] == 1.0
    assert out[2, 10] == out[2, 11] == 0.5 and out[2, 12] == 0.0
    assert out[3, 12] == pytest.approx(1 / 3) and out[3, 13] == 0.0


def _ctx(hidden: np.ndarray, new_bytes: bytes) -> StepContext:
    k = len(new_bytes)
    n = hidden.shape[0]
    targets = np.zeros(n, np.int64)
    targets[n - k :] = list(new_bytes)
    return StepContext(
        step=0, position=0, new_bytes=np.frombuffer(new_bytes, np.uint8), inputs=np.zeros(n, np.int64),
        targets=targets, new_positions=np.arange(n - k, n), hidden=hidden,
        rng=np.random.default_rng(0), lr=0.01, context=n,
    )  # fmt: skip


def test_pairs_are_stored_only_after_their_byte_is_scored() -> None:
    cache = ContinuousCache(size=8, theta=1.0, lam=0.5)
    ctx = _ctx(np.eye(3), b"xy")
    probs = np.repeat(UNIFORM, 2, axis=0)
    cache.adjust_prediction(ctx, probs)
    assert cache.memory.filled == 0  # predicting does not store
    cache.observe(ctx, np.zeros(2))
    assert cache.memory.filled == 2
    assert cache.memory.values[:2].tolist() == [ord("x"), ord("y")]
    assert np.array_equal(cache.memory.keys[:2], np.eye(3)[1:])


def test_learner_scores_the_mixture_and_never_leaks_the_byte_being_predicted() -> None:
    stream = Stream.from_bytes(TEXT)
    cfg = ModelConfig(context=16)
    cache = ContinuousCache(size=64, theta=1.0, lam=0.5)
    learner = Learner(cfg, mechanisms=[cache], learner_cfg=LearnerConfig(update_every=4))
    for pos in range(0, 80, 4):
        filled_before = cache.memory.filled
        out = learner.step(stream.data[pos : pos + 4])
        assert filled_before == min(pos, 64)
        # the recorded loss is that of the mixed distribution
        picked = out.probs[np.arange(4), list(stream.data[pos : pos + 4])]
        assert out.loss_bits == pytest.approx(-np.log2(picked))
    c = cache.counters()
    assert c["predictions"] == 80 and 0 < c["hit_rate"] <= 1 and c["stored"] == 64
    assert c["lambda"] == 0.5


def test_resize_keeps_the_newest_pairs_in_order() -> None:
    mem = PairMemory(capacity=4)
    mem.add(np.arange(12.0).reshape(6, 2), np.arange(6))  # keeps values 2..5
    assert mem.values[mem.chronological()].tolist() == [2, 3, 4, 5]
    mem.resize(2)
    assert mem.values[mem.chronological()].tolist() == [4, 5]
    assert mem.keys[mem.chronological()].tolist() == [[8.0, 9.0], [10.0, 11.0]]
    mem.resize(5)
    mem.add(np.array([[0.0, 1.0]]), np.array([9]))
    assert mem.values[mem.chronological()].tolist() == [4, 5, 9]


def test_same_inputs_give_bit_identical_predictions() -> None:
    runs = []
    for _ in range(2):
        learner = Learner(ModelConfig(context=16), mechanisms=[ContinuousCache(size=32)],
                          learner_cfg=LearnerConfig(update_every=3))  # fmt: skip
        runs.append(learner.run(Stream.from_bytes(TEXT[:150])).losses)
    assert np.array_equal(runs[0], runs[1])
