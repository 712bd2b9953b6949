"""A range coder for byte distributions, compiled: 64-bit state, 32-bit words, 24-bit
probabilities.

Range coding (Martin 1979, "Range encoding: an algorithm for removing redundancy from a
digitised message") keeps an interval [low, low + range) of a number written in base 2^32;
coding a symbol with frequency f at cumulative frequency c out of a total of 2^24 narrows it
to [low + r·c, low + r·(c + f)) with r = ⌊range / 2^24⌋. Whenever ``range`` falls below 2^32
the top word of ``low`` is settled and emitted, and both are shifted up by a word, so the
state keeps ``2^32 ≤ range < 2^64`` and ``r ≥ 2^8``: the rounding of r wastes at most a
factor (1 + 2^-8) of one symbol's range, usually far less. A sum that overflows 64 bits
carries into the words already emitted (they are kept in memory, so the carry is added to
them directly rather than through LZMA's cache byte; the interval never leaves [0, 1), so a
carry never runs past the first word). The layout follows Bamler's ``constriction`` (2022,
"Understanding Entropy Coding With Asymmetric Numeral Systems (ANS): a Statistician's
Perspective"), whose queue-based range coder has the same state and word sizes.

The payload is the code value's bytes, most significant first. The encoder ends by choosing,
inside the final interval, the value with the most trailing zero bits and writes only the
bytes of its last two words up to the last non-zero one; the decoder reads zero bytes past
the end, so those bytes need not be stored (the termination costs at most 8 bytes, usually
1-4).

Quantisation (:func:`quantise`) is the one both sides share: the 256 byte entries of a
prediction (BOS dropped; anything not finite and positive counted as 0) become integer
frequencies that sum to exactly 2^24, each at least 1, so every byte stays codable and costs
at most 24 bits. A row with no usable mass becomes uniform.

Example:
    >>> import numpy as np
    >>> rows = np.full((3, 257), 1.0 / 257)
    >>> rows[1, 65] = 0.9
    >>> payload, bits = encode_rows(rows, np.array([65, 65, 7]))
    >>> decode_rows(payload, rows).tolist(), round(bits, 3)
    ([65, 65, 7], 17.072)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numba import njit

from mugpt.model.constants import JIT_OPTIONS

N_SYMBOLS = 256
PRECISION_BITS = 24
TOTAL = 1 << PRECISION_BITS
#: Bytes the coder quantises and codes per batch, at most (the compiled loop's call, or a batch
#: of steps on the stepwise path): a bound on the rows kept (8·257 bytes each) and the interval
#: of progress reports.
BATCH_BYTES = 4096
_SPREAD = TOTAL - N_SYMBOLS  # the mass shared in proportion once every symbol has 1
_WORD = np.uint64(32)
_PREC = np.uint64(PRECISION_BITS)
_LOW_WORD = np.uint64(0xFFFFFFFF)
_RANGE_MIN = np.uint64(1 << 32)

# encoder state (uint64): low, range, words written
E_LOW, E_RANGE, E_WORDS = range(3)
# decoder state (uint64): point (code − low), range, next byte of the payload to read,
# the byte offset of the first read past the end (0 = none yet) plus one
D_POINT, D_RANGE, D_READ, D_PAST = range(4)
#: ``decode_symbol``'s answer for a code value no symbol covers (a corrupt payload).
INVALID = -1


@njit(**JIT_OPTIONS)
def quantise(row: Any, freq: Any) -> float:  # pragma: no cover - compiled
    """freq[0:256] (int64) ← the frequencies of the byte entries of ``row`` (out of 2^24,
    each ≥ 1) and freq[256] ← 2^24; returns the row's usable mass (0: it became uniform).

    Each byte gets 1 + ⌊q_y · (2^24 − 256) / Σq⌋ and the rounding remainder goes to the first
    largest entry; the sums run in index order, so both sides get the same integers."""
    total = 0.0
    for y in range(N_SYMBOLS):
        q = float(row[y])
        if q > 0 and q < math.inf:
            total += q
    if not (total > 0 and total < math.inf):
        for y in range(N_SYMBOLS):
            freq[y] = TOTAL // N_SYMBOLS
        freq[N_SYMBOLS] = TOTAL
        return 0.0
    scale = _SPREAD / total
    used = 0
    best = 0
    best_q = -1.0
    for y in range(N_SYMBOLS):
        q = float(row[y])
        f = 1
        if q > 0 and q < math.inf:
            f += int(q * scale)  # truncation: the floor of a positive number
            if q > best_q:
                best_q = q
                best = y
        freq[y] = f
        used += f
    if used > TOTAL:  # cannot happen (Σ⌊x⌋ ≤ ⌊Σx⌋ and Σx ≤ 2^24 − 256 + tiny); stay valid
        for y in range(N_SYMBOLS):
            freq[y] = TOTAL // N_SYMBOLS
        freq[N_SYMBOLS] = TOTAL
        return 0.0
    freq[best] += TOTAL - used
    freq[N_SYMBOLS] = TOTAL
    return total


@njit(**JIT_OPTIONS)
def symbol_bits(freq: Any, symbol: int) -> float:  # pragma: no cover - compiled
    """−log2 of the symbol's quantised probability: what coding it costs."""
    return PRECISION_BITS - math.log2(float(freq[symbol]))


# ---------------------------------------------------------------------------- encoder


def new_encoder() -> np.ndarray:
    """A fresh encoder state (low 0, range 2^64 − 1, no words)."""
    state = np.zeros(3, dtype=np.uint64)
    state[E_RANGE] = np.uint64(0xFFFFFFFFFFFFFFFF)
    return state


@njit(**JIT_OPTIONS)
def encode_symbol(state: Any, words: Any, cum: int, f: int) -> None:  # pragma: no cover
    """Narrows the interval to the symbol [cum, cum + f) of 2^24; emits a settled word."""
    low, rng = state[E_LOW], state[E_RANGE]
    r = rng >> _PREC
    new_low = low + r * np.uint64(cum)
    if new_low < low:  # carry into the emitted words
        i = np.int64(state[E_WORDS]) - 1
        while words[i] == np.uint32(0xFFFFFFFF):
            words[i] = np.uint32(0)
            i -= 1
        words[i] += np.uint32(1)
    low = new_low
    rng = r * np.uint64(f)
    if rng < _RANGE_MIN:  # one shift suffices: rng ≥ r ≥ 2^8 before it
        n = np.int64(state[E_WORDS])
        words[n] = np.uint32(low >> _WORD)
        state[E_WORDS] = np.uint64(n + 1)
        low = low << _WORD
        rng = rng << _WORD
    state[E_LOW] = low
    state[E_RANGE] = rng


@njit(**JIT_OPTIONS)
def encode_block(
    state: Any, words: Any, rows: Any, symbols: Any, freq: Any
) -> float:  # pragma: no cover - compiled
    """Codes symbols[i] under rows[i] (quantised) for every i; returns their coded bits.
    ``words`` must have room for one more word per symbol."""
    bits = 0.0
    for i in range(symbols.size):
        quantise(rows[i], freq)
        s = symbols[i]
        cum = 0
        for y in range(s):
            cum += freq[y]
        encode_symbol(state, words, cum, freq[s])
        bits += symbol_bits(freq, s)
    return bits


@njit(**JIT_OPTIONS)
def _finish(state: Any, words: Any) -> int:  # pragma: no cover - compiled
    """Writes the final value (two words) and returns how many of its 8 bytes are needed."""
    low, rng = state[E_LOW], state[E_RANGE]
    value = low
    zeros = 0
    for b in range(63, 0, -1):  # the value in [low, low + range) with most trailing zeros
        mask = (np.uint64(1) << np.uint64(b)) - np.uint64(1)
        v = (low + mask) & ~mask
        if v - low < rng:
            value = v
            zeros = b
            break
    if value < low:  # rounding up carried
        i = np.int64(state[E_WORDS]) - 1
        while words[i] == np.uint32(0xFFFFFFFF):
            words[i] = np.uint32(0)
            i -= 1
        words[i] += np.uint32(1)
    n = np.int64(state[E_WORDS])
    words[n] = np.uint32(value >> _WORD)
    words[n + 1] = np.uint32(value & _LOW_WORD)
    return 8 - zeros // 8


class Encoder:
    """Collects coded symbols; :meth:`finish` returns the payload.

    >>> enc = Encoder()
    >>> bits = enc.encode(np.full((2, 257), 0.5), np.array([1, 2]))
    >>> round(bits, 6), len(enc.finish()) <= 4
    (16.0, True)
    """

    def __init__(self) -> None:
        self.state = new_encoder()
        self.words = np.zeros(1024, dtype=np.uint32)
        self.freq = np.zeros(N_SYMBOLS + 1, dtype=np.int64)

    def encode(self, rows: np.ndarray, symbols: np.ndarray) -> float:
        """Codes ``symbols`` (n,) under ``rows`` (n, ≥ 256); returns their coded bits."""
        need = int(self.state[E_WORDS]) + symbols.size + 2
        if need > self.words.size:
            grown = np.zeros(max(need, 2 * self.words.size), dtype=np.uint32)
            grown[: self.words.size] = self.words
            self.words = grown
        return float(encode_block(self.state, self.words, rows, symbols.astype(np.int64), self.freq))  # fmt: skip

    def finish(self) -> bytes:
        self.encode(np.zeros((0, N_SYMBOLS)), np.zeros(0, dtype=np.int64))  # room for two
        tail = int(_finish(self.state, self.words))
        n = int(self.state[E_WORDS])
        body = self.words[: n + 2].astype(">u4").tobytes()
        return body[: 4 * n + tail]


def encode_rows(rows: np.ndarray, symbols: np.ndarray) -> tuple[bytes, float]:
    """(payload, coded bits) of ``symbols`` under ``rows`` in one go."""
    enc = Encoder()
    bits = enc.encode(rows, symbols)
    return enc.finish(), bits


# ---------------------------------------------------------------------------- decoder


@njit(**JIT_OPTIONS)
def _next_word(state: Any, payload: Any) -> np.uint64:  # pragma: no cover - compiled
    """The next 32 bits of the payload, zeros past its end (the first such read is noted)."""
    pos = np.int64(state[D_READ])
    if pos >= payload.size and state[D_PAST] == 0:
        state[D_PAST] = np.uint64(pos + 1)
    w = np.uint64(0)
    for i in range(4):
        w = w << np.uint64(8)
        if pos + i < payload.size:
            w = w | np.uint64(payload[pos + i])
    state[D_READ] = np.uint64(pos + 4)
    return w


@njit(**JIT_OPTIONS)
def start_decoder(state: Any, payload: Any) -> None:  # pragma: no cover - compiled
    """state ← the decoder at the payload's start (its first two words read)."""
    state[D_READ] = 0
    state[D_PAST] = 0
    state[D_RANGE] = np.uint64(0xFFFFFFFFFFFFFFFF)
    hi = _next_word(state, payload)
    state[D_POINT] = (hi << _WORD) | _next_word(state, payload)


@njit(**JIT_OPTIONS)
def decode_symbol(state: Any, payload: Any, freq: Any) -> int:  # pragma: no cover - compiled
    """The next symbol under the quantised ``freq``, or :data:`INVALID` if the code value
    lies in the sliver of the range no symbol covers (only a corrupt payload does that)."""
    point, rng = state[D_POINT], state[D_RANGE]
    r = rng >> _PREC
    q = point // r
    if q >= np.uint64(TOTAL):
        return INVALID
    target = np.int64(q)
    cum = 0
    s = 0
    while cum + freq[s] <= target:
        cum += freq[s]
        s += 1
    point = point - r * np.uint64(cum)
    rng = r * np.uint64(freq[s])
    if rng < _RANGE_MIN:
        point = (point << _WORD) | _next_word(state, payload)
        rng = rng << _WORD
    state[D_POINT] = point
    state[D_RANGE] = rng
    return s


def new_decoder(payload: np.ndarray) -> np.ndarray:
    """A decoder state at the start of ``payload`` (uint8)."""
    state = np.zeros(4, dtype=np.uint64)
    start_decoder(state, payload)
    return state


def decode_rows(payload: bytes, rows: np.ndarray) -> np.ndarray:
    """The symbols coded under ``rows`` (for tests and examples; the decoder proper decodes
    one symbol at a time, each row computed after the symbol before it is known)."""
    data = np.frombuffer(payload, dtype=np.uint8)
    state = new_decoder(data)
    freq = np.zeros(N_SYMBOLS + 1, dtype=np.int64)
    out = np.zeros(rows.shape[0], dtype=np.int64)
    for i in range(rows.shape[0]):
        quantise(rows[i], freq)
        out[i] = decode_symbol(state, data, freq)
    return out


def past_end(state: np.ndarray) -> bool:
    """Whether the decoder has read a word that lies wholly past the payload's end."""
    return bool(state[D_PAST] != 0)
