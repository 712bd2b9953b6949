"""The model diagram's data: the network's parts with shapes and parameter counts, and what
flows through them on the current window.

:func:`architecture` describes a configuration (no weights needed): the embedding, each block
(its attention heads and MLP), the final norm and the head, each with its tensors' shapes and
exact parameter count. :func:`live_view` runs the readable NumPy forward of
:mod:`mugpt.model.layers` once on the last window with the model's current weights (read
only) and reports, for the window's last position, how large the residual stream is after
each part, where each head looks and how sharply, how many MLP units fire, and what the head
predicts. The page lights the diagram with it.

Example:
    >>> from mugpt.model import ModelConfig
    >>> arch = architecture(ModelConfig(n_layers=2))
    >>> [part["id"] for part in arch["parts"]]
    ['embed', 'block0', 'block1', 'ln_f', 'head']
    >>> arch["params"] == ModelConfig(n_layers=2).n_params
    True
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: Most window positions whose symbols the live view lists.
TOKENS_SHOWN = 16


def _count(shapes: list[tuple[str, tuple[int, ...]]]) -> int:
    return int(sum(math.prod(shape) for _, shape in shapes))


def architecture(cfg: Any) -> dict[str, Any]:
    """The parts of a model of configuration ``cfg`` (a ModelConfig), in the order the data
    flows, with tensor shapes and parameter counts (they add up to ``cfg.n_params``)."""
    from mugpt.model.params import param_shapes

    shapes = dict(param_shapes(cfg))
    c, t, v = cfg.d_model, cfg.context, cfg.vocab_size
    parts: list[dict[str, Any]] = []
    embed = [("wte", shapes["wte"]), ("wpe", shapes["wpe"])]
    parts.append(
        {
            "id": "embed",
            "label": "embedding",
            "what": f"each of the {v} symbols and each of the {t} positions has a vector of "
            f"{c} numbers; their sum starts the residual stream",
            "tensors": [[n, list(s)] for n, s in embed],
            "params": _count(embed),
            "out": [t, c],
        }
    )
    for layer in range(cfg.n_layers):
        p = f"h{layer}."
        attn = [(p + n, shapes[p + n]) for n in ("ln1", "attn.w_qkv", "attn.w_o")]
        mlp = [(p + n, shapes[p + n]) for n in ("ln2", "mlp.w_in", "mlp.w_out")]
        parts.append(
            {
                "id": f"block{layer}",
                "label": f"block {layer + 1}",
                "layer": layer,
                "attention": {
                    "heads": cfg.n_heads,
                    "head_dim": cfg.head_dim,
                    "tensors": [[n, list(s)] for n, s in attn],
                    "params": _count(attn),
                },
                "mlp": {
                    "width": cfg.d_ff,
                    "activation": cfg.activation,
                    "tensors": [[n, list(s)] for n, s in mlp],
                    "params": _count(mlp),
                },
                "params": _count(attn) + _count(mlp),
                "out": [t, c],
            }
        )
    parts.append(
        {
            "id": "ln_f",
            "label": "final norm",
            "tensors": [["ln_f", list(shapes["ln_f"])]],
            "params": _count([("ln_f", shapes["ln_f"])]),
            "out": [t, c],
        }
    )
    head = [("lm_head", shapes["lm_head"])] if "lm_head" in shapes else []
    parts.append(
        {
            "id": "head",
            "label": "head (tied to the embedding)" if cfg.tied_head else "head",
            "tensors": [[n, list(s)] for n, s in head] or [["wte (shared)", [v, c]]],
            "params": _count(head),
            "out": [t, v],
        }
    )
    total = sum(part["params"] for part in parts)
    return {
        "n_layers": cfg.n_layers,
        "d_model": c,
        "n_heads": cfg.n_heads,
        "head_dim": cfg.head_dim,
        "d_ff": cfg.d_ff,
        "context": t,
        "vocab": v,
        "params": int(total),
        "parts": parts,
    }


def _rms(x: np.ndarray) -> float:
    return round(float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))), 4)


def live_view(params: Any, cfg: Any, window: np.ndarray) -> dict[str, Any]:
    """What the current weights do with ``window`` (symbols, at most ``cfg.context``), seen
    at its last position: ``stream`` (the residual stream's RMS after the embedding and after
    each attention and MLP), ``layers`` (per layer: each head's strongest look-back in
    positions, its weight and the attention's entropy in bits; the attention's and the MLP's
    output RMS; the share of MLP units above zero) and ``head`` (the likeliest next symbol, its
    probability, the entropy of the prediction in bits). ``params`` maps names to arrays (a
    ParamBuffer); nothing is written to them.

    >>> from mugpt.model import ModelConfig
    >>> from mugpt.model.params import init_params
    >>> cfg = ModelConfig()
    >>> view = live_view(init_params(cfg), cfg, np.array([256, 104, 105]))
    >>> len(view["layers"]), len(view["layers"][0]["heads"]), len(view["stream"])
    (1, 4, 3)
    """
    from mugpt.model import layers as L

    idx = np.asarray(window, dtype=np.int64)[-cfg.context :][None, :]  # (1, T)
    x = L.embedding_forward(params["wte"], params["wpe"], idx).astype(np.float64)  # (1, T, C)
    stream = [{"after": "embedding", "rms": _rms(x[0, -1])}]
    layers = []
    for layer in range(cfg.n_layers):
        p = f"h{layer}."
        h, _ = L.rmsnorm_forward(x, params[p + "ln1"])
        a, cache = L.attention_forward(h, params[p + "attn.w_qkv"], params[p + "attn.w_o"], cfg.n_heads)  # fmt: skip
        att = cache[4][0, :, -1, :]  # (H, T): where the last position looks
        x = x + a
        stream.append({"after": f"block {layer + 1} attention", "rms": _rms(x[0, -1])})
        h, _ = L.rmsnorm_forward(x, params[p + "ln2"])
        m, mcache = L.mlp_forward(h, params[p + "mlp.w_in"], params[p + "mlp.w_out"], cfg.activation)  # fmt: skip
        x = x + m
        stream.append({"after": f"block {layer + 1} MLP", "rms": _rms(x[0, -1])})
        heads = []
        n = att.shape[-1]
        for row in att:
            row = np.asarray(row, dtype=np.float64)
            peak = int(np.argmax(row))
            nz = row[row > 0]
            heads.append(
                {
                    "back": n - 1 - peak,  # 0 = the last symbol itself
                    "weight": round(float(row[peak]), 4),
                    "entropy_bits": round(float(-(nz * np.log2(nz)).sum()), 4),
                }
            )
        layers.append(
            {
                "layer": layer,
                "heads": heads,
                "attn_rms": _rms(a[0, -1]),
                "mlp_rms": _rms(m[0, -1]),
                "mlp_active": round(float(np.mean(mcache[2][0, -1] > 0)), 4),
            }
        )
    hidden, _ = L.rmsnorm_forward(x, params["ln_f"])
    head_w = params["wte"].T if cfg.tied_head else params["lm_head"]
    probs = L.softmax((hidden[0, -1] @ head_w).astype(np.float64))  # (V,)
    top = int(np.argmax(probs))
    nz = probs[probs > 0]
    return {
        "positions": int(idx.shape[1]),
        "tokens": [int(s) for s in idx[0, -TOKENS_SHOWN:]],
        "stream": stream,
        "layers": layers,
        "head": {
            "top": top,
            "p": round(float(probs[top]), 4),
            "entropy_bits": round(float(-(nz * np.log2(nz)).sum()), 4),
        },
    }
