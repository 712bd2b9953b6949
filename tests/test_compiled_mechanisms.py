"""Every mechanism the compiled loop knows gives the same bits as its Python hooks.

Each case runs one Learner through ``Learner.run`` (the compiled loop of
``mugpt.engine.loop``) and a twin through the per-step (B = 1) or batched (B > 1) Python
loop that calls the hooks, then compares everything a user can see: every loss, the weights,
the optimiser's state, the counters, the events (alarms), the mechanisms' saved state and
the Learner's generator.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from mugpt.corpus import Phase, Stream
from mugpt.engine import Learner, LearnerConfig
from mugpt.engine.loop import KERNELS
from mugpt.mechanisms import make_mechanism
from mugpt.model import ModelConfig, OptimConfig

A = b"the cat sat on the mat while the dog lay by the door. " * 6
B = bytes(np.random.default_rng(5).integers(97, 123, 700, dtype=np.uint8))
TEXT = A + B + A[:300]  # a shift to noise and back: the detector has something to see

DETECT = {
    "detector": "ema",
    "warmup": 100,
    "fast_half_life": 16.0,
    "slow_half_life": 256.0,
    "threshold": 1.1,
}
PERCENTILE = {"mode": "percentile", "history": 50}
# the block test (the default detector) on blocks small enough for this text, by steps
BLOCKS = {"warmup": 0, "unit": "steps", "half_life": 5.0, "block_bytes": 32, "recent_blocks": 4,
          "reference_blocks": 8, "cooldown": 300}  # fmt: skip
OWN = {"capacity": 16, "every": 2, "start_after": 4, "alpha": 0.0, "own_optimizer": True}
CASES: dict[str, list[tuple[str, dict[str, Any]]]] = {
    "grad_clip-norm": [("grad_clip", {"max_norm": 0.05})],
    "grad_clip-value": [("grad_clip", {"mode": "value", "clip_value": 0.002})],
    "selective_backprop-threshold": [("selective_backprop", {"tau": 4.0})],
    "selective_backprop-percentile": [("selective_backprop", PERCENTILE)],
    "selective_backprop-random": [("selective_backprop", {"mode": "random", "skip_rate": 0.3})],
    "adaptive_lr": [("adaptive_lr", DETECT)],
    "adaptive_lr-blocks": [("adaptive_lr", BLOCKS)],
    "adaptive_lr-head": [("adaptive_lr", {**BLOCKS, "params": "head", "boost": 3.0})],
    "ngram_mix": [("ngram_mix", {"max_order": 4, "table_bits": 12})],
    "ngram_mix-classes": [
        ("ngram_mix", {"max_order": 4, "table_bits": 12, "class_bytes": 2, "byte_set": True})
    ],
    "cache": [("cache", {"size": 64, "theta": 1.0, "lam": 0.3})],
    "knn": [("knn", {"capacity": 100, "k": 4, "lam": 0.3})],
    "replay": [("replay", {"capacity": 32, "k": 2, "every": 3, "start_after": 8, "alpha": 1.0})],
    "replay-own": [("replay", OWN)],
    "replay-current": [("replay", {**OWN, "source": "current", "own_optimizer": False})],
    "all seven": [
        ("replay", {"capacity": 24, "k": 2, "every": 2, "start_after": 6}),
        ("knn", {"capacity": 50, "k": 3, "temperature": 2.0, "lam": 0.2}),
        ("adaptive_lr", BLOCKS),
        ("ngram_mix", {"max_order": 3, "table_bits": 12}),
        ("cache", {"size": 32, "theta": 2.0, "lam": 0.1}),
        ("selective_backprop", {"mode": "percentile", "beta": 1.0, "history": 64}),
        ("grad_clip", {"max_norm": 0.1}),
    ],
}


def _learner(mechs: list[tuple[str, dict[str, Any]]], k: int, b: int, optim: OptimConfig) -> Learner:  # fmt: skip
    return Learner(
        ModelConfig(context=16),
        optim,
        mechanisms=[make_mechanism(m) for m in mechs],
        learner_cfg=LearnerConfig(update_every=k, batch_streams=b, seed=3),
    )


def _python_run(learner: Learner, stream: Stream) -> None:
    data = np.frombuffer(stream.data, dtype=np.uint8)
    starts = np.zeros(data.size + 1, dtype=bool)
    starts[stream.doc_starts] = True
    if learner.cfg.batch_streams > 1:
        learner._run_batched(data, starts, data.size, None, 1.0)
    else:
        learner._run_steps(data, starts, data.size, None, 1.0)


def _assert_same(a: Learner, b: Learner) -> None:
    assert np.array_equal(a.losses, b.losses, equal_nan=True)
    assert np.array_equal(a.model.params.flat, b.model.params.flat)
    assert np.array_equal(a.optimizer.m, b.optimizer.m)
    assert (a.optimizer.t, a.optimizer.clipped_steps) == (b.optimizer.t, b.optimizer.clipped_steps)  # fmt: skip
    assert a.counters == b.counters
    assert a.events == b.events
    for ma, mb in zip(a.mechanisms, b.mechanisms, strict=True):
        assert ma.counters() == mb.counters(), ma.name
        _assert_same_state(ma.state_dict(), mb.state_dict(), ma.name)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    assert a.last is not None and b.last is not None
    assert np.array_equal(a.last.probs, b.last.probs)
    assert a.last.grad_norm == b.last.grad_norm and a.lr_effective == b.lr_effective
    assert a.last.replays == b.last.replays


def _assert_same_state(a: dict[str, Any], b: dict[str, Any], where: str) -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        if isinstance(a[key], dict):
            _assert_same_state(a[key], b[key], f"{where}.{key}")
        else:
            x, y = np.asarray(a[key]), np.asarray(b[key])
            assert x.dtype == y.dtype and np.array_equal(x, y), f"{where}.{key}"


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("k, b", [(1, 1), (5, 1), (4, 3)])
def test_the_compiled_loop_equals_the_hooks_bit_for_bit(name: str, k: int, b: int) -> None:
    stream = Stream(TEXT, [Phase("x", "t", 0, len(TEXT))], np.array([0, 150, 151]))
    optim = OptimConfig(lr=0.01)
    compiled = _learner(CASES[name], k, b, optim)
    assert compiled._compiled_mechanisms() is not None  # the compiled loop runs this
    compiled.run(stream)
    hooks = _learner(CASES[name], k, b, optim)
    _python_run(hooks, stream)
    _assert_same(compiled, hooks)


def test_the_cases_exercise_what_they_claim() -> None:
    """Each mechanism acted in its case (a check that could pass with idle mechanisms
    proves little): clipping clipped, skipping skipped, the detector fired, the mixers mixed."""
    stream = Stream.from_bytes(TEXT)
    seen: dict[str, dict[str, Any]] = {}
    for name in ("grad_clip-norm", "grad_clip-value", "selective_backprop-threshold",
                 "selective_backprop-percentile", "selective_backprop-random", "adaptive_lr",
                 "adaptive_lr-blocks", "adaptive_lr-head",
                 "ngram_mix", "cache", "knn", "replay", "replay-own", "replay-current"):  # fmt: skip
        learner = _learner(CASES[name], 1, 1, OptimConfig(lr=0.01))
        learner.run(stream)
        seen[name] = {**learner.mechanisms[0].counters(), **learner.counters.to_dict()}
        if name == "replay-own":
            own = learner.mechanisms[0].extra_optimizer()
            assert own is not None and own.t == learner.counters.replay_updates
        if name.startswith("replay"):
            assert sum(e["count"] for e in learner.events if e["kind"] == "replay") == seen[name]["replays"]  # fmt: skip
    assert seen["grad_clip-norm"]["clipped"] > 100 and seen["grad_clip-value"]["clipped"] > 100
    assert 0 < seen["selective_backprop-threshold"]["skipped"] < len(TEXT)
    assert 0 < seen["selective_backprop-percentile"]["skipped"] < len(TEXT)
    # random skipping at 0.3: the share is binomial around it (n = 1324, sd ≈ 0.013)
    assert abs(seen["selective_backprop-random"]["skip_share"] - 0.3) < 0.05
    assert seen["selective_backprop-random"]["mean_keep_probability"] == pytest.approx(0.7)
    assert seen["adaptive_lr"]["alarms"] >= 1
    # the block test sees the text turn to noise (at byte 324) and back (at 1024)
    blocks = seen["adaptive_lr-blocks"]["alarm_positions"]
    assert len(blocks) == 2 and 324 <= blocks[0] < 324 + 200 and 1024 <= blocks[1] < 1024 + 200
    assert seen["adaptive_lr-head"]["alarm_positions"] == blocks  # the same test, boosted
    assert seen["adaptive_lr-head"]["mean_lr_multiplier"] > 1.0
    assert seen["ngram_mix"]["mixed_bytes"] == len(TEXT)
    for memory in ("cache", "knn"):  # every byte after the first is mixed, often a hit
        assert seen[memory]["predictions"] == len(TEXT)
        assert seen[memory]["mixed_share"] == (len(TEXT) - 1) / len(TEXT)
        assert seen[memory]["hit_rate"] > 0.2 and seen[memory]["top1_rate"] > 0.1
    assert seen["cache"]["bits_saved_per_byte"] > 0
    for replay in ("replay", "replay-own"):  # replayed often, from a full reservoir
        assert seen[replay]["replays"] > 300 and seen[replay]["replay_updates"] > 300
        assert seen[replay]["windows_seen"] == len(TEXT) > 10 * seen[replay]["stored"]
    # the control makes as many extra updates as replay on the same schedule, stores nothing
    assert seen["replay-current"]["replays"] == seen["replay-own"]["replays"]
    assert seen["replay-current"]["stored"] == 0
    assert seen["replay-current"]["windows_seen"] == len(TEXT)


def test_a_run_in_pieces_equals_one_run_with_every_compiled_mechanism() -> None:
    """Calls that stop between steps hand the state over exactly (chunks, checkpoints);
    a cap inside a step stops at the step boundary before it."""
    stream = Stream.from_bytes(TEXT)
    whole = _learner(CASES["all seven"], 3, 1, OptimConfig(lr=0.01))
    whole.run(stream)
    parts = _learner(CASES["all seven"], 3, 1, OptimConfig(lr=0.01))
    for cap in (300, 305, 905, len(TEXT)):
        parts.run(stream, max_bytes=cap)
    _assert_same(whole, parts)


def test_river_detectors_take_the_python_path_and_every_other_mechanism_compiles() -> None:
    from mugpt.mechanisms import REGISTRY

    assert set(KERNELS) == set(REGISTRY)
    pytest.importorskip("river")
    learner = _learner([("adaptive_lr", {"detector": "adwin"})], 1, 1, OptimConfig())
    assert learner._compiled_mechanisms() is None
