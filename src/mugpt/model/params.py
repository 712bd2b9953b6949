"""Parameters live in one flat buffer; each tensor is a named view into it.

One buffer keeps the optimiser to a handful of vectorised operations per step, makes
checkpoints a single array, and lets gradients share the same layout (``like``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, get_args

import numpy as np

from mugpt.errors import ConfigError
from mugpt.model.config import ModelConfig


def param_shapes(cfg: ModelConfig) -> list[tuple[str, tuple[int, ...]]]:
    """Names and shapes in buffer order; names read like the paper's blocks."""
    c, f, v = cfg.d_model, cfg.d_ff, cfg.vocab_size
    shapes: list[tuple[str, tuple[int, ...]]] = [("wte", (v, c)), ("wpe", (cfg.context, c))]
    for layer in range(cfg.n_layers):
        p = f"h{layer}."
        shapes += [
            (p + "ln1", (c,)),
            (p + "attn.w_qkv", (c, 3 * c)),
            (p + "attn.w_o", (c, c)),
            (p + "ln2", (c,)),
            (p + "mlp.w_in", (c, f)),
            (p + "mlp.w_out", (f, c)),
        ]
    shapes.append(("ln_f", (c,)))
    if not cfg.tied_head:
        shapes.append(("lm_head", (c, v)))
    return shapes


#: A parameter group an LR multiplier can be limited to (``param_span``).
ParamGroup = Literal["all", "embeddings", "blocks", "head"]
PARAM_GROUPS: tuple[str, ...] = get_args(ParamGroup)


def param_span(cfg: ModelConfig, group: str) -> tuple[int, int]:
    """The flat-buffer range ``[lo, hi)`` of a parameter group: ``all``; ``embeddings`` (the
    byte and position embeddings ``wte``, ``wpe``; with a tied head ``wte`` is the head too);
    ``blocks`` (every transformer block ``h*``); ``head`` (the final norm ``ln_f`` and
    ``lm_head``). Each group is contiguous in buffer order (``param_shapes``).

    Example:
        >>> cfg = ModelConfig()
        >>> param_span(cfg, "all") == (0, cfg.n_params)
        True
        >>> param_span(cfg, "embeddings"), param_span(cfg, "blocks")[0]
        ((0, 4624), 4624)
        >>> param_span(cfg, "head")[1] == cfg.n_params
        True
    """
    if group not in PARAM_GROUPS:
        raise ConfigError(f"parameter group {group!r} is unknown; choose one of {PARAM_GROUPS}")
    sizes = [(name, int(np.prod(shape))) for name, shape in param_shapes(cfg)]
    offsets = np.cumsum([0] + [size for _, size in sizes])
    starts = {name: int(offsets[i]) for i, (name, _) in enumerate(sizes)}
    total = int(offsets[-1])
    first_block = starts["h0.ln1"] if cfg.n_layers else starts["ln_f"]
    return {
        "all": (0, total),
        "embeddings": (0, first_block),
        "blocks": (first_block, starts["ln_f"]),
        "head": (starts["ln_f"], total),
    }[group]


class ParamBuffer:
    """A flat float array with named, shaped views (parameters or their gradients).

    Example:
        >>> buf = ParamBuffer(ModelConfig())
        >>> buf.flat.size, buf["wte"].shape, buf["h0.attn.w_qkv"].shape
        (11856, (257, 16), (16, 48))
        >>> buf["ln_f"][:] = 2.0
        >>> float(buf.flat[buf.offsets["ln_f"]])
        2.0
    """

    def __init__(self, cfg: ModelConfig, flat: np.ndarray | None = None) -> None:
        self.cfg = cfg
        self.shapes = param_shapes(cfg)
        total = sum(int(np.prod(s)) for _, s in self.shapes)
        assert total == cfg.n_params
        dtype = np.dtype(cfg.dtype)
        if flat is None:
            flat = np.zeros(total, dtype=dtype)
        assert flat.shape == (total,) and flat.dtype == dtype
        self.flat = flat
        self.views: dict[str, np.ndarray] = {}
        self.offsets: dict[str, int] = {}
        offset = 0
        for name, shape in self.shapes:
            size = int(np.prod(shape))
            self.views[name] = flat[offset : offset + size].reshape(shape)
            self.offsets[name] = offset
            offset += size

    def __getitem__(self, name: str) -> np.ndarray:
        return self.views[name]

    def __setitem__(self, name: str, value: np.ndarray) -> None:
        # supports ``buf[name] += x``: the in-place add already wrote into the view
        view = self.views[name]
        if value is not view:
            view[...] = value

    def __iter__(self) -> Iterator[str]:
        return iter(self.views)

    def like(self) -> ParamBuffer:
        """A zeroed buffer of the same layout (for gradients)."""
        return ParamBuffer(self.cfg)

    def copy(self) -> ParamBuffer:
        return ParamBuffer(self.cfg, self.flat.copy())


def init_params(cfg: ModelConfig, rng: np.random.Generator | None = None) -> ParamBuffer:
    """Normal(0, init_std) weights, unit RMSNorm gains; residual projections scaled by
    1/sqrt(2·n_layers) so the residual stream's variance does not grow with depth (GPT-2)."""
    rng = rng if rng is not None else np.random.default_rng(cfg.seed)
    params = ParamBuffer(cfg)
    residual_scale = 1.0 / np.sqrt(2 * cfg.n_layers)
    for name, shape in params.shapes:
        view = params[name]
        if name.endswith(("ln1", "ln2", "ln_f")):
            view[...] = 1.0
            continue
        std = cfg.init_std
        if name.endswith(("attn.w_o", "mlp.w_out")):
            std *= residual_scale
        view[...] = rng.normal(0.0, std, size=shape)
    return params
