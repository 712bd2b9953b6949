"""The window rule (engine/window.py) agrees with the compiled loop's gather, step by step."""

from __future__ import annotations

import numpy as np
import pytest

from mugpt.engine import Learner, LearnerConfig
from mugpt.engine.window import gather_step, step_end, whole_steps_end
from mugpt.model import BOS, ModelConfig

fast = pytest.importorskip("mugpt.model.fast")


@pytest.mark.parametrize(("k", "context", "seed"), [(1, 8, 0), (3, 8, 1), (5, 8, 2), (7, 8, 3), (24, 32, 4)])  # fmt: skip
def test_steps_and_windows_match_the_compiled_gather(k: int, context: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    data = rng.integers(0, 256, n).astype(np.uint8)
    starts = np.zeros(n + 1, dtype=bool)
    starts[rng.choice(n, 60, replace=False)] = True  # many documents: steps get shortened
    cfg = ModelConfig(context=context)
    model = fast.FastGPT(cfg)
    model.ensure_batch(1)
    ws = model.ws
    hist = np.full((1, 4 * (context + 1)), BOS, dtype=np.int64)
    hist_len = np.zeros(1, dtype=np.int64)
    seg_pos, seg_end = np.zeros(1, dtype=np.int64), np.full(1, n, dtype=np.int64)
    rec = np.zeros((context, 3), dtype=np.int64)
    symbols = np.empty(context, dtype=np.int64)
    learner = Learner(cfg, learner_cfg=LearnerConfig(update_every=k, backend="numpy"))
    pos = 0
    while pos < n:
        stop = step_end(starts, pos, n, k, context, pos == 0)
        assert stop > pos
        gather_step(ws, data, starts, seg_pos, seg_end, hist, hist_len, k, False, rec, symbols, context)  # fmt: skip
        assert seg_pos[0] == stop  # the compiled loop ends the step where the rule does
        out = learner.step(data[pos:stop], starts[pos:stop])
        window = learner.history[-(context + 1) :]
        n_in = window.size - 1
        assert np.array_equal(ws.idx[0, :n_in], window[:-1])
        assert np.array_equal(ws.tgt[0, :n_in], window[1:])
        assert out.loss_bits.size == stop - pos
        pos = stop


def test_a_capped_call_stops_on_a_boundary_of_the_same_steps() -> None:
    rng = np.random.default_rng(9)
    n, k, context = 400, 24, 32
    starts = np.zeros(n + 1, dtype=bool)
    starts[rng.choice(n, 90, replace=False)] = True
    boundaries, pos = [0], 0
    while pos < n:
        pos = step_end(starts, pos, n, k, context, pos == 0)
        boundaries.append(pos)
    for cap in range(1, n):
        stop = whole_steps_end(starts, 0, cap, n, k, context, True)
        expected = max(b for b in boundaries if b <= cap)
        assert stop == (expected if expected > 0 else cap)
    assert whole_steps_end(starts, 0, n + 5, n, k, context, True) == n
