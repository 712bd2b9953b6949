"""Classic compressors on the same bytes, as bits per byte, for comparison with the learner.

Prequential bpb equals the size an arithmetic coder driven by the model would produce
(DESIGN §2), so these sizes are directly comparable. Settings:

- ``gzip``  — DEFLATE, level 9 (:func:`gzip.compress`, ``mtime=0``; 18 bytes of container).
- ``bzip2`` — level 9 (:func:`bz2.compress`).
- ``xz``    — LZMA2 in the xz container, preset ``9 | PRESET_EXTREME`` (``xz -9e``).
- ``zstd``  — Zstandard level 19 (``zstd -19``), via the ``zstandard`` package.
- ``ppmd``  — PPMd variant I (Shkarin, "PPM: one step to practicality", DCC 2002) of order 6
  with 16 MiB of model memory, via ``pyppmd``; the raw coded stream with its end mark, no
  container. PPM itself: Cleary & Witten, "Data compression using adaptive coding and partial
  string matching", IEEE Trans. Commun. 1984.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math

import pyppmd
import zstandard

#: The compressors, in the order tables print them.
BASELINES = ("gzip", "bzip2", "xz", "zstd", "ppmd")
PPMD_ORDER = 6
PPMD_MEMORY = 16 << 20  # bytes of model memory (16 MiB); when full the model restarts
ZSTD_LEVEL = 19


def compress_with(name: str, data: bytes) -> bytes:
    """``data`` compressed by the baseline ``name`` with the settings above (benchmarks time
    each compressor through this).

    >>> len(compress_with("xz", b"")) > 0
    True
    """
    if name == "gzip":
        return gzip.compress(data, compresslevel=9, mtime=0)
    if name == "bzip2":
        return bz2.compress(data, compresslevel=9)
    if name == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME)
    if name == "zstd":
        return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(data)
    if name == "ppmd":
        return pyppmd.compress(data, max_order=PPMD_ORDER, mem_size=PPMD_MEMORY)
    raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")


def baseline_sizes(data: bytes) -> dict[str, int]:
    """Compressed size in bytes of ``data`` under each baseline compressor.

    >>> sizes = baseline_sizes(b"abracadabra " * 100)
    >>> sorted(sizes) == sorted(BASELINES) and all(s < 1200 for s in sizes.values())
    True
    """
    data = bytes(data)
    return {name: len(compress_with(name, data)) for name in BASELINES}


def baseline_bpb(data: bytes) -> dict[str, float]:
    """Bits per byte ``8 · size / len(data)`` for each baseline (keys: gzip bzip2 xz zstd ppmd).

    Empty data has no bytes to divide by: every value is ``nan`` (never an exception).

    >>> r = baseline_bpb(bytes(range(256)) * 4)
    >>> list(r), r["gzip"] < 8.5
    (['gzip', 'bzip2', 'xz', 'zstd', 'ppmd'], True)
    """
    if len(data) == 0:
        return {name: math.nan for name in BASELINES}
    return {name: 8.0 * size / len(data) for name, size in baseline_sizes(data).items()}
