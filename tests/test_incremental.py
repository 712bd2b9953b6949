"""The incremental forward equals the full-window forward in every bit: the decoder's
probabilities are the encoder's only if this holds."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mugpt.engine.config import RunConfig
from mugpt.model import ModelConfig

fast = pytest.importorskip("mugpt.model.fast")
from mugpt.model.incremental import (  # noqa: E402
    begin_window,
    forward_position,
    forward_positions,
    key_scratch,
)

CACHES = ("xs", "xm", "n1x", "n1r", "h1", "qkv", "qT", "vT", "attT", "att", "yh",
          "n2x", "n2r", "h2", "pre", "act", "nfx", "nfr", "hidden", "probs")  # fmt: skip

CONFIGS = {
    "seed": RunConfig.from_dict({}).model,
    "strong": RunConfig.from_dict({"preset": "strong"}).model,
    "two-layer-tied-gelu": ModelConfig(
        n_layers=2, d_model=32, n_heads=4, d_ff=64, context=24, tied_head=True, activation="gelu"
    ),
    "float64": ModelConfig(dtype="float64"),
}


@pytest.mark.parametrize("blocks", ["one at a time", "in blocks"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_position_by_position_equals_the_full_window_bit_for_bit(name: str, blocks: str) -> None:
    """One position per call (as the decoder does for the bytes it decodes) or several rows
    per call (as for the positions whose inputs it knows): the full window's bits, either way."""
    cfg = CONFIGS[name]
    model = fast.FastGPT(cfg)
    rng = np.random.default_rng(7)
    # large weights: confident, saturated attention (the case that tests the masking)
    flat = model.params.flat
    flat[:] = (rng.normal(size=flat.size) * 0.7).astype(flat.dtype)
    for n in (1, 2, cfg.context // 2 + 1, cfg.context):
        idx = np.concatenate([[256], rng.integers(0, 256, n - 1)])[None, :]
        model.forward(idx)
        full = {f: getattr(model.ws, f).copy() for f in CACHES}
        model.ws.probs[...] = np.nan  # nothing survives from the full pass
        begin_window(model, idx[0], 0)
        keys_t = key_scratch(model)
        if blocks == "one at a time":
            for t in range(cfg.context):
                forward_position(flat, model.offsets, model.dims, model.ws, keys_t, 0, t)
        else:  # uneven blocks, one of them a single row
            cuts = [0, 1, cfg.context // 3, cfg.context // 3 + 1, cfg.context]
            for t0, t1 in itertools.pairwise(cuts):
                forward_positions(flat, model.offsets, model.dims, model.ws, keys_t, 0, t0, t1)
        differ = [f for f in CACHES if getattr(model.ws, f).tobytes() != full[f].tobytes()]
        assert differ == [], (name, n)


def test_a_row_depends_only_on_the_symbols_before_it() -> None:
    cfg = CONFIGS["seed"]
    model = fast.FastGPT(cfg)
    idx = np.array([256, 72, 101, 108, 108, 111])
    begin_window(model, idx, 0)
    keys_t = key_scratch(model)
    for t in range(3):
        forward_position(model.params.flat, model.offsets, model.dims, model.ws, keys_t, 0, t)
    row2 = model.ws.probs[0, 2].copy()
    other = idx.copy()
    other[3:] = 0  # later symbols differ: the full forward's row 2 is the same bits
    assert model.forward(other[None, :]).probs[0, 2].tobytes() == row2.tobytes()
