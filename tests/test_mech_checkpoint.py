"""A checkpoint taken with every mechanism on continues the run bit for bit."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from mugpt.corpus import build_stream
from mugpt.engine import Learner, LearnerConfig, load_checkpoint, save_checkpoint
from mugpt.mechanisms import make_mechanism
from mugpt.model import ModelConfig, OptimConfig

SPECS = [
    "selective_backprop:mode=percentile,beta=1.0,history=64",
    "replay:capacity=32,k=2,every=3,start_after=8,own_optimizer=true",
    "adaptive_lr:block_bytes=32,recent_blocks=4,reference_blocks=8,cooldown=200,warmup=50,half_life=100",
    "grad_clip:max_norm=0.3",
    "cache:size=50,theta=0.5,lam=0.2",
    "knn:capacity=70,k=5,lam=0.2",
]
N = 1200


def _learner(specs: list[str], k: int) -> Learner:
    return Learner(
        ModelConfig(context=16),
        OptimConfig(lr=0.02),
        [make_mechanism(s) for s in specs],
        LearnerConfig(update_every=k, seed=3),
    )


def _straight_and_resumed(
    specs: list[str], k: int, tmp_path: Path, n: int = N
) -> tuple[Learner, Learner]:
    stream = build_stream("a=text:the cat sat on the mat. ,b=counting:400,a=stdlib-prose:600")
    straight = _learner(specs, k)
    straight.run(stream, max_bytes=n)
    first = _learner(specs, k)
    first.run(stream, max_bytes=n // 2)
    path = tmp_path / "half.npz"
    save_checkpoint(first, path)
    resumed = load_checkpoint(path)
    resumed.run(stream, max_bytes=n)
    return straight, resumed


@pytest.mark.parametrize(("k", "n"), [(1, 600), (4, N)])
def test_resume_with_every_mechanism_is_bit_identical(k: int, n: int, tmp_path: Path) -> None:
    straight, resumed = _straight_and_resumed(SPECS, k, tmp_path, n)
    assert np.array_equal(straight.losses, resumed.losses)
    assert np.array_equal(straight.model.params.flat, resumed.model.params.flat)
    assert straight.counters.to_dict() == resumed.counters.to_dict()
    assert [m.counters() for m in straight.mechanisms] == [m.counters() for m in resumed.mechanisms]
    assert straight.events == resumed.events
    # the run really exercised the mechanisms
    by_name = {m.name: m.counters() for m in straight.mechanisms}
    assert straight.counters.skipped > 0 and straight.counters.replay_updates > 0
    assert by_name["adaptive_lr"]["alarms"] > 0
    assert by_name["cache"]["stored"] == 50 and by_name["knn"]["stored"] == 70


@pytest.mark.skipif(importlib.util.find_spec("river") is None, reason="river is not installed")
@pytest.mark.parametrize("detector", ["page_hinkley", "adwin"])
def test_resume_with_a_river_detector_is_bit_identical(detector: str, tmp_path: Path) -> None:
    specs = [f"adaptive_lr:detector={detector},warmup=50,ph_threshold=20"]
    straight, resumed = _straight_and_resumed(specs, 4, tmp_path)
    assert np.array_equal(straight.losses, resumed.losses)
    assert straight.events == resumed.events
