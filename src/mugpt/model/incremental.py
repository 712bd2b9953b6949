"""Incremental forward pass: position t of a window from the cached keys and values of the
positions before it, bit for bit equal to the full-window forward of ``fast.py``.

Why: a decoder learns nothing of byte t+1 until byte t is decoded, so within one step (whose
weights are fixed) it must compute the window's rows one at a time. A full forward per byte
costs T positions; this costs one (its attention reads the t earlier keys and values, which
the workspace already holds). Attention is causal, so the rows equal the full forward's, and
every sum here runs in the order the full kernels use (the same ``_mm`` over the full key
axis, masked entries exact zeros), so they are equal in every bit, not only close.

Calling :func:`forward_position` for t = 0, 1, ..., T-1 (padding included) leaves the
workspace exactly as :func:`mugpt.model.fast.forward_batch` would, so the backward pass may
follow it.

The attention of one query is two products of a row by a matrix, arranged so that their
inner loops run over contiguous memory and vectorise: the scores ``q_t · K[:t+1]ᵀ`` against a
transposed copy of the keys (``keys_t``, kept column by column as positions are computed:
:func:`key_scratch`), and ``att[t] · V``. Each output is still the sum of the same products
in the same order (over the head dimension, over the keys) as the full kernels make it.

Example:
    >>> import numpy as np
    >>> from mugpt.model import ModelConfig
    >>> from mugpt.model.fast import FastGPT
    >>> model = FastGPT(ModelConfig())
    >>> idx = np.array([[256, 104, 105, 33]])
    >>> full = model.forward(idx).probs.copy()
    >>> begin_window(model, idx[0], b=0)
    >>> keys_t = key_scratch(model)
    >>> for t in range(model.cfg.context):
    ...     forward_position(model.params.flat, model.offsets, model.dims, model.ws, keys_t, 0, t)
    >>> model.ws.probs[0, :4].tobytes() == full[0].tobytes()
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from mugpt.model.constants import JIT_INLINE, JIT_OPTIONS
from mugpt.model.fast import (
    D_ACT,
    D_C,
    D_H,
    D_LAYERS,
    D_T,
    D_TIED,
    D_V,
    _activation_forward,
    _exp_inplace,
    _layer_views,
    _mm,
    _rmsnorm_forward,
    _softmax_rows,
    _strided,
    _transpose,
    cast_like,
)

__all__ = ["begin_window", "forward_position", "forward_positions", "key_scratch", "prepare_head"]


def key_scratch(model: Any) -> np.ndarray:
    """The transposed keys (layers, C, T) :func:`forward_position` keeps, in the model's
    dtype."""
    cfg = model.cfg
    return np.zeros((cfg.n_layers, cfg.d_model, cfg.context), dtype=model.params.flat.dtype)


@njit(**JIT_OPTIONS)
def prepare_head(flat: Any, offs: Any, dims: Any, ws: Any) -> None:  # pragma: no cover
    """What ``forward_batch`` does once per call before its windows: the tied head's copy."""
    if dims[D_TIED]:
        c, v = dims[D_C], dims[D_V]
        _transpose(flat[offs[0] : offs[0] + v * c].reshape((v, c)), ws.head_cv)


def begin_window(model: Any, inputs: np.ndarray, b: int = 0) -> None:
    """Loads a window's input symbols into the workspace (padded with 0, as ``forward``
    does) and prepares the head; then :func:`forward_position` computes its rows in order.
    A symbol may be changed later (``model.ws.idx[b, t] = s``) as long as position t has
    not been computed yet."""
    n = int(inputs.size)
    assert 0 < n <= model.cfg.context, inputs.shape
    if getattr(model, "_pinned", None) is not None:  # as FastGPT.forward: keep pinned views
        model._pinned.own()
        model._pinned = None
    model.ensure_batch(b + 1)
    ws = model.ws
    ws.idx[b, :n] = inputs
    ws.idx[b, n:] = 0
    prepare_head(model.params.flat, model.offsets, model.dims, ws)


@njit(**JIT_INLINE)
def _attention_position(
    qkv: Any, q_t: Any, v_t: Any, k_t: Any, e: Any, ebits: Any, att_t: Any, att: Any,
    yh: Any, n_heads: int, t: int,
) -> None:  # pragma: no cover  # fmt: skip
    """Query t of ``fast._attention_forward`` for one layer and window (the views
    ``ws.qkv[layer, b]``, ``ws.qT[layer, b]``, ``ws.vT[layer, b]``, ``keys_t[layer]``, the flat
    scratch ``ws.yT.ravel()``, ``ws.ebits``, ``ws.attT[layer, b]``, ``ws.att[layer, b]``,
    ``ws.yh[layer, b]``): reads qkv rows ≤ t (and the keys of earlier positions in k_t),
    writes column t of q_t, v_t, att_t and k_t, row t of att and yh.

    Every head at once, with plain index loops (no views in the inner loops): the scores of
    head h lie in ``e[h·n : (h+1)·n]`` (n = t + 1 keys), so the
    exponential runs over all heads in one vectorised pass. Each number is the same sequence
    of roundings as in the full kernel: scores summed over the head dimension in order, the
    maximum, ``score·scale − max``, the exponential, the sum over the keys in order, one
    reciprocal, and the value sum over the keys s ≤ t in order (the full kernel's further
    terms, keys after t, are exact zeros).

    Arrays, not the workspace, and inlined, with no views inside its loops: each view, and
    each array of a named tuple passed to a compiled call, takes and drops a reference (two
    atomic operations), which cost more than this query's arithmetic."""
    t_len, c3 = qkv.shape
    c = c3 // 3
    d = c // n_heads
    n = t + 1
    scale = cast_like(qkv, 1.0 / math.sqrt(d))
    zero = cast_like(qkv, 0.0)
    one = cast_like(qkv, 1.0)
    for j in range(c):
        q_t[j, t] = qkv[t, j]
        k_t[j, t] = qkv[t, c + j]
        v_t[j, t] = qkv[t, 2 * c + j]
    for h in range(n_heads):
        base, hs = h * n, h * d
        for s in range(n):
            e[base + s] = zero
        for j in range(d):  # q_t · k_s, summed over the head dimension in order
            qj = qkv[t, hs + j]
            for s in range(n):
                e[base + s] = e[base + s] + k_t[hs + j, s] * qj
        m = e[base] * scale
        for s in range(1, n):
            m = np.maximum(m, e[base + s] * scale)
        for s in range(n):
            e[base + s] = e[base + s] * scale - m
    if n_heads * n <= ebits.size:
        _exp_inplace(e[: n_heads * n], ebits)
    else:
        for h in range(n_heads):
            _exp_inplace(e[h * n : (h + 1) * n], ebits)
    for h in range(n_heads):
        base, hs = h * n, h * d
        total = e[base]
        for s in range(1, n):
            total = total + e[base + s]
        inv = one / total
        for s in range(n):
            a = e[base + s] * inv
            att_t[h, s, t] = a
            att[h, t, s] = a
        for s in range(n, t_len):
            att_t[h, s, t] = zero
            att[h, t, s] = zero
        for j in range(d):
            yh[t, hs + j] = zero
        v0 = 2 * c + hs
        for s in range(n):  # y_t = Σ_{s ≤ t} att[t, s] v_s in order of s
            a = att[h, t, s]
            for j in range(d):
                yh[t, hs + j] = yh[t, hs + j] + qkv[s, v0 + j] * a


@njit(**JIT_OPTIONS)
def forward_position(
    flat: Any, offs: Any, dims: Any, ws: Any, keys_t: Any, b: int, t: int
) -> None:  # pragma: no cover
    """Every cache of position t of window b (embedding to probabilities) from ws.idx[b, t]
    and the caches of positions < t (``keys_t`` included), which must be current for the
    same weights."""
    forward_positions(flat, offs, dims, ws, keys_t, b, t, t + 1)


@njit(**JIT_INLINE)  # called per decoded byte with the whole workspace
def forward_positions(
    flat: Any, offs: Any, dims: Any, ws: Any, keys_t: Any, b: int, t0: int, t1: int
) -> None:  # pragma: no cover - compiled
    """Positions t0 … t1 − 1 of window b, each exactly as :func:`forward_position` computes
    it, in one pass: the steps that treat positions apart (embedding, norms, products, MLP,
    head, softmax) run over the rows together, the attention query by query in order (query t
    reads the keys ≤ t, written as it goes). Each row's sums are the same in the same order
    whether its rows come one at a time or together, so this is a speed-up only: the decoder
    computes the positions whose inputs it already knows in one call."""
    if t1 <= t0:
        return
    n_layers, n_heads, act_kind = dims[D_LAYERS], dims[D_H], dims[D_ACT]
    c, t_len, v = dims[D_C], dims[D_T], dims[D_V]
    wte = flat[offs[0] : offs[0] + v * c].reshape((v, c))
    wpe = flat[offs[1] : offs[1] + t_len * c].reshape((t_len, c))
    x0 = ws.xs[0, b]
    for t in range(t0, t1):
        row = wte[ws.idx[b, t]]
        for j in range(c):
            x0[t, j] = row[j] + wpe[t, j]
    r = slice(t0, t1)
    scores = ws.yT.reshape(ws.yT.size)  # flat scratch of C·T ≥ H·(t + 1) numbers
    for layer in range(n_layers):
        ln1, w_qkv, w_o, ln2, w_in, w_out = _layer_views(flat, offs, dims, layer)
        x = ws.xs[layer, b]
        _rmsnorm_forward(x[r], ln1, ws.n1x[layer, b, r], ws.n1r[layer, b, r], ws.h1[layer, b, r])
        _mm(_strided(ws.h1[layer, b, r]), w_qkv, ws.qkv[layer, b, r], False)
        qkv, q_t, v_t, k_t = ws.qkv[layer, b], ws.qT[layer, b], ws.vT[layer, b], keys_t[layer]
        att_t, att, yh = ws.attT[layer, b], ws.att[layer, b], ws.yh[layer, b]
        for t in range(t0, t1):
            _attention_position(qkv, q_t, v_t, k_t, scores, ws.ebits, att_t, att, yh, n_heads, t)
        xm = ws.xm[layer, b]
        _mm(_strided(ws.yh[layer, b, r]), w_o, xm[r], False)
        for t in range(t0, t1):
            for j in range(c):
                xm[t, j] = x[t, j] + xm[t, j]
        _rmsnorm_forward(xm[r], ln2, ws.n2x[layer, b, r], ws.n2r[layer, b, r], ws.h2[layer, b, r])
        _mm(_strided(ws.h2[layer, b, r]), w_in, ws.pre[layer, b, r], False)
        _activation_forward(ws.pre[layer, b, r], ws.act[layer, b, r], act_kind)
        x_next = ws.xs[layer + 1, b]
        _mm(_strided(ws.act[layer, b, r]), w_out, x_next[r], False)
        for t in range(t0, t1):
            for j in range(c):
                x_next[t, j] = xm[t, j] + x_next[t, j]
    ln_f = flat[offs[2 + 6 * n_layers] : offs[2 + 6 * n_layers] + c]
    _rmsnorm_forward(ws.xs[n_layers, b, r], ln_f, ws.nfx[b, r], ws.nfr[b, r], ws.hidden[b, r])
    if dims[D_TIED]:
        head = ws.head_cv
    else:
        o = offs[3 + 6 * n_layers]
        head = flat[o : o + c * v].reshape((c, v))
    _mm(_strided(ws.hidden[b, r]), head, ws.probs[b, r], False)
    _softmax_rows(ws.probs[b, r], t1 - t0, ws.lanes, ws.ebits)
