"""The lab's view of a mixture (serve/experts.py) against the definitions and the mixer.

The display recomputation reads ngram_mix's state arrays only; these tests check that it
gives each count model's probability exactly as the definitions say, and that its mixed
probability of the next byte is the one the mechanism then scores the byte with.
"""

from __future__ import annotations

import numpy as np
import pytest

from mugpt.corpus import Stream
from mugpt.engine.config import RunConfig
from mugpt.serve.experts import (
    BOS,
    CountState,
    context_hashes,
    experts_view,
    hashed_order,
    mixture,
    step_inputs,
    step_views,
    step_window,
)

TEXT = b"the cat sat on the mat. the dog sat on the log. " * 12


def _learner(k: int, max_order: int = 4, class_bytes: int = 0) -> tuple[RunConfig, object]:
    cfg = RunConfig.from_dict(
        {
            "preset": "strong",
            "learner": {"update_every": k},
            "mechanisms": [
                {
                    "name": "ngram_mix",
                    "max_order": max_order,
                    "table_bits": 12,
                    "class_bytes": class_bytes,
                    "byte_set": class_bytes > 0,
                }
            ],
        }
    )
    return cfg, cfg.build_learner()


def _mix(learner: object) -> object:
    return next(m for m in learner.mechanisms if m.name == "ngram_mix")  # type: ignore[attr-defined]


def test_order0_and_order1_follow_their_definitions_on_a_tiny_stream() -> None:
    _cfg, learner = _learner(k=1)
    stream = Stream.from_bytes(b"abab")
    learner.run(stream)  # type: ignore[attr-defined]
    mech = _mix(learner)
    state = CountState.of(mech)
    assert state is not None
    a = mech.config.prior  # type: ignore[attr-defined]
    got = mixture(state, np.full(257, 1 / 257), np.array([BOS, 97, 98, 97, 98]))
    probs = got["probs"]
    assert isinstance(probs, np.ndarray)
    # order 0: (count + prior) / (n + 256·prior), 'a' and 'b' seen twice each in 4 bytes
    assert probs[1, 97] == pytest.approx((2 + a) / (4 + 256 * a))
    assert probs[1, 99] == pytest.approx(a / (4 + 256 * a))
    # order 1 after 'b': 'a' followed 'b' once ("ab|a"), so 1 of 1
    assert probs[2, 97] == pytest.approx((1 + a) / (1 + 256 * a))
    # order 2 after "ab": "ab" was followed by 'a' once
    assert probs[3, 97] == pytest.approx((1 + a) / (1 + 256 * a))
    assert got["seen"][:4] == [True, True, True, True]
    for row in probs[1:]:  # each count model is a distribution over the 256 bytes
        assert row.sum() == pytest.approx(1.0, abs=1e-9)


def test_an_unseen_context_is_uniform_and_the_display_never_writes_the_state() -> None:
    _cfg, learner = _learner(k=1)
    learner.run(Stream.from_bytes(b"hello there"))  # type: ignore[attr-defined]
    mech = _mix(learner)
    before = {k: np.copy(v) for k, v in mech.state_dict().items() if isinstance(v, np.ndarray)}  # type: ignore[attr-defined]
    state = CountState.of(mech)
    assert state is not None
    window = np.array([BOS, 122, 122, 122])  # "zzz": never seen
    h = context_hashes(window, 4)
    unseen = hashed_order(state, 3, h[2])
    assert not unseen.seen and np.allclose(unseen.probs, 1 / 256)
    experts_view(state, np.full(257, 1 / 257), window, 122, 0)
    after = mech.state_dict()  # type: ignore[attr-defined]
    for key, value in before.items():
        assert np.array_equal(value, after[key]), key


@pytest.mark.parametrize("k, class_bytes", [(1, 0), (4, 0), (4, 2)])
def test_the_mixed_probability_is_the_one_the_mixer_scores_the_byte_with(
    k: int, class_bytes: int
) -> None:
    cfg, learner = _learner(k, class_bytes=class_bytes)
    stream = Stream.from_bytes(TEXT)
    errors = []
    winners = set()
    while learner.position < len(TEXT) - k:  # type: ignore[attr-defined]
        pos = learner.position  # type: ignore[attr-defined]
        state = CountState.of(_mix(learner))
        assert state is not None
        hist = learner.history  # type: ignore[attr-defined]
        window = step_window(hist, cfg.model.context, k) if hist.size else np.array([BOS])
        model_probs = learner.model.forward(window[None, :]).probs[0, -1]  # type: ignore[attr-defined]
        view = experts_view(state, model_probs, window, TEXT[pos], pos)
        winners.add(view["winner"])
        result = learner.run(stream, max_bytes=pos + k)  # type: ignore[attr-defined]
        scored = 2.0 ** -float(result.losses[pos])
        errors.append(abs(view["mixed"] - scored) / scored)
    # the mechanism's fast log/exp are good to about 1e-7; print rounding is 6 digits
    assert max(errors) < 1e-4
    assert len(winners) >= 2, "over a repetitive text the count models win some bytes"


def test_the_view_names_every_expert_and_its_weight() -> None:
    state = CountState.empty(max_order=3)
    state.weights = np.full((60, 5), 0.3)
    view = experts_view(state, np.full(257, 1 / 257), np.array([BOS]), 65, 0)
    assert view["names"] == ["network", "order 0", "order 1", "order 2", "order 3"]
    assert len(view["p"]) == len(view["weights"]) == 5
    assert view["p"][1] == pytest.approx(1 / 256)
    end = experts_view(state, np.full(257, 1 / 257), np.array([BOS]), None, 0)
    assert end["p"] is None and end["winner"] is None


@pytest.mark.parametrize("k, class_bytes", [(4, 0), (24, 0), (24, 3)])
def test_every_byte_of_a_step_is_replayed_as_the_mixer_learns_it(k: int, class_bytes: int) -> None:
    cfg, learner = _learner(k, max_order=6, class_bytes=class_bytes)
    stream = Stream.from_bytes(TEXT)
    mech = _mix(learner)
    errors = []
    while learner.position < len(TEXT) - k:  # type: ignore[attr-defined]
        pos = learner.position  # type: ignore[attr-defined]
        state = CountState.of(mech)
        assert state is not None
        new = np.frombuffer(TEXT[pos : pos + k], dtype=np.uint8).astype(np.int64)
        inputs, rows = step_inputs(learner.history, new, cfg.model.context)  # type: ignore[attr-defined]
        model_rows = learner.model.forward(inputs[None, :]).probs[0, rows]  # type: ignore[attr-defined]
        before = mech.weights.copy()  # type: ignore[attr-defined]
        views = step_views(
            state,
            model_rows,
            inputs,
            rows,
            new.tolist(),
            pos,
            mech.config.lr,
            mech.config.count_limit,  # type: ignore[attr-defined]
        )
        assert np.array_equal(before, mech.weights), "the replay works on a copy"  # type: ignore[attr-defined]
        result = learner.run(stream, max_bytes=pos + k)  # type: ignore[attr-defined]
        for j, view in enumerate(views):
            scored = 2.0 ** -float(result.losses[pos + j])
            errors.append(abs(view["mixed"] - scored) / scored)
    assert len(errors) > 100
    assert max(errors) < 1e-4
