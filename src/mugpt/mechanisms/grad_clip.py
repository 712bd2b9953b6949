"""Gradient clipping: bound the update a single surprising window can cause.

- ``norm`` (default): rescale the whole flat gradient ``g`` to ``g · max_norm / ‖g‖`` when its
  global L2 norm exceeds ``max_norm`` (Pascanu, Mikolov & Bengio 2013, "On the difficulty of
  training recurrent neural networks", ICML).
- ``value``: clip every coordinate to ``[-clip_value, clip_value]`` (per-parameter value
  clipping, as in Graves 2013, "Generating Sequences With Recurrent Neural Networks",
  arXiv:1308.0850, which clipped derivatives to a range).

**How it relates to the optimiser's own clip.** ``OptimConfig.grad_clip`` (default 1.0, 0 = off)
is a global-norm clip applied *inside* the optimiser, *after* every mechanism's
``transform_grads``. So the two compose: with ``mode=norm`` the tighter of ``max_norm`` and
``grad_clip`` is the effective bound (a ``max_norm`` above ``grad_clip`` changes nothing);
with ``mode=value`` the optimiser then still caps the global norm of the clipped gradient.
``ctx.grad_norm`` is the norm before any clipping; the clip rate counts the updates this
mechanism changed.
"""

from __future__ import annotations

import math
from typing import Any, Literal, NamedTuple

import numpy as np
from numba import njit
from pydantic import Field

from mugpt.mechanisms import Mechanism, MechanismConfig, StepContext, register
from mugpt.model.constants import JIT_OPTIONS
from mugpt.model.fast import cast_like


class GradClipConfig(MechanismConfig):
    """Settings of :class:`GradClip`.

    Example:
        >>> GradClipConfig().mode, GradClipConfig().max_norm
        ('norm', 0.5)
    """

    mode: Literal["norm", "value"] = Field("norm", description="global norm | per-value")
    max_norm: float = Field(0.5, gt=0.0, le=1e6, description="norm mode: largest global L2 norm")
    clip_value: float = Field(0.05, gt=0.0, le=1e6, description="value mode: largest |g_i|")


@register
class GradClip(Mechanism):
    """Clips the flat gradient in place, by global norm or by value.

    Example:
        >>> g = np.array([3.0, 4.0])
        >>> GradClip(max_norm=2.5).clip(g, norm=5.0), g.tolist()
        (True, [1.5, 2.0])
        >>> g = np.array([0.5, -2.0, 0.01])
        >>> GradClip(mode="value", clip_value=0.1).clip(g, norm=0.0), g.tolist()
        (True, [0.1, -0.1, 0.01])
    """

    name = "grad_clip"
    strict_online = True
    Config = GradClipConfig
    config: GradClipConfig

    def __init__(self, config: GradClipConfig | None = None, **params: Any) -> None:
        super().__init__(config, **params)
        self.updates = 0
        self.clipped = 0
        self.norm_sum = 0.0

    def clip(self, grads: np.ndarray, norm: float) -> bool:
        """Clips ``grads`` in place; ``norm`` is its global L2 norm. True when it changed."""
        cfg = self.config
        if cfg.mode == "norm":
            if norm > cfg.max_norm:
                grads *= cfg.max_norm / norm
                return True
            return False
        limit = cfg.clip_value
        changed = bool(np.any(np.abs(grads) > limit))
        if changed:
            np.clip(grads, -limit, limit, out=grads)
        return changed

    def transform_grads(self, ctx: StepContext, grads: np.ndarray) -> None:
        norm = ctx.grad_norm
        if norm is None:
            norm = float(np.sqrt(np.dot(grads, grads)))
        if not np.isfinite(norm):
            return  # the optimiser drops a non-finite update; nothing to clip
        self.updates += 1
        self.norm_sum += norm
        self.clipped += int(self.clip(grads, norm))

    def compiled_state(self, context: int) -> ClipState:
        """The compiled loop's copy of this mechanism (:func:`clip_kernel`)."""
        cfg = self.config
        return ClipState(
            cfg=np.array([0.0 if cfg.mode == "norm" else 1.0, cfg.max_norm, cfg.clip_value]),
            stats=np.array([self.updates, self.clipped, self.norm_sum], dtype=np.float64),
        )

    def compiled_done(self, state: ClipState) -> list[dict[str, Any]]:
        """Takes back what the compiled loop changed; returns its events (none)."""
        self.updates, self.clipped = int(state.stats[0]), int(state.stats[1])
        self.norm_sum = float(state.stats[2])
        return []

    def counters(self) -> dict[str, Any]:
        n = self.updates
        return {
            "updates": n,
            "clipped": self.clipped,
            "clip_rate": self.clipped / n if n else 0.0,
            "mean_grad_norm": self.norm_sum / n if n else None,
        }

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "clipped": self.clipped, "norm_sum": self.norm_sum}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        self.clipped = int(state["clipped"])
        self.norm_sum = float(state["norm_sum"])


# ---------------------------------------------------------------------------- compiled form


class ClipState(NamedTuple):
    """:class:`GradClip` as arrays: ``cfg`` = [mode (0 norm, 1 value), max_norm, clip_value],
    ``stats`` = [updates, clipped, norm_sum]."""

    cfg: np.ndarray
    stats: np.ndarray


@njit(**JIT_OPTIONS)
def clip_kernel(state: Any, grads: Any, norm: float) -> bool:  # pragma: no cover - compiled
    """:meth:`GradClip.transform_grads` on the flat gradient (``norm``: its L2 norm before any
    clipping); True when it changed the gradient. The same float32/float64 arithmetic as the
    NumPy reference: the factor and the limit are cast to the gradient's type first."""
    if not math.isfinite(norm):
        return False
    stats = state.stats
    stats[0] += 1.0
    stats[2] += norm
    changed = False
    if state.cfg[0] == 0.0:
        if norm > state.cfg[1]:
            f = cast_like(grads, state.cfg[1] / norm)
            for i in range(grads.size):
                grads[i] = grads[i] * f
            changed = True
    else:
        hi = cast_like(grads, state.cfg[2])
        lo = -hi
        for i in range(grads.size):
            g = grads[i]
            if g > hi:
                grads[i] = hi
                changed = True
            elif g < lo:
                grads[i] = lo
                changed = True
    if changed:
        stats[1] += 1.0
    return changed
