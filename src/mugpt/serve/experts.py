"""Which expert predicted the byte: the mixture of ``ngram_mix`` taken apart, for display.

``ngram_mix`` blends the network's distribution with count models of orders 0 … N through a
geometric mixer (``p(y) ∝ exp(Σ_i w_i · ln p_i(y))``, see :mod:`mugpt.mechanisms.ngram_mix`).
The lab shows, for the byte about to be read, what each expert alone gives it, the weights
the mixer will use, and the mixed result. This module recomputes that in plain NumPy from the
mechanism's state arrays. It only reads them: it never writes to its tables, and of the
mechanism's code it uses only the rule that picks the second weight set
(:func:`mugpt.mechanisms.ngram_mix.extra_rows`), so that the two cannot disagree on it.

The definitions it follows, for a byte ``y`` after the context ``s`` (``a`` is the prior):

- order 0: ``p0(y) = (c0[y] + a) / (n0 + 256 a)``;
- order 1: ``p1(y) = (c1[s_-1, y] + a) / (n1[s_-1] + 256 a)`` (``s_-1`` the last symbol);
- order o ≥ 2: the hashed slot of the last ``o`` symbols lists a few bytes with counts; a
  listed byte gets ``(count + a) / (total + 256 a)``, any other ``a / (total + 256 a)``, and a
  context never seen (or another context's slot) the uniform ``1/256``;
- the weight set is chosen by the highest order whose context was seen, how often it was seen
  and whether a single byte ever followed it; the sets chosen by the classes of the last
  bytes (``class_bytes``) and by the last byte (``byte_set``) are added to it.

Example (counts of a tiny stream, order 0 only):
    >>> state = CountState.empty(max_order=1, prior=0.5)
    >>> state.c0[ord("a")], state.n0 = 3.0, 4.0
    >>> round(float(order0(state)[ord("a")]), 6)  # (3 + 0.5) / (4 + 128)
    0.026515
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mugpt.mechanisms.ngram_mix import extra_rows

BYTES = 256
BOS = 256
N_BUCKETS = 6
LOG_FLOOR = 1e-12
_MULT = 0x9E3779B97F4A7C15
_MASK = (1 << 64) - 1


@dataclass
class CountState:
    """The arrays of an ``ngram_mix`` state that a prediction reads (views, not copies)."""

    max_order: int
    prior: float
    c0: np.ndarray  # (256,) order-0 counts
    n0: float  # their total
    c1: np.ndarray  # (257, 256) order-1 counts by previous symbol
    n1: np.ndarray  # (257,) their totals
    offs: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    obits: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    chk: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint32))
    tot: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint16))
    nsym: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.uint8))
    sym: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint8))
    cnt: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.uint8))
    weights: np.ndarray | None = None  # (sets, experts)
    slot_size: int = 16
    # hashed slots changed by a replay: index -> [check, total, listed, bytes, counts]
    changed: dict[int, list[Any]] = field(default_factory=dict)

    @classmethod
    def empty(cls, max_order: int = 1, prior: float = 0.005) -> CountState:
        """A state with no counts (orders 0 and 1 only), for examples and tests."""
        return cls(
            max_order=max_order,
            prior=prior,
            c0=np.zeros(BYTES),
            n0=0.0,
            c1=np.zeros((BYTES + 1, BYTES)),
            n1=np.zeros(BYTES + 1),
        )

    def scratch_copy(self) -> CountState:
        """A copy a replay may change: the dense counts and the weights are copied, the
        hashed tables are shared and read only (a changed slot goes to ``changed``)."""
        return CountState(
            max_order=self.max_order,
            prior=self.prior,
            c0=self.c0.copy(),
            n0=self.n0,
            c1=self.c1.copy(),
            n1=self.n1.copy(),
            offs=self.offs,
            obits=self.obits,
            chk=self.chk,
            tot=self.tot,
            nsym=self.nsym,
            sym=self.sym,
            cnt=self.cnt,
            weights=None if self.weights is None else self.weights.copy(),
            slot_size=self.slot_size,
            changed={},
        )

    def slot(self, idx: int) -> list[Any]:
        """[check, total, listed, bytes, counts] of a hashed slot (its changed copy if any)."""
        got = self.changed.get(idx)
        if got is not None:
            return got
        return [
            int(self.chk[idx]),
            int(self.tot[idx]),
            int(self.nsym[idx]),
            self.sym[idx].astype(np.int64),
            self.cnt[idx].astype(np.int64),
        ]

    @classmethod
    def of(cls, mech: Any) -> CountState | None:
        """The state of a live ``ngram_mix`` mechanism, or None if it has not these arrays."""
        try:
            cfg = mech.config
            return cls(
                max_order=int(cfg.max_order),
                prior=float(cfg.prior),
                c0=mech.c0,
                n0=float(mech.n0[0]),
                c1=mech.c1,
                n1=mech.n1,
                offs=mech.offs,
                obits=mech.obits,
                chk=mech.chk,
                tot=mech.tot,
                nsym=mech.nsym,
                sym=mech.sym,
                cnt=mech.cnt,
                weights=mech.weights,
                slot_size=int(cfg.slot_size),
            )
        except (AttributeError, IndexError, TypeError, ValueError):
            return None


def order0(state: CountState) -> np.ndarray:
    """p0 over the 256 bytes."""
    a = state.prior
    return (state.c0 + a) / (state.n0 + BYTES * a)


def order1(state: CountState, prev: int) -> np.ndarray:
    """p1 over the 256 bytes after the symbol ``prev`` (a byte or BOS)."""
    a = state.prior
    return (state.c1[prev] + a) / (state.n1[prev] + BYTES * a)


def context_hashes(window: np.ndarray, max_order: int) -> list[int]:
    """Hashes of the contexts of orders 1 … (as many as the window holds) ending at the
    window's last symbol; element ``o - 1`` is order ``o``. The same hash as the mechanism's
    (a multiply-xorshift over the symbols, newest first), in exact integer arithmetic.

    >>> len(context_hashes(np.array([256, 104, 105]), 6))
    3
    """
    h = 0
    out = []
    for o in range(1, min(max_order, len(window)) + 1):
        h = ((h + int(window[len(window) - o]) + 1) * _MULT) & _MASK
        h ^= h >> 29
        out.append(h)
    return out


@dataclass
class HashedOrder:
    """What one hashed order says: whether its context was seen, its total and its
    distribution over the 256 bytes (uniform when unseen)."""

    order: int
    seen: bool
    total: int
    listed: int
    probs: np.ndarray


def hashed_order(state: CountState, order: int, h: int) -> HashedOrder:
    """Looks up the slot of the context hash ``h`` of ``order`` (≥ 2)."""
    idx, check = slot_index(state, order, h)
    chk, total, listed, syms, counts = state.slot(idx)
    if chk != check or total == 0:
        return HashedOrder(order, False, 0, 0, np.full(BYTES, 1.0 / BYTES))
    a = state.prior
    probs = np.full(BYTES, a / (total + BYTES * a))
    probs[syms[:listed]] = (counts[:listed].astype(np.float64) + a) / (total + BYTES * a)
    return HashedOrder(order, True, total, listed, probs)


def slot_index(state: CountState, order: int, h: int) -> tuple[int, int]:
    """(slot index, check value) of the context hash ``h`` of ``order`` (≥ 2): the hash's top
    bits pick the slot in that order's table, its low 32 bits (odd) check it."""
    t = order - 2
    bits = int(state.obits[t])
    return int(state.offs[t]) + (h >> (64 - bits)), (h & 0xFFFFFFFF) | 1


def weight_set(top: int, top_n: float, deterministic: bool) -> int:
    """Index of the mixer's weight set: the highest seen order ``top``, how often its context
    was seen (buckets 1, 2, 3-4, 5-8, 9-16, 17+) and whether one byte only ever followed it.

    >>> weight_set(0, 0.0, False), weight_set(3, 5.0, True)
    (0, 43)
    """
    bucket = 0
    while bucket < N_BUCKETS - 1 and top_n > (1 << bucket):
        bucket += 1
    return (top * N_BUCKETS + bucket) * 2 + int(deterministic)


def added_sets(state: CountState, window: np.ndarray) -> list[int]:
    """The rows of the weight sets added to the first for the byte after ``window`` (its last
    symbol newest): the class set's and the byte set's, those the mixer has (the
    mechanism's own rule, run as Python).

    >>> added_sets(CountState.empty(max_order=1), np.array([BOS, 97]))
    []
    """
    if state.weights is None:
        return []
    first = (state.max_order + 1) * N_BUCKETS * 2
    seq = np.asarray(window, dtype=np.int64)
    rows = extra_rows.py_func(seq, len(seq) - 1, first, len(state.weights))
    return [int(r) for r in rows if r >= 0]


def step_window(history: np.ndarray, context: int, update_every: int) -> np.ndarray:
    """The symbols the next step sees before its first byte: a step of ``k`` bytes sits at
    the end of a window of ``context`` inputs, so its first byte is predicted from the last
    ``context - k + 1`` symbols (fewer at the start of the stream).

    >>> step_window(np.arange(40), 32, 24).tolist()
    [31, 32, 33, 34, 35, 36, 37, 38, 39]
    """
    keep = max(1, context - max(1, update_every) + 1)
    return np.asarray(history[-keep:])


def step_inputs(
    history: np.ndarray, new_bytes: np.ndarray, context: int, doc_start: bool = False
) -> tuple[np.ndarray, list[int]]:
    """The window of a step that reads ``new_bytes`` after ``history`` and the row that
    predicts each new byte: the inputs are the last ``context`` symbols before the step's last
    byte (a BOS first when the history is empty, or before the step's first byte when
    ``doc_start``), and the new bytes are predicted at its last rows.

    >>> inputs, rows = step_inputs(np.array([256, 97, 98]), np.array([99, 100]), 32)
    >>> inputs.tolist(), rows
    ([256, 97, 98, 99], [2, 3])
    """
    prefix = np.asarray(history, dtype=np.int64)
    if prefix.size == 0 or doc_start:
        prefix = np.concatenate([prefix, [BOS]])
    seq = np.concatenate([prefix, np.asarray(new_bytes, dtype=np.int64)])
    inputs = seq[:-1][-context:]
    n = len(new_bytes)
    return inputs, [len(inputs) - n + j for j in range(n)]


def expert_names(max_order: int) -> list[str]:
    """Display names: the network, then orders 0 … ``max_order``."""
    return ["network"] + [f"order {o}" for o in range(max_order + 1)]


def mixture(state: CountState, model_probs: np.ndarray, window: np.ndarray) -> dict[str, Any]:
    """Every expert's distribution of the next byte after ``window`` (the symbols before it,
    last one newest), the weight set chosen and the mixed distribution.

    Returns ``probs`` (experts × 256: the network's row first, floored as the mixer floors it,
    then orders 0 … N), ``seen`` (whether each expert had a context), ``wset``, ``weights``
    (one per expert) and ``mixed`` (256,). The network's row is ``model_probs[:256]`` (the
    BOS entry is not a byte); orders above what ``window`` holds count as unseen.
    """
    n_exp = state.max_order + 2
    probs = np.empty((n_exp, BYTES))
    seen = [True] * n_exp
    probs[0] = np.maximum(np.asarray(model_probs[:BYTES], dtype=np.float64), LOG_FLOOR)
    probs[1] = order0(state)
    prev = int(window[-1]) if len(window) else BOS
    probs[2] = order1(state, prev)
    seen[2] = bool(state.n1[prev] > 0)
    top, top_n, top_det = (1 if state.n1[prev] > 0 else 0), float(state.n1[prev]), False
    hashes = context_hashes(window, state.max_order)
    for o in range(2, state.max_order + 1):
        if o > len(hashes):
            probs[o + 1] = 1.0 / BYTES
            seen[o + 1] = False
            continue
        got = hashed_order(state, o, hashes[o - 1])
        probs[o + 1] = got.probs
        seen[o + 1] = got.seen
        if got.seen:
            top, top_n, top_det = o, float(got.total), got.listed == 1
    wset = weight_set(top, top_n, top_det)
    added = added_sets(state, window)
    if state.weights is not None and wset < len(state.weights):
        weights = np.asarray(state.weights[wset], dtype=np.float64)
        for row in added:
            weights = weights + state.weights[row]
    else:
        weights = np.zeros(n_exp)
    logits = weights @ np.log(probs)  # (256,)
    logits -= logits.max()
    mixed = np.exp(logits)
    mixed /= mixed.sum()
    return {"probs": probs, "seen": seen, "wset": wset, "added": added, "weights": weights, "mixed": mixed}  # fmt: skip


def experts_view(
    state: CountState, model_probs: np.ndarray, window: np.ndarray, byte: int | None, pos: int
) -> dict[str, Any]:
    """The message the page draws: for the byte at ``pos`` (``byte``, None at the stream's
    end) each expert's probability of it, the weights of the set chosen, the mixed
    probability, and the winner (the expert that gave the byte the highest probability)."""
    return _view(state, mixture(state, model_probs, window), byte, pos)


def _view(state: CountState, got: dict[str, Any], byte: int | None, pos: int) -> dict[str, Any]:
    probs, weights, mixed, seen = got["probs"], got["weights"], got["mixed"], got["seen"]
    names = expert_names(state.max_order)
    out: dict[str, Any] = {
        "pos": pos,
        "byte": byte,
        "names": names,
        "seen": seen,
        "weights": [round(float(w), 4) for w in weights],
        "weight_set": int(got["wset"]),
        "top": [int(b) for b in np.argsort(-mixed, kind="stable")[:5]],
    }
    if byte is None or not 0 <= byte < BYTES:
        out.update(p=None, mixed=None, winner=None)
        return out
    p = probs[:, byte]
    out["p"] = [float(f"{v:.6g}") for v in p]
    out["mixed"] = float(f"{mixed[byte]:.6g}")
    out["winner"] = int(np.argmax(p))
    out["bits"] = round(-math.log2(max(float(mixed[byte]), 1e-300)), 4)
    return out


def learn_byte(
    state: CountState, got: dict[str, Any], window: np.ndarray, x: int, lr: float, limit: int
) -> None:
    """What the mechanism learns from byte ``x`` after ``window``, applied to a scratch copy
    (:meth:`CountState.scratch_copy`): the mixer's weight set takes a gradient step on
    ``-ln p(x)`` (``w_i += lr · (ln p_i(x) − E_p[ln p_i])``), then every order counts ``x``
    (counts halve past ``limit``; a full hashed slot gives its rarest byte's place to ``x``).
    ``got`` is :func:`mixture`'s answer for this byte."""
    logp = np.log(got["probs"])  # (experts, 256)
    if state.weights is not None:
        expect = logp @ got["mixed"]
        state.weights[got["wset"]] += lr * (logp[:, x] - expect)
        for row in got["added"]:  # the added sets take the same step
            state.weights[row] += lr * (logp[:, x] - expect)
    state.c0[x] += 1.0
    state.n0 += 1.0
    if state.n0 > limit:
        state.c0 *= 0.5
        state.n0 = float(state.c0.sum())
    prev = int(window[-1]) if len(window) else BOS
    state.c1[prev, x] += 1.0
    state.n1[prev] += 1.0
    if state.n1[prev] > limit:
        state.c1[prev] *= 0.5
        state.n1[prev] = float(state.c1[prev].sum())
    hashes = context_hashes(window, state.max_order)
    for o in range(2, len(hashes) + 1):
        idx, check = slot_index(state, o, hashes[o - 1])
        chk, total, listed, syms, counts = state.slot(idx)
        syms, counts = syms.copy(), counts.copy()
        if chk != check:  # a new context takes the slot
            chk, total, listed = check, 0, 0
        hits = np.flatnonzero(syms[:listed] == x)
        if hits.size:
            at = int(hits[0])
        elif listed < state.slot_size:
            at, listed = listed, listed + 1
            syms[at], counts[at] = x, 0
        else:  # replace the rarest (the first of equals)
            at = int(np.argmin(counts[:listed]))
            total -= int(counts[at])
            syms[at], counts[at] = x, 0
        counts[at] += 1
        total += 1
        if total > limit:
            counts[:listed] >>= 1
            total = int(counts[:listed].sum())
        state.changed[idx] = [chk, total, listed, syms, counts]


def step_views(
    state: CountState,
    model_rows: np.ndarray,
    inputs: np.ndarray,
    rows: list[int],
    targets: list[int],
    pos: int,
    lr: float,
    limit: int,
) -> list[dict[str, Any]]:
    """The experts of every byte of one step, in order: byte ``j`` (``targets[j]``, at stream
    index ``pos + j``) is predicted at row ``rows[j]`` of the step's window ``inputs`` (its
    context is ``inputs[: rows[j] + 1]``, the network's row ``model_rows[j]``), with the counts
    and weights as the bytes before it in the step left them — replayed on a scratch copy,
    since the mechanism learns byte by byte within a step. ``state`` is not changed."""
    local = state.scratch_copy()
    views = []
    for j, (row, x) in enumerate(zip(rows, targets, strict=True)):
        window = inputs[: row + 1]
        got = mixture(local, model_rows[j], window)
        views.append(_view(local, got, x, pos + j))
        learn_byte(local, got, window, x, lr, limit)
    return views
