"""Continual-learning mechanisms as plug-ins (one file each) and their registry."""

from __future__ import annotations

from typing import Any

from mugpt.errors import ConfigError
from mugpt.mechanisms.base import Mechanism, MechanismConfig, StepContext

REGISTRY: dict[str, type[Mechanism]] = {}


def register(cls: type[Mechanism]) -> type[Mechanism]:
    """Class decorator: makes a mechanism available by its ``name``."""
    REGISTRY[cls.name] = cls
    return cls


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "on", "yes"):
        return True
    if low in ("false", "off", "no"):
        return False
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_mech_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """Splits ``NAME[:key=value,...]`` into a name and typed parameters.

    Example:
        >>> parse_mech_spec("selective_backprop:mode=threshold,tau=2.5")
        ('selective_backprop', {'mode': 'threshold', 'tau': 2.5})
    """
    name, _, rest = spec.partition(":")
    name = name.strip()
    params: dict[str, Any] = {}
    for token in filter(None, (t.strip() for t in rest.split(","))):
        key, eq, value = token.partition("=")
        if not eq or not key.strip():
            raise ConfigError(
                f"bad mechanism parameter {token!r} in {spec!r}: write NAME:key=value,key=value"
            )
        params[key.strip()] = _parse_value(value)
    return name, params


def make_mechanism(spec: str | tuple[str, dict[str, Any]]) -> Mechanism:
    """Builds a mechanism from ``NAME[:key=value,...]`` or ``(name, params)``."""
    _load_builtins()
    name, params = parse_mech_spec(spec) if isinstance(spec, str) else spec
    if name not in REGISTRY:
        raise ConfigError(f"unknown mechanism {name!r}; choose one of {sorted(REGISTRY)}")
    return REGISTRY[name](**params)


def available() -> list[str]:
    _load_builtins()
    return sorted(REGISTRY)


def _load_builtins() -> None:
    """Imports the built-in mechanism modules so that they register themselves."""
    import importlib
    import pkgutil

    import mugpt.mechanisms as pkg

    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name != "base":
            importlib.import_module(f"mugpt.mechanisms.{info.name}")


__all__ = [
    "REGISTRY",
    "Mechanism",
    "MechanismConfig",
    "StepContext",
    "available",
    "make_mechanism",
    "parse_mech_spec",
    "register",
]
