"""kNN-LM: interpolate the model with the next bytes of its nearest stored hidden states.

Khandelwal, Levy, Jurafsky, Zettlemoyer & Lewis (2020), "Generalization through Memorization:
Nearest Neighbor Language Models", ICLR. A datastore maps keys ``h_i`` (the final hidden state
at a position) to values ``x_{i+1}`` (the byte that followed). For a query ``h_t`` the ``k``
nearest keys by squared L2 distance ``d_i`` vote with weights ``softmax(−d_i / temperature)``:

    p_knn(w) = Σ_{i ∈ kNN(h_t), x_{i+1} = w} softmax(−d / temperature)_i
    p(w) = (1 − lam) · p_model(w) + lam · p_knn(w)

The mixed ``p`` is the prediction whose loss is recorded. The datastore is bounded
(``capacity`` pairs, a ring buffer: the oldest pair goes first) and searched exactly with
vectorised NumPy. A pair is stored only after its byte was scored; within a step byte ``j``
also sees the pairs of the step's bytes before it.

Deterministic (compression relies on it): no randomness, a fixed slot order, neighbours
ordered by (distance, slot) with ties going to the older slot.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from mugpt.mechanisms import MechanismConfig, register
from mugpt.mechanisms.cache import (
    MemoryMixture,
    scatter_rows,
    step_dots,
    topk_rows,
)


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

    def knn_distribution(self, queries: np.ndarray, step_values: np.ndarray) -> np.ndarray:
        """p_knn (k, 257) for ``queries`` (k, C); rows that see no pair are all zero.

        The search ranks in the memory's dtype by ``|key|² − 2·q·key`` (one matrix product,
        then a top-k pass whose ties go to the older slot); the distances of the chosen
        neighbours are then recomputed exactly in float64."""
        dots, values = step_dots(self.memory, queries, step_values)
        m = self.memory.filled
        rank = dots  # (k, m + k), reused in place
        rank *= -2.0
        rank[:, :m] += self.memory.sq_norms[:m]
        rank[:, m:] += np.einsum("ij,ij->i", queries, queries)
        nearest = topk_rows(rank, m, self.config.k)  # (k, n_keep), -1 = none
        found = nearest >= 0
        stored = found & (nearest < m)
        chosen = np.zeros((*nearest.shape, queries.shape[1]), dtype=np.float64)
        if m:
            chosen[stored] = self.memory.keys[nearest[stored]]
        in_step = found & ~stored
        chosen[in_step] = queries[nearest[in_step] - m]
        diff = chosen - queries[:, None, :].astype(np.float64)
        d = np.einsum("ijc,ijc->ij", diff, diff)  # (k, n_keep) exact squared L2
        d[~found] = np.inf
        best = d.min(axis=1, keepdims=True)
        best[~np.isfinite(best)] = 0.0
        weights = np.exp(-(d - best) / self.config.temperature)  # 0 where nothing was found
        mass = weights.sum(axis=1, keepdims=True)
        np.divide(weights, mass, out=weights, where=mass > 0)
        return scatter_rows(np.where(found, values[nearest], 0), weights)

    memory_distribution = knn_distribution
