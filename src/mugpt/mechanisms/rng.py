"""The Learner's generator inside compiled kernels: NumPy's PCG64 ``random()``, bit for bit.

Mechanisms draw from the Learner's seeded :class:`numpy.random.Generator` (PCG64) so that runs
repeat and checkpoints continue them. The compiled loop makes the same draws in the same
order by running the generator itself: PCG64 is a 128-bit linear congruential generator
(``state ← state · M + inc`` mod 2^128) whose 64-bit output is the XOR of the state's halves
rotated by its top six bits (O'Neill 2014, "PCG: A Family of Simple Fast Space-Efficient
Statistically Good Algorithms for Random Number Generation", HMC-CS-2014-0905, the XSL RR
output function), and ``random()`` keeps the top 53 bits: ``(x >> 11) · 2^-53``.

:func:`pack` reads a Generator's state into four ``uint64`` words (state high, state low,
increment high, increment low); :func:`next_double` advances them; :func:`unpack` writes them
back, so the Python object continues exactly where the kernel stopped. Only ``random()`` is
provided: a mechanism whose compiled form needs randomness draws doubles and derives what it
needs from them, and its Python hooks do the same.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(7)
    >>> words = pack(rng)
    >>> drawn = [next_double(words) for _ in range(3)]
    >>> drawn == np.random.default_rng(7).random(3).tolist()
    True
    >>> unpack(words, rng)
    >>> bool(rng.random() == np.random.default_rng(7).random(4)[3])
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from mugpt.model.constants import JIT_OPTIONS

_MULT = (2549297995355413924 << 64) + 4865540595714422341  # PCG64's 128-bit multiplier
_M_HI = np.uint64(_MULT >> 64)
_M_LO = np.uint64(_MULT & ((1 << 64) - 1))
_MASK32 = np.uint64(0xFFFFFFFF)
_U32 = np.uint64(32)
_U11 = np.uint64(11)
_U58 = np.uint64(58)
_U63 = np.uint64(63)
_ONE = np.uint64(1)
_TO_DOUBLE = 1.0 / 9007199254740992.0  # 2^-53


@njit(**JIT_OPTIONS)
def _mul_hi(a: Any, b: Any) -> Any:  # pragma: no cover - compiled
    """The high 64 bits of the 128-bit product of two uint64 (32-bit limbs)."""
    a_lo, a_hi = a & _MASK32, a >> _U32
    b_lo, b_hi = b & _MASK32, b >> _U32
    lo_lo = a_lo * b_lo
    hi_lo = a_hi * b_lo
    lo_hi = a_lo * b_hi
    hi_hi = a_hi * b_hi
    cross = (lo_lo >> _U32) + (hi_lo & _MASK32) + lo_hi
    return hi_hi + (hi_lo >> _U32) + (cross >> _U32)


@njit(**JIT_OPTIONS)
def next_uint64(words: Any) -> Any:  # pragma: no cover - compiled
    """Advances the packed PCG64 state one step and returns its 64-bit output."""
    s_hi, s_lo, i_hi, i_lo = words[0], words[1], words[2], words[3]
    # state * M mod 2^128
    p_lo = s_lo * _M_LO
    p_hi = _mul_hi(s_lo, _M_LO) + s_hi * _M_LO + s_lo * _M_HI
    # + inc, with the carry of the low words
    n_lo = p_lo + i_lo
    carry = _ONE if n_lo < p_lo else np.uint64(0)
    n_hi = p_hi + i_hi + carry
    words[0], words[1] = n_hi, n_lo
    x = n_hi ^ n_lo
    rot = n_hi >> _U58
    return (x >> rot) | (x << ((np.uint64(64) - rot) & _U63))


@njit(**JIT_OPTIONS)
def next_double(words: Any) -> float:  # pragma: no cover - compiled
    """``Generator.random()``: a double in [0, 1) from the packed PCG64 state."""
    return float(next_uint64(words) >> _U11) * _TO_DOUBLE


def pack(rng: np.random.Generator) -> np.ndarray:
    """The state of a PCG64 Generator as uint64 [state hi, state lo, inc hi, inc lo]."""
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        raise TypeError(f"compiled draws need a PCG64 generator, not {state.get('bit_generator')}")  # fmt: skip
    s, inc = int(state["state"]["state"]), int(state["state"]["inc"])
    low = (1 << 64) - 1
    return np.array([s >> 64, s & low, inc >> 64, inc & low], dtype=np.uint64)


def unpack(words: np.ndarray, rng: np.random.Generator) -> None:
    """Writes packed words back into ``rng`` (its 32-bit buffer is left as it was)."""
    state = dict(rng.bit_generator.state)
    state["state"] = {
        "state": (int(words[0]) << 64) | int(words[1]),
        "inc": (int(words[2]) << 64) | int(words[3]),
    }
    rng.bit_generator.state = state
