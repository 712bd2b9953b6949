"""Each layer's forward and backward, side by side.

Shapes use B (batch of windows), T (positions), C (d_model), H (heads), D (head dim),
F (MLP width), V (vocabulary). A forward returns its output and the cache its backward needs;
a backward takes the upstream gradient and that cache, adds parameter gradients into the
given arrays (``+=``, so tied weights accumulate) and returns the gradient of its input.
"""

from __future__ import annotations

import numpy as np

from mugpt.model.constants import RMS_EPS

_GELU_C = np.sqrt(2.0 / np.pi)


# ---------------------------------------------------------------- embedding


def embedding_forward(wte: np.ndarray, wpe: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Token plus learned absolute position embeddings. idx (B, T) → x (B, T, C)."""
    t = idx.shape[1]
    return wte[idx] + wpe[:t]


def embedding_backward(dx: np.ndarray, idx: np.ndarray, dwte: np.ndarray, dwpe: np.ndarray) -> None:
    """Scatter-adds dx (B, T, C) into the rows of the used tokens and positions."""
    t = idx.shape[1]
    np.add.at(dwte, idx.reshape(-1), dx.reshape(-1, dx.shape[-1]))
    dwpe[:t] += dx.sum(axis=0)


# ---------------------------------------------------------------- RMSNorm


def rmsnorm_forward(x: np.ndarray, gain: np.ndarray) -> tuple[np.ndarray, tuple]:
    """y = x / rms(x) · gain (Zhang & Sennrich 2019). x (B, T, C)."""
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS)  # (B, T, 1)
    xhat = x * rstd
    return xhat * gain, (xhat, rstd, gain)


def rmsnorm_backward(dy: np.ndarray, cache: tuple, dgain: np.ndarray) -> np.ndarray:
    xhat, rstd, gain = cache
    dgain += np.einsum("btc,btc->c", dy, xhat)
    dxhat = dy * gain
    # d/dx of x·rstd: rstd·(dxhat − xhat·mean(dxhat·xhat))
    return rstd * (dxhat - xhat * np.mean(dxhat * xhat, axis=-1, keepdims=True))


# ---------------------------------------------------------------- causal self-attention


def attention_forward(
    x: np.ndarray, w_qkv: np.ndarray, w_o: np.ndarray, n_heads: int
) -> tuple[np.ndarray, tuple]:
    """Multi-head causal self-attention (Vaswani et al. 2017) without biases.

    x (B, T, C) → y (B, T, C). The cache keeps q, k, v and the attention probabilities."""
    b, t, c = x.shape
    d = c // n_heads
    qkv = x @ w_qkv  # (B, T, 3C)
    qkv = qkv.reshape(b, t, 3, n_heads, d).transpose(2, 0, 3, 1, 4)  # (3, B, H, T, D)
    q, k, v = qkv[0], qkv[1], qkv[2]
    scale = 1.0 / np.sqrt(d)
    scores = (q @ k.transpose(0, 1, 3, 2)) * scale  # (B, H, T, T)
    mask = np.triu(np.ones((t, t), dtype=bool), k=1)
    scores[..., mask] = -np.inf
    scores -= scores.max(axis=-1, keepdims=True)
    att = np.exp(scores)
    att /= att.sum(axis=-1, keepdims=True)  # (B, H, T, T)
    heads = att @ v  # (B, H, T, D)
    y_heads = heads.transpose(0, 2, 1, 3).reshape(b, t, c)  # (B, T, C)
    y = y_heads @ w_o
    return y, (x, q, k, v, att, y_heads, scale)


def attention_backward(
    dy: np.ndarray,
    cache: tuple,
    w_qkv: np.ndarray,
    w_o: np.ndarray,
    dw_qkv: np.ndarray,
    dw_o: np.ndarray,
) -> np.ndarray:
    x, q, k, v, att, y_heads, scale = cache
    b, t, c = x.shape
    n_heads, d = q.shape[1], q.shape[3]
    dw_o += y_heads.reshape(-1, c).T @ dy.reshape(-1, c)
    dheads = (dy @ w_o.T).reshape(b, t, n_heads, d).transpose(0, 2, 1, 3)  # (B, H, T, D)
    datt = dheads @ v.transpose(0, 1, 3, 2)  # (B, H, T, T)
    dv = att.transpose(0, 1, 3, 2) @ dheads  # (B, H, T, D)
    # softmax backward; masked entries have att = 0 so their gradient vanishes
    dscores = att * (datt - np.sum(datt * att, axis=-1, keepdims=True))
    dscores *= scale
    dq = dscores @ k
    dk = dscores.transpose(0, 1, 3, 2) @ q
    dqkv = np.stack([dq, dk, dv])  # (3, B, H, T, D)
    dqkv = dqkv.transpose(1, 3, 0, 2, 4).reshape(b, t, 3 * c)  # (B, T, 3C)
    dw_qkv += x.reshape(-1, c).T @ dqkv.reshape(-1, 3 * c)
    return dqkv @ w_qkv.T


# ---------------------------------------------------------------- MLP


def activation_forward(a: np.ndarray, kind: str) -> np.ndarray:
    if kind == "relu":
        return np.maximum(a, 0.0)
    if kind == "gelu":  # tanh approximation (Hendrycks & Gimpel 2016)
        return 0.5 * a * (1.0 + np.tanh(_GELU_C * (a + 0.044715 * a**3)))
    if kind == "silu":
        return a / (1.0 + np.exp(-a))
    raise AssertionError(kind)


def activation_backward(da: np.ndarray, a: np.ndarray, kind: str) -> np.ndarray:
    if kind == "relu":
        return da * (a > 0)
    if kind == "gelu":
        inner = _GELU_C * (a + 0.044715 * a**3)
        th = np.tanh(inner)
        dinner = _GELU_C * (1.0 + 3 * 0.044715 * a**2)
        return da * (0.5 * (1.0 + th) + 0.5 * a * (1.0 - th * th) * dinner)
    if kind == "silu":
        s = 1.0 / (1.0 + np.exp(-a))
        return da * (s * (1.0 + a * (1.0 - s)))
    raise AssertionError(kind)


def mlp_forward(
    x: np.ndarray, w_in: np.ndarray, w_out: np.ndarray, kind: str
) -> tuple[np.ndarray, tuple]:
    """x (B, T, C) → W_out·act(W_in·x) (B, T, C); no biases."""
    pre = x @ w_in  # (B, T, F)
    act = activation_forward(pre, kind)
    return act @ w_out, (x, pre, act, kind)


def mlp_backward(
    dy: np.ndarray,
    cache: tuple,
    w_in: np.ndarray,
    w_out: np.ndarray,
    dw_in: np.ndarray,
    dw_out: np.ndarray,
) -> np.ndarray:
    x, pre, act, kind = cache
    c, f = w_in.shape
    dw_out += act.reshape(-1, f).T @ dy.reshape(-1, c)
    dpre = activation_backward(dy @ w_out.T, pre, kind)  # (B, T, F)
    dw_in += x.reshape(-1, c).T @ dpre.reshape(-1, f)
    return dpre @ w_in.T


# ---------------------------------------------------------------- softmax cross-entropy


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def cross_entropy_backward(
    probs: np.ndarray, targets: np.ndarray, weights: np.ndarray
) -> np.ndarray:
    """Gradient of Σ weights·(−ln p[target]) with respect to the logits (B, T, V)."""
    dlogits = probs * weights[..., None]
    b_idx, t_idx = np.nonzero(weights)
    dlogits[b_idx, t_idx, targets[b_idx, t_idx]] -= weights[b_idx, t_idx]
    return dlogits
