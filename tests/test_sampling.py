"""Sampling: seeded, filtered as asked, bytes kept even when they are not UTF-8."""

from __future__ import annotations

import numpy as np
import pytest

from mugpt.errors import ConfigError
from mugpt.model import GPT, ModelConfig, filter_probs, generate, show_bytes


def test_generate_is_seeded_and_has_the_requested_length() -> None:
    model = GPT(ModelConfig())
    a = generate(model, b"Once", 20, seed=5)
    assert len(a) == 20 and a == generate(model, b"Once", 20, seed=5)
    assert a != generate(model, b"Once", 20, seed=6)


def test_top_k_one_is_greedy() -> None:
    model = GPT(ModelConfig())
    out = generate(model, b"x", 5, top_k=1, seed=0)
    window = [256, ord("x")]
    for byte in out:
        probs = model.forward(np.array([window[-32:]])).probs[0, -1]
        assert byte == int(np.argmax(probs[:256]))
        window.append(byte)


def test_filters_follow_their_definitions() -> None:
    p = np.zeros(257)
    p[[10, 20, 30, 40]] = [0.4, 0.3, 0.2, 0.1]
    p[256] = 0.0
    assert np.nonzero(filter_probs(p, top_k=3))[0].tolist() == [10, 20, 30]
    assert np.nonzero(filter_probs(p, top_p=0.65))[0].tolist() == [10, 20]
    cold = filter_probs(p, temperature=0.5)
    assert cold[10] == pytest.approx(0.16 / (0.16 + 0.09 + 0.04 + 0.01))
    assert filter_probs(p).size == 256  # BOS is never sampled
    with pytest.raises(ConfigError, match="temperature"):
        filter_probs(p, temperature=0)
    with pytest.raises(ConfigError, match="top_p"):
        filter_probs(p, top_p=1.5)


def test_invalid_utf8_is_shown_with_replacement_characters() -> None:
    assert show_bytes(b"ok\xff\xfe!") == "ok\ufffd\ufffd!"
    assert show_bytes("é".encode()) == "é"
