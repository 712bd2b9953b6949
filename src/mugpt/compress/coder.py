"""Range coding driven by a prequential Learner: encode == decode, bit for bit.

The encoder runs the Learner over the bytes exactly as ``mugpt run`` would and hands each
recorded prediction to a range coder (Martin 1979, "Range encoding: an algorithm for removing
redundancy from a digitised message"; :mod:`mugpt.compress.range`, compiled, which quantises
each prediction to 24-bit frequencies the decoder reproduces exactly). The decoder rebuilds
the same Learner from the file's configuration and must compute the *same* probabilities
before it knows each byte:

- ``update_every = 1``: the prediction of byte t is a forward pass over the symbols before t,
  which the decoder has.
- ``update_every = k > 1``: a step scores k bytes with one forward pass over a window that
  already contains the step's earlier bytes. The decoder forms the identical window (same
  length, same positions) with not-yet-decoded bytes set to a placeholder and reads the row
  of the byte it decodes; causal masking makes that row independent of the placeholders
  (masked scores are −inf, so their attention weights are exactly 0), so it equals the
  encoder's row bit for bit. On the compiled model the decoder does not run that window
  once per byte: it computes it position by position (``model/incremental.py``, keys and
  values of earlier positions kept), each byte's row as soon as the byte before it is
  decoded, so a byte costs about one position; the finished window equals the full forward
  in every bit and is handed to the step, which then does not run the forward again. The
  NumPy backend keeps one full forward pass per byte.

On the compiled model with no mechanism other than ``ngram_mix``, ``grad_clip`` and
``selective_backprop`` (the strong preset, the seed preset), the whole decoder runs compiled:
:mod:`mugpt.compress.steps` stands in for the compiled loop's steps and decodes each step's
bytes in the step itself (incremental forward, mixer row, range decoder, byte by byte), then
learns them with the loop's own update. Otherwise the decoder goes byte by byte from Python
and, after each step, compares the probabilities it used with those the Learner's own step
then records, stopping with a clear error if they differ in any bit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from mugpt.compress import range as rc
from mugpt.compress.container import (
    CompressedFileError,
    Header,
    header_bytes,
    pack,
    unpack,
)
from mugpt.compress.fingerprint import (
    deterministic_threads,
    fingerprint_differences,
    platform_fingerprint,
)
from mugpt.engine.window import step_end, whole_steps_end
from mugpt.errors import ConfigError, MugptError
from mugpt.mechanisms import Mechanism, StepContext
from mugpt.model import BOS

ProgressFn = Callable[[int, int, float], None]
"""``progress(bytes_done, bytes_total, running_bpb)``, called a few times a second."""

N_BYTE_SYMBOLS = rc.N_SYMBOLS
"""Only bytes are coded; BOS is never a coded symbol (its probability mass is dropped)."""
CODER_PRECISION_BITS = rc.PRECISION_BITS
"""Predictions are quantised to frequencies out of 2^24, each at least 1: the floor of every
byte's probability, so the most a byte can cost is 24 bits."""
PLACEHOLDER = 0
"""The byte that stands in for not-yet-decoded bytes of a step (any value gives the same
predictions; tests check that)."""
_PROGRESS_SECONDS = 0.2


class PlatformMismatchWarning(UserWarning):
    """The file was made on a different numeric platform; it may not decode."""


@dataclass(frozen=True)
class CodecReport:
    """Sizes and speed of one compression or decompression.

    ``prequential_bits`` is the Learner's Σ −log2 p over the bytes (DESIGN §2, the code
    length a matching coder promises); ``coded_bits`` is Σ −log2 q of the quantised
    distributions the coder actually used (BOS mass dropped, every byte at least 2^-24); the
    payload is within a few bytes of ``coded_bits / 8``.
    """

    original_bytes: int
    compressed_bytes: int
    header_bytes: int
    payload_bytes: int
    prequential_bits: float
    coded_bits: float
    seconds: float

    @property
    def bpb(self) -> float:
        """Whole-file bits per original byte (header included)."""
        return 8.0 * self.compressed_bytes / self.original_bytes if self.original_bytes else float("nan")  # fmt: skip

    @property
    def payload_bpb(self) -> float:
        return 8.0 * self.payload_bytes / self.original_bytes if self.original_bytes else float("nan")  # fmt: skip

    @property
    def prequential_bpb(self) -> float:
        return self.prequential_bits / self.original_bytes if self.original_bytes else float("nan")  # fmt: skip

    @property
    def bytes_per_s(self) -> float:
        """Original bytes per second of wall time."""
        return self.original_bytes / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values.update(bpb=self.bpb, payload_bpb=self.payload_bpb,
                      prequential_bpb=self.prequential_bpb, bytes_per_s=self.bytes_per_s)  # fmt: skip
        return values

    def summary_line(self, verb: str) -> str:
        """One line for the terminal, e.g. ``compressed 1,000 → 312 bytes ...``."""
        if verb == "compressed":
            sizes = f"{self.original_bytes:,} → {self.compressed_bytes:,} bytes"
        else:
            sizes = f"{self.compressed_bytes:,} → {self.original_bytes:,} bytes"
        return (
            f"{verb} {sizes}: {self.bpb:.4f} bpb (payload {self.payload_bytes:,} B = "
            f"{self.payload_bpb:.4f} bpb, header {self.header_bytes:,} B); prequential "
            f"{self.prequential_bpb:.4f} bpb; {self.seconds:.2f} s, {self.bytes_per_s:,.0f} B/s"
        )


# ---------------------------------------------------------------------------- coding model


def quantised(probs: np.ndarray) -> np.ndarray:
    """The frequencies (out of 2^24) the range coder uses for a prediction (V = 257 → 256
    byte entries, BOS dropped; anything not finite and positive counts as 0; every byte at
    least 1, so no byte is ever uncodable): :func:`mugpt.compress.range.quantise`.

    Example:
        >>> f = quantised(np.array([0.5, np.nan, -1.0, 0.5] + [0.0] * 253))
        >>> f[:4].tolist(), int(f.sum())
        ([8388481, 1, 1, 8388481], 16777216)
    """
    freq = np.zeros(N_BYTE_SYMBOLS + 1, dtype=np.int64)
    rc.quantise(np.ascontiguousarray(probs, dtype=np.float64), freq)
    return freq[:N_BYTE_SYMBOLS]


def _coder_description() -> dict[str, Any]:
    return {"name": "range", "library": "mugpt", "word_bits": 32, "state_bits": 64,
            "precision_bits": CODER_PRECISION_BITS, "symbols": N_BYTE_SYMBOLS}  # fmt: skip


# ---------------------------------------------------------------------------- the schedule


def step_sizes(n: int, update_every: int, context: int) -> Iterator[int]:
    """The bytes of each step when a Learner reads ``n`` bytes of one document, ``k`` per
    step: the schedule of :meth:`Learner.run` (the first step also holds the BOS, and a step
    holds at most ``context`` symbols).

    Example:
        >>> list(step_sizes(10, 4, 4))
        [3, 4, 3]
    """
    # the one window rule (coded files: one document)

    starts = np.zeros(n + 1, dtype=bool)
    pos = 0
    while pos < n:
        end = step_end(starts, pos, n, update_every, context, pos == 0)
        yield end - pos
        pos = end


def _check_supported(learner: Any) -> None:
    """Sub-streams (B > 1) are coded step by step, window by window, which only the compiled
    coder does (the Python decoder decodes one stream)."""
    value = learner.cfg.batch_streams
    if value > 1 and not _compiled_decoder_ok(learner):
        from mugpt.compress.steps import DECODABLE

        raise ConfigError(
            f"batch_streams={value} is coded by the compiled coder only, which needs the numba "
            f"backend and no mechanisms but {', '.join(sorted(DECODABLE))}; drop "
            "--batch-streams or the other mechanisms"
        )


# ---------------------------------------------------------------------------- prediction


def _step_symbols(learner: Any, data: np.ndarray) -> np.ndarray:
    """The symbols a step appends: the bytes, after a BOS on the Learner's first step."""
    first = learner.position == 0 and learner.history.size == 0
    symbols = data.astype(np.int64)
    return np.concatenate([[BOS], symbols]) if first else symbols


def _adjusting(learner: Any) -> list[Mechanism]:
    """Active mechanisms that change predictions (the rest do not matter before a step)."""
    return [
        m
        for m in learner.mechanisms
        if m.enabled and type(m).adjust_prediction is not Mechanism.adjust_prediction
    ]


def _step_window(learner: Any, data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inputs, targets, new_positions) of the window ``learner.step(data)`` will use."""
    cfg = learner.model_cfg
    symbols = _step_symbols(learner, data)
    window = np.concatenate([learner.history, symbols])[-(cfg.context + 1) :]
    inputs, targets = window[:-1], window[1:]
    n = inputs.size
    slots = np.arange(max(0, n - symbols.size), n)
    new_positions = slots[targets[slots] != BOS]
    assert new_positions.size == data.size
    return inputs, targets, new_positions


def _adjusted_row(
    learner: Any, mechanisms: list[Mechanism], data: np.ndarray, window: Any, acts: Any, j: int
) -> np.ndarray:
    """Row j of the step's prediction after the ``adjust_prediction`` hooks (run on a copy
    of the Learner's generator, so the Learner is unchanged)."""
    inputs, targets, new_positions = window
    probs = acts.probs[0, new_positions].astype(np.float64)  # (k, V)
    if not mechanisms:
        return probs[j]
    fields = {f.name for f in dataclasses.fields(StepContext)}
    extra = {"optimizer": learner.optimizer} if "optimizer" in fields else {}
    ctx = StepContext(
        step=learner.counters.steps,
        position=learner.position,
        new_bytes=data,
        inputs=inputs,
        targets=targets,
        new_positions=new_positions,
        hidden=acts.hidden[0],
        rng=_rng_copy(learner.rng),
        lr=learner.lr,
        context=learner.model_cfg.context,
        **extra,
    )
    for mech in mechanisms:
        probs = mech.adjust_prediction(ctx, probs)
    return np.asarray(probs[j], dtype=np.float64)


def _step_decoder(learner: Any, adjusting: list[Mechanism]) -> Any:
    """The compiled per-byte form of the step's prediction when its only adjusting mechanism
    has one (``ngram_mix``), else None (the hooks then run for every byte)."""
    from mugpt.mechanisms.ngram_mix import NgramMix, StepDecoder

    if len(adjusting) == 1 and isinstance(adjusting[0], NgramMix):
        return StepDecoder(adjusting[0], learner.model_cfg.context)
    return None


def _rng_copy(rng: np.random.Generator) -> np.random.Generator:
    """A generator in the same state (the hooks may draw; the Learner's must not move)."""
    bit_generator = type(rng.bit_generator)()
    bit_generator.state = rng.bit_generator.state
    return np.random.Generator(bit_generator)


class _IncrementalStep:
    """The decoder's forward pass on the compiled model: the step's window computed one
    position at a time (model/incremental.py), each byte's row as soon as the byte before it
    is known, so a byte costs about one position instead of a whole window. Its rows equal
    the full forward's bit for bit; once every position is done the workspace is exactly the
    full forward's, which is handed to the step (no second forward pass)."""

    def __init__(self, learner: Any, data: np.ndarray) -> None:
        from mugpt.model.fast import FastActivations
        from mugpt.model.incremental import begin_window, forward_positions, key_scratch

        self.model = model = learner.model
        inputs, targets, new_positions = _step_window(learner, data)
        self.window = (inputs.copy(), targets.copy(), new_positions)
        inputs = self.window[0]
        self.n = int(inputs.size)
        self.forward_positions = forward_positions
        self.keys_t = key_scratch(model)
        begin_window(model, inputs, 0)
        self.done = 0  # positions computed
        ws = model.ws
        self.acts = FastActivations(idx=inputs[None, :].copy(), probs=ws.probs[:1, : self.n],
                                    hidden=ws.hidden[:1, : self.n], workspace=ws)  # fmt: skip

    def upto(self, t: int) -> None:
        """Computes positions up to and including t."""
        if t >= self.done:
            m = self.model
            self.forward_positions(m.params.flat, m.offsets, m.dims, m.ws, self.keys_t, 0, self.done, t + 1)  # fmt: skip
            self.done = t + 1

    def set_input(self, t: int, symbol: int) -> None:
        assert t >= self.done, "a computed position's input cannot change"
        self.model.ws.idx[0, t] = symbol
        self.acts.idx[0, t] = symbol
        inputs, targets, _ = self.window  # what the hooks see: the bytes decoded so far
        inputs[t] = symbol
        targets[t - 1] = symbol

    def finish(self) -> Any:
        """Completes the window (padding included) and returns its activations."""
        self.upto(self.model.cfg.context - 1)
        self.model._forwarded = 1
        return self.acts


def _incremental_ok(learner: Any) -> bool:
    model = getattr(learner, "model", None)
    return getattr(model, "backend", None) == "numba" and hasattr(model, "ws")


def predict_in_step(learner: Any, data: np.ndarray, j: int) -> np.ndarray:
    """The distribution (V,) that ``learner.step(data)`` will record for ``data[j]``,
    computed from ``data[:j]`` alone (``data[j:]`` may hold anything) and without changing
    the Learner.

    It forms the step's exact window and runs the same forward pass and the same
    ``adjust_prediction`` hooks (on a copy of the Learner's generator), then reads row j.
    """
    window = _step_window(learner, data)
    inputs = window[0]
    acts = learner.model.forward(inputs[None, :])
    reuse = getattr(learner.model, "forward", None)
    if isinstance(reuse, _ForwardReuse):
        reuse.offer(inputs[None, :], acts)
    return _adjusted_row(learner, _adjusting(learner), data, window, acts, j)


class _ForwardReuse:
    """Stands in for a decoder's ``model.forward``: the step that follows the prediction of
    its last byte runs the very same forward pass (same window, parameters not yet updated),
    so that pass is handed over instead of recomputed. An offer serves the next call only,
    and only if its window is equal; any other call computes afresh."""

    def __init__(self, forward: Callable[[np.ndarray], Any]) -> None:
        self.forward = forward
        self.pending: tuple[np.ndarray, Any] | None = None

    def offer(self, idx: np.ndarray, acts: Any) -> None:
        self.pending = (idx.copy(), acts)

    def __call__(self, idx: np.ndarray) -> Any:
        pending, self.pending = self.pending, None
        if pending is not None and pending[0].shape == idx.shape and np.array_equal(pending[0], idx):  # fmt: skip
            return pending[1]
        return self.forward(idx)


# ---------------------------------------------------------------------------- encode


def _build_learner(run_config: Any) -> Any:
    learner = run_config.build_learner()
    _check_supported(learner)
    return learner


def _ticker(progress: ProgressFn | None, total: int) -> Callable[..., None]:
    """``tick(bytes done, coded bits so far, final=False)``: calls ``progress`` with the
    bits per byte so far, at most every ``_PROGRESS_SECONDS`` (and on the final call)."""
    last = [0.0]

    def tick(done: int, bits: float, final: bool = False) -> None:
        if progress is None:
            return
        now = time.perf_counter()
        if final or now - last[0] >= _PROGRESS_SECONDS:
            last[0] = now
            progress(done, total, bits / done if done else float("nan"))

    return tick


def encode(
    data: bytes, run_config: Any = None, progress: ProgressFn | None = None
) -> tuple[bytes, CodecReport]:
    """Compresses ``data`` with a Learner built from ``run_config`` (a
    :class:`~mugpt.engine.config.RunConfig`; ``None`` = the seed preset) and returns the file
    and a :class:`CodecReport`.

    Example:
        >>> blob, report = encode(b"hello hello hello")
        >>> decode(blob)[0]
        b'hello hello hello'
        >>> report.original_bytes, abs(8 * report.payload_bytes - report.coded_bits) < 64
        (17, True)
    """
    from mugpt.engine.config import RunConfig

    run_config = run_config or RunConfig()
    data = bytes(data)
    t0 = time.perf_counter()
    learner = _build_learner(run_config)
    array = np.frombuffer(data, dtype=np.uint8)
    encoder = rc.Encoder()
    tick = _ticker(progress, array.size)
    starts = np.zeros(array.size + 1, dtype=bool)  # one document: a BOS before byte 0 only
    with deterministic_threads():
        if learner._compiled_mechanisms() is not None:
            # the compiled loop codes the rows it scores, in its order (any batch_streams)
            from mugpt.compress.steps import StepEncoder

            steps = StepEncoder(encoder, learner.model, tick)
            learner.advance(array, starts, array.size, steps=steps)
            bits = steps.bits
        else:
            bits = _encode_stepwise(learner, array, starts, encoder, tick)
        tick(array.size, bits, True)
        fingerprint = platform_fingerprint()
    payload = encoder.finish()
    prequential = float(learner.losses.sum())
    config = run_config.to_dict()
    backend = getattr(learner, "backend", None)
    if backend is not None and "backend" in config["learner"]:
        # "auto" could pick another backend where the file is decoded: pin the one used
        config["learner"]["backend"] = backend
    header = Header(
        config=config,
        length=len(data),
        crc32=zlib.crc32(data),
        payload_bytes=len(payload),
        payload_crc32=zlib.crc32(payload),
        platform=fingerprint,
        prequential_bits=round(prequential, 3),
        coder=_coder_description(),
    )
    blob = pack(header, payload)
    report = CodecReport(
        original_bytes=len(data),
        compressed_bytes=len(blob),
        header_bytes=header_bytes(blob),
        payload_bytes=len(payload),
        prequential_bits=prequential,
        coded_bits=bits,
        seconds=time.perf_counter() - t0,
    )
    return blob, report


def _encode_stepwise(learner: Any, array: np.ndarray, starts: np.ndarray, encoder: Any,
                     tick: Callable[..., None]) -> float:  # fmt: skip
    """Codes ``array`` with a Learner the compiled loop cannot run (B = 1), a batch of whole
    steps at a time (the schedule of :func:`step_sizes`): the rows it scored are coded."""
    scored = np.empty((min(array.size, rc.BATCH_BYTES), learner.model_cfg.vocab_size))
    bits = 0.0
    pos = 0
    while pos < array.size:
        end = whole_steps_end(
            starts, pos, min(pos + rc.BATCH_BYTES, array.size), array.size,
            learner.cfg.update_every, learner.model_cfg.context, pos == 0,
        )  # fmt: skip
        if end - pos > scored.shape[0]:
            scored = np.empty((end - pos, scored.shape[1]))
        learner.advance(array, starts, end, scored)
        # one coder call per batch of steps: the same stream as one call per symbol
        bits += encoder.encode(scored[: end - pos], array[pos:end])
        pos = end
        tick(pos, bits)
    return bits


# ---------------------------------------------------------------------------- decode


def read_header(blob: bytes) -> Header:
    """Checks a compressed file and returns its :class:`Header` without decoding."""
    return unpack(blob)[0]


def decode(
    blob: bytes, progress: ProgressFn | None = None, warn_platform: bool = True
) -> tuple[bytes, CodecReport]:
    """Decompresses a file made by :func:`encode`; returns the original bytes and a report.

    Raises :class:`CompressedFileError` if the file is not μGPT's, is corrupt or truncated,
    or does not decode to bytes with the recorded length and CRC32. If the file was made on
    a different numeric platform, a :class:`PlatformMismatchWarning` is issued first.
    """
    from mugpt.engine.config import RunConfig

    t0 = time.perf_counter()
    header, payload = unpack(blob)
    if header.length == 0:
        return b"", _decode_report(blob, header, b"", 0.0, 0.0, t0)
    try:
        run_config = RunConfig.from_dict(header.config)
        learner = _build_learner(run_config)
    except MugptError as exc:
        raise CompressedFileError(
            f"the file's configuration cannot be rebuilt by this mugpt ({exc}); decode it with "
            "the mugpt release that made it"
        ) from None
    mismatch = fingerprint_differences(header.platform, platform_fingerprint())
    if mismatch and warn_platform:
        warnings.warn(
            "this file was made on a different numeric platform ("
            + "; ".join(mismatch)
            + "); decoding needs bit-identical arithmetic and may fail",
            PlatformMismatchWarning,
            stacklevel=2,
        )
    out = np.zeros(header.length, dtype=np.uint8)
    tick = _ticker(progress, header.length)
    limits = _Limits(header, len(payload))
    with deterministic_threads():
        if _compiled_decoder_ok(learner):
            bits = _decode_compiled(learner, payload, out, limits, tick)
        else:
            bits = _decode_bytewise(learner, payload, out, limits, tick, mismatch)
    original = out.tobytes()
    if zlib.crc32(original) != header.crc32:
        hint = (
            " The file was made on a different numeric platform ("
            + "; ".join(mismatch)
            + "): decode it where it was made."
            if mismatch
            else " The payload passed its own CRC, so the arithmetic here differs from the "
            "encoder's (library versions or CPU) or the file was altered."
        )
        raise CompressedFileError("the decoded bytes fail the CRC32 check." + hint)
    return original, _decode_report(blob, header, original, float(learner.losses.sum()), bits, t0)


@dataclass(frozen=True)
class _Limits:
    """What a decode may not exceed: the payload's coded bits (:func:`payload_bit_budget`,
    and ``AFTER_END_BITS`` once the payload is read to its end) and the header's recorded
    prequential bits (:func:`recorded_loss_limit`)."""

    length: int
    recorded: float
    budget: float
    lost_limit: float

    def __init__(self, header: Header, payload_bytes: int) -> None:
        object.__setattr__(self, "length", header.length)
        object.__setattr__(self, "recorded", header.prequential_bits)
        object.__setattr__(self, "budget", payload_bit_budget(payload_bytes, header.length))
        object.__setattr__(self, "lost_limit", recorded_loss_limit(header.prequential_bits))

    def used_up(self, decoded: int) -> CompressedFileError:
        return CompressedFileError(
            f"the payload is used up after {decoded:,} of {self.length:,} bytes (the header's "
            "length is more than its payload holds); the file is corrupt"
        )

    def invalid(self, at: int) -> CompressedFileError:
        return CompressedFileError(
            f"the payload cannot be decoded at byte {at:,} (no byte has its code value); the "
            "file is corrupt"
        )

    def too_costly(self, decoded: int, lost: float) -> CompressedFileError:
        return CompressedFileError(
            f"the first {decoded:,} of {self.length:,} decoded bytes already cost {lost:,.3f} "
            f"bits, more than the {self.recorded:,.3f} the encoder recorded for the whole file "
            "(the header's length or prequential_bits was changed); the file is corrupt"
        )


def _compiled_decoder_ok(learner: Any) -> bool:
    """Whether :mod:`mugpt.compress.steps` can decode for this Learner: the compiled loop
    runs it and its only active mechanisms are those the compiled decoder runs."""
    from mugpt.compress.steps import DECODABLE

    if not _incremental_ok(learner) or learner._compiled_mechanisms() is None:
        return False
    return all(m.name in DECODABLE for m in learner.mechanisms if m.enabled)


def _decode_compiled(learner: Any, payload: bytes, out: np.ndarray, limits: _Limits,
                     tick: Callable[..., None]) -> float:  # fmt: skip
    """Decodes into ``out`` with the compiled steps: one ``advance`` over the whole file, the
    steps decoding at most ``range.BATCH_BYTES`` per call of the compiled loop."""
    from mugpt.compress.steps import E_INVALID, E_LOST, E_USED_UP, StepDecoder

    steps = StepDecoder(payload, learner.model, limits.budget, limits.lost_limit, AFTER_END_BITS, tick)  # fmt: skip
    starts = np.zeros(out.size + 1, dtype=bool)  # one document, as encode
    learner.advance(out, starts, out.size, None, steps=steps)  # stops at an error
    error = steps.error
    if error is not None:
        code, at = error
        if code == E_INVALID:
            raise limits.invalid(at)
        if code == E_USED_UP:
            raise limits.used_up(at)
        assert code == E_LOST, error
        raise limits.too_costly(at, steps.lost)
    tick(out.size, steps.bits, True)
    return steps.bits


def _decode_bytewise(learner: Any, payload: bytes, out: np.ndarray, limits: _Limits,
                     tick: Callable[..., None], mismatch: list[str]) -> float:  # fmt: skip
    """Decodes into ``out`` from Python, one byte at a time (any backend, any mechanism),
    checking after each step that the Learner scored the rows the decoder used."""
    with contextlib.suppress(AttributeError, TypeError):  # a model without a settable forward
        learner.model.forward = _ForwardReuse(learner.model.forward)
    incremental = _incremental_ok(learner)
    data = np.frombuffer(payload, dtype=np.uint8)
    decoder = rc.new_decoder(data)
    freq = np.zeros(N_BYTE_SYMBOLS + 1, dtype=np.int64)
    bits = 0.0
    exhausted_at: float | None = None  # the coded bits when the payload's end was read
    lost = 0.0  # the decoded bytes' prequential bits so far, against the header's record
    starts = np.zeros(out.size + 1, dtype=bool)  # one document, as encode
    scored = np.empty((learner.model_cfg.context, learner.model_cfg.vocab_size))
    adjusting = _adjusting(learner)
    mixer = _step_decoder(learner, adjusting) if incremental else None
    pos = 0
    for size in step_sizes(out.size, learner.cfg.update_every, learner.model_cfg.context):
        chunk = out[pos : pos + size]  # filled byte by byte as they are decoded
        chunk[:] = PLACEHOLDER
        rows = np.empty((size, learner.model_cfg.vocab_size), dtype=np.float64)
        inc = _IncrementalStep(learner, chunk) if incremental else None
        targets = np.zeros(size, dtype=np.int64)
        for j in range(size):
            if inc is None:
                rows[j] = predict_in_step(learner, chunk, j)
            else:
                slot = int(inc.window[2][j])
                if j > 0:  # the input of this byte's position is the byte just decoded
                    inc.set_input(slot, int(chunk[j - 1]))
                inc.upto(slot)
                if mixer is not None:  # one mixed row per byte, compiled
                    rows[j] = inc.acts.probs[0, slot]
                    mixer.row(rows, inc.window[0], inc.window[2], j)
                else:
                    rows[j] = _adjusted_row(learner, adjusting, chunk, inc.window, inc.acts, j)  # fmt: skip
            rc.quantise(rows[j], freq)
            symbol = int(rc.decode_symbol(decoder, data, freq))
            if symbol == rc.INVALID:
                raise limits.invalid(pos + j)
            chunk[j] = symbol
            bits += float(rc.symbol_bits(freq, symbol))
            if exhausted_at is None and rc.past_end(decoder):
                exhausted_at = bits
            if bits > limits.budget or (exhausted_at is not None and bits - exhausted_at > AFTER_END_BITS):  # fmt: skip
                raise limits.used_up(pos + j + 1)
            if mixer is not None and inc is not None and j < size - 1:
                targets[j] = symbol
                mixer.learn(targets, inc.window[0], inc.window[2], j)
        if mixer is not None and inc is not None:
            mixer.end(inc.window[0], inc.window[2])
        if inc is not None:
            acts = inc.finish()
            reuse = getattr(learner.model, "forward", None)
            if isinstance(reuse, _ForwardReuse):
                reuse.offer(acts.idx, acts)
        learner.advance(out, starts, pos + size, scored)  # the step learns its bytes
        recorded = scored[:size]
        if recorded.tobytes() != rows.tobytes():
            raise CompressedFileError(_divergence_message(pos, recorded, rows, mismatch))
        lost += float(np.sum(learner.last.loss_bits, dtype=np.float64))
        if lost > limits.lost_limit:
            raise limits.too_costly(pos + size, lost)
        pos += size
        tick(pos, bits)
    tick(pos, bits, True)
    return bits


#: The most coded bits that bytes decoded after the decoder first read past the payload's end
#: may cost: what its state then holds (two 32-bit words) and the word it was reading, with a
#: margin.
AFTER_END_BITS = 3 * 64


def recorded_loss_limit(prequential_bits: float) -> float:
    """The most prequential bits the decoded bytes may cost, given the header's record.

    The decoder's Learner repeats the encoder's bit for bit, so the decoded bytes' losses sum
    to the recorded ``prequential_bits`` (rounded to 3 decimals in the header; a running sum
    differs from the encoder's one-shot sum by rounding only). Going past it means the header
    claims more bytes than were coded: the stop comes one step after the real end, however
    confidently the model then decodes the padding (a length edit on a 1 kB file otherwise
    decodes tens of thousands of near-free bytes before the payload budgets trip).

    >>> recorded_loss_limit(1000.0)
    1000.001001
    """
    return prequential_bits + 1e-3 + 1e-9 * abs(prequential_bits)


def payload_bit_budget(payload_bytes: int, length: int) -> float:
    """The most coded bits (as the decoder counts them) that a payload of ``payload_bytes``
    bytes can hold for ``length`` original bytes; a decode that goes past it reads beyond the payload, so the file is corrupt.

    The range coder (:mod:`mugpt.compress.range`) emits a word whenever its range has shrunk
    by one, so its output is never shorter than the information content of what it coded
    under the quantised probabilities, less what its final state holds
    (``CODER_SLACK_BITS``); the decoder counts exactly those quantised costs (each
    −log2(f / 2^24), which the coder's rounding of the range only exceeds). The budget adds a
    margin for the rounding of the running sum, so a valid file never reaches it, and a
    header whose length its payload cannot hold stops as soon as its bytes cost more than
    the payload.

    >>> round(payload_bit_budget(48, 1000), 1)
    456.0
    """
    from mugpt.compress.container import CODER_SLACK_BITS

    most = 8 * payload_bytes + CODER_SLACK_BITS
    return most + 8 + length * 2.0**-30


def _divergence_message(pos: int, recorded: np.ndarray, used: np.ndarray, mismatch: list[str]) -> str:  # fmt: skip
    differs = recorded != used if recorded.shape == used.shape else np.ones((1, 1), dtype=bool)
    bad = int(np.argmax(np.any(differs, axis=-1)))
    where = f"byte {pos + bad:,}"
    cause = (
        f" (the file was made on a different platform: {'; '.join(mismatch)})"
        if mismatch
        else " (a mechanism's prediction depends on bytes it has not seen yet, or the "
        "Learner's step and mugpt.compress.coder.predict_in_step no longer agree)"
    )
    return (
        f"decoding diverged at {where}: the probabilities available before the byte differ "
        f"from those the Learner scored{cause}"
    )


def _decode_report(
    blob: bytes, header: Header, original: bytes, prequential: float, bits: float, t0: float
) -> CodecReport:
    return CodecReport(
        original_bytes=len(original),
        compressed_bytes=len(blob),
        header_bytes=header_bytes(blob),
        payload_bytes=header.payload_bytes,
        prequential_bits=prequential,
        coded_bits=bits,
        seconds=time.perf_counter() - t0,
    )


# ---------------------------------------------------------------------------- one-liners


def compress_bytes(data: bytes, run_config: Any = None, progress: ProgressFn | None = None) -> bytes:  # fmt: skip
    """``data`` → a self-describing compressed file (``None`` config = the seed preset).

    Example:
        >>> from mugpt.engine.config import RunConfig
        >>> blob = compress_bytes(b"abcabcabc", RunConfig.from_dict({"learner": {"update_every": 4}}))
        >>> decompress_bytes(blob)
        b'abcabcabc'
    """
    return encode(data, run_config, progress)[0]


def decompress_bytes(blob: bytes, progress: ProgressFn | None = None) -> bytes:
    """A file made by :func:`compress_bytes` → the original bytes (checked by CRC32)."""
    return decode(blob, progress)[0]
