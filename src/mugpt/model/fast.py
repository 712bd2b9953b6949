"""The same model as ``gpt.py``/``layers.py``, compiled with numba for the prequential hot loop.

Why a second implementation: at μGPT's sizes (a window of 32 positions, ``d_model`` 16) every
NumPy call costs more in dispatch than in arithmetic, and a step makes about a hundred of them.
These kernels run the forward pass, the backward pass and the optimiser with no per-call
overhead, in buffers allocated once. The NumPy code stays the readable reference; tests check
that both agree (float64 to ~1e-12, float32 closely) and that this path is deterministic.

How the kernels are written (and why they stay bit-for-bit deterministic):

- No ``fastmath``: LLVM may not reassociate, so every sum is computed in the order the source
  says, whatever vectorisation or inlining the compiler chooses. The same inputs therefore give
  the same bits whether a kernel is called from Python or from the compiled run loop.
- Every matrix product goes through :func:`_mm`, which vectorises over the contiguous output
  row and sums the reduction index in order (in unrolled blocks of eight). Layouts are chosen
  so that the long axis is the output row: weights are transposed once per step for the
  backward pass, and attention works on (key, query) matrices so that its softmax reduces
  across rows (vectorised over queries).
- Windows shorter than the context are padded to ``T`` on the right with zero loss weight:
  causal attention never lets a real position see the padding, and the padding's gradients are
  exact zeros, so the result equals the unpadded computation bit for bit.
- ``exp`` for float32 is a Cody–Waite range reduction with a degree-6 polynomial (relative
  error ~1e-7) that vectorises; float64 uses ``math.exp``.

Example:
    >>> import numpy as np
    >>> from mugpt.model import GPT, ModelConfig
    >>> cfg = ModelConfig(dtype="float64")
    >>> ref = GPT(cfg)
    >>> fast = FastGPT(cfg, ref.params)
    >>> idx = np.array([[256, 104, 105]])
    >>> bool(np.allclose(fast.forward(idx).probs, ref.forward(idx).probs, rtol=1e-12, atol=0))
    True
"""

from __future__ import annotations

import functools
import math
from collections import namedtuple
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import njit, types
from numba.extending import overload

from mugpt.model.config import ModelConfig
from mugpt.model.constants import JIT_OPTIONS, RMS_EPS
from mugpt.model.optim import UpdateInfo
from mugpt.model.params import ParamBuffer, init_params

_JIT = JIT_OPTIONS
ACTIVATION_CODES = {"relu": 0, "gelu": 1, "silu": 2}
_GELU_C = math.sqrt(2.0 / math.pi)
EXP_FLUSH_BELOW = -64.0
"""float32 ``exp(x)`` is exactly 0 for x < −64 (e^−64 ≈ 1.6e-28 ≈ 2^-92) instead of a value
that products with gradients and small weights push into float32's subnormal range (below
2^-126), where arithmetic costs a slow microcode assist on x86 CPUs and made learning ~2×
slower once the model was confident. Softmax inputs are shifted by their maximum, so this
only drops probabilities below 1.6e-28 (far under ``PROB_FLOOR``), and masked attention
entries (shifted by −1e30) become exact zeros. A fixed rule on the values, so results stay
deterministic; float64 (``math.exp``) is unchanged."""

# dims vector: what the kernels know of the config
D_LAYERS, D_C, D_H, D_F, D_T, D_V, D_ACT, D_TIED = range(8)
# optimiser state vector: t, nonfinite_steps, clipped_steps
O_T, O_NONFINITE, O_CLIPPED = range(3)
# hyper-parameter vector of the optimiser
H_LR, H_B1, H_B2, H_EPS, H_WD, H_MOM, H_CLIP, H_ADAM = range(8)

Workspace = namedtuple(
    "Workspace",
    [
        # forward caches (L = layers, B = windows, T = context)
        "idx",  # (B, T) int64 input symbols, padded with 0
        "xs",  # (L+1, B, T, C) residual stream entering each block; xs[L] leaves the last
        "xm",  # (L, B, T, C) residual after the attention half of a block
        "n1x",  # (L, B, T, C) RMSNorm 1: x / rms(x)
        "n1r",  # (L, B, T) RMSNorm 1: 1 / rms(x)
        "h1",  # (L, B, T, C) RMSNorm 1 output (attention input)
        "qkv",  # (L, B, T, 3C)
        "qT",  # (L, B, C, T) queries, feature-major
        "vT",  # (L, B, C, T) values, feature-major
        "attT",  # (L, B, H, T, T) attention probabilities as [key s, query t]
        "att",  # (L, B, H, T, T) the same as [query t, key s] (zeros above the diagonal)
        "yh",  # (L, B, T, C) concatenated head outputs
        "n2x",  # (L, B, T, C)
        "n2r",  # (L, B, T)
        "h2",  # (L, B, T, C) RMSNorm 2 output (MLP input)
        "pre",  # (L, B, T, F) MLP pre-activation
        "act",  # (L, B, T, F) MLP activation
        "nfx",  # (B, T, C) final RMSNorm
        "nfr",  # (B, T)
        "hidden",  # (B, T, C) final hidden state (feeds the head)
        "probs",  # (B, T, V) next-symbol distributions
        # backward inputs
        "tgt",  # (B, T) int64 targets
        "wts",  # (B, T) loss weights, normalised to sum to 1 over the batch
        # scratch
        "sc",  # (T, T) attention scores [s, t]
        "colm",  # (T,) column max / row sums
        "colinv",  # (T,)
        "yT",  # (C, T)
        "ebits",  # int32 scratch of the float32 exp (≥ V and ≥ T; T·V when it fits)
        "lanes",  # (max(64, V),) scratch of reductions
        "mask_add",  # (T, T) causal mask [s, t]: 0 where t ≥ s, −1e30 elsewhere
        "mask_mul",  # (T, T) causal mask [s, t]: 1 where t ≥ s, 0 elsewhere
        "head_cv",  # (C, V) the head as (C, V) when tied (a copy of wte.T)
        "head_vc",  # (V, C) the head as (V, C) when untied (a copy of lm_head.T)
        "wqkvT",  # (L, 3C, C) transposed weights for the backward pass
        "woT",  # (L, C, C)
        "winT",  # (L, F, C)
        "woutT",  # (L, C, F)
        "dl",  # (T, V) logit gradients of one window
        "dres",  # (T, C) gradient of the residual stream
        "dtmp",  # (T, C)
        "dact",  # (T, F)
        "dyh",  # (T, C)
        "dyhT",  # (C, T)
        "dattT",  # (T, T)
        "datt",  # (T, T)
        "dqkv",  # (T, 3C)
        "dhT",  # (3, C, T) dq, dk, dv feature-major
    ],
)


def make_workspace(cfg: ModelConfig, batch: int) -> Workspace:
    """Allocates every buffer the kernels use for up to ``batch`` windows of ``cfg.context``."""
    dt = np.dtype(cfg.dtype)
    L, B, T = cfg.n_layers, batch, cfg.context
    C, H, F, V = cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.vocab_size

    def z(*shape: int) -> np.ndarray:
        return np.zeros(shape, dtype=dt)

    causal = np.triu(np.ones((T, T), dtype=bool))  # [s, t]: key s visible to query t ≥ s

    return Workspace(
        idx=np.zeros((B, T), dtype=np.int64),
        xs=z(L + 1, B, T, C), xm=z(L, B, T, C),
        n1x=z(L, B, T, C), n1r=z(L, B, T), h1=z(L, B, T, C),
        qkv=z(L, B, T, 3 * C), qT=z(L, B, C, T), vT=z(L, B, C, T),
        attT=z(L, B, H, T, T), att=z(L, B, H, T, T), yh=z(L, B, T, C),
        n2x=z(L, B, T, C), n2r=z(L, B, T), h2=z(L, B, T, C),
        pre=z(L, B, T, F), act=z(L, B, T, F),
        nfx=z(B, T, C), nfr=z(B, T), hidden=z(B, T, C), probs=z(B, T, V),
        tgt=np.zeros((B, T), dtype=np.int64), wts=z(B, T),
        sc=z(T, T), colm=z(T), colinv=z(T), yT=z(C, T),
        ebits=np.zeros(min(max(T * V, T * T), 1 << 16), dtype=np.int32), lanes=z(max(64, V)),
        mask_add=np.where(causal, 0.0, -1e30).astype(dt), mask_mul=causal.astype(dt),
        head_cv=z(C, V), head_vc=z(V, C),
        wqkvT=z(L, 3 * C, C), woT=z(L, C, C), winT=z(L, F, C), woutT=z(L, C, F),
        dl=z(T, V), dres=z(T, C), dtmp=z(T, C), dact=z(T, F), dyh=z(T, C), dyhT=z(C, T),
        dattT=z(T, T), datt=z(T, T), dqkv=z(T, 3 * C), dhT=z(3, C, T),
    )  # fmt: skip


def param_offsets(params: ParamBuffer) -> np.ndarray:
    """Offsets of the tensors in the flat buffer, in the order the kernels read them:
    wte, wpe, then per layer ln1, w_qkv, w_o, ln2, w_in, w_out, then ln_f, lm_head (-1 if tied)."""
    cfg = params.cfg
    names = ["wte", "wpe"]
    for layer in range(cfg.n_layers):
        p = f"h{layer}."
        names += [p + s for s in ("ln1", "attn.w_qkv", "attn.w_o", "ln2", "mlp.w_in", "mlp.w_out")]
    names.append("ln_f")
    offsets = [params.offsets[n] for n in names]
    offsets.append(-1 if cfg.tied_head else params.offsets["lm_head"])
    return np.array(offsets, dtype=np.int64)


def model_dims(cfg: ModelConfig) -> np.ndarray:
    return np.array(
        [cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_ff, cfg.context, cfg.vocab_size,
         ACTIVATION_CODES[cfg.activation], int(cfg.tied_head)],
        dtype=np.int64,
    )  # fmt: skip


# ====================================================================== elementary kernels


@njit(**_JIT)
def _strided(a: Any) -> Any:  # pragma: no cover - compiled
    """A 2-D view typed as any-layout, so that one compiled ``_mm`` serves every call."""
    return a[:, :]


@njit(**_JIT)
def _mm(a: Any, b: Any, out: Any, accumulate: bool) -> None:  # pragma: no cover - compiled
    """out (M, N) (+)= a (M, K) @ b (K, N), each output summed over k = 0..K-1 in order.

    The k loop is unrolled by eight so the n loop — over contiguous rows of ``b`` and ``out`` —
    vectorises. Entries of ``a`` are broadcast, so ``a`` may be any strided view."""
    m_rows, k_dim = a.shape
    n = out.shape[1]
    k8 = k_dim - k_dim % 8
    for i in range(m_rows):
        o = out[i]
        if not accumulate:
            for j in range(n):
                o[j] = 0
        for k in range(0, k8, 8):
            a0, a1, a2, a3 = a[i, k], a[i, k + 1], a[i, k + 2], a[i, k + 3]
            a4, a5, a6, a7 = a[i, k + 4], a[i, k + 5], a[i, k + 6], a[i, k + 7]
            b0, b1, b2, b3 = b[k], b[k + 1], b[k + 2], b[k + 3]
            b4, b5, b6, b7 = b[k + 4], b[k + 5], b[k + 6], b[k + 7]
            for j in range(n):
                o[j] = (
                    o[j] + a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j]
                    + a4 * b4[j] + a5 * b5[j] + a6 * b6[j] + a7 * b7[j]
                )  # fmt: skip
        k4 = k8
        if k_dim - k4 >= 4:  # one pass for a block of four (attention's head dim is often 4)
            a0, a1, a2, a3 = a[i, k4], a[i, k4 + 1], a[i, k4 + 2], a[i, k4 + 3]
            b0, b1, b2, b3 = b[k4], b[k4 + 1], b[k4 + 2], b[k4 + 3]
            for j in range(n):
                o[j] = o[j] + a0 * b0[j] + a1 * b1[j] + a2 * b2[j] + a3 * b3[j]
            k4 += 4
        for k in range(k4, k_dim):
            ak = a[i, k]
            bk = b[k]
            for j in range(n):
                o[j] = o[j] + ak * bk[j]


@njit(**_JIT)
def _transpose(src: Any, dst: Any) -> None:  # pragma: no cover - compiled
    """dst (N, M) = src (M, N)ᵀ."""
    m_rows, n = src.shape
    for i in range(m_rows):
        for j in range(n):
            dst[j, i] = src[i, j]


def _exp_inplace(x: np.ndarray, bits: np.ndarray) -> None:
    """x ← exp(x) for x ≤ 0 (compiled code uses the overload below)."""
    np.exp(x, out=x)


@overload(_exp_inplace, jit_options={"error_model": "numpy"})
def _exp_inplace_impl(x: Any, bits: Any) -> Any:  # pragma: no cover - compiled
    if x.dtype == types.float32:

        def exp32(x: Any, bits: Any) -> None:
            # exp(x) = 2^k · exp(r), k = round(x / ln 2), r = x − k·ln 2 with ln 2 split in two
            # parts (Cody & Waite 1980) so that r is exact; exp(r) on |r| ≤ ln(2)/2 by a degree-6
            # polynomial fitted for relative error (≤ 2e-9 before float32 rounding).
            n = x.size
            scale = bits[:n].view(np.float32)
            for i in range(n):
                xi = x[i]
                y = max(xi, np.float32(-87.0))
                k = np.floor(y * np.float32(1.4426950408889634) + np.float32(0.5))
                r = (y - k * np.float32(0.693359375)) - k * np.float32(-2.12194440e-4)
                p = np.float32(0.00138368)
                p = p * r + np.float32(0.00837482)
                p = p * r + np.float32(0.04166823)
                p = p * r + np.float32(0.1666642)
                p = p * r + np.float32(0.49999992)
                p = p * r + np.float32(1.00000004)
                p = p * r + np.float32(1.0)
                x[i] = p
                # the float 2^k, or +0.0 below the flush bound (EXP_FLUSH_BELOW)
                bits[i] = np.int32(0) if xi < np.float32(EXP_FLUSH_BELOW) else (np.int32(k) + np.int32(127)) << np.int32(23)  # fmt: skip
            for i in range(n):
                x[i] = x[i] * scale[i]

        return exp32

    def exp64(x: Any, bits: Any) -> None:
        for i in range(x.size):
            x[i] = math.exp(x[i])

    return exp64


def cast_like(arr: np.ndarray, x: float) -> Any:
    """x as a scalar of arr's element type (compiled code uses the overload below)."""
    return arr.dtype.type(x)


@overload(cast_like)
def cast_like_impl(arr: Any, x: Any) -> Any:  # pragma: no cover - compiled
    if arr.dtype == types.float32:

        def as32(arr: Any, x: Any) -> Any:
            return np.float32(x)

        return as32

    def as64(arr: Any, x: Any) -> Any:
        return np.float64(x)

    return as64


def _normal_min(arr: np.ndarray) -> Any:
    """The smallest positive normal number of arr's element type (compiled: the overload)."""
    return np.finfo(arr.dtype).tiny


@overload(_normal_min)
def _normal_min_impl(arr: Any) -> Any:  # pragma: no cover - compiled
    if arr.dtype == types.float32:

        def tiny32(arr: Any) -> Any:
            return np.float32(1.1754943508222875e-38)

        return tiny32

    def tiny64(arr: Any) -> Any:
        return np.float64(2.2250738585072014e-308)

    return tiny64


@njit(**_JIT)
def _exp_matrix(x: Any, bits: Any) -> None:  # pragma: no cover - compiled
    """exp in place of a C-contiguous matrix: in one pass when the scratch is large enough."""
    if x.size <= bits.size:
        _exp_inplace(x.reshape(x.size), bits)
    else:
        for r in range(x.shape[0]):
            _exp_inplace(x[r], bits)


@njit(**_JIT)
def _fold(x: Any, tmp: Any, take_max: bool) -> float:  # pragma: no cover - compiled
    """max or sum of x by repeated halving (x[j] with x[j + h], then the halves of that):
    vectorisable, and a fixed order of operations. ``tmp`` needs x.size // 2 elements."""
    n = x.size
    if n == 1:
        return float(x[0])
    h = n // 2
    # the odd leftovers; x[0] is neutral for max (idempotent), 0 for the sum
    extra = x[0] if take_max else x[0] * 0
    if n % 2:
        extra = np.maximum(extra, x[n - 1]) if take_max else extra + x[n - 1]
    for j in range(h):
        tmp[j] = np.maximum(x[j], x[j + h]) if take_max else x[j] + x[j + h]
    while h > 1:
        h2 = h // 2
        if h % 2:
            extra = np.maximum(extra, tmp[h - 1]) if take_max else extra + tmp[h - 1]
        for j in range(h2):
            tmp[j] = np.maximum(tmp[j], tmp[j + h2]) if take_max else tmp[j] + tmp[j + h2]
        h = h2
    return float(np.maximum(tmp[0], extra)) if take_max else float(tmp[0] + extra)


@njit(**_JIT)
def _softmax_rows(z: Any, n_rows: int, tmp: Any, bits: Any) -> None:  # pragma: no cover
    """In place: each of the first ``n_rows`` rows of z (R, V) becomes softmax(row)."""
    v = z.shape[1]
    for r in range(n_rows):
        row = z[r]
        m = cast_like(row, _fold(row, tmp, True))
        for j in range(v):
            row[j] = row[j] - m
    _exp_matrix(z[:n_rows], bits)  # one long vectorised pass
    for r in range(n_rows):
        row = z[r]
        inv = cast_like(row, 1.0 / _fold(row, tmp, False))
        for j in range(v):
            row[j] = row[j] * inv


@njit(**_JIT)
def _rmsnorm_forward(x: Any, g: Any, xhat: Any, rstd: Any, y: Any) -> None:  # pragma: no cover
    """y = x / rms(x) · g row-wise (Zhang & Sennrich 2019); x (T, C)."""
    t_len, c = x.shape
    for t in range(t_len):
        ms = 0.0
        for j in range(c):
            ms += x[t, j] * x[t, j]
        r = 1.0 / math.sqrt(ms / c + RMS_EPS)
        rstd[t] = r
        for j in range(c):
            xh = x[t, j] * r
            xhat[t, j] = xh
            y[t, j] = xh * g[j]


@njit(**_JIT)
def _rmsnorm_backward(
    dy: Any, xhat: Any, rstd: Any, g: Any, dg: Any, dx: Any, accumulate: bool
) -> None:  # pragma: no cover - compiled
    """dx (+)= rstd·(dy·g − xhat·mean(dy·g·xhat)); dg += Σ_t dy·xhat."""
    t_len, c = dy.shape
    for t in range(t_len):
        dot = 0.0
        for j in range(c):
            dot += dy[t, j] * g[j] * xhat[t, j]
        mean = dot / c
        r = rstd[t]
        for j in range(c):
            d = r * (dy[t, j] * g[j] - xhat[t, j] * mean)
            if accumulate:
                dx[t, j] = dx[t, j] + d
            else:
                dx[t, j] = d
    for t in range(t_len):
        for j in range(c):
            dg[j] = dg[j] + dy[t, j] * xhat[t, j]


@njit(**_JIT)
def _activation_forward(pre: Any, out: Any, kind: int) -> None:  # pragma: no cover - compiled
    t_len, f = pre.shape
    for t in range(t_len):
        for j in range(f):
            a = pre[t, j]
            if kind == 0:
                out[t, j] = np.maximum(a, cast_like(out, 0.0))
            elif kind == 1:  # tanh approximation (Hendrycks & Gimpel 2016)
                out[t, j] = 0.5 * a * (1.0 + math.tanh(_GELU_C * (a + 0.044715 * a * a * a)))
            else:
                out[t, j] = a / (1.0 + math.exp(-a))


@njit(**_JIT)
def _activation_backward(pre: Any, da: Any, kind: int) -> None:  # pragma: no cover - compiled
    """da ← da · act'(pre), in place."""
    t_len, f = pre.shape
    for t in range(t_len):
        for j in range(f):
            a = pre[t, j]
            if kind == 0:
                da[t, j] = da[t, j] * (a > 0)
            elif kind == 1:
                th = math.tanh(_GELU_C * (a + 0.044715 * a * a * a))
                dinner = _GELU_C * (1.0 + 3 * 0.044715 * a * a)
                da[t, j] = da[t, j] * (0.5 * (1.0 + th) + 0.5 * a * (1.0 - th * th) * dinner)
            else:
                s = 1.0 / (1.0 + math.exp(-a))
                da[t, j] = da[t, j] * (s * (1.0 + a * (1.0 - s)))


# ====================================================================== the model


@njit(**_JIT)
def _layer_views(flat: Any, offs: Any, dims: Any, layer: int) -> Any:  # pragma: no cover
    c, f = dims[D_C], dims[D_F]
    o = offs[2 + 6 * layer : 8 + 6 * layer]
    ln1 = flat[o[0] : o[0] + c]
    w_qkv = flat[o[1] : o[1] + 3 * c * c].reshape((c, 3 * c))
    w_o = flat[o[2] : o[2] + c * c].reshape((c, c))
    ln2 = flat[o[3] : o[3] + c]
    w_in = flat[o[4] : o[4] + c * f].reshape((c, f))
    w_out = flat[o[5] : o[5] + f * c].reshape((f, c))
    return ln1, w_qkv, w_o, ln2, w_in, w_out


@njit(**_JIT)
def _attention_forward(ws: Any, layer: int, b: int, n_heads: int) -> None:  # pragma: no cover
    """Causal multi-head attention of one window; reads ws.qkv, writes attT, att, yh."""
    qkv = ws.qkv[layer, b]
    t_len, c3 = qkv.shape
    c = c3 // 3
    d = c // n_heads
    scale = cast_like(qkv, 1.0 / math.sqrt(d))
    q_t, v_t = ws.qT[layer, b], ws.vT[layer, b]
    for t in range(t_len):
        for j in range(c):
            q_t[j, t] = qkv[t, j]
            v_t[j, t] = qkv[t, 2 * c + j]
    sc, colm, colinv, y_t = ws.sc, ws.colm, ws.colinv, ws.yT
    for h in range(n_heads):
        hs = h * d
        att_t = ws.attT[layer, b, h]  # [s, t]; zero where t < s (a key after the query)
        # scores[s, t] = k_s · q_t, vectorised over the queries t
        _mm(_strided(qkv[:, c + hs : c + hs + d]), q_t[hs : hs + d], sc, False)
        # every loop below runs over all (s, t) with arithmetic masks so that it vectorises:
        # mask_add is 0 where t ≥ s and −1e30 elsewhere, mask_mul is 1 or 0
        mask_add, mask_mul = ws.mask_add, ws.mask_mul
        for t in range(t_len):
            colm[t] = sc[0, t] * scale
        for s in range(1, t_len):
            row, madd = sc[s], mask_add[s]
            for t in range(t_len):
                colm[t] = np.maximum(colm[t], row[t] * scale + madd[t])
        for s in range(t_len):
            row, src, madd = att_t[s], sc[s], mask_add[s]
            for t in range(t_len):
                row[t] = (src[t] * scale - colm[t]) + madd[t]
        _exp_matrix(att_t, ws.ebits)
        # column sums over the keys s ≤ t, in order of s; then normalise
        for t in range(t_len):
            colinv[t] = att_t[0, t]
        for s in range(1, t_len):
            row, mmul = att_t[s], mask_mul[s]
            for t in range(t_len):
                colinv[t] = colinv[t] + row[t] * mmul[t]
        for t in range(t_len):
            colinv[t] = cast_like(colinv, 1.0) / colinv[t]
        for s in range(t_len):
            row, mmul = att_t[s], mask_mul[s]
            for t in range(t_len):
                row[t] = row[t] * colinv[t] * mmul[t]
        _transpose(att_t, ws.att[layer, b, h])
        # y[t] = Σ_s att[t, s] v_s, computed feature-major: yT[d, t] = Σ_s v[s, d] attT[s, t]
        _mm(_strided(qkv[:, 2 * c + hs : 2 * c + hs + d].T), att_t, y_t[:d], False)
        yh = ws.yh[layer, b]
        for t in range(t_len):
            for j in range(d):
                yh[t, hs + j] = y_t[j, t]


@njit(**_JIT)
def _forward_window(flat: Any, offs: Any, dims: Any, ws: Any, b: int) -> None:  # pragma: no cover
    n_layers, n_heads, act_kind = dims[D_LAYERS], dims[D_H], dims[D_ACT]
    c, t_len, v = dims[D_C], dims[D_T], dims[D_V]
    wte = flat[offs[0] : offs[0] + v * c].reshape((v, c))
    wpe = flat[offs[1] : offs[1] + t_len * c].reshape((t_len, c))
    x = ws.xs[0, b]
    idx = ws.idx[b]
    for t in range(t_len):
        row = wte[idx[t]]
        for j in range(c):
            x[t, j] = row[j] + wpe[t, j]
    for layer in range(n_layers):
        ln1, w_qkv, w_o, ln2, w_in, w_out = _layer_views(flat, offs, dims, layer)
        x = ws.xs[layer, b]
        _rmsnorm_forward(x, ln1, ws.n1x[layer, b], ws.n1r[layer, b], ws.h1[layer, b])
        _mm(_strided(ws.h1[layer, b]), w_qkv, ws.qkv[layer, b], False)
        _attention_forward(ws, layer, b, n_heads)
        xm = ws.xm[layer, b]
        _mm(_strided(ws.yh[layer, b]), w_o, xm, False)
        for t in range(t_len):
            for j in range(c):
                xm[t, j] = x[t, j] + xm[t, j]
        _rmsnorm_forward(xm, ln2, ws.n2x[layer, b], ws.n2r[layer, b], ws.h2[layer, b])
        _mm(_strided(ws.h2[layer, b]), w_in, ws.pre[layer, b], False)
        _activation_forward(ws.pre[layer, b], ws.act[layer, b], act_kind)
        x_next = ws.xs[layer + 1, b]
        _mm(_strided(ws.act[layer, b]), w_out, x_next, False)
        for t in range(t_len):
            for j in range(c):
                x_next[t, j] = xm[t, j] + x_next[t, j]
    ln_f = flat[offs[2 + 6 * n_layers] : offs[2 + 6 * n_layers] + c]
    _rmsnorm_forward(ws.xs[n_layers, b], ln_f, ws.nfx[b], ws.nfr[b], ws.hidden[b])
    if dims[D_TIED]:
        head = ws.head_cv
    else:
        o = offs[3 + 6 * n_layers]
        head = flat[o : o + c * v].reshape((c, v))
    _mm(_strided(ws.hidden[b]), head, ws.probs[b], False)
    _softmax_rows(ws.probs[b], t_len, ws.lanes, ws.ebits)


@njit(**_JIT)
def forward_batch(
    flat: Any, offs: Any, dims: Any, ws: Any, n_windows: int
) -> None:  # pragma: no cover
    """Forward pass over windows ws.idx[:n_windows] (each padded to T)."""
    if dims[D_TIED]:
        c, v = dims[D_C], dims[D_V]
        _transpose(flat[offs[0] : offs[0] + v * c].reshape((v, c)), ws.head_cv)
    for b in range(n_windows):
        _forward_window(flat, offs, dims, ws, b)


@njit(**_JIT)
def _attention_backward(ws: Any, layer: int, b: int, n_heads: int) -> None:  # pragma: no cover
    """From ws.dyh (T, C) to ws.dqkv (T, 3C) for one window."""
    qkv = ws.qkv[layer, b]
    t_len, c3 = qkv.shape
    c = c3 // 3
    d = c // n_heads
    scale = cast_like(qkv, 1.0 / math.sqrt(d))
    dyh, dyh_t = ws.dyh, ws.dyhT
    _transpose(dyh, dyh_t)
    q_t, v_t = ws.qT[layer, b], ws.vT[layer, b]
    datt_t, datt, rows = ws.dattT, ws.datt, ws.colm
    dq_t, dk_t, dv_t = ws.dhT[0], ws.dhT[1], ws.dhT[2]
    for h in range(n_heads):
        hs = h * d
        att_t, att = ws.attT[layer, b, h], ws.att[layer, b, h]
        # dA in both layouts: the same products in the same order, so exact transposes
        _mm(
            _strided(qkv[:, 2 * c + hs : 2 * c + hs + d]), dyh_t[hs : hs + d], datt_t, False
        )  # [s, t]
        _mm(_strided(dyh[:, hs : hs + d]), v_t[hs : hs + d], datt, False)  # [t, s]
        # softmax backward: dS = A ⊙ (dA − Σ_s dA·A) · scale
        for t in range(t_len):
            rows[t] = datt_t[0, t] * att_t[0, t]
        for s in range(1, t_len):
            for t in range(t_len):
                rows[t] = rows[t] + datt_t[s, t] * att_t[s, t]
        for s in range(t_len):
            for t in range(t_len):
                datt_t[s, t] = att_t[s, t] * (datt_t[s, t] - rows[t]) * scale
        for t in range(t_len):
            r = rows[t]
            for s in range(t_len):
                datt[t, s] = att[t, s] * (datt[t, s] - r) * scale
        # dq[t] = Σ_s dS[t, s] k_s ; dk[s] = Σ_t dS[t, s] q_t ; dv[s] = Σ_t A[t, s] dy_t
        _mm(_strided(qkv[:, c + hs : c + hs + d].T), datt_t, dq_t[:d], False)
        _mm(_strided(q_t[hs : hs + d]), datt, dk_t[:d], False)
        _mm(_strided(dyh_t[hs : hs + d]), att, dv_t[:d], False)
        dqkv = ws.dqkv
        for t in range(t_len):
            for j in range(d):
                dqkv[t, hs + j] = dq_t[j, t]
                dqkv[t, c + hs + j] = dk_t[j, t]
                dqkv[t, 2 * c + hs + j] = dv_t[j, t]


@njit(**_JIT)
def _backward_window(
    flat: Any, offs: Any, dims: Any, ws: Any, grads: Any, b: int
) -> None:  # pragma: no cover - compiled
    n_layers, n_heads, act_kind = dims[D_LAYERS], dims[D_H], dims[D_ACT]
    c, t_len, v, tied = dims[D_C], dims[D_T], dims[D_V], dims[D_TIED]
    probs, tgt, wts, dl = ws.probs[b], ws.tgt[b], ws.wts[b], ws.dl
    # dlogits = w·(p − onehot(target)); rows of zero weight are exact zeros
    for t in range(t_len):
        w = wts[t]
        p = probs[t]
        row = dl[t]
        for j in range(v):
            row[j] = p[j] * w
        if w != 0:
            row[tgt[t]] = row[tgt[t]] - w
    hidden = ws.hidden[b]
    dwte = grads[offs[0] : offs[0] + v * c].reshape((v, c))
    if tied:
        _mm(_strided(dl.T), hidden, dwte, True)  # dwte[v, c] += Σ_t dl[t, v] h[t, c]
        _mm(_strided(dl), flat[offs[0] : offs[0] + v * c].reshape((v, c)), ws.dtmp, False)
    else:
        o = offs[3 + 6 * n_layers]
        _mm(_strided(hidden.T), dl, grads[o : o + c * v].reshape((c, v)), True)
        _mm(_strided(dl), ws.head_vc, ws.dtmp, False)
    of = offs[2 + 6 * n_layers]
    dres = ws.dres
    _rmsnorm_backward(ws.dtmp, ws.nfx[b], ws.nfr[b], flat[of : of + c], grads[of : of + c], dres, False)  # fmt: skip
    for layer in range(n_layers - 1, -1, -1):
        ln1, _, _, ln2, _, _ = _layer_views(flat, offs, dims, layer)
        g_ln1, g_qkv, g_o, g_ln2, g_in, g_out = _layer_views(grads, offs, dims, layer)
        # MLP
        _mm(_strided(ws.act[layer, b].T), dres, g_out, True)
        _mm(_strided(dres), ws.woutT[layer], ws.dact, False)
        _activation_backward(ws.pre[layer, b], ws.dact, act_kind)
        _mm(_strided(ws.h2[layer, b].T), ws.dact, g_in, True)
        _mm(_strided(ws.dact), ws.winT[layer], ws.dtmp, False)
        _rmsnorm_backward(ws.dtmp, ws.n2x[layer, b], ws.n2r[layer, b], ln2, g_ln2, dres, True)
        # attention
        _mm(_strided(ws.yh[layer, b].T), dres, g_o, True)
        _mm(_strided(dres), ws.woT[layer], ws.dyh, False)
        _attention_backward(ws, layer, b, n_heads)
        _mm(_strided(ws.h1[layer, b].T), ws.dqkv, g_qkv, True)
        _mm(_strided(ws.dqkv), ws.wqkvT[layer], ws.dtmp, False)
        _rmsnorm_backward(ws.dtmp, ws.n1x[layer, b], ws.n1r[layer, b], ln1, g_ln1, dres, True)
    dwpe = grads[offs[1] : offs[1] + t_len * c].reshape((t_len, c))
    idx = ws.idx[b]
    for t in range(t_len):
        row = dwte[idx[t]]
        for j in range(c):
            row[j] = row[j] + dres[t, j]
            dwpe[t, j] = dwpe[t, j] + dres[t, j]


@njit(**_JIT)
def backward_batch(
    flat: Any, offs: Any, dims: Any, ws: Any, grads: Any, n_windows: int
) -> None:  # pragma: no cover - compiled
    """Adds into ``grads`` the gradient of Σ wts·(−ln p[tgt]) over windows ws[:n_windows]
    (ws.wts already normalised); needs the caches of the forward pass just run."""
    n_layers, c, v = dims[D_LAYERS], dims[D_C], dims[D_V]
    if not dims[D_TIED]:
        o = offs[3 + 6 * n_layers]
        _transpose(flat[o : o + c * v].reshape((c, v)), ws.head_vc)
    for layer in range(n_layers):
        _, w_qkv, w_o, _, w_in, w_out = _layer_views(flat, offs, dims, layer)
        _transpose(w_qkv, ws.wqkvT[layer])
        _transpose(w_o, ws.woT[layer])
        _transpose(w_in, ws.winT[layer])
        _transpose(w_out, ws.woutT[layer])
    for b in range(n_windows):
        _backward_window(flat, offs, dims, ws, grads, b)


@njit(**_JIT)
def backward_nll(
    flat: Any, offs: Any, dims: Any, ws: Any, grads: Any, targets: Any, weights: Any, total: float
) -> float:  # pragma: no cover - compiled
    """Loads targets (B, n) and weights / total (B, n) into the workspace (padded to T),
    runs :func:`backward_batch` and returns :func:`window_nll`: one call from Python."""
    b, n = targets.shape
    t_len = ws.tgt.shape[1]
    for i in range(b):
        for t in range(t_len):
            if t < n:
                ws.tgt[i, t] = targets[i, t]
                ws.wts[i, t] = cast_like(ws.wts, weights[i, t] / total)
            else:
                ws.tgt[i, t] = 0
                ws.wts[i, t] = 0
    backward_batch(flat, offs, dims, ws, grads, b)
    return window_nll(ws, b)


@njit(**_JIT)
def window_nll(ws: Any, n_windows: int) -> float:  # pragma: no cover - compiled
    """Σ wts·(−ln p[tgt]) over the windows (the loss ``backward_batch`` differentiates)."""
    total = 0.0
    t_len = ws.tgt.shape[1]
    for b in range(n_windows):
        for t in range(t_len):
            w = ws.wts[b, t]
            if w != 0:
                total -= float(w) * math.log(float(ws.probs[b, t, ws.tgt[b, t]]))
    return total


# ====================================================================== optimiser


@njit(**_JIT)
def grad_sq_norm(g: Any, lanes: Any) -> float:  # pragma: no cover - compiled
    """Σ g² in 64 fixed lanes (element i goes to lane i mod 64; lanes combined in order):
    vectorisable and deterministic. ``lanes`` is a scratch array of 64 elements of g's type."""
    n = g.size
    w = 64
    nw = n - n % w
    for j in range(w):
        lanes[j] = 0
    for i0 in range(0, nw, w):
        for j in range(w):
            x = g[i0 + j]
            lanes[j] = lanes[j] + x * x
    total = 0.0
    for j in range(w):
        total += float(lanes[j])
    for i in range(nw, n):
        total += float(g[i] * g[i])
    return total


@njit(**_JIT)
def optimizer_step(
    w: Any,
    g: Any,
    m: Any,
    v: Any,
    hyper: Any,
    state: Any,
    lr_scale: float,
    norm: float,
    lo: int,
    hi: int,
) -> int:  # pragma: no cover - compiled
    """One update of the flat weights, the same arithmetic as ``Optimizer.step`` (element-wise
    operations in the same order and precision). ``norm`` is the gradient's global L2 norm;
    ``lr_scale`` applies to the weights ``w[lo:hi]`` (``0, w.size``: all of them), the others
    step at the configured lr. Returns 0 (not applied: non-finite gradient), 1 (applied) or
    2 (applied, clipped)."""
    if not math.isfinite(norm):
        state[O_NONFINITE] += 1
        return 0
    clip = hyper[H_CLIP]
    result = 1
    if clip > 0 and norm > clip:
        f = cast_like(g, clip / norm)
        for i in range(g.size):
            g[i] = g[i] * f
        state[O_CLIPPED] += 1
        result = 2
    state[O_T] += 1
    lo = min(max(lo, 0), w.size)
    hi = min(max(hi, lo), w.size)
    base = hyper[H_LR]
    _step_part(w, g, m, v, hyper, state, base, 0, lo)
    _step_part(w, g, m, v, hyper, state, base * lr_scale, lo, hi)
    _step_part(w, g, m, v, hyper, state, base, hi, w.size)
    return result


@njit(**_JIT)
def _step_part(
    w: Any, g: Any, m: Any, v: Any, hyper: Any, state: Any, lr: float, i0: int, i1: int
) -> None:  # pragma: no cover - compiled
    """``optimizer_step`` on the weights i0 … i1 − 1 at learning rate ``lr`` (after clipping
    and the step count)."""
    if i1 <= i0:
        return
    t = state[O_T]
    if hyper[H_WD] != 0:
        decay = cast_like(w, 1.0 - lr * hyper[H_WD])
        for i in range(i0, i1):
            w[i] = w[i] * decay
    if hyper[H_ADAM] == 0:
        mom = hyper[H_MOM]
        lr_c = cast_like(w, lr)
        if mom != 0:
            mom_c = cast_like(w, mom)
            for i in range(i0, i1):
                mi = m[i] * mom_c + g[i]
                m[i] = mi
                w[i] = w[i] - mi * lr_c
        else:
            for i in range(i0, i1):
                w[i] = w[i] - g[i] * lr_c
        return
    b1, b2 = hyper[H_B1], hyper[H_B2]
    b1c = cast_like(w, b1)
    b2c = cast_like(w, b2)
    omb1 = cast_like(w, (1.0 - b1))
    omb2 = cast_like(w, (1.0 - b2))
    corr2 = math.sqrt(1.0 - b2**t)
    step = cast_like(w, lr * corr2 / (1.0 - b1**t))
    eps = cast_like(w, hyper[H_EPS] * corr2)
    tiny, zero = _normal_min(w), cast_like(w, 0.0)
    for i in range(i0, i1):
        gi = g[i]
        mi = m[i] * b1c + gi * omb1
        vi = v[i] * b2c + gi * gi * omb2
        # moments below the normal range are flushed to 0 (see Optimizer.step)
        mi = mi if abs(mi) >= tiny else zero
        vi = vi if vi >= tiny else zero
        m[i] = mi
        v[i] = vi
        w[i] = w[i] - mi / (np.sqrt(vi) + eps) * step


@functools.lru_cache(maxsize=64)
def _hyper_of(cfg: Any) -> np.ndarray:
    """``optimizer_hyper`` of a (frozen, hashable) OptimConfig, computed once; read-only."""
    hyper = optimizer_hyper(cfg)
    hyper.flags.writeable = False
    return hyper


def optimizer_hyper(cfg: Any) -> np.ndarray:
    """The optimiser settings as the vector ``optimizer_step`` reads."""
    return np.array(
        [cfg.lr, cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, cfg.momentum,
         cfg.grad_clip, 1.0 if cfg.name == "adam" else 0.0],
        dtype=np.float64,
    )  # fmt: skip


def step_optimizer(
    opt: Any,
    w: np.ndarray,
    g: np.ndarray,
    lr_scale: float = 1.0,
    span: tuple[int, int] | None = None,
) -> Any:
    """``Optimizer.step`` on the compiled kernel: updates ``opt``'s state and counters the same
    way and returns an ``UpdateInfo``."""
    lanes = np.empty(64, dtype=g.dtype)
    norm = math.sqrt(grad_sq_norm(g, lanes))
    state = np.array([opt.t, opt.nonfinite_steps, opt.clipped_steps], dtype=np.int64)
    lo, hi = (0, w.size) if span is None else span
    hyper = _hyper_of(opt.cfg)
    applied = optimizer_step(w, g, opt.m, opt.v, hyper, state, lr_scale, norm, lo, hi)
    opt.t, opt.nonfinite_steps, opt.clipped_steps = int(state[0]), int(state[1]), int(state[2])
    return UpdateInfo(applied > 0, norm, applied == 2, opt.cfg.lr * lr_scale)


# ====================================================================== Python interface


@dataclass
class FastActivations:
    """The forward pass's outputs, as views into the model's workspace (valid until the next
    forward). Same fields as :class:`mugpt.model.gpt.Activations`."""

    idx: np.ndarray  # (B, n)
    probs: np.ndarray  # (B, n, V)
    hidden: np.ndarray  # (B, n, C)
    workspace: Workspace | None
    att: np.ndarray | None = None  # (L, B, H, n, n) once detached

    def attention(self, layer: int = 0) -> np.ndarray:
        """Attention probabilities of one layer, (B, H, n, n) (a copy)."""
        if self.att is not None:
            return self.att[layer].copy()
        assert self.workspace is not None
        b, n = self.idx.shape
        return self.workspace.att[layer, :b, :, :n, :n].copy()

    def detach(self) -> FastActivations:
        """A copy that later forward passes cannot overwrite."""
        if self.workspace is None:
            return self
        b, n = self.idx.shape
        return FastActivations(
            idx=self.idx.copy(),
            probs=self.probs.copy(),
            hidden=self.hidden.copy(),
            workspace=None,
            att=self.workspace.att[:, :b, :, :n, :n].copy(),
        )

    def own(self) -> None:
        """Copies the workspace views into this object (as :meth:`detach`, in place)."""
        if self.workspace is not None:
            copy = self.detach()
            self.probs, self.hidden, self.att = copy.probs, copy.hidden, copy.att
            self.workspace = None


class FastGPT:
    """The GPT of ``gpt.py`` on numba kernels, with the same ``forward``/``backward`` API.

    Example:
        >>> import numpy as np
        >>> model = FastGPT(ModelConfig())
        >>> acts = model.forward(np.array([[256, 104, 105]]))
        >>> acts.probs.shape, acts.attention(0).shape
        ((1, 3, 257), (1, 4, 3, 3))
    """

    backend = "numba"

    def __init__(self, cfg: ModelConfig, params: ParamBuffer | None = None, batch: int = 1):
        self.cfg = cfg
        self.params = params if params is not None else init_params(cfg)
        self.dtype = np.dtype(cfg.dtype)
        self.offsets = param_offsets(self.params)
        self.dims = model_dims(cfg)
        self.ws = make_workspace(cfg, max(1, batch))
        self._forwarded = 0  # windows in the workspace from the last forward
        self._pinned: FastActivations | None = None
        self._hyper: tuple[Any, np.ndarray] | None = None  # (optimiser config, its vector)
        self._twin: FastGPT | None = None

    def pin(self, acts: FastActivations | None) -> None:
        """Keeps ``acts`` valid: the next forward pass copies it out of the workspace before
        overwriting it (a Learner pins its last step's activations for the lab's views, and
        unpins them, with ``None``, when its next step replaces them)."""
        self._pinned = acts

    def release(self) -> None:
        """Before kernels write the workspace directly (not through ``forward``): copies out
        the activations pinned there."""
        if self._pinned is not None:
            self._pinned.own()
            self._pinned = None

    def grad_norm(self, grads: np.ndarray) -> float:
        return math.sqrt(grad_sq_norm(grads, np.empty(64, dtype=grads.dtype)))

    def optimizer_step(
        self,
        optimizer: Any,
        grads: np.ndarray,
        lr_scale: float,
        span: tuple[int, int] | None = None,
    ) -> UpdateInfo:
        return step_optimizer(optimizer, self.params.flat, grads, lr_scale, span)

    def twin(self) -> FastGPT:
        if self._twin is None:
            self._twin = FastGPT(self.cfg, self.params)
        return self._twin

    def ensure_batch(self, batch: int) -> None:
        """Grows the workspace to hold ``batch`` windows."""
        if batch > self.ws.idx.shape[0]:
            self.ws = make_workspace(self.cfg, batch)

    def forward(self, idx: np.ndarray) -> FastActivations:
        """idx (B, n) with n ≤ context → activations with probs (B, n, V)."""
        b, n = idx.shape
        assert 0 < n <= self.cfg.context, idx.shape
        if self._pinned is not None:
            self._pinned.own()
            self._pinned = None
        self.ensure_batch(b)
        ws = self.ws
        ws.idx[:b, :n] = idx
        ws.idx[:b, n:] = 0
        forward_batch(self.params.flat, self.offsets, self.dims, ws, b)
        self._forwarded = b
        return FastActivations(idx=np.array(idx), probs=ws.probs[:b, :n], hidden=ws.hidden[:b, :n], workspace=ws)  # fmt: skip

    def backward(
        self, acts: Any, targets: np.ndarray, weights: np.ndarray, grads: ParamBuffer
    ) -> float:
        """Same contract as :meth:`GPT.backward`; ``acts`` must come from the latest forward."""
        b = targets.shape[0]
        assert acts.workspace is self.ws and b == self._forwarded, "stale activations"
        total = float(weights.sum())
        assert total > 0, "backward needs at least one weighted position"
        return float(
            backward_nll(
                self.params.flat, self.offsets, self.dims, self.ws, grads.flat,
                np.ascontiguousarray(targets, dtype=np.int64),
                np.ascontiguousarray(weights, dtype=np.float64), total,
            )
        )  # fmt: skip


def numba_available() -> bool:
    """True when the compiled backend can be used (numba imported; always, once this module
    imports)."""
    return True


__all__ = [
    "FastActivations",
    "FastGPT",
    "Workspace",
    "backward_batch",
    "backward_nll",
    "forward_batch",
    "grad_sq_norm",
    "make_workspace",
    "optimizer_hyper",
    "optimizer_step",
    "step_optimizer",
]
