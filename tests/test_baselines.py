"""Compressor baselines: sizes equal the libraries' own, and the numbers are plausible."""

from __future__ import annotations

import bz2
import gzip
import lzma
import math

import numpy as np
import pyppmd
import zstandard

from mugpt.corpus import build_stream
from mugpt.engine.baselines import BASELINES, baseline_bpb, baseline_sizes


def test_sizes_match_calling_the_libraries_directly() -> None:
    data = build_stream("stdlib-prose:20k").data
    assert baseline_sizes(data) == {
        "gzip": len(gzip.compress(data, 9, mtime=0)),
        "bzip2": len(bz2.compress(data, 9)),
        "xz": len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)),
        "zstd": len(zstandard.ZstdCompressor(level=19).compress(data)),
        "ppmd": len(pyppmd.compress(data, max_order=6, mem_size=16 << 20)),
    }


def test_random_bytes_cost_about_eight_bits() -> None:
    data = np.random.default_rng(0).integers(0, 256, 64_000, dtype=np.uint8).tobytes()
    result = baseline_bpb(data)
    assert list(result) == list(BASELINES)
    for name, value in result.items():
        assert 7.95 < value < 8.3, (name, value)


def test_english_text_plausible() -> None:
    data = build_stream("stdlib-prose:60k").data
    result = baseline_bpb(data)
    assert result["ppmd"] < result["gzip"]
    assert result["xz"] < result["gzip"]
    for value in result.values():
        assert 1.5 < value < 3.5
    assert result == {k: 8 * v / len(data) for k, v in baseline_sizes(data).items()}


def test_repetitive_data_compresses_far_below_one_bit() -> None:
    result = baseline_bpb(b"the same line again\n" * 5000)
    assert all(v < 0.1 for v in result.values())


def test_empty_data_is_nan_not_an_error() -> None:
    result = baseline_bpb(b"")
    assert list(result) == list(BASELINES) and all(math.isnan(v) for v in result.values())
    assert set(baseline_sizes(b"")) == set(BASELINES)
