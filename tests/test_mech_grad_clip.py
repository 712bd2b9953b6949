"""Gradient clipping: the clipping math and how it composes with the optimiser's own clip."""

from __future__ import annotations

import numpy as np
import pytest

from mugpt.engine import Learner
from mugpt.mechanisms import StepContext
from mugpt.mechanisms.grad_clip import GradClip
from mugpt.model import ModelConfig, OptimConfig

TEXT = b"the cat sat on the mat. "


def ctx_with_norm(norm: float) -> StepContext:
    ctx = StepContext(
        step=0, position=0, new_bytes=np.zeros(1, np.uint8), inputs=np.zeros(1, np.int64),
        targets=np.zeros(1, np.int64), new_positions=np.zeros(1, np.int64),
        hidden=np.zeros((1, 4)), rng=np.random.default_rng(0), lr=0.01, context=8,
    )  # fmt: skip
    ctx.grad_norm = norm
    return ctx


def test_global_norm_clip_rescales_only_above_the_bound() -> None:
    clip = GradClip(max_norm=1.0)
    g = np.array([3.0, 0.0, -4.0])  # norm 5
    clip.transform_grads(ctx_with_norm(5.0), g)
    assert g == pytest.approx([0.6, 0.0, -0.8])
    assert np.linalg.norm(g) == pytest.approx(1.0)
    small = np.array([0.3, 0.4])  # norm 0.5: untouched
    clip.transform_grads(ctx_with_norm(0.5), small)
    assert small.tolist() == [0.3, 0.4]
    c = clip.counters()
    assert (c["updates"], c["clipped"], c["clip_rate"]) == (2, 1, 0.5)
    assert c["mean_grad_norm"] == pytest.approx(2.75)


def test_value_clip_bounds_every_coordinate() -> None:
    clip = GradClip(mode="value", clip_value=0.5)
    g = np.array([0.1, -0.7, 2.0, 0.5, -0.5])
    clip.transform_grads(ctx_with_norm(float(np.linalg.norm(g))), g)
    assert g.tolist() == [0.1, -0.5, 0.5, 0.5, -0.5]
    inside = np.array([0.1, -0.2])
    clip.transform_grads(ctx_with_norm(0.3), inside)
    assert clip.counters()["clip_rate"] == 0.5


def _sgd_update_norm(max_norm: float, optimiser_clip: float) -> float:
    """Norm of the first parameter change with plain SGD (lr 0.1) and the given clips."""
    learner = Learner(ModelConfig(context=8), OptimConfig(name="sgd", lr=0.1, grad_clip=optimiser_clip),
                      mechanisms=[GradClip(max_norm=max_norm)])  # fmt: skip
    before = learner.model.params.flat.copy()
    out = learner.step(TEXT[:4])
    assert out.grad_norm is not None
    return float(np.linalg.norm(learner.model.params.flat - before))


def test_the_tighter_of_the_mechanism_and_optimiser_clips_wins() -> None:
    # a fresh model's gradient norm is well above 1e-3
    assert _sgd_update_norm(1e-3, 0.0) == pytest.approx(0.1 * 1e-3, rel=1e-4)
    assert _sgd_update_norm(1e-3, 1.0) == pytest.approx(0.1 * 1e-3, rel=1e-4)
    assert _sgd_update_norm(10.0, 2e-3) == pytest.approx(0.1 * 2e-3, rel=1e-4)


def test_clip_rate_counts_learner_updates() -> None:
    clip = GradClip(max_norm=1e-6)
    learner = Learner(ModelConfig(context=8), mechanisms=[clip])
    for i in range(5):
        learner.step(TEXT[i : i + 1])
    assert clip.counters()["clipped"] == clip.counters()["updates"] == 5
