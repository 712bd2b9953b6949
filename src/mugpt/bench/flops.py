"""Analytic floating-point operation counts of one prequential step, and per byte.

The count (documented in docs/bench.md) is the usual one for transformers (Kaplan et al.
2020, "Scaling laws for neural language models", §2.1): every multiply-add of a matrix
product is 2 FLOPs, the backward pass costs twice the forward pass (gradients with respect to
the inputs and to the weights), and attention counts only the causal half it needs. For a
window of ``T`` positions, ``L`` layers, width ``C``, MLP width ``F``, vocabulary ``V``:

    forward  = T · L · (2·3C² + 2·C² + 2·2·C·F)   # qkv, output projection, MLP
             + L · 2 · 2 · C · T(T+1)/2           # scores q·k and the weighted sum of v
             + T · 2 · C · V                       # the head
    backward = 2 · forward
    optimiser = 14 · N                              # Adam: moments, sqrt, divide, update;
                                                    # the global norm; per parameter

Element-wise work (norms, softmax, activations, embeddings) is not counted. A step of
``B`` windows predicts ``B · k`` bytes, so FLOPs per byte = (B · (forward + backward) +
optimiser) / (B · k). Short windows at the very start of a stream are ignored (the count
uses full windows).

Example:
    >>> from mugpt.model import ModelConfig
    >>> f = step_flops(ModelConfig())
    >>> f["forward"], f["backward"], f["optimizer"]
    (493568, 987136, 165984)
    >>> round(flops_per_byte(ModelConfig(), update_every=32))
    51459
"""

from __future__ import annotations

from mugpt.model import ModelConfig

ADAM_FLOPS_PER_PARAM = 14


def step_flops(cfg: ModelConfig) -> dict[str, int]:
    """FLOPs of one step on one full window: forward, backward and the optimiser update."""
    t, c, f, v, n_layers = cfg.context, cfg.d_model, cfg.d_ff, cfg.vocab_size, cfg.n_layers
    dense = t * n_layers * (2 * 3 * c * c + 2 * c * c + 2 * 2 * c * f)
    attention = n_layers * 2 * 2 * c * (t * (t + 1) // 2)
    head = t * 2 * c * v
    forward = dense + attention + head
    return {
        "forward": forward,
        "backward": 2 * forward,
        "optimizer": ADAM_FLOPS_PER_PARAM * cfg.n_params,
    }


def flops_per_byte(cfg: ModelConfig, update_every: int = 1, batch_streams: int = 1) -> float:
    """FLOPs spent per predicted byte by a step of ``batch_streams`` windows of k new bytes."""
    f = step_flops(cfg)
    per_step = batch_streams * (f["forward"] + f["backward"]) + f["optimizer"]
    return per_step / (batch_streams * update_every)
