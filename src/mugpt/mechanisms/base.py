"""The mechanism plug-in interface (DESIGN §4).

A mechanism is a small object with a name, a typed config with bounds (a pydantic model), a
``strict_online`` flag, a serialisable state, and any of six hooks that the Learner calls in
this order every step:

1. ``adjust_prediction(ctx, probs) -> probs`` — may mix in another distribution (cache, kNN).
2. ``observe(ctx, loss_bits)`` — sees the recorded loss (shift detectors, priorities).
3. ``should_update(ctx) -> bool`` — may skip the update (selective backprop).
4. ``lr_scale(ctx) -> float`` — multiplies the learning rate (adaptive LR) of the weights in
   the parameter group ``lr_params()`` names (all of them by default).
5. ``transform_grads(ctx, grads)`` — may rescale the flat gradient in place (clipping).
6. ``extra_windows(ctx) -> list[window]`` — symbol windows to train on after the main update
   (replay).

The default of every hook does nothing, so a mechanism overrides only what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from mugpt.errors import ConfigError


class MechanismConfig(BaseModel):
    """Base for mechanism configs: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


@dataclass
class StepContext:
    """What a mechanism may look at during one step. Arrays are read-only by convention."""

    step: int  # index of this step (0-based)
    position: int  # bytes consumed before this step
    new_bytes: np.ndarray  # (k,) the bytes this step predicts, then learns from
    inputs: np.ndarray  # (n,) window input symbols
    targets: np.ndarray  # (n,) window target symbols (inputs shifted by one)
    new_positions: np.ndarray  # (k,) indexes into the window of the new bytes' predictions
    hidden: np.ndarray  # (n, C) final hidden state at every window position
    rng: np.random.Generator  # the Learner's seeded generator (part of checkpoints)
    lr: float  # the base learning rate before any scaling
    context: int  # the model's context length T
    loss_bits: np.ndarray | None = None  # (k,) recorded losses, set before observe()
    window_loss_bits: float | None = None  # mean loss of the update's positions, in bits
    grad_norm: float | None = None  # set before transform_grads()
    optimizer: Any = None  # the main optimiser (read-only: replay copies its settings)
    events: list[dict[str, Any]] = field(default_factory=list)

    def emit(self, kind: str, **data: Any) -> None:
        """Records an event (an alarm, a replay, ...) stamped with this step's position."""
        self.events.append({"kind": kind, **data})


class Mechanism:
    """Base class. Subclasses set ``name``, ``Config`` and ``strict_online`` and override hooks.

    ``strict_online`` is False for mechanisms that train on data other than the current
    window (replay): their figures are not strictly prequential-online and tables say so.
    """

    name: ClassVar[str] = "mechanism"
    strict_online: ClassVar[bool] = True
    Config: ClassVar[type[MechanismConfig]] = MechanismConfig

    def __init__(self, config: MechanismConfig | None = None, **params: Any) -> None:
        if config is None:
            try:
                config = self.Config(**params)
            except ValidationError as exc:
                raise ConfigError(_explain(self.name, exc, self.Config)) from None
        elif params:
            raise ConfigError("pass either a config object or keyword parameters, not both")
        self.config = config
        self.enabled = True

    # ------------------------------------------------------------ settings and state

    def configure(self, **params: Any) -> None:
        """Changes parameters between steps; invalid values leave the config unchanged."""
        try:
            merged = self.Config(**{**self.config.model_dump(), **params})
        except ValidationError as exc:
            raise ConfigError(_explain(self.name, exc, self.Config)) from None
        self.config = merged
        self.on_configure()

    def on_configure(self) -> None:
        """Called after ``configure``; override to resize buffers and the like."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "enabled": self.enabled,
            "strict_online": self.strict_online,
            "config": self.config.model_dump(),
            "counters": self.counters(),
        }

    def counters(self) -> dict[str, Any]:
        """Figures to report (e.g. share of updates skipped); JSON-able."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit for bit: JSON-able values and numpy arrays."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what ``state_dict`` returned."""

    # ------------------------------------------------------------ hooks (defaults: no-op)

    def adjust_prediction(self, ctx: StepContext, probs: np.ndarray) -> np.ndarray:
        return probs

    def observe(self, ctx: StepContext, loss_bits: np.ndarray) -> None:
        return None

    def should_update(self, ctx: StepContext) -> bool:
        return True

    def lr_scale(self, ctx: StepContext) -> float:
        return 1.0

    def lr_params(self) -> str:
        """The parameter group ``lr_scale`` applies to (one of
        ``mugpt.model.params.PARAM_GROUPS``); the others keep the configured lr."""
        return "all"

    def transform_grads(self, ctx: StepContext, grads: np.ndarray) -> None:
        return None

    def extra_windows(self, ctx: StepContext) -> list[np.ndarray]:
        return []

    def replayed(self, ctx: StepContext, losses_bits: list[float]) -> None:
        """After the extra windows were trained on: the mean loss (bits) of each, in the order
        ``extra_windows`` returned them, measured by the forward pass before its update."""
        return None

    # ------------------------------------------------------------ the compiled form

    def compiled_state(self, context: int) -> Any:
        """This mechanism's state as the compiled loop's arrays (a ``NamedTuple`` its module
        defines, used by its kernels: :mod:`mugpt.engine.loop`), or None when it runs in
        Python only. Arrays may be the mechanism's own, changed in place."""
        return None

    def compiled_done(self, state: Any) -> list[dict[str, Any]]:
        """After a compiled run: takes back from ``state`` what the kernels changed and
        returns the events its hooks would have emitted, stamped with step and position."""
        return []

    def extra_optimizer(self) -> Any:
        """An optimiser of its own for the extra windows, or None to share the main one."""
        return None


def _explain(name: str, exc: ValidationError, config_cls: type[MechanismConfig]) -> str:
    first = exc.errors()[0]
    key = ".".join(str(p) for p in first["loc"]) or "?"
    allowed = list(config_cls.model_fields)
    return f"mechanism {name!r}: {key}: {first['msg']} (settable keys: {allowed})"
