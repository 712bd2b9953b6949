"""The byte-level decoder-only transformer: forward over a batch of windows and its
hand-written backward, layer by layer (pre-norm blocks, Radford et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from mugpt.model import layers as L
from mugpt.model.config import ModelConfig
from mugpt.model.optim import Optimizer, UpdateInfo
from mugpt.model.params import ParamBuffer, init_params


@dataclass
class Activations:
    """What one forward pass keeps for its backward (and for the lab's views)."""

    idx: np.ndarray  # (B, T) input symbols
    probs: np.ndarray  # (B, T, V) next-symbol distribution at every position
    hidden: np.ndarray  # (B, T, C) final-normed hidden state that feeds lm_head
    blocks: list[tuple] = field(default_factory=list)  # per layer: (ln1, attn, ln2, mlp)
    ln_f: tuple = ()

    def attention(self, layer: int = 0) -> np.ndarray:
        """Attention probabilities of one layer, (B, H, T, T)."""
        return self.blocks[layer][1][4]


class GPT:
    """Parameters plus forward/backward.

    Example:
        >>> import numpy as np
        >>> model = GPT(ModelConfig())
        >>> idx = np.array([[256, 104, 105]])  # BOS, "h", "i"
        >>> acts = model.forward(idx)
        >>> acts.probs.shape, bool(np.allclose(acts.probs.sum(-1), 1.0, atol=1e-5))
        ((1, 3, 257), True)
        >>> grads = model.params.like()
        >>> loss = model.backward(acts, np.array([[104, 105, 33]]), np.ones((1, 3)), grads)
        >>> bool(abs(loss - np.log(257)) < 0.3)  # a fresh model is near uniform
        True
    """

    backend = "numpy"

    def __init__(self, cfg: ModelConfig, params: ParamBuffer | None = None) -> None:
        self.cfg = cfg
        self.params = params if params is not None else init_params(cfg)
        self.dtype = np.dtype(cfg.dtype)

    # the rest of the model protocol (mugpt.model.protocol.Model)

    def pin(self, acts: Activations | None) -> None:
        """Activations are never overwritten here: nothing to keep."""

    def release(self) -> None:
        """No shared buffers: nothing to copy out."""

    def grad_norm(self, grads: np.ndarray) -> float:
        return float(np.sqrt(np.dot(grads, grads)))

    def optimizer_step(
        self,
        optimizer: Optimizer,
        grads: np.ndarray,
        lr_scale: float,
        span: tuple[int, int] | None = None,
    ) -> UpdateInfo:
        return optimizer.step(self.params.flat, grads, lr_scale, span)

    def twin(self) -> GPT:
        return self

    def _head(self) -> np.ndarray:
        p = self.params
        return p["wte"].T if self.cfg.tied_head else p["lm_head"]  # (C, V)

    def forward(self, idx: np.ndarray) -> Activations:
        """idx (B, T) with T ≤ context → activations with probs (B, T, V)."""
        cfg, p = self.cfg, self.params
        assert idx.ndim == 2 and 0 < idx.shape[1] <= cfg.context, idx.shape
        x = L.embedding_forward(p["wte"], p["wpe"], idx)  # (B, T, C)
        blocks = []
        for layer in range(cfg.n_layers):
            pre = f"h{layer}."
            h, ln1 = L.rmsnorm_forward(x, p[pre + "ln1"])
            a, attn = L.attention_forward(
                h, p[pre + "attn.w_qkv"], p[pre + "attn.w_o"], cfg.n_heads
            )
            x = x + a
            h, ln2 = L.rmsnorm_forward(x, p[pre + "ln2"])
            m, mlp = L.mlp_forward(h, p[pre + "mlp.w_in"], p[pre + "mlp.w_out"], cfg.activation)
            x = x + m
            blocks.append((ln1, attn, ln2, mlp))
        hidden, ln_f = L.rmsnorm_forward(x, p["ln_f"])
        probs = L.softmax(hidden @ self._head())  # (B, T, V)
        return Activations(idx=idx, probs=probs, hidden=hidden, blocks=blocks, ln_f=ln_f)

    def backward(
        self, acts: Activations, targets: np.ndarray, weights: np.ndarray, grads: ParamBuffer
    ) -> float:
        """Accumulates into ``grads`` the gradient of the weighted mean cross-entropy (nats)
        over positions with weight > 0, and returns that loss.

        targets (B, T) symbols; weights (B, T) ≥ 0 (0 masks a position, e.g. a BOS target)."""
        cfg, p = self.cfg, self.params
        total = float(weights.sum())
        assert total > 0, "backward needs at least one weighted position"
        w = (weights / total).astype(self.dtype)
        b_idx, t_idx = np.nonzero(w)
        picked = acts.probs[b_idx, t_idx, targets[b_idx, t_idx]]
        loss = float(-(w[b_idx, t_idx] * np.log(picked)).sum())

        dlogits = L.cross_entropy_backward(acts.probs, targets, w)  # (B, T, V)
        c, v = cfg.d_model, cfg.vocab_size
        hidden_flat = acts.hidden.reshape(-1, c)
        dlogits_flat = dlogits.reshape(-1, v)
        if cfg.tied_head:
            grads["wte"] += dlogits_flat.T @ hidden_flat
        else:
            grads["lm_head"] += hidden_flat.T @ dlogits_flat
        dx = L.rmsnorm_backward(dlogits @ self._head().T, acts.ln_f, grads["ln_f"])
        for layer in reversed(range(cfg.n_layers)):
            pre = f"h{layer}."
            ln1, attn, ln2, mlp = acts.blocks[layer]
            dh = L.mlp_backward(
                dx, mlp, p[pre + "mlp.w_in"], p[pre + "mlp.w_out"],
                grads[pre + "mlp.w_in"], grads[pre + "mlp.w_out"],
            )  # fmt: skip
            dx = dx + L.rmsnorm_backward(dh, ln2, grads[pre + "ln2"])
            dh = L.attention_backward(
                dx, attn, p[pre + "attn.w_qkv"], p[pre + "attn.w_o"],
                grads[pre + "attn.w_qkv"], grads[pre + "attn.w_o"],
            )  # fmt: skip
            dx = dx + L.rmsnorm_backward(dh, ln1, grads[pre + "ln1"])
        L.embedding_backward(dx, acts.idx, grads["wte"], grads["wpe"])
        return loss
