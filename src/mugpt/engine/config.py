"""One run's full configuration: model, optimiser, learner, mechanisms, stream and seed.

It is what ``config.json`` holds, what a sweep hashes, what a compressed file carries and what
the lab's URL encodes. Presets are named starting points; flags and files override them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mugpt.errors import ConfigError
from mugpt.model import ModelConfig, OptimConfig

SECTIONS = ("model", "optim", "learner", "mechanisms", "stream", "seed", "preset")

#: The learning rate with the lowest mean bpb over three seeds on the tuning set (the first
#: 100 kB of the default stream), per optimiser and k, seed model, window loss over the full
#: causal block, global-norm clipping at 1.0 (``benchmarks/lr_scan.py``,
#: docs/results/lr-scan.md). The presets take the k = 1 entries; a baseline at another k
#: should take its own.
SEED_LR_BY_K: dict[str, dict[int, float]] = {
    "sgd": {1: 0.02, 4: 0.1, 16: 0.3, 32: 0.3},
    "adam": {1: 0.0003, 4: 0.001, 16: 0.003, 32: 0.01},
}

PRESETS: dict[str, dict[str, Any]] = {
    # the original μGPT: strict per-byte learning with the seed model, trained by plain SGD
    # with global-norm gradient clipping as the original was; lr from the scan at k = 1
    "seed": {
        "optim": {"name": "sgd", "lr": SEED_LR_BY_K["sgd"][1], "momentum": 0.0, "grad_clip": 1.0},
    },
    # the same model and protocol trained by Adam, at its own best lr from the same scan
    "seed-adam": {
        "optim": {
            "name": "adam",
            "lr": SEED_LR_BY_K["adam"][1],
            "beta1": 0.9,
            "beta2": 0.999,
            "grad_clip": 1.0,
        },
    },
    # the strongest configuration found at ≥ 40,000 bytes/s on one thread (docs/bench.md):
    # a wider model trained NNCP-style (Adam β1 = 0, β2 = 0.9999, clipping, no warm-up), 24
    # bytes per step, mixed PAQ-style with count models of orders 0-10 (mechanisms/ngram_mix),
    # the mixer's settings chosen on the tuning set only (docs/bench.md, "The mixer re-tuned")
    "strong": {
        "model": {"d_model": 32, "n_heads": 4, "d_ff": 128},
        "optim": {"name": "adam", "lr": 0.003, "beta1": 0.0, "beta2": 0.9999, "grad_clip": 1.0},
        "learner": {"update_every": 24},
        "mechanisms": [
            {
                "name": "ngram_mix",
                "max_order": 10,
                "table_bits": 18,
                "slot_size": 32,
                "prior": 0.002,
                "lr": 0.0005,
                "model_weight": 0.4,
                "ngram_weight": 0.12,
                "class_bytes": 3,
                "byte_set": True,
            }
        ],
    },
}
"""Named configurations. ``seed`` is the original μGPT (SGD with clipping); ``seed-adam`` the
same model under Adam; ``strong`` the best prequential bpb found at ≥ 40,000 bytes/s (see
docs/bench.md)."""


def seed_optim() -> OptimConfig:
    """The seed preset's optimiser, the original μGPT's: SGD with global-norm clipping at the
    lr the scan found best at k = 1 (DESIGN §3). ``Learner()`` and ``RunConfig()`` default to it.

    Example:
        >>> (seed_optim().name, seed_optim().lr, seed_optim().grad_clip)
        ('sgd', 0.02, 1.0)
    """
    return OptimConfig.from_dict(PRESETS["seed"]["optim"])


@dataclass
class RunConfig:
    """Everything needed to repeat a run.

    Example:
        >>> cfg = RunConfig.from_dict({"model": {"d_model": 32, "n_heads": 4}, "seed": 3})
        >>> cfg.model.d_model, cfg.model.seed, cfg.learner.seed
        (32, 3, 3)
        >>> RunConfig.from_dict({"modle": {}})
        Traceback (most recent call last):
        ...
        mugpt.errors.ConfigError: unknown config section(s) ['modle']; allowed: ['model', 'optim', 'learner', 'mechanisms', 'stream', 'seed', 'preset']

    The ``seed`` preset (the default) is the original μGPT, trained by SGD with clipping;
    ``seed-adam`` is the same model and protocol under Adam:

        >>> seed = RunConfig.from_dict({})
        >>> seed.optim.name, seed.optim.lr, seed.optim.grad_clip, seed.learner.update_every
        ('sgd', 0.02, 1.0, 1)
        >>> seed == RunConfig()
        True
        >>> adam = RunConfig.from_dict({"preset": "seed-adam"})
        >>> adam.optim.name, adam.optim.lr, adam.model == seed.model
        ('adam', 0.0003, True)
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=seed_optim)  # the seed preset's, as ``preset``
    learner: Any = None  # LearnerConfig (imported lazily to keep this module light)
    mechanisms: list[dict[str, Any]] = field(default_factory=list)  # [{"name": ..., **params}]
    stream: str = ""  # a stream spec; "" is the built-in default stream
    seed: int = 0
    preset: str = "seed"

    def __post_init__(self) -> None:
        from mugpt.engine.learner import LearnerConfig

        if self.learner is None:
            self.learner = LearnerConfig()

    # -------------------------------------------------------------- (de)serialisation

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "seed": self.seed,
            "model": self.model.to_dict(),
            "optim": self.optim.to_dict(),
            "learner": self.learner.to_dict(),
            "mechanisms": copy.deepcopy(self.mechanisms),
            "stream": self.stream,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """Builds from a (possibly partial) dict; a ``preset`` is applied first, a top-level
        ``seed`` seeds the model init, the learner and the stream."""
        from mugpt.engine.learner import LearnerConfig

        if not isinstance(values, dict):
            raise ConfigError("a run config must be a table/object of sections")
        unknown = sorted(set(values) - set(SECTIONS))
        if unknown:
            raise ConfigError(f"unknown config section(s) {unknown}; allowed: {list(SECTIONS)}")
        preset = values.get("preset", "seed")
        if preset not in PRESETS:
            raise ConfigError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        merged = merge(PRESETS[preset], values)
        seed = merged.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
            raise ConfigError(f"seed={seed!r} must be a non-negative integer")
        model = {**merged.get("model", {}), "seed": seed}
        learner = {**merged.get("learner", {}), "seed": seed}
        mechanisms = merged.get("mechanisms", [])
        if not isinstance(mechanisms, list) or not all(
            isinstance(m, dict) and "name" in m for m in mechanisms
        ):
            raise ConfigError('mechanisms must be a list of tables with a "name" key')
        stream = merged.get("stream", "")
        if not isinstance(stream, str):
            raise ConfigError("stream must be a stream spec string (see `mugpt run --help`)")
        return cls(
            model=ModelConfig.from_dict(model),
            optim=OptimConfig.from_dict(merged.get("optim", {})),
            learner=LearnerConfig.from_dict(learner),
            mechanisms=copy.deepcopy(mechanisms),
            stream=stream,
            seed=seed,
            preset=preset,
        )

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        return cls.from_dict(read_config_file(path))

    def digest(self) -> str:
        """A stable hash of the full configuration (sweeps key their results by it)."""
        text = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_overrides(self, overrides: dict[str, Any]) -> RunConfig:
        """Returns a copy with dotted keys replaced, e.g. ``{"model.d_model": 32}``."""
        values = self.to_dict()
        for dotted, value in overrides.items():
            section, _, key = dotted.partition(".")
            if section not in SECTIONS:
                raise ConfigError(f"unknown config key {dotted!r}; sections are {list(SECTIONS)}")
            if key:
                if not isinstance(values.get(section), dict):
                    raise ConfigError(f"config key {dotted!r}: {section!r} has no sub-keys")
                values[section][key] = value
            else:
                values[section] = value
        values["model"].pop("seed", None)
        values["learner"].pop("seed", None)
        return RunConfig.from_dict(values)

    # -------------------------------------------------------------- builders

    def build_mechanisms(self) -> list[Any]:
        from mugpt.mechanisms import make_mechanism

        out = []
        for entry in self.mechanisms:
            params = {k: v for k, v in entry.items() if k not in ("name", "enabled")}
            mech = make_mechanism((entry["name"], params))
            mech.enabled = entry.get("enabled", True)
            out.append(mech)
        return out

    def build_learner(self) -> Any:
        from mugpt.engine.learner import Learner

        return Learner(self.model, self.optim, self.build_mechanisms(), self.learner)

    def build_stream(self) -> Any:
        from mugpt.corpus import build_stream, default_stream

        if not self.stream:
            return default_stream(seed=self.seed)
        return build_stream(self.stream, seed=self.seed)

    def replace(self, **changes: Any) -> RunConfig:
        return replace(self, **changes)


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``over`` wins; lists are replaced, not concatenated."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Reads a TOML (``.toml``) or JSON file into a dict, with a clear error on failure."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist or is not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    try:
        if path.suffix.lower() == ".toml":
            return tomllib.loads(text)
        data = json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        raise ConfigError(f"config file {str(path)!r} is not valid {kind}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold an object of sections")
    return data
