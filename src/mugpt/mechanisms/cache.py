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

One arithmetic on every path. The sums (dot products, squared norms, the softmax's mass, the
bits saved) are computed by the compiled helpers of this module — :func:`memory_rows`,
:func:`mix_rows`, :func:`store_pairs` — in a fixed order and in float64, and the Python hooks
call the very same helpers as the compiled loop (:mod:`mugpt.engine.loop`) does. So both give
the same bits; a matrix product through BLAS could not promise that (its summation order
depends on the library, the machine and the shapes).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numba import njit, types
from numba.extending import overload
from pydantic import Field

from mugpt.mechanisms import Mechanism, MechanismConfig, StepContext, register
from mugpt.model.constants import JIT_INLINE, JIT_OPTIONS, PROB_FLOOR
from mugpt.model.constants import VOCAB_SIZE as VOCAB

KIND_CACHE, KIND_KNN = 0.0, 1.0
"""``cfg[0]`` of a memory's compiled state: which distribution :func:`memory_rows` makes."""

KEY_BLOCK = 512
"""Keys searched together by :func:`key_dots` (their partial sums, 4 kB, stay in L1)."""


# ---------------------------------------------------------------------------- the helpers


@njit(**JIT_OPTIONS)
def pair_dot(a: Any, b: Any) -> float:  # pragma: no cover - compiled
    """Σ_c a[c]·b[c] in float64, c in order (each product of float32 inputs is exact; numba's
    ``float()`` of a float32 stays float32, hence ``np.float64``)."""
    s = 0.0
    for c in range(a.size):
        s += np.float64(a[c]) * np.float64(b[c])
    return s


@njit(**JIT_INLINE)
def key_dots(
    q: Any, keys_t: Any, m: int, out: Any, sq: Any, rank: bool
) -> None:  # pragma: no cover - compiled
    """out[i] = pair_dot(q, keys_t[:, i]) for i < m, or with ``rank`` the kNN rank
    sq[i] − 2·out[i] (|key|² − 2·q·key, the squared distance less |q|²), the same bits: each
    sum still runs over
    c in order, but the keys are stored by feature (``keys_t`` is (C, capacity)), so the
    inner loop runs over neighbouring keys with independent sums, which the compiler turns
    into vector instructions without reordering any sum (the loops run over slices so that
    no index can be negative; four features per pass, added in order). Blocks of
    ``KEY_BLOCK`` keys keep the partial sums in L1."""
    dim = q.size
    for lo in range(0, m, KEY_BLOCK):
        part = out[lo : min(lo + KEY_BLOCK, m)]
        for i in range(part.size):
            part[i] = 0.0
        hi = lo + part.size
        c = 0
        while c + 4 <= dim:  # four features per pass: (((s + x0·a0) + x1·a1) + x2·a2) + x3·a3
            x0, x1 = np.float64(q[c]), np.float64(q[c + 1])
            x2, x3 = np.float64(q[c + 2]), np.float64(q[c + 3])
            a0, a1 = keys_t[c, lo:hi], keys_t[c + 1, lo:hi]
            a2, a3 = keys_t[c + 2, lo:hi], keys_t[c + 3, lo:hi]
            for i in range(part.size):
                t = part[i] + x0 * np.float64(a0[i])
                t = t + x1 * np.float64(a1[i])
                t = t + x2 * np.float64(a2[i])
                part[i] = t + x3 * np.float64(a3[i])
            c += 4
        while c < dim:
            x = np.float64(q[c])
            col = keys_t[c, lo:hi]
            for i in range(part.size):
                part[i] += x * np.float64(col[i])
            c += 1
        if rank:
            norms = sq[lo : lo + part.size]
            for i in range(part.size):
                part[i] = norms[i] - 2.0 * part[i]


@njit(fastmath={"contract"}, **JIT_OPTIONS)
def _key_dots_fused(
    q: Any, keys_t: Any, m: int, out: Any, sq: Any, rank: bool
) -> None:  # pragma: no cover - compiled
    """:func:`key_dots` for float32 queries and keys, with each multiply and add fused into
    one instruction where the CPU has it: the same bits, because the product of two float32
    numbers is exact in float64 (24 + 24 significant bits ≤ 53), so rounding once after the
    sum is rounding after the multiply and then after the add; likewise 2·out[i]. About 1.2×
    faster at width 16. Float64 products are not exact, so float64 stays on key_dots."""
    key_dots(q, keys_t, m, out, sq, rank)


def search_dots(q: Any, keys_t: Any, m: int, out: Any, sq: Any, rank: bool) -> None:
    """:func:`key_dots`' numbers by the fastest kernel that gives its bits: fused
    multiply-adds for float32 (:func:`_key_dots_fused`), key_dots itself otherwise."""
    exact = q.dtype == np.float32 and keys_t.dtype == np.float32
    (_key_dots_fused if exact else key_dots)(q, keys_t, m, out, sq, rank)


@overload(search_dots, jit_options={"error_model": "numpy"})
def _search_dots_impl(q: Any, keys_t: Any, m: Any, out: Any, sq: Any, rank: Any) -> Any:  # pragma: no cover  # fmt: skip
    def fused(q: Any, keys_t: Any, m: Any, out: Any, sq: Any, rank: Any) -> Any:
        _key_dots_fused(q, keys_t, m, out, sq, rank)

    def plain(q: Any, keys_t: Any, m: Any, out: Any, sq: Any, rank: Any) -> Any:
        key_dots(q, keys_t, m, out, sq, rank)

    return fused if q.dtype == types.float32 and keys_t.dtype == types.float32 else plain


@njit(**JIT_OPTIONS)
def square_norms(keys_t: Any, out: Any) -> None:  # pragma: no cover - compiled
    """out[i] = |keys_t[:, i]|² (:func:`pair_dot`)."""
    for i in range(keys_t.shape[1]):
        out[i] = pair_dot(keys_t[:, i], keys_t[:, i])


@njit(**JIT_OPTIONS)
def store_pairs(
    keys_t: Any, sq: Any, values: Any, ring: Any, hidden: Any, slots: Any, next_bytes: Any, n: int
) -> None:  # pragma: no cover - compiled
    """Appends the pairs (hidden[slots[j]], next_bytes[j]), j < n, to the ring buffer
    (keys by feature, their squared norms sq, values; ring = [filled, head]), oldest
    overwritten first."""
    cap = values.size
    for j in range(n):
        h = ring[1]
        row = hidden[slots[j]]
        for c in range(keys_t.shape[0]):
            keys_t[c, h] = row[c]
        sq[h] = pair_dot(keys_t[:, h], keys_t[:, h])
        values[h] = next_bytes[j]
        ring[1] = (h + 1) % cap
        ring[0] = min(ring[0] + 1, cap)


@njit(**JIT_OPTIONS)
def memory_rows(
    cfg: Any,
    keys_t: Any,
    sq: Any,
    values: Any,
    m: int,
    hidden: Any,
    slots: Any,
    next_bytes: Any,
    k: int,
    out: Any,
    dots: Any,
    near: Any,
    best: Any,
) -> None:  # pragma: no cover - compiled
    """p_memory of the k queries hidden[slots[j]] into out[:k] (rows that see no pair are all
    zero). Query j sees the m stored pairs (slot order) and the step's pairs i < j, whose keys
    are the queries themselves and whose next bytes are next_bytes[i].

    ``cfg`` = [kind, lam, theta or temperature, neighbours]. The cache (kind 0) weighs every
    visible pair by exp(theta·q·key − max); kNN-LM (kind 1) ranks the visible pairs by
    |key|² − 2·q·key, keeps the ``neighbours`` smallest (ties to the lower index: the lower
    slot, then the step's pairs in order), recomputes their squared distances exactly and
    weighs them by exp(−(d − min d) / temperature). Scratch: dots (≥ m + k), near and best
    (≥ neighbours)."""
    knn = cfg[0] == KIND_KNN
    n_keep = int(cfg[3])
    for j in range(k):
        row = out[j]
        for y in range(row.size):
            row[y] = 0.0
        n = m + j
        if n == 0:
            continue
        q = hidden[slots[j]]
        if not knn:
            theta = cfg[2]
            search_dots(q, keys_t, m, dots, sq, False)
            for i in range(m):
                dots[i] = theta * dots[i]
            for i in range(j):
                dots[m + i] = theta * pair_dot(q, hidden[slots[i]])
            top = -np.inf
            for i in range(n):
                top = max(top, dots[i])
            total = 0.0
            for i in range(n):
                w = math.exp(dots[i] - top)
                row[values[i] if i < m else next_bytes[i - m]] += w
                total += w
            for y in range(row.size):
                row[y] /= total
            continue
        count = 0  # a sorted insertion list of (rank, index)
        search_dots(q, keys_t, m, dots, sq, True)
        i = 0
        while i < m and count < n_keep:  # the first n_keep keys fill the list
            count = _insert(best, near, count, n_keep, dots[i], i)
            i += 1
        worst = best[n_keep - 1] if count == n_keep else np.inf
        while i + 8 <= m:  # most keys fail the test: eight are tested at once, in one branch
            # (no view of the eight: a view made in a loop costs two atomic operations)
            if (
                (dots[i] < worst) | (dots[i + 1] < worst) | (dots[i + 2] < worst)
                | (dots[i + 3] < worst) | (dots[i + 4] < worst) | (dots[i + 5] < worst)
                | (dots[i + 6] < worst) | (dots[i + 7] < worst)
            ):  # fmt: skip
                for t in range(i, i + 8):
                    if dots[t] < worst:
                        count = _insert(best, near, count, n_keep, dots[t], t)
                        worst = best[n_keep - 1]
            i += 8
        while i < m:
            if dots[i] < worst:
                count = _insert(best, near, count, n_keep, dots[i], i)
                worst = best[n_keep - 1]
            i += 1
        for i in range(j):
            p = hidden[slots[i]]
            count = _insert(best, near, count, n_keep, pair_dot(p, p) - 2.0 * pair_dot(q, p), m + i)  # fmt: skip
        low = np.inf
        for t in range(count):  # exact squared distances of the neighbours
            i = near[t]
            d = _sq_distance(q, keys_t[:, i]) if i < m else _sq_distance(q, hidden[slots[i - m]])
            best[t] = d
            low = min(low, d)
        total = 0.0
        for t in range(count):
            i = near[t]
            w = math.exp(-(best[t] - low) / cfg[2])
            row[values[i] if i < m else next_bytes[i - m]] += w
            total += w
        for y in range(row.size):
            row[y] /= total


@njit(**JIT_OPTIONS)
def _insert(
    best: Any, near: Any, count: int, n_keep: int, v: float, i: int
) -> int:  # pragma: no cover - compiled
    """Inserts (v, i) into the sorted list best/near of ``count`` ≤ n_keep entries (an equal
    rank goes after the entries already there); returns the new count."""
    if count == n_keep and not v < best[n_keep - 1]:
        return count
    pos = count if count < n_keep else n_keep - 1
    while pos > 0 and v < best[pos - 1]:
        if pos < n_keep:
            best[pos] = best[pos - 1]
            near[pos] = near[pos - 1]
        pos -= 1
    best[pos] = v
    near[pos] = i
    return count + 1 if count < n_keep else count


@njit(**JIT_OPTIONS)
def _sq_distance(q: Any, key: Any) -> float:  # pragma: no cover - compiled
    """Σ_c (key[c] − q[c])² in float64, c in order."""
    d = 0.0
    for c in range(q.size):
        diff = np.float64(key[c]) - np.float64(q[c])
        d += diff * diff
    return d


@njit(**JIT_OPTIONS)
def mix_rows(
    lam: float, rows: Any, p_mem: Any, m: int, next_bytes: Any, k: int, stats: Any
) -> None:  # pragma: no cover - compiled
    """rows[j] ← (1 − λ)·rows[j] + λ·p_mem[j] on the rows that see a pair (m + j > 0), and
    the figures of :class:`MixStats` into ``stats`` = [predictions, mixed, hits, top1,
    bits_saved]: the true byte next_bytes[j] got a non-zero p_mem (a hit), was p_mem's most
    likely byte (top1, the first of equal maxima), and the bits the mixing saved on it (the
    step's sum, in row order, added to the total)."""
    saved = 0.0
    stats[0] += k
    for j in range(k):
        if m + j == 0:
            continue
        t = next_bytes[j]
        pm = p_mem[j]
        row = rows[j]
        stats[1] += 1.0
        if pm[t] > 0:
            stats[2] += 1.0
        top = 0
        for y in range(1, pm.size):
            if pm[y] > pm[top]:
                top = y
        if top == t:
            stats[3] += 1.0
        before = max(row[t], PROB_FLOOR)
        for y in range(row.size):
            row[y] = (1.0 - lam) * row[y] + lam * pm[y]
        after = max(row[t], PROB_FLOOR)
        saved += math.log2(after) - math.log2(before)
    stats[4] += saved


# ---------------------------------------------------------------------------- the memory


class PairMemory:
    """A preallocated ring buffer of (key vector, next symbol) pairs, oldest overwritten first.

    Keys keep the floating dtype of the first keys added (the model's: float32 by default)
    and their squared norms (float64, :func:`pair_dot`) are kept beside them (for L2
    distances). Slot order is fixed by the history of writes, so any computation over
    ``keys[:filled]`` is deterministic.

    Example:
        >>> mem = PairMemory(capacity=2)
        >>> mem.add(np.eye(3)[:3], np.array([7, 8, 9]))
        >>> mem.filled, sorted(mem.values[: mem.filled].tolist())
        (2, [8, 9])
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.dim = 0
        self.keys_t = np.zeros((0, 0), dtype=np.float64)  # (C, capacity): keys by feature
        self.sq_norms = np.zeros(0, dtype=np.float64)  # (capacity,)
        self.values = np.zeros(0, dtype=np.int16)  # (capacity,)
        self.filled = 0
        self.head = 0  # next slot to write

    def _allocate(self, dim: int, dtype: np.dtype) -> None:
        self.dim = dim
        self.keys_t = np.zeros((dim, self.capacity), dtype=dtype)
        self.sq_norms = np.zeros(self.capacity, dtype=np.float64)
        self.values = np.zeros(self.capacity, dtype=np.int16)

    @property
    def keys(self) -> np.ndarray:
        """The keys as rows, (capacity, C): a view of :attr:`keys_t`, which holds them by
        feature so that the search runs over neighbouring keys (:func:`key_dots`)."""
        return self.keys_t.T

    @property
    def dtype(self) -> np.dtype:
        return self.keys_t.dtype

    def ensure(self, dim: int, dtype: Any) -> None:
        """Allocates the buffer for keys of ``dim`` features of ``dtype``, if not done yet."""
        if self.dim == 0:
            kind = np.dtype(dtype)
            self._allocate(dim, kind if kind in (np.float32, np.float64) else np.dtype(np.float64))

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Appends pairs in order (rows of ``keys`` with ``values``)."""
        n = int(values.size)
        if n == 0:
            return
        self.ensure(int(keys.shape[1]), keys.dtype)
        self.store(as_queries(self, keys), np.arange(n), np.asarray(values, dtype=np.int64))

    def store(self, hidden: np.ndarray, slots: np.ndarray, values: np.ndarray) -> None:
        """Appends the pairs (hidden[slots[j]], values[j]) (:func:`store_pairs`)."""
        ring = np.array([self.filled, self.head], dtype=np.int64)
        store_pairs(self.keys_t, self.sq_norms, self.values, ring, hidden,
                    np.ascontiguousarray(slots, dtype=np.int64), values, int(values.size))  # fmt: skip
        self.filled, self.head = int(ring[0]), int(ring[1])

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
        self.keys_t = np.ascontiguousarray(np.array(state["keys"]).T)
        self.values = np.asarray(state["values"], dtype=np.int16).copy()
        self.sq_norms = np.zeros(self.keys_t.shape[1], dtype=np.float64)
        if self.dim:
            square_norms(self.keys_t, self.sq_norms)
        self.filled = int(state["filled"])
        self.head = int(state["head"])


def as_queries(memory: PairMemory, hidden: np.ndarray) -> np.ndarray:
    """The step's hidden states in the dtype the memory stores (the model's, once known)."""
    dtype = memory.dtype if memory.dim else hidden.dtype
    if dtype not in (np.float32, np.float64):
        dtype = np.dtype(np.float64)
    return np.ascontiguousarray(hidden, dtype=dtype)


class MixStats:
    """Counts shared by the cache and kNN-LM: hits, mixing, bits saved (:func:`mix_rows`)."""

    def __init__(self) -> None:
        self.predictions = 0
        self.mixed = 0
        self.hits = 0  # the memory's distribution gave the true byte a non-zero probability
        self.top1 = 0  # the memory's most likely byte was the true byte
        self.bits_saved = 0.0  # Σ log2 p_mixed(x) − log2 p_in(x)

    def as_array(self) -> np.ndarray:
        """[predictions, mixed, hits, top1, bits_saved], the ``stats`` of :func:`mix_rows`."""
        return np.array(
            [self.predictions, self.mixed, self.hits, self.top1, self.bits_saved], dtype=np.float64
        )

    def take(self, stats: np.ndarray) -> None:
        """Takes back the figures :func:`mix_rows` added to ``stats``."""
        self.predictions, self.mixed, self.hits, self.top1 = (int(x) for x in stats[:4])
        self.bits_saved = float(stats[4])

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
    (1 − λ)·p_model + λ·p_memory on the rows where the memory has something to say (some
    pair is visible), and the step's pairs are stored once their bytes are scored. A subclass
    gives ``kernel_config()``, the ``cfg`` of :func:`memory_rows`, and ``capacity_field``,
    the name of its config's size setting.

    The hooks and the compiled loop run the same helpers (:func:`memory_rows`,
    :func:`mix_rows`, :func:`store_pairs`): the compiled form (:meth:`compiled_state`) hands
    the loop this memory's own arrays."""

    capacity_field = "size"
    config: Any

    def __init__(self, config: Any = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.memory = PairMemory(getattr(self.config, self.capacity_field))
        self.stats = MixStats()
        self.last_p_memory: np.ndarray | None = None  # p_memory of the last step's rows
        self._mixed_rows = np.zeros(0, dtype=np.int64)

    def kernel_config(self) -> np.ndarray:
        """[kind, lam, theta or temperature, neighbours] (:func:`memory_rows`)."""
        raise TypeError(f"{type(self).__name__} must define kernel_config")

    def _memory_rows(
        self, hidden: np.ndarray, slots: np.ndarray, next_bytes: np.ndarray
    ) -> np.ndarray:
        mem, cfg, k = self.memory, self.kernel_config(), int(slots.size)
        n_keep = max(1, int(cfg[3]))
        out = np.zeros((k, VOCAB))
        memory_rows(cfg, mem.keys_t, mem.sq_norms, mem.values, mem.filled, hidden, slots,
                    next_bytes, k, out, np.empty(mem.filled + k), np.empty(n_keep, np.int64),
                    np.empty(n_keep))  # fmt: skip
        return out

    def memory_distribution(self, queries: np.ndarray, step_values: np.ndarray) -> np.ndarray:
        """p_memory (k, 257) for ``queries`` (k, C); rows that see no pair are all zero.
        ``step_values[i]`` is the byte that followed query i (used by the queries after it)."""
        q, values = self._step_queries(queries, step_values)
        return self._memory_rows(q, np.arange(q.shape[0]), values)

    def _mix(
        self, hidden: np.ndarray, slots: np.ndarray, next_bytes: np.ndarray, probs: np.ndarray,
        stats: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        k = int(slots.size)
        p_memory = self._memory_rows(hidden, slots, next_bytes)
        out = np.array(probs, dtype=np.float64, order="C")  # a copy
        m = self.memory.filled
        mix_rows(float(self.config.lam), out, p_memory, m, next_bytes, k, stats)
        self.last_p_memory = p_memory
        self._mixed_rows = np.flatnonzero(m + np.arange(k) > 0)
        return out

    def mix(self, queries: np.ndarray, probs: np.ndarray, step_values: np.ndarray) -> np.ndarray:
        """(1 − λ)·probs + λ·p_memory on the rows where the memory has something to say.
        ``step_values[i]`` is the byte that followed query i (used by the queries after it)."""
        q, values = self._step_queries(queries, step_values)
        return self._mix(q, np.arange(q.shape[0]), values, probs, np.zeros(5))

    def _step_queries(
        self, queries: np.ndarray, step_values: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The queries in the memory's dtype and the byte after each (0 past the known ones)."""
        q = as_queries(self.memory, queries)
        values = np.zeros(q.shape[0], dtype=np.int64)
        n = min(q.shape[0], int(step_values.size))
        values[:n] = step_values[:n]
        return q, values

    # ------------------------------------------------------------------ hooks

    def adjust_prediction(self, ctx: StepContext, probs: np.ndarray) -> np.ndarray:
        hidden = as_queries(self.memory, ctx.hidden)
        slots = np.ascontiguousarray(ctx.new_positions, dtype=np.int64)
        true = np.ascontiguousarray(ctx.new_bytes, dtype=np.int64)
        stats = self.stats.as_array()
        out = self._mix(hidden, slots, true, probs, stats)
        self.stats.take(stats)
        return out

    def observe(self, ctx: StepContext, loss_bits: np.ndarray) -> None:
        # the bytes are scored now: their pairs may serve the predictions that follow
        self.memory.ensure(int(ctx.hidden.shape[1]), ctx.hidden.dtype)
        self.memory.store(as_queries(self.memory, ctx.hidden), ctx.new_positions,
                          np.ascontiguousarray(ctx.new_bytes, dtype=np.int64))  # fmt: skip

    # ------------------------------------------------------------------ the compiled form

    def compiled_state(self, context: int) -> MemoryBinding:
        """This memory for the compiled loop: bound to the model's hidden size and dtype by
        :func:`mugpt.engine.loop.run_steps` (:meth:`MemoryBinding.bind`)."""
        return MemoryBinding(self)

    def compiled_done(self, state: MemoryBinding) -> list[dict[str, Any]]:
        """Takes back the ring's position and the figures; returns its events (none)."""
        state.done()
        return []

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

    def kernel_config(self) -> np.ndarray:
        cfg = self.config
        return np.array([KIND_CACHE, cfg.lam, cfg.theta, 0.0])

    def cache_distribution(self, queries: np.ndarray, step_values: np.ndarray) -> np.ndarray:
        """p_cache (k, 257) for ``queries`` (k, C); rows that see no pair are all zero.
        ``step_values[i]`` is the byte that followed query i (used by queries after it)."""
        return self.memory_distribution(queries, step_values)


# ---------------------------------------------------------------------------- compiled form


class MemState(NamedTuple):
    """A :class:`MemoryMixture` as the compiled loop holds it: ``cfg`` (:func:`memory_rows`),
    the memory's own arrays (keys by feature, squared norms, values; changed in place), ``ring`` =
    [filled, head], ``stats`` (:func:`mix_rows`) and scratch for one window: ``p_mem``
    (T, V), ``dots`` (capacity + T), ``near`` and ``best`` (neighbours)."""

    cfg: np.ndarray
    keys_t: np.ndarray
    sq: np.ndarray
    values: np.ndarray
    ring: np.ndarray
    stats: np.ndarray
    p_mem: np.ndarray
    dots: np.ndarray
    near: np.ndarray
    best: np.ndarray


class MemoryBinding:
    """What :meth:`MemoryMixture.compiled_state` returns: the memory is sized by the model
    (its hidden size and dtype), which the loop knows, so :func:`mugpt.engine.loop.run_steps`
    calls :meth:`bind` with the model before it runs and the mechanism's ``compiled_done``
    calls :meth:`done` after."""

    def __init__(self, mech: MemoryMixture) -> None:
        self.mech = mech
        self.bound: MemState | None = None

    def bind(self, model: Any, opt: Any) -> MemState:
        """The :class:`MemState` of the mechanism for ``model`` (``loop.ModelArrays``)."""
        from mugpt.model.fast import D_C, D_T

        dtype = model.ws.hidden.dtype
        mech, mem = self.mech, self.mech.memory
        t_len = int(model.dims[D_T])
        mem.ensure(int(model.dims[D_C]), dtype)
        cfg = mech.kernel_config()
        n_keep = max(1, int(cfg[3]))
        self.bound = MemState(
            cfg, mem.keys_t, mem.sq_norms, mem.values,
            np.array([mem.filled, mem.head], dtype=np.int64), mech.stats.as_array(),
            np.zeros((t_len, VOCAB)), np.empty(mem.capacity + t_len),
            np.empty(n_keep, dtype=np.int64), np.empty(n_keep),
        )  # fmt: skip
        return self.bound

    def done(self) -> None:
        """Takes back what the compiled loop changed in the bound state."""
        if self.bound is None:
            return
        mem = self.mech.memory
        mem.filled, mem.head = int(self.bound.ring[0]), int(self.bound.ring[1])
        self.mech.stats.take(self.bound.stats)


@njit(**JIT_OPTIONS)
def memory_window(
    st: Any, rows: Any, hidden: Any, slots: Any, next_bytes: Any, k: int
) -> None:  # pragma: no cover - compiled
    """:meth:`MemoryMixture.adjust_prediction` on one window: rows[:k] (the window's new
    bytes' predictions) mixed with p_memory of hidden[slots[j]]."""
    m = st.ring[0]
    memory_rows(st.cfg, st.keys_t, st.sq, st.values, m, hidden, slots, next_bytes, k, st.p_mem,
                st.dots, st.near, st.best)  # fmt: skip
    mix_rows(st.cfg[1], rows, st.p_mem, m, next_bytes, k, st.stats)


@njit(**JIT_OPTIONS)
def memory_observe(
    st: Any, hidden: Any, slots: Any, next_bytes: Any, k: int
) -> None:  # pragma: no cover - compiled
    """:meth:`MemoryMixture.observe` on one window: stores its k pairs."""
    store_pairs(st.keys_t, st.sq, st.values, st.ring, hidden, slots, next_bytes, k)
