"""Model configuration: one dataclass, validated on construction.

The defaults are the seed config of the original μGPT: one layer, ``d_model`` 16, four heads of
four dimensions, an MLP 16→64→16, pre-norm RMSNorm, a final RMSNorm, an untied ``lm_head``,
learned absolute positions, a context of 32 symbols and a 257-symbol vocabulary (bytes plus BOS).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from mugpt.errors import ConfigError
from mugpt.model.constants import VOCAB_SIZE

ACTIVATIONS = ("relu", "gelu", "silu")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class ModelConfig:
    """Shape and initialisation of the byte-level decoder-only transformer.

    Example:
        >>> cfg = ModelConfig()
        >>> (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.head_dim, cfg.d_ff, cfg.context)
        (1, 16, 4, 4, 64, 32)
        >>> cfg.n_params
        11856
        >>> ModelConfig(d_model=10, n_heads=4)
        Traceback (most recent call last):
        ...
        mugpt.errors.ConfigError: n_heads=4 must divide d_model=10 (e.g. n_heads in [1, 2, 5, 10])
    """

    n_layers: int = 1
    d_model: int = 16
    n_heads: int = 4
    d_ff: int = 64
    context: int = 32
    activation: str = "relu"
    tied_head: bool = False
    init_std: float = 0.08
    dtype: str = "float32"
    seed: int = 0
    vocab_size: int = VOCAB_SIZE

    def __post_init__(self) -> None:
        for name in ("n_layers", "d_model", "n_heads", "d_ff", "context"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name}={value!r} must be a positive integer")
        if self.d_model > 4096 or self.d_ff > 16384 or self.context > 8192 or self.n_layers > 64:
            raise ConfigError(
                f"model too large (n_layers={self.n_layers}, d_model={self.d_model}, "
                f"d_ff={self.d_ff}, context={self.context}): limits are n_layers<=64, "
                "d_model<=4096, d_ff<=16384, context<=8192"
            )
        if self.d_model % self.n_heads:
            divisors = [h for h in range(1, self.d_model + 1) if self.d_model % h == 0]
            raise ConfigError(
                f"n_heads={self.n_heads} must divide d_model={self.d_model} "
                f"(e.g. n_heads in {divisors[:8]})"
            )
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"activation={self.activation!r} is unknown; choose one of {list(ACTIVATIONS)}"
            )
        if self.dtype not in DTYPES:
            raise ConfigError(f"dtype={self.dtype!r} is unknown; choose one of {list(DTYPES)}")
        if not (isinstance(self.init_std, int | float) and 0 < self.init_std <= 1):
            raise ConfigError(f"init_std={self.init_std!r} must be in (0, 1]")
        if self.vocab_size != VOCAB_SIZE:
            raise ConfigError(f"vocab_size is fixed at {VOCAB_SIZE} (bytes 0..255 and BOS)")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_params(self) -> int:
        """The exact number of trainable scalars."""
        c, f, v = self.d_model, self.d_ff, self.vocab_size
        per_layer = c + 3 * c * c + c * c + c + c * f + f * c
        head = 0 if self.tied_head else c * v
        return v * c + self.context * c + self.n_layers * per_layer + c + head

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, values, "model")


def _from_dict(cls: Any, values: dict[str, Any], section: str) -> Any:
    """Builds a config dataclass, naming unknown keys and their allowed alternatives."""
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table of key = value pairs")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"unknown {section} key(s) {unknown}; allowed keys are {names}")
    try:
        return cls(**values)
    except TypeError as exc:  # e.g. wrong type that the dataclass could not take
        raise ConfigError(f"bad {section} config: {exc}") from None
