"""A frozen network (``LearnerConfig.freeze_network``) and a mixture's attribution to its
experts (``NgramMix.track_experts``): the same bits on the compiled loop and the Python hooks,
and figures that follow their definitions.

The configurations are those ``test_compiled_mechanisms`` compiles (a context-16 seed model
with ``ngram_mix`` or ``replay``), so these tests add no compilation of their own.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest

from mugpt.corpus import Stream
from mugpt.engine import Learner, LearnerConfig
from mugpt.errors import ConfigError
from mugpt.mechanisms import make_mechanism
from mugpt.model import ModelConfig, OptimConfig

A = b"the cat sat on the mat while the dog lay by the door. " * 6
B = bytes(np.random.default_rng(5).integers(97, 123, 700, dtype=np.uint8))
TEXT = A + B + A[:300]
MIX = ("ngram_mix", {"max_order": 4, "table_bits": 12})
REPLAY = ("replay", {"capacity": 32, "k": 2, "every": 3, "start_after": 8, "alpha": 1.0})


def _learner(mech: tuple[str, dict[str, Any]], freeze: bool, k: int = 5) -> Learner:
    learner = Learner(
        ModelConfig(context=16),
        OptimConfig(),
        mechanisms=[make_mechanism(mech)],
        learner_cfg=LearnerConfig(update_every=k, seed=3, freeze_network=freeze),
    )
    for m in learner.mechanisms:
        if hasattr(m, "track_experts"):
            m.track_experts()
    return learner


def _python_run(learner: Learner, data: bytes) -> None:
    array = np.frombuffer(data, dtype=np.uint8)
    starts = np.zeros(array.size + 1, dtype=bool)
    starts[0] = True
    learner._run_steps(array, starts, array.size, None, 1.0)


def test_a_frozen_network_keeps_its_weights_and_the_mixer_still_learns() -> None:
    compiled, python = _learner(MIX, True), _learner(MIX, True)
    weights0 = compiled.model.params.flat.copy()
    mixer0 = compiled.mechanisms[0].weights.copy()
    compiled.run(Stream.from_bytes(TEXT))
    _python_run(python, TEXT)
    assert np.array_equal(compiled.losses, python.losses)
    assert np.array_equal(compiled.model.params.flat, weights0)
    assert np.array_equal(python.model.params.flat, weights0)
    for learner in (compiled, python):
        counters = learner.counters.to_dict()
        assert counters["updates"] == 0 and counters["backward_passes"] == 0
        assert counters["skipped"] == 0 and counters["forward_passes"] == counters["steps"]
        assert learner.optimizer.t == 0 and learner.lr_effective == 0.0
        assert learner.last is not None and not learner.last.updated
    # the mixer learned: its weights moved, on both paths alike
    assert not np.array_equal(compiled.mechanisms[0].weights, mixer0)
    assert np.array_equal(compiled.mechanisms[0].weights, python.mechanisms[0].weights)
    assert np.array_equal(compiled.mechanisms[0].attribution, python.mechanisms[0].attribution)
    # and the network's learning is worth something on this text (either sign)
    learning = _learner(MIX, False)
    learning.run(Stream.from_bytes(TEXT))
    assert learning.counters.updates == learning.counters.steps
    assert abs(compiled.losses.mean() - learning.losses.mean()) > 1e-3


def test_a_frozen_network_makes_no_replay_updates() -> None:
    compiled, python = _learner(REPLAY, True, k=2), _learner(REPLAY, True, k=2)
    weights0 = compiled.model.params.flat.copy()
    compiled.run(Stream.from_bytes(TEXT[:600]))
    _python_run(python, TEXT[:600])
    assert np.array_equal(compiled.losses, python.losses)
    for learner in (compiled, python):
        assert learner.counters.replay_updates == 0 and learner.counters.backward_passes == 0
        assert np.array_equal(learner.model.params.flat, weights0)
    normal = _learner(REPLAY, False, k=2)
    normal.run(Stream.from_bytes(TEXT[:600]))
    assert normal.counters.replay_updates > 0  # the same run unfrozen does replay


def test_freeze_network_must_be_a_boolean() -> None:
    with pytest.raises(ConfigError, match="freeze_network"):
        LearnerConfig(freeze_network=1)  # type: ignore[arg-type]


def test_an_experts_saved_bits_are_the_mixture_without_it() -> None:
    """One byte at a time: the attribution of a step equals the loss of the same step with
    that expert's weight set to zero (its factor left out) minus the step's own loss."""
    learner = _learner(MIX, False, k=1)
    data = np.frombuffer(TEXT[:408], dtype=np.uint8)
    learner.run(Stream.from_bytes(TEXT[:400]))  # the compiled loop, attributing as it goes
    mix = learner.mechanisms[0]
    checked = 0
    for x in data[400:408]:
        before = mix.attribution.copy()
        n_exp = before.shape[0]
        without = []
        for i in range(n_exp):
            twin = copy.deepcopy(learner)
            twin.mechanisms[0].weights[:, i] = 0.0
            without.append(float(twin.step(np.array([x], dtype=np.uint8)).loss_bits[0]))
        with_all = float(learner.step(np.array([x], dtype=np.uint8)).loss_bits[0])
        gained = mix.attribution - before
        assert np.array_equal(gained[:, 2], np.ones(n_exp))
        assert gained[:, 1] == pytest.approx(np.array(without) - with_all, abs=1e-6)
        checked += 1
    assert checked == 8
    rows = mix.expert_attribution()
    assert [r["expert"] for r in rows] == ["network"] + [f"order {o}" for o in range(5)]
    assert rows[0]["bytes"] == 408
    assert rows[4]["mean_weight"] == pytest.approx(mix.attribution[4, 0] / 408)
