"""The numbers every part of μGPT shares, defined once.

Everything that scores a byte, normalises a vector or compiles a kernel imports them from
here, so the reference model, the compiled kernels, the mechanisms, the coder and the
benchmarks cannot drift apart.

Example:
    >>> VOCAB_SIZE, BOS, PROB_FLOOR == 2.0**-40
    (257, 256, True)
"""

from __future__ import annotations

from collections.abc import Iterator, KeysView, Mapping
from typing import Any

VOCAB_SIZE = 257
"""Bytes 0..255 and BOS."""
BOS = 256
"""The symbol that starts the stream and every declared document."""
PROB_FLOOR = 2.0**-40
"""Smallest probability scored: keeps a loss finite (at most 40 bits) even if a float underflows."""
RMS_EPS = 1e-5
"""Added to the mean square inside every RMSNorm."""


class _JitOptions(Mapping[str, Any]):
    """The options below, as a read-only mapping that, the first time a kernel is decorated
    with them (``njit(**JIT_OPTIONS)`` reads its keys), registers the package-wide cache
    stamps of :mod:`mugpt.model.jitcache` — so they are in place before any kernel exists,
    and importing the package without compiling anything does not import numba."""

    def __init__(self, **options: Any) -> None:
        self._options = options

    def __getitem__(self, key: str) -> Any:
        return self._options[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._options)

    def __len__(self) -> int:
        return len(self._options)

    def keys(self) -> KeysView[str]:
        from mugpt.model import jitcache  # noqa: F401  (registers on first import)

        return self._options.keys()


JIT_OPTIONS: Mapping[str, Any] = _JitOptions(cache=True, error_model="numpy", nogil=True)
"""``numba.njit`` options of every compiled kernel: cached on disk (keyed by every kernel
file of the package, :mod:`mugpt.model.jitcache`), NumPy's division semantics (inf/nan, no
exception checks), the GIL released. No ``fastmath``: sums keep the order the source gives
them, so results are the same bits on every call path."""

JIT_INLINE: Mapping[str, Any] = _JitOptions(
    cache=True, error_model="numpy", nogil=True, inline="always"
)
""":data:`JIT_OPTIONS` for a small kernel called inside a per-byte or per-query loop with
whole workspaces (named tuples of many arrays): inlined into its caller, so a call does not
take and drop a reference to every array of those tuples at entry and exit (two atomic
operations each). Same bits: inlining changes no arithmetic (checked on the strong
preset's 60 kB encode: the same payload)."""

OVERLOAD_INLINE: Mapping[str, Any] = {"inline": "always", "jit_options": {"error_model": "numpy"}}
"""``numba.extending.overload`` options of an optional hook chosen by the type of its state
(None or a named tuple) and inlined into its compiled caller, for the reason of
:data:`JIT_INLINE` (plain inlining happens before a ``state is None`` branch could be
pruned, so a None state would not type)."""
