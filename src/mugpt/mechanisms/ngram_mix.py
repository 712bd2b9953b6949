"""Context mixing: blend the model's prediction with count-based n-gram predictions.

A byte-level version of the mixing at the heart of PAQ (Mahoney 2005, "Adaptive weighing of
context models for lossless data compression", Florida Tech. CS-2005-16; Mahoney 2013, *Data
Compression Explained*, §4): several simple models each predict the next byte, and a mixer,
trained online on the log loss, combines them. Here the models are

- the transformer's distribution ``p_model``;
- an order-0 and an order-1 count model, and hashed order-2 … ``max_order`` count models,
  each predicting ``p_o(y) = (c(y) + a) / (n + 256 a)`` from the counts ``c`` of the bytes that
  followed the same ``o`` previous symbols (``a`` = ``prior``; counts are halved past
  ``count_limit`` so that they follow a changing stream). A hashed context keeps the
  ``slot_size`` bytes seen most (one-byte counts); order 2 has 2^16 slots, order 3 2^18,
  higher orders 2^``table_bits`` each, and a newer context takes the slot of an older one;

and the mixer is geometric (a product of experts, the multi-symbol form of PAQ's logistic
mixing): ``p(y) ∝ exp(Σ_i w_i · log p_i(y))``. Its weights are chosen by the highest order
whose context has been seen (as PAQ selects weight sets by context) and follow the gradient of
``−log2 p(x)``: ``w_i += lr · (log p_i(x) − E_p[log p_i])``. A context never seen before gives a
uniform ``p_o`` — a constant under the normalisation — so it contributes nothing.

With ``class_bytes`` = N > 0 the mixer has a second set of weights, chosen by the classes of
the last N bytes (8 classes: none yet, space or newline, a-z, A-Z, 0-9, bytes ≥ 128, other
control bytes, the rest), and with ``byte_set`` a third, chosen by the last byte itself; a
byte is mixed with the *sum* of its sets, ``w = w_A[order, confidence] + w_B[classes] +
w_C[last byte]``, and every set takes the same gradient step. (PAQ8 selects several weight
sets by different small contexts; adding the selections keeps every set learning from many
bytes, where selecting by their product would split them.) The added sets start at zero.

Strictly online and deterministic: the prediction of every byte of a step uses the counts and
weights as they were before the step (no byte sees itself), the state changes only in
``observe``, hash tables have a fixed size and replacement rule, and all arithmetic is float64
in a fixed order (compiled with numba). With ``batch_streams`` > 1 the sub-streams share the
counts and weights; contexts come from each sub-stream's own window.

Example:
    >>> import numpy as np
    >>> from mugpt.corpus import Stream
    >>> from mugpt.engine import Learner, LearnerConfig
    >>> text = b"abracadabra " * 60
    >>> plain = Learner(learner_cfg=LearnerConfig(update_every=8)).run(Stream.from_bytes(text))
    >>> mixed = Learner(mechanisms=[NgramMix()], learner_cfg=LearnerConfig(update_every=8))
    >>> bool(mixed.run(Stream.from_bytes(text)).bpb < plain.bpb)
    True
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numba import njit
from pydantic import Field

from mugpt.mechanisms import Mechanism, MechanismConfig, StepContext, register
from mugpt.model.constants import JIT_INLINE, JIT_OPTIONS
from mugpt.model.constants import VOCAB_SIZE as V

BYTES = 256
_JIT = JIT_OPTIONS
_MULT = np.uint64(0x9E3779B97F4A7C15)
LOG_FLOOR = 1e-12
N_BUCKETS = 6
N_CLASSES = 8


def table_bits(order: int, bits: int) -> int:
    """log2 of the hashed slots of an order: 2^16 for order 2 (its 257² contexts), 2^18 for
    order 3, 2^``bits`` above (never more than ``bits``)."""
    return min(bits, {2: 16, 3: 18}.get(order, bits))


class NgramMixConfig(MechanismConfig):
    max_order: int = Field(6, ge=1, le=16, description="highest n-gram order")
    table_bits: int = Field(18, ge=8, le=24, description="log2 of hashed contexts per order ≥ 4")
    slot_size: int = Field(16, ge=2, le=64, description="distinct next bytes kept per context")
    prior: float = Field(0.005, gt=0, le=16, description="additive count a of every byte")
    count_limit: int = Field(250, ge=2, le=254, description="halve a context's counts past this total")  # fmt: skip
    lr: float = Field(0.002, gt=0, le=1, description="mixer learning rate")
    model_weight: float = Field(1.0, ge=0, le=8, description="initial weight of the model")
    ngram_weight: float = Field(0.3, ge=0, le=8, description="initial weight of each order")
    class_bytes: int = Field(0, ge=0, le=3, description="a second weight set chosen by the classes of the last N bytes, added to the first (0 = none)")  # fmt: skip
    byte_set: bool = Field(False, description="a third weight set chosen by the last byte, added to the others")  # fmt: skip


# ----------------------------------------------------------------------------- kernels

_LN2 = math.log(2.0)


_TWO52 = 4503599627370496.0  # 2^52: adding it puts a small integer in a double's low bits


@njit(**_JIT)
def _log_into(x: Any, out: Any, scratch: Any) -> None:  # pragma: no cover - compiled
    """out[i] = ln x[i] for 0 < x (normal floats), vectorisable: x = m·2^e with m in
    [√½, √2), ln m = 2·atanh(s), s = (m − 1)/(m + 1), by its series to s⁷ (|error| < 1e-7).

    The exponent is read from the bits without an int64 → float conversion (which AVX2 lacks):
    ``e`` goes into the low bits of 2^52 and is read back as a double. ``scratch`` holds 2·x.size
    doubles."""
    n = x.size
    mant = scratch[:n]
    expo = scratch[n : 2 * n]
    mbits = mant.view(np.int64)
    ebits = expo.view(np.int64)
    for i in range(n):
        mant[i] = x[i]
    for i in range(n):
        b = mbits[i]
        ebits[i] = (b >> 52) | 0x4330000000000000
        mbits[i] = (b & 0xFFFFFFFFFFFFF) | 0x3FF0000000000000
    for i in range(n):
        m = mant[i]
        big = 1.0 * (m > 1.4142135623730951)
        m = m * (1.0 - 0.5 * big)
        e = expo[i] - (_TWO52 + 1023.0) + big
        s = (m - 1.0) / (m + 1.0)
        s2 = s * s
        s4 = s2 * s2
        p = (2.0 + s2 * (2.0 / 3.0)) + s4 * (2.0 / 5.0 + s2 * (2.0 / 7.0))
        out[i] = e * _LN2 + p * s


@njit(**_JIT)
def _exp_into(x: Any, out: Any, scratch: Any) -> None:  # pragma: no cover - compiled
    """out[i] = exp(x[i]) for −700 ≤ x ≤ 0 (smaller x are clamped), vectorisable: 2^k·e^r
    with the Cody–Waite split of ln 2 and e^r by its Taylor series to r⁷ (|r| ≤ ln(2)/2;
    relative error < 1e-8, ample for a mixture's weights, and the same bits on every call).
    2^k is built from the bits of k + 1023 + 2^52 shifted into the exponent field."""
    n = x.size
    scale = scratch[:n]
    bits = scale.view(np.int64)
    for i in range(n):
        y = max(x[i], -700.0)
        k = np.floor(y * 1.4426950408889634 + 0.5)
        r = (y - k * 0.6931471803691238) - k * 1.9082149292705877e-10
        # degree 7 (relative error < 1e-8: plenty for mixing weights), Estrin's scheme
        r2 = r * r
        r4 = r2 * r2
        s0 = (1.0 + r) + r2 * (0.5 + r * (1.0 / 6.0))
        s1 = (1.0 / 24.0 + r * (1.0 / 120.0)) + r2 * (1.0 / 720.0 + r * (1.0 / 5040.0))
        p = s0 + r4 * s1
        out[i] = p
        scale[i] = k + (_TWO52 + 1023.0)
    for i in range(n):
        bits[i] = bits[i] << 52
    for i in range(n):
        out[i] = out[i] * scale[i]


@njit(**_JIT)
def _context_hashes(inputs: Any, slot: int, max_order: int, out: Any) -> int:  # pragma: no cover
    """Hashes of the contexts of orders 1..max_order ending at inputs[slot]; returns how
    many orders the window can supply (out[o - 1] is order o)."""
    h = np.uint64(0)
    avail = min(max_order, slot + 1)
    for o in range(1, avail + 1):
        h = (h + np.uint64(inputs[slot - o + 1] + 1)) * _MULT
        h = h ^ (h >> np.uint64(29))
        out[o - 1] = h
    return avail


@njit(**JIT_INLINE)
def byte_class(b: Any) -> int:  # pragma: no cover - compiled
    """The class of a symbol for the second weight set: 0 none (BOS), 1 space or newline,
    2 a-z, 3 A-Z, 4 0-9, 5 a byte ≥ 128 (UTF-8), 6 another control byte, 7 the rest."""
    if b == 256:
        return 0
    if b == 32 or b == 10:
        return 1
    if 97 <= b <= 122:
        return 2
    if 65 <= b <= 90:
        return 3
    if 48 <= b <= 57:
        return 4
    if b >= 128:
        return 5
    if b < 32:
        return 6
    return 7


BYTE_ROWS = V  # the byte set's rows: one per symbol (the 256 bytes and BOS)


@njit(**JIT_INLINE)
def extra_rows(
    inputs: Any, slot: int, first_rows: int, n_rows: int
) -> tuple[int, int]:  # pragma: no cover
    """The rows of the class set and of the byte set for the byte after ``inputs[slot]``
    (−1 for a set the table has not), from the table's size: after the ``first_rows`` of the
    order-and-confidence set come 8^N class rows (an even number) and, with ``byte_set``,
    257 byte rows (odd). The class row holds the classes of inputs[slot], inputs[slot − 1],
    … (N of them, newest first, as digits base 8; before the window: class 0); the byte row
    the symbol inputs[slot]."""
    extra = n_rows - first_rows
    byte_rows = BYTE_ROWS if extra % 2 == 1 else 0
    class_rows = extra - byte_rows
    r2 = -1
    if class_rows > 0:
        r = 0
        m = 1
        i = slot
        while m < class_rows:
            b = np.int64(inputs[i]) if i >= 0 else 256
            r = r * N_CLASSES + byte_class(b)
            m *= N_CLASSES
            i -= 1
        r2 = first_rows + r
    r3 = first_rows + class_rows + int(inputs[slot]) if byte_rows > 0 else -1
    return r2, r3


@njit(**JIT_INLINE)
def mixer_weights(weights: Any, inputs: Any, slot: int, max_order: int, row: int, out: Any) -> None:  # pragma: no cover  # fmt: skip
    """out[:] = the weights the byte after ``inputs[slot]`` is mixed with: row ``row`` of
    the first set, plus the rows of the class and byte sets where the table has them."""
    r2, r3 = extra_rows(inputs, slot, (max_order + 1) * N_BUCKETS * 2, weights.shape[0])
    w = weights[row]
    for i in range(w.size):
        out[i] = w[i]
    if r2 >= 0:
        for i in range(w.size):
            out[i] += weights[r2, i]
    if r3 >= 0:
        for i in range(w.size):
            out[i] += weights[r3, i]


@njit(**_JIT)
def _predict(
    probs: Any,
    inputs: Any,
    slots: Any,
    max_order: int,
    prior: float,
    l0: Any,
    n0: Any,
    l1: Any,
    n1: Any,
    offs: Any,
    obits: Any,
    chk: Any,
    nsym: Any,
    tot: Any,
    sym: Any,
    cnt: Any,
    ltab: Any,
    weights: Any,
    out: Any,
    dense: Any,
    sparse_sym: Any,
    sparse_val: Any,
    sparse_n: Any,
    base: Any,
    expect: Any,
    wset: Any,
    hashes: Any,
    scratch: Any,
    j0: int,
    j1: int,
) -> None:  # pragma: no cover - compiled
    """Mixed rows out[j0:j1] from the model's rows probs (k, V).

    Keeps what the update needs: the log-probabilities of the dense experts (model, order 0,
    order 1) in dense (k, 3, 256); for each hashed order o ≥ 2 (index o − 2) the bytes listed
    in its context and their log-probabilities (sparse_sym, sparse_val, sparse_n) and the
    log-probability ``base`` of every other byte; the experts' expectations under the mix
    (k, E) and the weight set used (k,). l0, l1 hold ln(count + prior), n0, n1 the totals;
    order o's contexts live in slots offs[o−2] … + 2^obits[o−2] of chk, nsym, tot, sym, cnt;
    ltab[c] = ln(c + prior)."""
    uniform = -math.log(BYTES)
    mixed = scratch[BYTES : 2 * BYTES]
    log_prior = math.log(prior)
    for j in range(j0, j1):
        lp = dense[j]
        for y in range(BYTES):
            mixed[y] = max(float(probs[j, y]), LOG_FLOOR)
        _log_into(mixed, lp[0], scratch[3 * BYTES :])
        norm0 = math.log(n0[0] + BYTES * prior)
        prev = inputs[slots[j]]
        norm1 = math.log(n1[prev] + BYTES * prior)
        row1 = l1[prev]
        top = 1 if n1[prev] > 0 else 0
        top_n = n1[prev]
        top_det = 0
        avail = _context_hashes(inputs, slots[j], max_order, hashes[j])
        for o in range(2, max_order + 1):
            t = o - 2
            sparse_n[j, t] = 0
            base[j, t] = uniform
            if o > avail:
                continue
            h = hashes[j, o - 1]
            idx = offs[t] + np.int64(h >> np.uint64(64 - obits[t]))
            check = np.uint32(h & np.uint64(0xFFFFFFFF)) | np.uint32(1)
            if chk[idx] != check or tot[idx] == 0:
                continue
            total = float(tot[idx])
            top = o
            top_n = total
            top_det = 1 if nsym[idx] == 1 else 0
            norm = math.log(total + BYTES * prior)
            base[j, t] = log_prior - norm
            n: Any = np.int64(nsym[idx])
            sparse_n[j, t] = n
            for s in range(n):
                sparse_sym[j, t, s] = sym[idx, s]
                sparse_val[j, t, s] = ltab[cnt[idx, s]] - norm
        # weights chosen by the highest seen order, how often its context was seen (buckets
        # 1, 2, 3-4, 5-8, 9-16, 17+) and whether only one byte ever followed it
        bucket = 0
        while bucket < N_BUCKETS - 1 and top_n > (1 << bucket):
            bucket += 1
        wset[j] = (top * N_BUCKETS + bucket) * 2 + top_det
        w = scratch[2 * BYTES : 2 * BYTES + weights.shape[1]]
        mixer_weights(weights, inputs, slots[j], max_order, wset[j], w)
        w0, w1, w2 = w[0], w[1], w[2]
        lm, lo0, lo1 = lp[0], lp[1], lp[2]
        for y in range(BYTES):
            a = l0[y] - norm0
            b = row1[y] - norm1
            lo0[y] = a
            lo1[y] = b
            mixed[y] = w0 * lm[y] + w1 * a + w2 * b
        # a hashed order adds w·(value − base) to its listed bytes (its base is a constant
        # shift for every byte, which the normalisation removes)
        for t in range(max_order - 1):
            wt = w[t + 3]
            for s in range(sparse_n[j, t]):
                y = sparse_sym[j, t, s]
                mixed[y] = mixed[y] + wt * (sparse_val[j, t, s] - base[j, t])
        # four partial maxima and sums, then one pass for the normalisation and the
        # expectations of the dense experts (twelve independent accumulators)
        m0 = m1 = m2 = m3 = mixed[0]
        for y in range(0, BYTES, 4):
            m0 = max(m0, mixed[y])
            m1 = max(m1, mixed[y + 1])
            m2 = max(m2, mixed[y + 2])
            m3 = max(m3, mixed[y + 3])
        m = max(max(m0, m1), max(m2, m3))
        for y in range(BYTES):
            mixed[y] = mixed[y] - m
        row = out[j]
        _exp_into(mixed, row[:BYTES], scratch)
        z0 = z1 = z2 = z3 = 0.0
        for y in range(0, BYTES, 4):
            z0 += row[y]
            z1 += row[y + 1]
            z2 += row[y + 2]
            z3 += row[y + 3]
        inv = 1.0 / ((z0 + z1) + (z2 + z3))
        a0 = a1 = a2 = a3 = b0 = b1 = b2 = b3 = c0_ = c1_ = c2_ = c3_ = 0.0
        for y in range(0, BYTES, 4):
            p0 = row[y] * inv
            p1 = row[y + 1] * inv
            p2 = row[y + 2] * inv
            p3 = row[y + 3] * inv
            row[y] = p0
            row[y + 1] = p1
            row[y + 2] = p2
            row[y + 3] = p3
            a0 += p0 * lm[y]
            a1 += p1 * lm[y + 1]
            a2 += p2 * lm[y + 2]
            a3 += p3 * lm[y + 3]
            b0 += p0 * lo0[y]
            b1 += p1 * lo0[y + 1]
            b2 += p2 * lo0[y + 2]
            b3 += p3 * lo0[y + 3]
            c0_ += p0 * lo1[y]
            c1_ += p1 * lo1[y + 1]
            c2_ += p2 * lo1[y + 2]
            c3_ += p3 * lo1[y + 3]
        row[BYTES] = 0.0
        expect[j, 0] = (a0 + a1) + (a2 + a3)
        expect[j, 1] = (b0 + b1) + (b2 + b3)
        expect[j, 2] = (c0_ + c1_) + (c2_ + c3_)
        for t in range(max_order - 1):
            e = base[j, t]
            for s in range(sparse_n[j, t]):
                e += row[sparse_sym[j, t, s]] * (sparse_val[j, t, s] - base[j, t])
            expect[j, t + 3] = e


@njit(**JIT_INLINE)
def _step_row(
    w: Any,
    lr: float,
    x: int,
    dense: Any,
    sparse_sym: Any,
    sparse_val: Any,
    sparse_n: Any,
    base: Any,
    expect: Any,
) -> None:  # pragma: no cover - compiled
    """One gradient step of a weight row on −ln p(x): ``w_i += lr · (ln p_i(x) − E_p[ln p_i])``
    (one byte's dense (3, 256), sparse and base values and expectations, as ``_predict``
    keeps them)."""
    for i in range(3):
        w[i] += lr * (dense[i, x] - expect[i])
    for t in range(w.size - 3):
        lx = base[t]
        for s in range(sparse_n[t]):
            if sparse_sym[t, s] == x:
                lx = sparse_val[t, s]
        w[t + 3] += lr * (lx - expect[t + 3])


@njit(**_JIT)
def _update(
    targets: Any,
    inputs: Any,
    slots: Any,
    max_order: int,
    prior: float,
    limit: int,
    lr: float,
    c0: Any,
    l0: Any,
    n0: Any,
    c1: Any,
    l1: Any,
    n1: Any,
    offs: Any,
    obits: Any,
    chk: Any,
    nsym: Any,
    tot: Any,
    sym: Any,
    cnt: Any,
    weights: Any,
    dense: Any,
    sparse_sym: Any,
    sparse_val: Any,
    sparse_n: Any,
    base: Any,
    expect: Any,
    wset: Any,
    hashes: Any,
    j0: int,
    j1: int,
) -> None:  # pragma: no cover - compiled
    """Mixer step and count updates for the scored bytes j0 … j1 − 1, in order."""
    slot_size = sym.shape[1]
    for j in range(j0, j1):
        x = targets[j]
        _step_row(weights[wset[j]], lr, x, dense[j], sparse_sym[j], sparse_val[j], sparse_n[j], base[j], expect[j])  # fmt: skip
        r2, r3 = extra_rows(inputs, slots[j], (max_order + 1) * N_BUCKETS * 2, weights.shape[0])
        if r2 >= 0:  # the added sets take the same step
            _step_row(weights[r2], lr, x, dense[j], sparse_sym[j], sparse_val[j], sparse_n[j], base[j], expect[j])  # fmt: skip
        if r3 >= 0:
            _step_row(weights[r3], lr, x, dense[j], sparse_sym[j], sparse_val[j], sparse_n[j], base[j], expect[j])  # fmt: skip
        # order 0 and order 1: dense counts with their logs beside them
        c0[x] += 1.0
        n0[0] += 1.0
        l0[x] = math.log(c0[x] + prior)
        if n0[0] > limit:
            n0[0] = 0.0
            for y in range(BYTES):
                c0[y] *= 0.5
                n0[0] += c0[y]
                l0[y] = math.log(c0[y] + prior)
        prev = inputs[slots[j]]
        c1[prev, x] += 1.0
        n1[prev] += 1.0
        l1[prev, x] = math.log(c1[prev, x] + prior)
        if n1[prev] > limit:
            n1[prev] = 0.0
            for y in range(BYTES):
                c1[prev, y] *= 0.5
                n1[prev] += c1[prev, y]
                l1[prev, y] = math.log(c1[prev, y] + prior)
        # orders 2..: hashed contexts with a short list of next bytes each
        avail = min(max_order, slots[j] + 1)
        for o in range(2, avail + 1):
            t = o - 2
            h = hashes[j, o - 1]
            idx = offs[t] + np.int64(h >> np.uint64(64 - obits[t]))
            check = np.uint32(h & np.uint64(0xFFFFFFFF)) | np.uint32(1)
            if chk[idx] != check:  # a new context takes the slot
                chk[idx] = check
                nsym[idx] = 0
                tot[idx] = 0
            n: Any = np.int64(nsym[idx])
            found: Any = -1
            for s in range(n):
                if sym[idx, s] == x:
                    found = s
                    break
            if found < 0:
                if n < slot_size:
                    found = n
                    nsym[idx] = n + 1
                else:  # replace the rarest (the first of equals)
                    found = 0
                    for s in range(1, n):
                        if cnt[idx, s] < cnt[idx, found]:
                            found = s
                    tot[idx] -= cnt[idx, found]
                sym[idx, found] = x
                cnt[idx, found] = 0
            cnt[idx, found] += 1
            tot[idx] += 1
            if tot[idx] > limit:
                total = np.int64(0)
                for s in range(np.int64(nsym[idx])):
                    cnt[idx, s] = cnt[idx, s] >> 1
                    total += np.int64(cnt[idx, s])
                tot[idx] = total


@njit(**_JIT)
def _snapshot(
    j: int,
    inputs: Any,
    slots: Any,
    max_order: int,
    c0: Any,
    l0: Any,
    n0: Any,
    c1: Any,
    l1: Any,
    n1: Any,
    offs: Any,
    obits: Any,
    chk: Any,
    nsym: Any,
    tot: Any,
    sym: Any,
    cnt: Any,
    weights: Any,
    wset: Any,
    hashes: Any,
    undo_f: Any,
    undo_i: Any,
    undo_b: Any,
) -> None:  # pragma: no cover - compiled
    """Saves everything ``_update`` of row j may change (undo_f: floats, undo_i: slot
    indexes and integers, undo_b: the slots' byte lists), so that :func:`_restore` can put
    it back exactly."""
    n_exp = weights.shape[1]
    f = undo_f[j]
    w = weights[wset[j]]
    for i in range(n_exp):
        f[i] = w[i]
    at = n_exp
    prev = inputs[slots[j]]
    for y in range(BYTES):
        f[at + y] = c0[y]
        f[at + BYTES + y] = l0[y]
        f[at + 2 * BYTES + y] = c1[prev, y]
        f[at + 3 * BYTES + y] = l1[prev, y]
    f[at + 4 * BYTES] = n0[0]
    f[at + 4 * BYTES + 1] = n1[prev]
    r2, r3 = extra_rows(inputs, slots[j], (max_order + 1) * N_BUCKETS * 2, weights.shape[0])
    for i in range(n_exp):
        if r2 >= 0:
            f[at + 4 * BYTES + 2 + i] = weights[r2, i]
        if r3 >= 0:
            f[at + 4 * BYTES + 2 + n_exp + i] = weights[r3, i]
    avail = min(max_order, slots[j] + 1)
    m = sym.shape[1]
    for o in range(2, max_order + 1):
        t = o - 2
        if o > avail:
            undo_i[j, t, 0] = -1
            continue
        idx = offs[t] + np.int64(hashes[j, o - 1] >> np.uint64(64 - obits[t]))
        undo_i[j, t, 0] = idx
        undo_i[j, t, 1] = np.int64(chk[idx])
        undo_i[j, t, 2] = np.int64(nsym[idx])
        undo_i[j, t, 3] = np.int64(tot[idx])
        for q in range(m):
            undo_b[j, t, q] = sym[idx, q]
            undo_b[j, t, m + q] = cnt[idx, q]


@njit(**_JIT)
def _restore(
    j: int,
    inputs: Any,
    slots: Any,
    max_order: int,
    c0: Any,
    l0: Any,
    n0: Any,
    c1: Any,
    l1: Any,
    n1: Any,
    chk: Any,
    nsym: Any,
    tot: Any,
    sym: Any,
    cnt: Any,
    weights: Any,
    wset: Any,
    undo_f: Any,
    undo_i: Any,
    undo_b: Any,
) -> None:  # pragma: no cover - compiled
    """Undoes row j's update (rows are restored last first)."""
    n_exp = weights.shape[1]
    f = undo_f[j]
    w = weights[wset[j]]
    for i in range(n_exp):
        w[i] = f[i]
    at = n_exp
    prev = inputs[slots[j]]
    for y in range(BYTES):
        c0[y] = f[at + y]
        l0[y] = f[at + BYTES + y]
        c1[prev, y] = f[at + 2 * BYTES + y]
        l1[prev, y] = f[at + 3 * BYTES + y]
    n0[0] = f[at + 4 * BYTES]
    n1[prev] = f[at + 4 * BYTES + 1]
    r2, r3 = extra_rows(inputs, slots[j], (max_order + 1) * N_BUCKETS * 2, weights.shape[0])
    for i in range(n_exp):
        if r3 >= 0:
            weights[r3, i] = f[at + 4 * BYTES + 2 + n_exp + i]
        if r2 >= 0:
            weights[r2, i] = f[at + 4 * BYTES + 2 + i]
    m = sym.shape[1]
    for t in range(max_order - 1):
        idx = undo_i[j, t, 0]
        if idx < 0:
            continue
        chk[idx] = undo_i[j, t, 1]
        nsym[idx] = undo_i[j, t, 2]
        tot[idx] = undo_i[j, t, 3]
        for q in range(m):
            sym[idx, q] = undo_b[j, t, q]
            cnt[idx, q] = undo_b[j, t, m + q]


@njit(**_JIT)
def _attribute(
    x: int,
    row: Any,
    dense: Any,
    sparse_sym: Any,
    sparse_val: Any,
    sparse_n: Any,
    base: Any,
    w: Any,
    attr: Any,
    scratch: Any,
) -> None:  # pragma: no cover - compiled
    """Adds one mixed byte ``x`` to the experts' attribution ``attr`` (E, 3): per expert i the
    weight it was mixed with (column 0), the bits the mixture would have lost on x without it,
    with every other weight as it was (column 1), and a count of bytes (column 2).

    Leaving expert i out divides out its factor exp(w_i · ln p_i(y)) and renormalises, so
    ``−log2 p_without(x) − (−log2 p(x)) = (w_i · ln p_i(x) + ln Σ_y p(y) · exp(−w_i ·
    ln p_i(y))) / ln 2``; a constant shift of ln p_i cancels, so a hashed order uses its
    values relative to its base and only its listed bytes enter the sum. ``row`` is the mixed
    row (its first 256 entries), ``dense`` (3, 256) the dense experts' log-probabilities,
    ``sparse_*``/``base`` the hashed orders' of this row (as :func:`_predict` keeps them), and
    ``w`` the weights the row was mixed with (:func:`mixer_weights`)."""
    n_exp = w.size
    a = scratch[BYTES : 2 * BYTES]
    e = scratch[2 * BYTES : 3 * BYTES]
    for i in range(3):  # the model, order 0, order 1: every byte has its own value
        wi = w[i]
        lp = dense[i]
        m = -wi * lp[0]
        for y in range(BYTES):
            a[y] = -wi * lp[y]
            m = max(m, a[y])
        for y in range(BYTES):
            a[y] = a[y] - m
        _exp_into(a, e, scratch)
        total = 0.0
        for y in range(BYTES):
            total += row[y] * e[y]
        attr[i, 0] += wi
        attr[i, 1] += (wi * lp[x] + m + math.log(total)) / _LN2
        attr[i, 2] += 1.0
    for t in range(n_exp - 3):  # hashed orders: only the listed bytes differ from the base
        wi = w[t + 3]
        listed = 0.0
        total = 0.0
        dx = 0.0
        for s in range(sparse_n[t]):
            y = sparse_sym[t, s]
            d = sparse_val[t, s] - base[t]
            listed += row[y]
            total += row[y] * math.exp(-wi * d)
            if y == x:
                dx = d
        total += max(1.0 - listed, 0.0)
        attr[t + 3, 0] += wi
        attr[t + 3, 1] += (wi * dx + math.log(total)) / _LN2
        attr[t + 3, 2] += 1.0


@njit(**_JIT)
def _predict_in_order(
    probs: Any,
    inputs: Any,
    slots: Any,
    targets: Any,
    max_order: int,
    prior: float,
    limit: int,
    lr: float,
    c0: Any,
    l0: Any,
    n0: Any,
    c1: Any,
    l1: Any,
    n1: Any,
    offs: Any,
    obits: Any,
    chk: Any,
    nsym: Any,
    tot: Any,
    sym: Any,
    cnt: Any,
    ltab: Any,
    weights: Any,
    out: Any,
    dense: Any,
    sparse_sym: Any,
    sparse_val: Any,
    sparse_n: Any,
    base: Any,
    expect: Any,
    wset: Any,
    hashes: Any,
    scratch: Any,
    undo_f: Any,
    undo_i: Any,
    undo_b: Any,
    attr: Any,
) -> None:  # pragma: no cover - compiled
    """Row j predicted after the update of rows 0 … j − 1 (their bytes precede byte j), then
    every update undone: the state is left as it was, ``observe`` redoes the updates. When
    ``attr`` has rows, each row is attributed to the experts (:func:`_attribute`) with the
    weights it was mixed with."""
    k = slots.size
    for j in range(k):
        _predict(
            probs, inputs, slots, max_order, prior, l0, n0, l1, n1, offs, obits, chk, nsym,
            tot, sym, cnt, ltab, weights, out, dense, sparse_sym, sparse_val, sparse_n, base,
            expect, wset, hashes, scratch, j, j + 1,
        )  # fmt: skip
        if attr.shape[0] > 0:
            w = scratch[3 * BYTES : 3 * BYTES + weights.shape[1]]
            mixer_weights(weights, inputs, slots[j], max_order, wset[j], w)
            _attribute(
                targets[j], out[j], dense[j], sparse_sym[j], sparse_val[j], sparse_n[j],
                base[j], w, attr, scratch,
            )  # fmt: skip
        if j == k - 1:
            break
        _snapshot(
            j, inputs, slots, max_order, c0, l0, n0, c1, l1, n1, offs, obits, chk, nsym, tot,
            sym, cnt, weights, wset, hashes, undo_f, undo_i, undo_b,
        )  # fmt: skip
        _update(
            targets, inputs, slots, max_order, prior, limit, lr, c0, l0, n0, c1, l1, n1, offs,
            obits, chk, nsym, tot, sym, cnt, weights, dense, sparse_sym, sparse_val, sparse_n,
            base, expect, wset, hashes, j, j + 1,
        )  # fmt: skip
    for j in range(k - 2, -1, -1):
        _restore(
            j, inputs, slots, max_order, c0, l0, n0, c1, l1, n1, chk, nsym, tot, sym, cnt,
            weights, wset, undo_f, undo_i, undo_b,
        )  # fmt: skip


class MixState(NamedTuple):
    """:class:`NgramMix` as the compiled loop holds it: its settings, its tables (shared with
    the Python object, changed in place), scratch for up to one window of rows,
    ``mixed[0]``, the bytes mixed, and ``attr``, the experts' attribution (no rows while
    :meth:`NgramMix.track_experts` is off)."""

    max_order: int
    prior: float
    limit: int
    lr: float
    c0: np.ndarray
    l0: np.ndarray
    n0: np.ndarray
    c1: np.ndarray
    l1: np.ndarray
    n1: np.ndarray
    offs: np.ndarray
    obits: np.ndarray
    chk: np.ndarray
    nsym: np.ndarray
    tot: np.ndarray
    sym: np.ndarray
    cnt: np.ndarray
    ltab: np.ndarray
    weights: np.ndarray
    out: np.ndarray
    dense: np.ndarray
    sparse_sym: np.ndarray
    sparse_val: np.ndarray
    sparse_n: np.ndarray
    base: np.ndarray
    expect: np.ndarray
    wset: np.ndarray
    hashes: np.ndarray
    scratch: np.ndarray
    mixed: np.ndarray
    attr: np.ndarray


def slot_views(slots: np.ndarray, m: int) -> tuple[np.ndarray, ...]:
    """(check, listed, total, bytes, counts) of the hashed records in ``slots`` (uint8 rows
    of check uint32 | total uint16 | listed uint8 | pad | bytes[m] | counts[m])."""
    return (
        slots.view(np.uint32)[:, 0],
        slots[:, 6],
        slots.view(np.uint16)[:, 2],
        slots[:, 8 : 8 + m],
        slots[:, 8 + m : 8 + 2 * m],
    )


@njit(**_JIT)
def mix_window(
    st: Any, rows: Any, inputs: Any, slots: Any, targets: Any, k: int
) -> None:  # pragma: no cover - compiled
    """The hooks of one window in one pass: rows[:k] (the model's, float64) become the
    mixed rows, and the counts and weights learn each byte right after predicting it. The
    Python hooks compute the same bits in two passes (``adjust_prediction`` predicts each
    byte after a provisional update by the bytes before it, then undoes them; ``observe``
    makes them): within a step no byte is predicted with knowledge of itself either way."""
    for j in range(k):
        mix_row(st, rows, inputs, slots, j)
        if st.attr.shape[0] > 0:  # before the weights learn byte j
            w = st.scratch[3 * BYTES : 3 * BYTES + st.weights.shape[1]]
            mixer_weights(st.weights, inputs, slots[j], st.max_order, st.wset[j], w)
            _attribute(
                targets[j], st.out[j], st.dense[j], st.sparse_sym[j], st.sparse_val[j],
                st.sparse_n[j], st.base[j], w, st.attr, st.scratch,
            )  # fmt: skip
        _learn(st, targets, inputs, slots, j)
    st.mixed[0] += k


@njit(**JIT_INLINE)  # called per byte: no second pass of the state's arrays
def mix_row(st: Any, rows: Any, inputs: Any, slots: Any, j: int) -> None:  # pragma: no cover
    """Row j: rows[j] (the model's) becomes the mixed row, from the state as the updates of
    rows 0 … j − 1 left it (made for good by :func:`mix_window`, provisionally by
    :func:`decode_learn` while decoding)."""
    _predict(
        rows, inputs, slots, st.max_order, st.prior, st.l0, st.n0, st.l1, st.n1, st.offs,
        st.obits, st.chk, st.nsym, st.tot, st.sym, st.cnt, st.ltab, st.weights, st.out,
        st.dense, st.sparse_sym, st.sparse_val, st.sparse_n, st.base, st.expect, st.wset,
        st.hashes, st.scratch, j, j + 1,
    )  # fmt: skip
    for y in range(rows.shape[1]):
        rows[j, y] = st.out[j, y]


@njit(**_JIT)
def decode_learn(
    st: Any, targets: Any, inputs: Any, slots: Any, j: int, undo_f: Any, undo_i: Any, undo_b: Any
) -> None:  # pragma: no cover - compiled
    """Once byte j of the step is known: saves what its update changes, then makes it."""
    _snapshot(
        j, inputs, slots, st.max_order, st.c0, st.l0, st.n0, st.c1, st.l1, st.n1, st.offs,
        st.obits, st.chk, st.nsym, st.tot, st.sym, st.cnt, st.weights, st.wset, st.hashes,
        undo_f, undo_i, undo_b,
    )  # fmt: skip
    _learn(st, targets, inputs, slots, j)


@njit(**JIT_INLINE)  # called per byte: no second pass of the state's arrays
def _learn(st: Any, targets: Any, inputs: Any, slots: Any, j: int) -> None:  # pragma: no cover
    """The counts and weights learn byte j (after its row was mixed)."""
    _update(
        targets, inputs, slots, st.max_order, st.prior, st.limit, st.lr, st.c0, st.l0, st.n0,
        st.c1, st.l1, st.n1, st.offs, st.obits, st.chk, st.nsym, st.tot, st.sym, st.cnt,
        st.weights, st.dense, st.sparse_sym, st.sparse_val, st.sparse_n, st.base, st.expect,
        st.wset, st.hashes, j, j + 1,
    )  # fmt: skip


@njit(**_JIT)
def decode_undo(
    st: Any, inputs: Any, slots: Any, n: int, undo_f: Any, undo_i: Any, undo_b: Any
) -> None:  # pragma: no cover - compiled
    """Undoes the provisional updates of rows n − 1 … 0: the state is as before the step,
    and the step itself then learns its bytes."""
    for j in range(n - 1, -1, -1):
        _restore(
            j, inputs, slots, st.max_order, st.c0, st.l0, st.n0, st.c1, st.l1, st.n1, st.chk,
            st.nsym, st.tot, st.sym, st.cnt, st.weights, st.wset, undo_f, undo_i, undo_b,
        )  # fmt: skip


class StepDecoder:
    """What a decoder needs of :class:`NgramMix` within one step: each byte's mixed row as
    soon as the bytes before it are known, the step's hooks' rows bit for bit, at the cost of
    one row per byte (``adjust_prediction`` computes the whole step's rows each call).

    ``row(rows, inputs, slots, j)`` mixes rows[j] in place; ``learn(targets, inputs, slots,
    j)`` takes byte j in provisionally; ``end(inputs, slots)`` undoes what ``learn`` did.
    """

    def __init__(self, mech: NgramMix, context: int) -> None:
        cfg = mech.cfg
        orders, n_exp = max(cfg.max_order - 1, 1), cfg.max_order + 2
        self.state = mech.compiled_state(context)
        self.undo = (
            np.empty((context, 3 * n_exp + 4 * BYTES + 2)),
            np.empty((context, orders, 4), dtype=np.int64),
            np.empty((context, orders, 2 * cfg.slot_size), dtype=np.uint8),
        )
        self.learned = 0

    def row(self, rows: np.ndarray, inputs: np.ndarray, slots: np.ndarray, j: int) -> None:
        mix_row(self.state, rows, inputs, slots, j)

    def learn(self, targets: np.ndarray, inputs: np.ndarray, slots: np.ndarray, j: int) -> None:
        decode_learn(self.state, targets, inputs, slots, j, *self.undo)
        self.learned = j + 1

    def end(self, inputs: np.ndarray, slots: np.ndarray) -> None:
        decode_undo(self.state, inputs, slots, self.learned, *self.undo)
        self.learned = 0


# ----------------------------------------------------------------------------- mechanism


@register
class NgramMix(Mechanism):
    """Mixes the model's prediction with order-0 … ``max_order`` count models (PAQ-style)."""

    name = "ngram_mix"
    strict_online = True
    Config = NgramMixConfig

    def __init__(self, config: NgramMixConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self._allocate()
        self.mixed_bytes = 0
        self.attribution = np.zeros((0, 3))  # (experts, 3) while track_experts is on

    @property
    def cfg(self) -> NgramMixConfig:
        assert isinstance(self.config, NgramMixConfig)
        return self.config

    def _allocate(self) -> None:
        cfg = self.cfg
        log_prior = math.log(cfg.prior)
        self.c0 = np.zeros(BYTES)
        self.l0 = np.full(BYTES, log_prior)
        self.n0 = np.zeros(1)
        self.c1 = np.zeros((V, BYTES))
        self.l1 = np.full((V, BYTES), log_prior)
        self.n1 = np.zeros(V)
        orders = range(2, cfg.max_order + 1)
        self.obits = np.array([table_bits(o, cfg.table_bits) for o in orders], dtype=np.int64)
        sizes = (1 << self.obits).astype(np.int64)
        self.offs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        # one record per hashed context, so that a lookup touches one cache line:
        # check (uint32) | total (uint16) | listed (uint8) | pad | bytes[M] | counts[M]
        m = cfg.slot_size
        record = 8 + 2 * m + (-(8 + 2 * m)) % 8
        self.slots = np.zeros((int(sizes.sum()), record), dtype=np.uint8)
        self._bind_views()
        self.ltab = np.log(np.arange(BYTES, dtype=np.float64) + cfg.prior)
        n_exp = cfg.max_order + 2  # the model, orders 0..max_order
        first = np.full(((cfg.max_order + 1) * N_BUCKETS * 2, n_exp), cfg.ngram_weight)
        first[:, 0] = cfg.model_weight
        classes = np.zeros((N_CLASSES**cfg.class_bytes if cfg.class_bytes else 0, n_exp))
        last_byte = np.zeros((BYTE_ROWS if cfg.byte_set else 0, n_exp))
        self.weights = np.concatenate([first, classes, last_byte])
        self._pending: tuple[Any, ...] | None = None
        self._shape = self._layout()

    def _layout(self) -> tuple[Any, ...]:
        """The settings the tables' shapes and contents depend on."""
        cfg = self.cfg
        return (cfg.max_order, cfg.table_bits, cfg.slot_size, cfg.prior, cfg.class_bytes, cfg.byte_set)  # fmt: skip

    def _bind_views(self) -> None:
        self.chk, self.nsym, self.tot, self.sym, self.cnt = slot_views(
            self.slots, self.cfg.slot_size
        )

    @property
    def table_bytes(self) -> int:
        """Memory held by the count tables."""
        return int(sum(a.nbytes for a in (self.c0, self.l0, self.c1, self.l1, self.slots)))

    def _scratch(self, k: int) -> tuple[Any, ...]:
        cfg = self.cfg
        orders, n_exp = max(cfg.max_order - 1, 1), cfg.max_order + 2
        return (
            np.empty((k, 3, BYTES)),  # dense
            np.zeros((k, orders, cfg.slot_size), dtype=np.int64),  # sparse_sym
            np.zeros((k, orders, cfg.slot_size)),  # sparse_val
            np.zeros((k, orders), dtype=np.int64),  # sparse_n
            np.zeros((k, orders)),  # base
            np.empty((k, n_exp)),  # expect
            np.empty(k, dtype=np.int64),  # wset
            np.zeros((k, max(cfg.max_order, 1)), dtype=np.uint64),  # hashes
        )

    def _tables(self) -> tuple[Any, ...]:
        return (self.offs, self.obits, self.chk, self.nsym, self.tot, self.sym, self.cnt)

    def on_configure(self) -> None:
        if self._layout() != self._shape:
            self._allocate()  # the tables' shape changed: start them afresh

    def counters(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mixed_bytes": self.mixed_bytes}
        if self.attribution.shape[0] > 0:
            out["experts"] = self.expert_attribution()
        return out

    # ------------------------------------------------------------ attribution

    @property
    def expert_names(self) -> list[str]:
        """The mixer's experts in weight order: the network, then orders 0 … max_order."""
        return ["network"] + [f"order {o}" for o in range(self.cfg.max_order + 1)]

    def track_experts(self, on: bool = True) -> None:
        """Starts (afresh) or stops attributing the mixture to its experts. While on, every
        mixed byte adds, per expert, the weight it was mixed with and the bits the mixture
        would have lost without that expert: the same mixture with that one factor left
        out and every other weight as it was, computed alongside. The counts and weights do
        not learn from the counterfactual mixture, so this is each expert's share at the
        weights of the run, not the bits of a run that never had it. The bits of the run are
        unchanged; the compiled loop and the Python hooks give the same figures. Takes
        effect at the next ``Learner.run``.

        Example:
            >>> from mugpt.corpus import Stream
            >>> from mugpt.engine import Learner, LearnerConfig
            >>> mix = NgramMix(max_order=3)
            >>> mix.track_experts()
            >>> _ = Learner(mechanisms=[mix], learner_cfg=LearnerConfig(update_every=8)).run(
            ...     Stream.from_bytes(b"abracadabra " * 40))
            >>> rows = mix.expert_attribution()
            >>> [r["expert"] for r in rows], rows[0]["bytes"]
            (['network', 'order 0', 'order 1', 'order 2', 'order 3'], 480)
            >>> rows[3]["bits_saved"] > 0  # order 2 knows this text after one repeat
            True
        """
        n_exp = self.cfg.max_order + 2
        self.attribution = np.zeros((n_exp, 3) if on else (0, 3))

    def expert_attribution(self) -> list[dict[str, Any]]:
        """Per expert (in :attr:`expert_names` order): ``bytes`` attributed, ``mean_weight``,
        ``bits_saved`` (in all) and ``bpb_saved`` (per byte); empty while off."""
        rows = []
        for name, (weight, saved, n) in zip(self.expert_names, self.attribution, strict=False):
            rows.append({
                "expert": name,
                "bytes": int(n),
                "mean_weight": float(weight / n) if n else None,
                "bits_saved": float(saved),
                "bpb_saved": float(saved / n) if n else None,
            })  # fmt: skip
        return rows

    # ------------------------------------------------------------ the compiled form

    def compiled_state(self, context: int) -> MixState:
        """The compiled loop's view of this mechanism (:func:`mix_window`): its tables
        themselves, and scratch for a window of ``context`` rows."""
        cfg = self.cfg
        self._pending = None
        return MixState._make(
            [cfg.max_order, float(cfg.prior), int(cfg.count_limit), float(cfg.lr), self.c0,
             self.l0, self.n0, self.c1, self.l1, self.n1, *self._tables(), self.ltab,
             self.weights, np.zeros((context, V)), *self._scratch(context), np.empty(5 * BYTES),
             np.zeros(1, dtype=np.int64), self._attribution_rows()]
        )  # fmt: skip

    def _attribution_rows(self) -> np.ndarray:
        """The attribution array the kernels add to (this object's own, changed in place);
        with another expert count after a reconfiguration, tracking starts afresh."""
        if self.attribution.shape[0] not in (0, self.cfg.max_order + 2):
            self.track_experts()
        return self.attribution

    def compiled_done(self, state: MixState) -> list[dict[str, Any]]:
        """Counts the bytes the compiled loop mixed; returns its events (none)."""
        self.mixed_bytes += int(state.mixed[0])
        state.mixed[0] = 0
        return []

    def adjust_prediction(self, ctx: StepContext, probs: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        k = probs.shape[0]
        inputs = np.ascontiguousarray(ctx.inputs, dtype=np.int64)
        slots = np.ascontiguousarray(ctx.new_positions, dtype=np.int64)
        out = np.zeros((k, V))
        keep = self._scratch(k)
        targets = np.ascontiguousarray(ctx.new_bytes, dtype=np.int64)
        orders = max(cfg.max_order - 1, 1)
        n_exp = cfg.max_order + 2
        _predict_in_order(
            np.ascontiguousarray(probs, dtype=np.float64), inputs, slots, targets,
            cfg.max_order, float(cfg.prior), int(cfg.count_limit), float(cfg.lr), self.c0,
            self.l0, self.n0, self.c1, self.l1, self.n1, *self._tables(), self.ltab,
            self.weights, out, *keep, np.empty(5 * BYTES),
            np.empty((k, 3 * n_exp + 4 * BYTES + 2)), np.empty((k, orders, 4), dtype=np.int64),
            np.empty((k, orders, 2 * cfg.slot_size), dtype=np.uint8), self._attribution_rows(),
        )  # fmt: skip
        self._pending = (ctx.step, ctx.position, inputs, slots, keep)
        return out

    def observe(self, ctx: StepContext, loss_bits: np.ndarray) -> None:
        pending, self._pending = self._pending, None
        if pending is None or pending[:2] != (ctx.step, ctx.position):
            return  # adjust_prediction did not run for this step (e.g. just switched on)
        _, _, inputs, slots, keep = pending
        cfg = self.cfg
        targets = np.ascontiguousarray(ctx.new_bytes, dtype=np.int64)
        _update(
            targets, inputs, slots, cfg.max_order, float(cfg.prior), int(cfg.count_limit),
            float(cfg.lr), self.c0, self.l0, self.n0, self.c1, self.l1, self.n1,
            *self._tables(), self.weights, *keep, 0, targets.size,
        )  # fmt: skip
        self.mixed_bytes += int(targets.size)

    def state_dict(self) -> dict[str, Any]:
        return {
            "c0": self.c0.copy(),
            "l0": self.l0.copy(),
            "n0": self.n0.copy(),
            "c1": self.c1.copy(),
            "l1": self.l1.copy(),
            "n1": self.n1.copy(),
            "slots": self.slots.copy(),
            "weights": self.weights.copy(),
            "mixed_bytes": self.mixed_bytes,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._allocate()
        for key in ("c0", "l0", "n0", "c1", "l1", "n1", "slots", "weights"):
            target = getattr(self, key)
            value = np.asarray(state[key], dtype=target.dtype)
            if value.shape != target.shape:
                from mugpt.errors import CheckpointError

                raise CheckpointError(
                    f"ngram_mix state {key} has shape {value.shape}, config needs {target.shape}"
                )
            target[...] = value
        self.mixed_bytes = int(state["mixed_bytes"])
