"""Continuous cache: mix in a distribution over the bytes that followed similar hidden states.

Grave, Joulin & Usunier (2017), "Improving Neural Language Models with a Continuous Cache",
ICLR. The cache keeps the last ``size`` pairs ``(h_i, x_{i+1})`` — the final hidden state at a
position and the byte that followed it — and predicts

    p_cache(w | h_t) ∝ Σ_{i : x_{i+1} = w} exp(theta · h_tᵀ h_i)
    p(w) = (1 − lam) · p_model(w) + lam · p_cache(w)

The mixed ``p`` is the prediction whose loss is recorded. A pair enters the cache only once
its byte has been scored, so the prediction of ``x_t`` never sees ``x_t``; within a step of
``k`` bytes, byte ``j`` does use the pairs of the step's bytes before it. While the cache is
empty the model's prediction passes unchanged.

Deterministic by construction (compression needs bit-identical probabilities on encode and
decode): no randomness, a preallocated ring buffer with a fixed slot order, float64 scores.
``theta`` is the flatness of the cache distribution; ``lam`` (λ) its mixture weight.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from pydantic import Field

from mugpt.mechanisms import Mechanism, MechanismConfig, StepContext, register
from mugpt.model.constants import JIT_OPTIONS, PROB_FLOOR
from mugpt.model.constants import VOCAB_SIZE as VOCAB


class PairMemory:
    """A preallocated ring buffer of (key vector, next symbol) pairs, oldest overwritten first.

    Keys keep the floating dtype of the first keys added (the model's: float32 by default)
    and their squared norms are kept beside them (for L2 distances). Slot order is fixed by
    the history of writes, so any computation over ``keys[:filled]`` is deterministic.

    Example:
        >>> mem = PairMemory(capacity=2)
        >>> mem.add(np.eye(3)[:3], np.array([7, 8, 9]))
        >>> mem.filled, sorted(mem.values[: mem.filled].tolist())
        (2, [8, 9])
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.dim = 0
        self.keys = np.zeros((0, 0), dtype=np.float64)  # (capacity, C)
        self.sq_norms = np.zeros(0, dtype=np.float64)  # (capacity,)
        self.values = np.zeros(0, dtype=np.int16)  # (capacity,)
        self.filled = 0
        self.head = 0  # next slot to write

    def _allocate(self, dim: int, dtype: np.dtype) -> None:
        self.dim = dim
        self.keys = np.zeros((self.capacity, dim), dtype=dtype)
        self.sq_norms = np.zeros(self.capacity, dtype=dtype)
        self.values = np.zeros(self.capacity, dtype=np.int16)

    @property
    def dtype(self) -> np.dtype:
        return self.keys.dtype

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Appends pairs in order (rows of ``keys`` with ``values``)."""
        n = int(values.size)
        if n == 0:
            return
        if self.dim == 0:
            kind = keys.dtype if keys.dtype in (np.float32, np.float64) else np.dtype(np.float64)
            self._allocate(int(keys.shape[1]), kind)
        if n > self.capacity:  # only the newest fit
            keys, values = keys[-self.capacity :], values[-self.capacity :]
            self.head = (self.head + n - self.capacity) % self.capacity
            n = self.capacity
        slots = (self.head + np.arange(n)) % self.capacity
        self.keys[slots] = keys
        self.sq_norms[slots] = np.einsum("ij,ij->i", self.keys[slots], self.keys[slots])
        self.values[slots] = values
        self.head = int((self.head + n) % self.capacity)
        self.filled = min(self.filled + n, self.capacity)

    def chronological(self) -> np.ndarray:
        """Slot indexes from the oldest pair to the newest."""
        if self.filled < self.capacity:
            return np.arange(self.filled)
        return (self.head + np.arange(self.capacity)) % self.capacity

    def resize(self, capacity: int) -> None:
        """Keeps the newest ``min(filled, capacity)`` pairs, in order."""
        if capacity == self.capacity:
            return
        order = self.chronological()[-capacity:]
        keys, values = self.keys[order].copy(), self.values[order].copy()
        self.capacity = capacity
        self.filled = self.head = 0
        if self.dim:
            self._allocate(self.dim, keys.dtype)
            self.add(keys, values)

    def state_dict(self) -> dict[str, Any]:
        return {
            "capacity": self.capacity,
            "dim": self.dim,
            "keys": self.keys.copy(),
            "values": self.values.copy(),
            "filled": self.filled,
            "head": self.head,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.capacity = int(state["capacity"])
        self.dim = int(state["dim"])
        self.keys = np.array(state["keys"])
        self.values = np.asarray(state["values"], dtype=np.int16).copy()
        self.sq_norms = np.einsum("ij,ij->i", self.keys, self.keys) if self.dim else np.zeros(0)
        self.filled = int(state["filled"])
        self.head = int(state["head"])


def step_dots(
    memory: PairMemory, queries: np.ndarray, step_values: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Dot products of each of the step's ``k`` queries with what it may look at: the stored
    pairs (slot order), then the step's own pairs (whose keys are the queries themselves).

    Returns (dots (k, m + k), values (m + k,)). Query ``j`` may use the first ``m + j``
    columns only: the step's pair ``i`` is visible to it when ``i < j``, because byte ``i`` was
    scored before byte ``j`` (:func:`visible_mask`). ``queries`` must have the memory's dtype
    (see :func:`as_queries`)."""
    k = queries.shape[0]
    m = memory.filled
    dots = np.empty((k, m + k), dtype=queries.dtype)
    if m:
        np.matmul(queries, memory.keys[:m].T, out=dots[:, :m])
    np.matmul(queries, queries.T, out=dots[:, m:])
    values = np.concatenate([memory.values[:m], step_values.astype(np.int16)])
    return dots, values


def visible_mask(k: int, m: int) -> np.ndarray:
    """(k, m + k) bool: row ``j`` sees the ``m`` stored pairs and the step's pairs ``i < j``."""
    return np.arange(m + k)[None, :] < (m + np.arange(k))[:, None]


def _cache_rows_numpy(dots: np.ndarray, m: int, values: np.ndarray, theta: float) -> np.ndarray:
    k = dots.shape[0]
    scores = np.where(visible_mask(k, m), theta * dots.astype(np.float64), -np.inf)
    top = scores.max(axis=1, keepdims=True)
    top[~np.isfinite(top)] = 0.0
    weights = np.exp(scores - top)  # 0 where not visible
    mass = weights.sum(axis=1, keepdims=True)
    np.divide(weights, mass, out=weights, where=mass > 0)
    return scatter_rows(values, weights)


def _cache_rows_loops(dots: np.ndarray, m: int, values: np.ndarray, theta: float) -> np.ndarray:
    # one fused pass per row (compiled by numba): no (k, m) temporaries
    k = dots.shape[0]
    out = np.zeros((k, VOCAB))
    for j in range(k):
        n = m + j
        if n == 0:
            continue
        top = -np.inf
        for i in range(n):
            top = max(top, theta * float(dots[j, i]))
        total = 0.0
        for i in range(n):
            w = np.exp(theta * float(dots[j, i]) - top)
            out[j, values[i]] += w
            total += w
        for v in range(VOCAB):
            out[j, v] /= total
    return out


def _topk_numpy(rank: np.ndarray, m: int, n_keep: int) -> np.ndarray:
    """Row-wise indexes of the ``n_keep`` smallest visible entries, ordered by (value, index);
    -1 pads rows that see fewer entries."""
    k = rank.shape[0]
    masked = np.where(visible_mask(k, m), rank, np.inf)
    out = np.full((k, n_keep), -1, dtype=np.int64)
    for j in range(k):
        row = masked[j, : m + j]
        take = min(n_keep, row.size)
        if take == 0:
            continue
        if take < row.size:
            kth = np.partition(row, take - 1)[take - 1]
            less = np.flatnonzero(row < kth)
            equal = np.flatnonzero(row == kth)[: take - less.size]
            idx = np.concatenate([less, equal])
        else:
            idx = np.arange(row.size)
        out[j, :take] = idx[np.lexsort((idx, row[idx]))]
    return out


def _topk_loops(rank: np.ndarray, m: int, n_keep: int) -> np.ndarray:
    # a sorted insertion list per row (compiled by numba); ties keep the lower index
    k = rank.shape[0]
    out = np.full((k, n_keep), -1, dtype=np.int64)
    best = np.empty(n_keep)
    for j in range(k):
        count = 0
        for i in range(m + j):
            v = float(rank[j, i])
            if count == n_keep and not v < best[n_keep - 1]:
                continue
            pos = count if count < n_keep else n_keep - 1
            while pos > 0 and v < best[pos - 1]:
                if pos < n_keep:
                    best[pos] = best[pos - 1]
                    out[j, pos] = out[j, pos - 1]
                pos -= 1
            best[pos] = v
            out[j, pos] = i
            if count < n_keep:
                count += 1
    return out


cache_rows: Callable[[np.ndarray, int, np.ndarray, float], np.ndarray]
topk_rows: Callable[[np.ndarray, int, int], np.ndarray]
try:  # compiled kernels when numba is present; the NumPy versions select the same pairs
    import numba

    cache_rows = numba.njit(**JIT_OPTIONS)(_cache_rows_loops)
    topk_rows = numba.njit(**JIT_OPTIONS)(_topk_loops)
except ImportError:  # pragma: no cover - numba is a dependency
    cache_rows = _cache_rows_numpy
    topk_rows = _topk_numpy


def as_queries(memory: PairMemory, hidden: np.ndarray) -> np.ndarray:
    """The step's hidden states in the dtype the memory stores (the model's, once known)."""
    dtype = memory.dtype if memory.dim else hidden.dtype
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)
    return np.ascontiguousarray(hidden, dtype=dtype)


def scatter_rows(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(k, n) weights of pairs with next symbols ``values`` ((n,) shared by every row, or
    (k, n)) → (k, 257) sums per symbol, summed in column order."""
    k = weights.shape[0]
    vals = values.astype(np.int64)
    if vals.ndim == 1:
        vals = vals[None, :]
    flat = (np.arange(k)[:, None] * VOCAB + vals).ravel()
    return np.bincount(flat, weights=weights.ravel(), minlength=k * VOCAB).reshape(k, VOCAB)


class MixStats:
    """Counts shared by the cache and kNN-LM: hits, mixing, bits saved."""

    def __init__(self) -> None:
        self.predictions = 0
        self.mixed = 0
        self.hits = 0  # the memory's distribution gave the true byte a non-zero probability
        self.top1 = 0  # the memory's most likely byte was the true byte
        self.bits_saved = 0.0  # Σ log2 p_mixed(x) − log2 p_in(x)

    def record(
        self,
        true: np.ndarray,
        p_in: np.ndarray,
        p_mem: np.ndarray,
        p_out: np.ndarray,
        rows: np.ndarray,
    ) -> None:
        self.predictions += int(true.size)
        if rows.size == 0:
            return
        t = true[rows]
        self.mixed += int(rows.size)
        mem_true = p_mem[rows, t]
        self.hits += int(np.count_nonzero(mem_true > 0))
        self.top1 += int(np.count_nonzero(p_mem[rows].argmax(axis=1) == t))
        before = np.maximum(p_in[rows, t], PROB_FLOOR)
        after = np.maximum(p_out[rows, t], PROB_FLOOR)
        self.bits_saved += float(np.sum(np.log2(after) - np.log2(before)))

    def as_dict(self, lam: float) -> dict[str, Any]:
        n, mixed = self.predictions, self.mixed
        return {
            "lambda": lam,
            "predictions": n,
            "mixed_share": mixed / n if n else 0.0,
            "hit_rate": self.hits / mixed if mixed else None,
            "top1_rate": self.top1 / mixed if mixed else None,
            "bits_saved_per_byte": self.bits_saved / n if n else 0.0,
        }

    def state_dict(self) -> dict[str, Any]:
        return dict(vars(self))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("predictions", "mixed", "hits", "top1"):
            setattr(self, key, int(state[key]))
        self.bits_saved = float(state["bits_saved"])


class CacheConfig(MechanismConfig):
    """Settings of :class:`ContinuousCache`.

    Example:
        >>> CacheConfig().size, CacheConfig().theta, CacheConfig().lam
        (1024, 10.0, 0.05)
    """

    size: int = Field(1024, ge=1, le=1_000_000, description="M: (hidden, next byte) pairs kept")
    theta: float = Field(10.0, ge=0.0, le=100.0, description="θ: flatness of p_cache")
    lam: float = Field(0.05, ge=0.0, le=1.0, description="λ: weight of p_cache in the mixture")


class MemoryMixture(Mechanism):
    """What the memory mechanisms (:class:`ContinuousCache`, ``knn.KNNLM``) share: a bounded
    :class:`PairMemory` of (hidden state, next byte) pairs; each step the prediction becomes
    (1 − λ)·p_model + λ·p_memory on the rows where the memory has something to say, and the
    step's pairs are stored once their bytes are scored. A subclass gives
    ``memory_distribution(queries, step_values)`` and ``capacity_field``, the name of its
    config's size setting."""

    capacity_field = "size"
    config: Any

    def __init__(self, config: Any = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.memory = PairMemory(getattr(self.config, self.capacity_field))
        self.stats = MixStats()
        self.last_p_memory: np.ndarray | None = None  # p_memory of the last step's rows
        self._mixed_rows = np.zeros(0, dtype=np.int64)

    def memory_distribution(self, queries: np.ndarray, step_values: np.ndarray) -> np.ndarray:
        """p_memory (k, 257) for ``queries`` (k, C); rows that see no pair are all zero."""
        raise TypeError(f"{type(self).__name__} must define memory_distribution")

    def mix(self, queries: np.ndarray, probs: np.ndarray, step_values: np.ndarray) -> np.ndarray:
        """(1 − λ)·probs + λ·p_memory on the rows where the memory has something to say.
        ``step_values[i]`` is the byte that followed query i (used by the queries after it)."""
        q = as_queries(self.memory, queries)
        values = np.zeros(q.shape[0], dtype=np.int64)
        values[: step_values.size] = step_values
        p_memory = self.memory_distribution(q, values)
        self.last_p_memory = p_memory
        lam = self.config.lam
        out = probs.copy()
        rows = np.flatnonzero(p_memory.sum(axis=1) > 0)
        out[rows] = (1.0 - lam) * probs[rows] + lam * p_memory[rows]
        self._mixed_rows = rows
        return out

    # ------------------------------------------------------------------ hooks

    def adjust_prediction(self, ctx: StepContext, probs: np.ndarray) -> np.ndarray:
        true = np.asarray(ctx.new_bytes, dtype=np.int64)
        out = self.mix(ctx.hidden[ctx.new_positions], probs, true)
        assert self.last_p_memory is not None
        self.stats.record(true, probs, self.last_p_memory, out, self._mixed_rows)
        return out

    def observe(self, ctx: StepContext, loss_bits: np.ndarray) -> None:
        # the bytes are scored now: their pairs may serve the predictions that follow
        self.memory.add(ctx.hidden[ctx.new_positions], np.asarray(ctx.new_bytes))

    # ------------------------------------------------------------------ settings and state

    def on_configure(self) -> None:
        self.memory.resize(getattr(self.config, self.capacity_field))

    def counters(self) -> dict[str, Any]:
        return {**self.stats.as_dict(self.config.lam), "stored": self.memory.filled}

    def state_dict(self) -> dict[str, Any]:
        return {"memory": self.memory.state_dict(), "stats": self.stats.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.load_state_dict(state["memory"])
        self.stats.load_state_dict(state["stats"])
        self.memory.resize(getattr(self.config, self.capacity_field))


@register
class ContinuousCache(MemoryMixture):
    """Mixes the model's prediction with a cache of recent (hidden state, next byte) pairs.

    Example:
        >>> cache = ContinuousCache(size=8, theta=1.0, lam=0.5)
        >>> cache.memory.add(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([97, 98]))
        >>> p = cache.mix(np.array([[1.0, 0.0]]), np.full((1, 257), 1 / 257), np.zeros(0, int))
        >>> round(float(p[0, 97] - p[0, 98]), 6) == round(0.5 * (np.e - 1) / (np.e + 1), 6)
        True
    """

    name = "cache"
    strict_online = True
    Config = CacheConfig
    config: CacheConfig
    capacity_field = "size"

    @property
    def last_p_cache(self) -> np.ndarray | None:
        """p_cache of the last step's rows."""
        return self.last_p_memory

    def cache_distribution(self, queries: np.ndarray, step_values: np.ndarray) -> np.ndarray:
        """p_cache (k, 257) for ``queries`` (k, C); rows that see no pair are all zero.
        ``step_values[i]`` is the byte that followed query i (used by queries after it)."""
        dots, values = step_dots(self.memory, queries, step_values)
        out: np.ndarray = cache_rows(dots, self.memory.filled, values, float(self.config.theta))
        return out

    memory_distribution = cache_distribution
