"""Mechanisms switched on/off and re-parameterised between steps through the Learner API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from mugpt.engine import Learner, LearnerConfig
from mugpt.errors import ConfigError
from mugpt.mechanisms import available, make_mechanism
from mugpt.model import ModelConfig

TEXT = b"she sells sea shells by the sea shore; the shells she sells are sea shells. " * 3

# (mechanism, a parameter change, a check that the state followed it)
CHANGES: dict[str, tuple[dict[str, Any], Callable[[Any], bool]]] = {
    "selective_backprop": ({"mode": "percentile", "history": 16}, lambda m: m._hist.size == 16),
    "replay": ({"capacity": 8}, lambda m: m.filled <= 8 and m._buf.shape[0] == 8),
    "adaptive_lr": ({"boost": 3.0, "cap": 1.5}, lambda m: m.multiplier <= 1.5),
    "grad_clip": ({"mode": "value", "clip_value": 0.01}, lambda m: m.config.mode == "value"),
    "cache": ({"size": 10}, lambda m: m.memory.filled == 10 and m.memory.keys.shape[0] == 10),
    "knn": ({"capacity": 12, "k": 3}, lambda m: m.memory.filled == 12),
    "ngram_mix": ({"lr": 0.01, "max_order": 3}, lambda m: m.config.lr == 0.01),
}


def _learner(mechs: list) -> Learner:
    return Learner(ModelConfig(context=16), mechanisms=mechs,
                   learner_cfg=LearnerConfig(update_every=4, seed=1))  # fmt: skip


def _feed(learner: Learner, start: int, stop: int) -> None:
    for pos in range(start, stop, 4):
        learner.step(TEXT[pos : pos + 4])


def test_every_builtin_is_covered() -> None:
    assert sorted(CHANGES) == available()


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_disabled_mechanism_changes_nothing(name: str) -> None:
    mech = make_mechanism(name)
    mech.enabled = False
    with_it, without = _learner([mech]), _learner([])
    _feed(with_it, 0, 120)
    _feed(without, 0, 120)
    assert np.array_equal(with_it.losses, without.losses)


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_toggle_and_reconfigure_between_steps_are_events(name: str) -> None:
    params, check = CHANGES[name]
    learner = _learner([])
    _feed(learner, 0, 40)
    learner.add_mechanism(make_mechanism(name))
    _feed(learner, 40, 120)
    learner.set_mechanism(name, **params)
    mech = learner.mechanism(name)
    assert check(mech)
    _feed(learner, 120, 160)  # runs with the new settings
    learner.set_mechanism(name, enabled=False)
    _feed(learner, 160, 200)
    learner.set_mechanism(name, enabled=True)
    _feed(learner, 200, 228)
    events = [e for e in learner.events if e["kind"] == "mechanism"]
    assert [(e["pos"], e["enabled"]) for e in events] == [
        (40, True),
        (120, True),
        (160, False),
        (200, True),
    ]
    assert all(events[1]["config"][k] == v for k, v in params.items())
    assert mech.describe()["config"] == events[-1]["config"]
    assert learner.position == 228


@pytest.mark.parametrize("name", sorted(CHANGES))
def test_invalid_change_is_refused_and_leaves_the_config_alone(name: str) -> None:
    learner = _learner([make_mechanism(name)])
    before = learner.mechanism(name).config.model_dump()
    with pytest.raises(ConfigError, match=name):
        learner.set_mechanism(name, no_such_setting=1)
    assert learner.mechanism(name).config.model_dump() == before


def test_disabled_cache_stores_nothing_while_off() -> None:
    cache: Any = make_mechanism("cache:size=500")
    learner = _learner([cache])
    _feed(learner, 0, 40)
    learner.set_mechanism("cache", enabled=False)
    _feed(learner, 40, 80)
    assert cache.memory.filled == 40
    learner.set_mechanism("cache", enabled=True)
    _feed(learner, 80, 120)
    assert cache.memory.filled == 80
