"""The numbers every part of μGPT shares, defined once.

Everything that scores a byte, normalises a vector or compiles a kernel imports them from
here, so the reference model, the compiled kernels, the mechanisms, the coder and the
benchmarks cannot drift apart.

Example:
    >>> VOCAB_SIZE, BOS, PROB_FLOOR == 2.0**-40
    (257, 256, True)
"""

from __future__ import annotations

from typing import Any

VOCAB_SIZE = 257
"""Bytes 0..255 and BOS."""
BOS = 256
"""The symbol that starts the stream and every declared document."""
PROB_FLOOR = 2.0**-40
"""Smallest probability scored: keeps a loss finite (at most 40 bits) even if a float underflows."""
RMS_EPS = 1e-5
"""Added to the mean square inside every RMSNorm."""
JIT_OPTIONS: dict[str, Any] = {"cache": True, "error_model": "numpy", "nogil": True}
"""``numba.njit`` options of every compiled kernel: cached on disk, NumPy's division
semantics (inf/nan, no exception checks), the GIL released. No ``fastmath``: sums keep the
order the source gives them, so results are the same bits on every call path."""
