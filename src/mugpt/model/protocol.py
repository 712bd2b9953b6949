"""What the Learner needs of a model: the protocol the reference and compiled models share.

:class:`mugpt.model.gpt.GPT` (NumPy, the readable reference) and
:class:`mugpt.model.fast.FastGPT` (numba kernels) both implement it, so the Learner calls one
interface instead of branching on the backend.

Example:
    >>> from mugpt.model import GPT, ModelConfig
    >>> from mugpt.model.fast import FastGPT
    >>> isinstance(GPT(ModelConfig()), Model), isinstance(FastGPT(ModelConfig()), Model)
    (True, True)
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from mugpt.model.config import ModelConfig
from mugpt.model.optim import Optimizer, UpdateInfo
from mugpt.model.params import ParamBuffer


@runtime_checkable
class Model(Protocol):
    """A model the Learner can train: ``backend`` is ``"numpy"`` or ``"numba"`` (the
    compiled loop runs only the latter)."""

    backend: str
    cfg: ModelConfig
    params: ParamBuffer
    dtype: np.dtype

    def forward(self, idx: np.ndarray) -> Any:
        """idx (B, n) → activations (``probs`` (B, n, V), ``hidden`` (B, n, C), attention)."""
        ...

    def backward(
        self, acts: Any, targets: np.ndarray, weights: np.ndarray, grads: ParamBuffer
    ) -> float:
        """Adds the weighted mean loss's gradient to ``grads``; returns the loss in nats."""
        ...

    def pin(self, acts: Any) -> None:
        """Keeps ``acts`` valid across later forward passes (None: lets them go)."""
        ...

    def release(self) -> None:
        """Before kernels write the model's buffers directly: copies pinned activations out."""
        ...

    def grad_norm(self, grads: np.ndarray) -> float:
        """The global L2 norm of a flat gradient."""
        ...

    def optimizer_step(
        self,
        optimizer: Optimizer,
        grads: np.ndarray,
        lr_scale: float,
        span: tuple[int, int] | None = None,
    ) -> UpdateInfo:
        """One update of the weights with ``optimizer`` on the flat gradient; ``lr_scale``
        applies to the weights in ``span`` (all when None)."""
        ...

    def twin(self) -> Model:
        """A model on the same parameters whose forward passes leave this one's activations
        alone (extra windows are trained on it)."""
        ...
