"""kNN-LM: interpolate the model with the next bytes of its nearest stored hidden states.

Khandelwal, Levy, Jurafsky, Zettlemoyer & Lewis (2020), "Generalization through Memorization:
Nearest Neighbor Language Models", ICLR. A datastore maps keys ``h_i`` (the final hidden state
at a position) to values ``x_{i+1}`` (the byte that followed). For a query ``h_t`` the ``k``
nearest keys by squared L2 distance ``d_i`` vote with weights ``softmax(−d_i / temperature)``:

    p_knn(w) = Σ_{i ∈ kNN(h_t), x_{i+1} = w} softmax(−d / temperature)_i
    p(w) = (1 − lam) · p_model(w) + lam · p_knn(w)

The mixed ``p`` is the prediction whose loss is recorded. The datastore is bounded
(``capacity`` pairs, a ring buffer: the oldest pair goes first) and searched exactly by the
compiled helpers of :mod:`mugpt.mechanisms.cache`, which the hooks and the compiled loop
share (float64 sums in a fixed order, so both paths give the same bits). A pair is stored
only after its byte was scored; within a step byte ``j`` also sees the pairs of the step's
bytes before it.

Deterministic (compression relies on it): no randomness, a fixed slot order, neighbours
ranked by (|key|² − 2·q·key, slot) with ties going to the lower slot.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from mugpt.mechanisms import MechanismConfig, register
from mugpt.mechanisms.cache import KIND_KNN, MemoryMixture


class KNNConfig(MechanismConfig):
    """Settings of :class:`KNNLM`.

    Example:
        >>> cfg = KNNConfig()
        >>> cfg.capacity, cfg.k, cfg.temperature, cfg.lam
        (8192, 16, 1.0, 0.25)
    """

    capacity: int = Field(8192, ge=1, le=10_000_000, description="pairs in the datastore")
    k: int = Field(16, ge=1, le=4096, description="neighbours that vote")
    temperature: float = Field(1.0, gt=0.0, le=1e6, description="softmax(−d²/temperature)")
    lam: float = Field(0.25, ge=0.0, le=1.0, description="λ: weight of p_knn in the mixture")


@register
class KNNLM(MemoryMixture):
    """Mixes the model's prediction with a nearest-neighbour vote over a bounded datastore.

    Example:
        >>> knn = KNNLM(k=2, temperature=1.0, lam=1.0)
        >>> knn.memory.add(np.array([[0.0], [1.0], [5.0]]), np.array([97, 98, 99]))
        >>> p = knn.mix(np.array([[0.0]]), np.full((1, 257), 1 / 257), np.zeros(0, int))
        >>> round(float(p[0, 97]), 4), round(float(p[0, 98]), 4), float(p[0, 99])
        (0.7311, 0.2689, 0.0)
    """

    name = "knn"
    strict_online = True
    Config = KNNConfig
    config: KNNConfig
    capacity_field = "capacity"

    @property
    def last_p_knn(self) -> np.ndarray | None:
        """p_knn of the last step's rows."""
        return self.last_p_memory

    def kernel_config(self) -> np.ndarray:
        cfg = self.config
        return np.array([KIND_KNN, cfg.lam, cfg.temperature, float(cfg.k)])

    def knn_distribution(self, queries: np.ndarray, step_values: np.ndarray) -> np.ndarray:
        """p_knn (k, 257) for ``queries`` (k, C); rows that see no pair are all zero.

        The search ranks the visible pairs by ``|key|² − 2·q·key`` in float64, keeps the
        ``k`` smallest (ties go to the older slot) and recomputes their squared distances
        exactly (:func:`mugpt.mechanisms.cache.memory_rows`)."""
        return self.memory_distribution(queries, step_values)
