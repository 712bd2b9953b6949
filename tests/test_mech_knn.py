"""kNN-LM (Khandelwal et al. 2020): exact neighbours, softmax over −d², bounded datastore."""

from __future__ import annotations

import numpy as np
import pytest

from mugpt.corpus import Stream
from mugpt.engine import Learner, LearnerConfig
from mugpt.mechanisms.knn import KNNLM
from mugpt.model import ModelConfig

UNIFORM = np.full((1, 257), 1.0 / 257)


def test_knn_on_a_tiny_datastore_matches_a_hand_computation() -> None:
    knn = KNNLM(k=3, temperature=2.0, lam=0.4)
    keys = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [3.0, 3.0], [0.5, 0.5]])
    knn.memory.add(keys, np.array([65, 66, 65, 67, 68]))
    q = np.array([[0.4, 0.1]])
    d2 = ((keys - q) ** 2).sum(axis=1)  # [0.17, 0.37, 3.77, 15.77, 0.17]
    nearest = [0, 1, 4]  # the three smallest
    w = np.exp(-d2[nearest] / 2.0)
    w /= w.sum()
    model = np.random.default_rng(0).dirichlet(np.ones(257))[None, :]
    out = knn.mix(q, model, np.zeros(0, int))
    assert knn.last_p_knn is not None
    p = knn.last_p_knn[0]
    assert p[65] == pytest.approx(w[0], rel=1e-12)
    assert p[66] == pytest.approx(w[1], rel=1e-12)
    assert p[68] == pytest.approx(w[2], rel=1e-12)
    assert p[67] == 0.0  # not among the 3 nearest
    assert out[0] == pytest.approx(0.6 * model[0] + 0.4 * p, rel=1e-12)


def test_fewer_pairs_than_k_uses_them_all_and_temperature_sharpens() -> None:
    knn = KNNLM(k=10, temperature=1.0, lam=1.0)
    knn.memory.add(np.array([[0.0], [1.0]]), np.array([97, 98]))
    knn.mix(np.array([[0.0]]), UNIFORM, np.zeros(0, int))
    assert knn.last_p_knn is not None
    assert knn.last_p_knn[0, 97] == pytest.approx(1 / (1 + np.exp(-1)))
    knn.configure(temperature=0.01)
    knn.mix(np.array([[0.0]]), UNIFORM, np.zeros(0, int))
    assert knn.last_p_knn[0, 97] == pytest.approx(1.0)


def test_in_step_pairs_are_visible_only_to_later_bytes() -> None:
    knn = KNNLM(k=1, lam=1.0)
    knn.memory.add(np.array([[5.0, 5.0]]), np.array([90]))
    q = np.array([[0.0, 0.0], [0.0, 0.1], [5.0, 5.0]])
    out = knn.mix(q, np.repeat(UNIFORM, 3, axis=0), np.array([10, 11, 12]))
    assert out[0, 90] == 1.0  # only the stored pair exists for byte 0
    assert out[1, 10] == 1.0  # byte 1's nearest is byte 0's pair
    assert out[2, 90] == 1.0  # the stored pair is at distance 0


def test_datastore_is_bounded_and_forgets_the_oldest() -> None:
    knn = KNNLM(capacity=3)
    for i in range(5):
        knn.memory.add(np.array([[float(i)]]), np.array([i]))
    mem = knn.memory
    assert mem.filled == 3 and mem.values[mem.chronological()].tolist() == [2, 3, 4]
    knn.configure(capacity=2)
    assert mem.values[mem.chronological()].tolist() == [3, 4]


def test_ties_are_broken_the_same_way_every_time() -> None:
    outs = []
    for _ in range(2):
        knn = KNNLM(k=2, lam=1.0)
        knn.memory.add(np.zeros((6, 2)), np.array([1, 2, 3, 4, 5, 6]))  # all at distance 0
        outs.append(knn.mix(np.zeros((1, 2)), UNIFORM, np.zeros(0, int)))
    assert np.array_equal(outs[0], outs[1])
    assert np.count_nonzero(outs[0][0, 1:7]) == 2


def test_learner_runs_are_bit_identical_and_report_hits() -> None:
    text = b"to be or not to be, that is the question. " * 6
    runs = []
    for _ in range(2):
        knn = KNNLM(capacity=100, k=4)
        learner = Learner(ModelConfig(context=16), mechanisms=[knn],
                          learner_cfg=LearnerConfig(update_every=4))  # fmt: skip
        runs.append(learner.run(Stream.from_bytes(text)).losses)
    assert np.array_equal(runs[0], runs[1])
    c = knn.counters()
    assert c["stored"] == 100 and c["predictions"] == len(text)
    assert 0 < c["hit_rate"] <= 1 and c["mixed_share"] > 0.99


def test_the_compiled_search_equals_its_definition() -> None:
    """The helpers both paths run (``cache.memory_rows``) against the formulas in NumPy, on
    small integer vectors: every sum is exact, and many distances tie."""
    from mugpt.mechanisms.cache import ContinuousCache

    rng = np.random.default_rng(3)
    m, k, dim = 40, 5, 3
    keys = rng.integers(-2, 3, size=(m, dim)).astype(np.float32)
    queries = rng.integers(-2, 3, size=(k, dim)).astype(np.float32)
    values, step = rng.integers(0, 256, m), rng.integers(0, 256, k)

    def visible(j: int) -> tuple[np.ndarray, np.ndarray]:
        return np.concatenate([keys, queries[:j]]).astype(np.float64), np.concatenate([values, step[:j]])  # fmt: skip

    for n_keep in (1, 7, 60):
        knn = KNNLM(capacity=m, k=n_keep, temperature=1.5)
        knn.memory.add(keys, values)
        p = knn.knn_distribution(queries, step)
        for j in range(k):
            cand, nxt = visible(j)
            d = ((cand - queries[j]) ** 2).sum(axis=1)
            chosen = sorted(range(d.size), key=lambda i: (d[i], i))[:n_keep]  # ties: lower slot
            w = np.exp(-(d[chosen] - d[chosen].min()) / 1.5)
            expected = np.zeros(257)
            np.add.at(expected, nxt[chosen], w / w.sum())
            assert p[j] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    cache = ContinuousCache(size=m, theta=0.7)
    cache.memory.add(keys, values)
    p = cache.cache_distribution(queries, step)
    for j in range(k):
        cand, nxt = visible(j)
        s = 0.7 * cand @ queries[j].astype(np.float64)
        w = np.exp(s - s.max())
        expected = np.zeros(257)
        np.add.at(expected, nxt, w / w.sum())
        assert p[j] == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert not ContinuousCache().cache_distribution(queries, step)[0].any()  # nothing visible


def _in_order_dots(q: np.ndarray, keys_t: np.ndarray, m: int) -> np.ndarray:
    """Σ_c q[c]·key[c] in float64, one feature at a time: the order the definition gives."""
    expected = np.zeros(m)
    for c in range(q.size):
        expected = expected + np.float64(q[c]) * keys_t[c, :m].astype(np.float64)
    return expected


@pytest.mark.parametrize("kernel", ["key_dots", "_key_dots_fused", "search_dots"])
@pytest.mark.parametrize("dim", [3, 16, 17])
def test_key_dots_are_in_order_float64_sums_of_exact_products(dim: int, kernel: str) -> None:
    """The search's dot products, computed by feature over blocks of keys, are the plain
    definition's bits: Σ_c q[c]·key[c] in float64 with c in order, over more keys than one
    block holds; with ``rank`` they are |key|² − 2·q·key. The fused multiply-adds of the
    float32 kernel give the same bits (its products are exact)."""
    from mugpt.mechanisms import cache
    from mugpt.mechanisms.cache import KEY_BLOCK

    dots = getattr(cache, kernel)
    rng = np.random.default_rng(dim)
    m = KEY_BLOCK * 2 + 37
    keys_t = np.ascontiguousarray(rng.standard_normal((dim, m + 5)).astype(np.float32))
    q = rng.standard_normal(dim).astype(np.float32)
    expected = _in_order_dots(q, keys_t, m)
    out, sq = np.full(m + 5, -7.0), rng.standard_normal(m + 5)
    dots(q, keys_t, m, out, sq, False)
    assert np.array_equal(out[:m], expected) and (out[m:] == -7.0).all()
    dots(q, keys_t, m, out, sq, True)
    assert np.array_equal(out[:m], sq[:m] - 2.0 * expected)


def test_float64_keys_are_searched_without_fused_multiply_adds() -> None:
    """Float64 products are not exact, so a fused multiply-add would round differently (and
    differ between CPUs with and without one): compiled code and Python both choose the
    plain kernel for float64 and give the definition's bits."""
    from numba import njit

    from mugpt.mechanisms.cache import search_dots

    @njit
    def compiled(q, keys_t, m, out, sq):  # type: ignore[no-untyped-def]
        search_dots(q, keys_t, m, out, sq, False)

    rng = np.random.default_rng(5)
    m, dim = 3000, 16
    keys_t = rng.standard_normal((dim, m))
    q = rng.standard_normal(dim)
    expected = _in_order_dots(q, keys_t, m)
    for call in (compiled, lambda *a: search_dots(*a, False)):
        out = np.zeros(m)
        call(q, keys_t, m, out, np.zeros(m))
        assert np.array_equal(out, expected)
