"""A PyTorch eager implementation of μGPT's model and prequential protocol, for benchmarks.

The same architecture (pre-norm RMSNorm blocks, causal multi-head attention without biases,
MLP, final RMSNorm, untied or tied head, learned positions, 257 symbols), the same initial
weights (copied from :func:`mugpt.model.init_params`), the same protocol (``update_every``
bytes per step scored before one update on the window, ``window_loss`` "all" or "new", BOS at
the stream start and at document starts), the same optimiser arithmetic (Adam with the bias
corrections folded as in :class:`mugpt.model.Optimizer`, global-norm clipping, SGD) — written
the way a PyTorch user would: tensors, ``autograd``, one call per operation. It exists to
measure what the hand-written compiled path buys; its bpb matches μGPT's up to float32
rounding.

Needs the optional extra ``torch`` (``pip install mugpt[torch]``).

Example:
    >>> from mugpt.engine.config import RunConfig
    >>> learner = TorchLearner(RunConfig())
    >>> losses = learner.run(b"hello hello hello")
    >>> losses.shape
    (17,)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mugpt.errors import ConfigError
from mugpt.model import BOS, init_params
from mugpt.model.constants import PROB_FLOOR, RMS_EPS


class TorchLearner:
    """μGPT's protocol in PyTorch eager mode (no mechanisms, one stream)."""

    def __init__(self, run_config: Any, threads: int = 1) -> None:
        import torch

        if run_config.mechanisms:
            raise ConfigError("the PyTorch reference implements no mechanisms; drop them")
        if run_config.learner.batch_streams != 1:
            raise ConfigError("the PyTorch reference runs one stream (batch_streams = 1)")
        self.torch = torch
        torch.set_num_threads(threads)
        self.cfg = run_config.model
        self.optim = run_config.optim
        self.k = run_config.learner.update_every
        self.new_only = run_config.learner.window_loss == "new"
        dtype = torch.float32 if self.cfg.dtype == "float32" else torch.float64
        init = init_params(self.cfg)
        self.params = {
            name: torch.tensor(np.array(init[name]), dtype=dtype, requires_grad=True)
            for name in init
        }
        self.state = {n: (torch.zeros_like(p), torch.zeros_like(p)) for n, p in self.params.items()}  # fmt: skip
        self.t = 0
        self.history: list[int] = []
        mask = torch.triu(torch.ones(self.cfg.context, self.cfg.context, dtype=torch.bool), 1)
        self.mask = mask

    def _forward(self, idx: Any) -> Any:
        """Logits (n, V) of one window idx (n,)."""
        torch, cfg, p = self.torch, self.cfg, self.params
        n = idx.shape[0]
        h, d, c = cfg.n_heads, cfg.head_dim, cfg.d_model
        x = p["wte"][idx] + p["wpe"][:n]

        def rms(z: Any, g: Any) -> Any:
            return z * torch.rsqrt((z * z).mean(-1, keepdim=True) + RMS_EPS) * g

        act = {
            "relu": torch.relu,
            "gelu": lambda a: torch.nn.functional.gelu(a, approximate="tanh"),
            "silu": torch.nn.functional.silu,
        }[cfg.activation]
        mask = self.mask[:n, :n]
        for layer in range(cfg.n_layers):
            pre = f"h{layer}."
            qkv = rms(x, p[pre + "ln1"]) @ p[pre + "attn.w_qkv"]
            q, k, v = qkv.view(n, 3, h, d).permute(1, 2, 0, 3)
            scores = (q @ k.transpose(-1, -2)) / math.sqrt(d)
            att = torch.softmax(scores.masked_fill(mask, float("-inf")), dim=-1)
            x = x + (att @ v).transpose(0, 1).reshape(n, c) @ p[pre + "attn.w_o"]
            hid = act(rms(x, p[pre + "ln2"]) @ p[pre + "mlp.w_in"])
            x = x + hid @ p[pre + "mlp.w_out"]
        head = p["wte"].T if cfg.tied_head else p["lm_head"]
        return rms(x, p["ln_f"]) @ head

    def _update(self) -> None:
        torch, o = self.torch, self.optim
        with torch.no_grad():
            grads: list[Any] = [p.grad for p in self.params.values()]
            norm = math.sqrt(sum(float((x * x).sum()) for x in grads))
            if not math.isfinite(norm):
                return
            if o.grad_clip > 0 and norm > o.grad_clip:
                for grad in grads:
                    grad.mul_(o.grad_clip / norm)
            self.t += 1
            lr = o.lr
            for name, w in self.params.items():
                g: Any = w.grad
                m, v = self.state[name]
                if o.weight_decay:
                    w.mul_(1.0 - lr * o.weight_decay)
                if o.name == "sgd":
                    if o.momentum:
                        m.mul_(o.momentum).add_(g)
                        g = m
                    w.sub_(g * lr)
                    continue
                m.mul_(o.beta1).add_(g * (1.0 - o.beta1))
                v.mul_(o.beta2).add_(g * g * (1.0 - o.beta2))
                corr = math.sqrt(1.0 - o.beta2**self.t)
                step = lr * corr / (1.0 - o.beta1**self.t)
                w.sub_(m / (v.sqrt() + o.eps * corr) * step)

    def step(self, new: bytes, doc_start: np.ndarray) -> np.ndarray:
        """Scores ``new`` (k bytes), then one update on the window; returns the k losses."""
        torch, cfg = self.torch, self.cfg
        symbols: list[int] = []
        first = not self.history
        for i, byte in enumerate(new):
            if doc_start[i] or (first and i == 0):
                symbols.append(BOS)
            symbols.append(byte)
        self.history = (self.history + symbols)[-(cfg.context + 1) :]
        window = torch.tensor(self.history, dtype=torch.long)
        inputs, targets = window[:-1], window[1:]
        n = inputs.shape[0]
        logits = self._forward(inputs)
        logp = torch.log_softmax(logits, dim=-1)
        slots = [t for t in range(max(0, n - len(symbols)), n) if int(targets[t]) != BOS]
        picked = logp[slots, targets[slots]].detach().exp().double()
        losses = -torch.log2(torch.clamp(picked, min=PROB_FLOOR)).numpy()
        if self.new_only:
            weights = torch.zeros(n, dtype=logits.dtype)
            weights[slots] = 1.0
        else:
            weights = (targets != BOS).to(logits.dtype)
        nll = -(logp[torch.arange(n), targets] * weights).sum() / weights.sum()
        for p in self.params.values():
            p.grad = None
        nll.backward()
        self._update()
        return losses

    def run(self, data: bytes, doc_starts: np.ndarray | None = None) -> np.ndarray:
        """Reads ``data`` with the step schedule of :meth:`mugpt.engine.Learner.run`."""
        n = len(data)
        starts = np.zeros(n + 1, dtype=bool)
        if doc_starts is not None:
            starts[np.asarray(doc_starts, dtype=np.int64)] = True
        out = np.empty(n)
        pos = 0
        while pos < n:
            stop = min(pos + self.k, n)
            flags = starts[pos:stop]
            first_bos = not self.history and not flags[0]
            while stop - pos > 1 and (stop - pos) + int(flags.sum()) + first_bos > self.cfg.context:  # fmt: skip
                stop -= 1
                flags = starts[pos:stop]
            out[pos:stop] = self.step(data[pos:stop], flags)
            pos = stop
        return out
