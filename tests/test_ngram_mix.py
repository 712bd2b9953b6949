"""The ngram_mix mechanism: strictly online, deterministic, fused into the compiled loop
without changing a bit, and checkpointable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mugpt.corpus import Phase, Stream
from mugpt.engine import Learner, LearnerConfig, load_checkpoint, save_checkpoint
from mugpt.errors import ConfigError
from mugpt.mechanisms import StepContext, make_mechanism
from mugpt.mechanisms.ngram_mix import N_BUCKETS, NgramMix, byte_class, extra_rows
from mugpt.model import ModelConfig

TEXT = b"she sells sea shells by the sea shore; the shells she sells are sea shells. " * 4
SMALL = {"max_order": 4, "table_bits": 10}
CLASSES = {**SMALL, "class_bytes": 2, "byte_set": True}


def _ctx(inputs: np.ndarray, new: np.ndarray, step: int = 0) -> StepContext:
    n = inputs.size
    return StepContext(
        step=step, position=step, new_bytes=new, inputs=inputs,
        targets=np.concatenate([inputs[1:], new[-1:]]), new_positions=np.arange(n - new.size, n),
        hidden=np.zeros((n, 4)), rng=np.random.default_rng(0), lr=0.0, context=16,
    )  # fmt: skip


def _learn_some(mech: NgramMix, upto: int) -> np.ndarray:
    """Feeds the hooks TEXT's first ``upto`` bytes, four a step; returns TEXT as symbols."""
    history = np.frombuffer(TEXT, dtype=np.uint8).astype(np.int64)
    for start in range(0, upto, 4):
        ctx = _ctx(history[start : start + 16], history[start + 12 : start + 16], step=start)
        mech.adjust_prediction(ctx, np.full((4, 257), 1 / 257))
        mech.observe(ctx, np.zeros(4))
    return history


def test_a_prediction_never_depends_on_the_byte_it_predicts() -> None:
    mech = NgramMix(**SMALL)
    history = _learn_some(mech, 180)
    prefix = history[180:192]
    rows = []
    for tail in ([1, 2, 3, 4], [1, 2, 9, 9], [1, 2, 3, 200]):
        new = np.array(tail, dtype=np.int64)
        inputs = np.concatenate([prefix, new[:-1]])  # the window's inputs end before the last byte
        rows.append(mech.adjust_prediction(_ctx(inputs, new, step=999), np.full((4, 257), 1 / 257)))  # fmt: skip
    # row j sees the bytes before j only: rows 0..2 agree where bytes 0..1 agree
    np.testing.assert_array_equal(rows[0][:3], rows[1][:3])
    np.testing.assert_array_equal(rows[0][:3], rows[2][:3])
    np.testing.assert_array_equal(rows[0][3], rows[2][3])  # byte 3 itself changed, not its row
    for row in rows[0]:
        assert row[256] == 0 and row[:256].sum() == pytest.approx(1.0)


def test_it_learns_repeated_text_far_better_than_the_model_alone() -> None:
    stream = Stream.from_bytes(TEXT)
    cfg = LearnerConfig(update_every=8)
    plain = Learner(ModelConfig(), learner_cfg=cfg).run(stream)
    mixed = Learner(ModelConfig(), mechanisms=[NgramMix(**SMALL)], learner_cfg=cfg).run(stream)
    assert mixed.bpb < plain.bpb - 1.0
    assert mixed.losses[-77:].mean() < 1.0  # the last repetition is nearly free


@pytest.mark.parametrize(
    "k, b, params", [(1, 1, SMALL), (6, 3, SMALL), (1, 1, CLASSES), (6, 3, CLASSES)]
)
def test_fused_compiled_loop_equals_the_hooks_bit_for_bit(
    k: int, b: int, params: dict[str, int]
) -> None:
    stream = Stream(TEXT, [Phase("x", "t", 0, len(TEXT))], np.array([0, 77, 78]))
    cfg = LearnerConfig(update_every=k, batch_streams=b)
    fused = Learner(ModelConfig(context=16), mechanisms=[NgramMix(**params)], learner_cfg=cfg)
    fused.run(stream)  # the compiled loop with the mechanism's kernel
    hooks = Learner(ModelConfig(context=16), mechanisms=[NgramMix(**params)], learner_cfg=cfg)
    data = np.frombuffer(TEXT, dtype=np.uint8)
    starts = np.zeros(data.size + 1, dtype=bool)
    starts[stream.doc_starts] = True
    if b > 1:
        hooks._run_batched(data, starts, data.size, None, 1.0)
    else:
        hooks._run_steps(data, starts, data.size, None, 1.0)
    assert np.array_equal(fused.losses, hooks.losses)
    assert np.array_equal(fused.model.params.flat, hooks.model.params.flat)
    a, c = fused.mechanisms[0].state_dict(), hooks.mechanisms[0].state_dict()
    for key in a:
        assert np.array_equal(a[key], c[key]), key
    assert fused.last is not None and hooks.last is not None
    assert np.array_equal(fused.last.probs, hooks.last.probs)


@pytest.mark.parametrize("params", [SMALL, CLASSES], ids=["one-set", "two-sets"])
def test_checkpoint_continues_bit_for_bit(tmp_path: Path, params: dict[str, int]) -> None:
    stream = Stream.from_bytes(TEXT)
    cfg = LearnerConfig(update_every=4)
    straight = Learner(ModelConfig(context=16), mechanisms=[NgramMix(**params)], learner_cfg=cfg)
    straight.run(stream)
    half = Learner(ModelConfig(context=16), mechanisms=[NgramMix(**params)], learner_cfg=cfg)
    half.run(stream, max_bytes=152)
    save_checkpoint(half, tmp_path / "c.npz")
    resumed = load_checkpoint(tmp_path / "c.npz")
    resumed.run(stream)
    assert np.array_equal(resumed.losses, straight.losses)


def test_counts_stay_bounded_and_slots_keep_the_most_seen_bytes() -> None:
    mech = NgramMix(max_order=2, table_bits=8, slot_size=2, count_limit=10)
    inputs = np.array([65, 66], dtype=np.int64)  # context "AB"
    for x in [67] * 30 + [68, 69, 69]:
        ctx = _ctx(inputs, np.array([x]))
        mech.adjust_prediction(ctx, np.full((1, 257), 1 / 257))
        mech.observe(ctx, np.zeros(1))
    assert int(mech.tot.max()) <= 10 and int(mech.cnt.max()) <= 10
    (slot,) = np.flatnonzero(mech.nsym)  # one context, "AB"
    assert int(mech.nsym[slot]) == 2
    assert 67 in mech.sym[slot].tolist()  # the frequent byte survived the replacements


def test_configuration_is_validated() -> None:
    with pytest.raises(ConfigError, match="count_limit"):
        make_mechanism("ngram_mix:count_limit=1000")
    assert make_mechanism("ngram_mix:max_order=3").cfg.max_order == 3


def test_byte_classes_follow_their_definition() -> None:
    want = {256: 0, 32: 1, 10: 1, ord("a"): 2, ord("z"): 2, ord("A"): 3, ord("Z"): 3,
            ord("0"): 4, ord("9"): 4, 0xC3: 5, 255: 5, 9: 6, 13: 6, 0: 6, ord("."): 7,
            ord("{"): 7, ord("@"): 7, 127: 7}  # fmt: skip
    for b, c in want.items():
        assert byte_class(b) == c, chr(b) if b < 256 else "BOS"


def test_the_added_sets_are_chosen_by_the_classes_of_the_last_bytes_and_the_last_byte() -> None:
    first = 5 * N_BUCKETS * 2  # max_order 4
    window = np.array([256, ord("a"), ord(" "), ord("Z")], dtype=np.int64)
    # class_bytes 3: 'Z' (3), ' ' (1), 'a' (2) as digits base 8, newest first
    assert extra_rows(window, 3, first, first + 512) == (first + (3 * 8 + 1) * 8 + 2, -1)
    assert extra_rows(window, 3, first, first + 8) == (first + 3, -1)  # class_bytes 1
    assert extra_rows(window, 1, first, first + 512) == (first + 2 * 64, -1)  # BOS, then before
    assert extra_rows(window, 3, first, first) == (-1, -1)  # the first set only
    # with the byte set: its 257 rows follow the class rows, one per symbol
    assert extra_rows(window, 3, first, first + 64 + 257) == (first + 3 * 8 + 1, first + 64 + 90)
    assert extra_rows(window, 0, first, first + 257) == (-1, first + 256)  # BOS
    mech = NgramMix(**CLASSES)
    assert mech.weights.shape == (first + 64 + 257, 6)
    assert not mech.weights[first:].any()  # the added sets start at zero


def test_the_sets_mix_as_their_sum_and_take_the_same_step() -> None:
    """One byte by the hooks: the update moves the first set's row and both added rows by the
    same vector, and the added rows are in the mixture (the Python recomputation of the lab,
    tests/test_serve_experts.py, checks the mixture is their sum)."""
    mech = NgramMix(**CLASSES)
    history = _learn_some(mech, 100)
    first = 5 * N_BUCKETS * 2
    assert mech.weights[first:].any()  # the added sets learned
    inputs = history[100:116]
    ctx = _ctx(inputs, history[116:117], step=1000)
    r2, r3 = extra_rows(inputs, inputs.size - 1, first, mech.weights.shape[0])
    before = mech.weights.copy()
    out = mech.adjust_prediction(ctx, np.full((1, 257), 1 / 257))
    wset = int(mech._pending[4][6][0])  # type: ignore[index]
    mech.observe(ctx, np.zeros(1))
    step = mech.weights - before
    assert np.flatnonzero(np.abs(step).sum(axis=1)).tolist() == sorted({wset, r2, r3})
    assert np.abs(step[wset]).max() > 1e-6
    # the same vector added to each row (a difference of sums is exact to rounding only)
    np.testing.assert_allclose(step[r2], step[wset], rtol=0, atol=1e-15)
    np.testing.assert_allclose(step[r3], step[wset], rtol=0, atol=1e-15)
    for row in (r2, r3):  # each added row is in the mixture
        mech.weights[:] = before
        mech.weights[row] = 0.0
        assert not np.array_equal(out, mech.adjust_prediction(ctx, np.full((1, 257), 1 / 257)))
