"""Sampling from the model: temperature, top-k and nucleus (top-p, Holtzman et al. 2020)."""

from __future__ import annotations

import numpy as np

from mugpt.errors import ConfigError
from mugpt.model.constants import BOS
from mugpt.model.gpt import GPT


def filter_probs(
    probs: np.ndarray, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0
) -> np.ndarray:
    """Returns the distribution to sample from over the 256 bytes (BOS is never sampled).

    Example:
        >>> import numpy as np
        >>> p = np.zeros(257); p[[65, 66, 67]] = [0.5, 0.3, 0.2]
        >>> q = filter_probs(p, top_k=2)
        >>> np.nonzero(q)[0].tolist(), round(float(q[65]), 3)
        ([65, 66], 0.625)
        >>> np.nonzero(filter_probs(p, top_p=0.5))[0].tolist()
        [65]
    """
    if not temperature > 0:
        raise ConfigError(f"temperature={temperature} must be > 0 (1.0 = the model's own)")
    if top_k < 0:
        raise ConfigError(f"top_k={top_k} must be >= 0 (0 = off)")
    if not 0 < top_p <= 1:
        raise ConfigError(f"top_p={top_p} must be in (0, 1] (1.0 = off)")
    logp = np.log(np.maximum(probs[:BOS].astype(np.float64), 1e-300)) / temperature
    q = np.exp(logp - logp.max())
    if top_k:
        kth = np.sort(q)[-min(top_k, q.size)]
        q[q < kth] = 0.0
    q /= q.sum()
    if top_p < 1.0:
        order = np.argsort(-q, kind="stable")
        cum = np.cumsum(q[order])
        keep = order[: int(np.searchsorted(cum, top_p) + 1)]
        mask = np.zeros_like(q, dtype=bool)
        mask[keep] = True
        q[~mask] = 0.0
        q /= q.sum()
    return q


def generate(
    model: GPT,
    prompt: bytes,
    n: int,
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int | None = 0,
    history: np.ndarray | None = None,
) -> bytes:
    """Samples ``n`` bytes after ``prompt`` (seeded, so repeatable). The context is the
    ``history`` symbols if given (e.g. the stream read so far), else BOS, then the prompt.

    Example:
        >>> from mugpt.model import GPT, ModelConfig
        >>> out = generate(GPT(ModelConfig()), b"Once", 5, seed=1)
        >>> len(out), out == generate(GPT(ModelConfig()), b"Once", 5, seed=1)
        (5, True)
    """
    if n < 0:
        raise ConfigError(f"n={n} must be >= 0")
    rng = np.random.default_rng(seed)
    ctx = model.cfg.context
    start = [BOS] if history is None else [int(s) for s in history[-ctx:]]
    symbols = start + list(prompt)
    out = bytearray()
    for _ in range(n):
        window = np.array([symbols[-ctx:]], dtype=np.int64)
        probs = model.forward(window).probs[0, -1]
        q = filter_probs(probs, temperature, top_k, top_p)
        byte = int(rng.choice(256, p=q))
        out.append(byte)
        symbols.append(byte)
    return bytes(out)


def show_bytes(data: bytes) -> str:
    """Text for display: valid UTF-8 as is, any other byte as U+FFFD (the bytes are kept)."""
    return data.decode("utf-8", errors="replace")
