"""Compression: round trips, the promised size, determinism, and clear errors on bad files."""

from __future__ import annotations

import json
import warnings
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mugpt.compress import (
    MAGIC,
    CompressedFileError,
    PlatformMismatchWarning,
    compress_bytes,
    decode,
    decompress_bytes,
    encode,
    read_header,
)
from mugpt.compress import range as rc
from mugpt.compress.coder import PLACEHOLDER, predict_in_step, quantised, step_sizes
from mugpt.compress.container import pack, unpack
from mugpt.engine.config import RunConfig
from mugpt.mechanisms import available

HAS_CACHE = "cache" in available()
needs_cache = pytest.mark.skipif(not HAS_CACHE, reason="the cache mechanism is not built yet")

TEXT = (
    "Prequential coding: predict, pay −log₂ p, then learn. Ünïcödé, 日本語, emoji 🙂.\n"
).encode()
RANDOM = np.random.default_rng(7).integers(0, 256, 160, dtype=np.uint8).tobytes()
INPUTS = {
    "empty": b"",
    "one byte": b"\x00",
    "all 256 values": bytes(range(256)),
    "random": RANDOM,
    "utf-8 text": TEXT,
    "one repeated byte": b"z" * 150,
    "longer than the context": b"the cat sat on the mat; " * 6,  # 144 bytes, context 32
}
CONFIGS = {
    "seed": {},
    "cache": {"mechanisms": [{"name": "cache"}]},
}


def config(name: str, **learner: int) -> RunConfig:
    values: dict[str, object] = dict(CONFIGS[name])
    if learner:
        values["learner"] = learner
    return RunConfig.from_dict(values)


def cfg_param(name: str) -> object:
    return pytest.param(name, marks=needs_cache) if name == "cache" else name


@pytest.mark.parametrize("cfg_name", [cfg_param(n) for n in CONFIGS])
@pytest.mark.parametrize("label", list(INPUTS))
def test_round_trip(label: str, cfg_name: str) -> None:
    data = INPUTS[label]
    blob, report = encode(data, config(cfg_name))
    assert blob.startswith(MAGIC)
    out, back = decode(blob)
    assert out == data
    assert report.original_bytes == back.original_bytes == len(data)
    assert report.compressed_bytes == back.compressed_bytes == len(blob)
    # the decoder replayed the very same run: same losses to the last bit
    assert back.prequential_bits == report.prequential_bits


@pytest.mark.parametrize("cfg_name", [cfg_param(n) for n in CONFIGS])
@pytest.mark.parametrize("k", [5, 32])
def test_round_trip_several_bytes_per_step(cfg_name: str, k: int) -> None:
    data = (TEXT + RANDOM[:40]) * 2  # k = 32 = context: the first step holds 31 bytes + BOS
    blob = compress_bytes(data, config(cfg_name, update_every=k))
    assert read_header(blob).config["learner"]["update_every"] == k
    assert decompress_bytes(blob) == data


@pytest.mark.parametrize("cfg_name", [cfg_param(n) for n in CONFIGS])
def test_predictions_before_a_byte_equal_what_the_step_scores(cfg_name: str) -> None:
    """The decoder's premise: for k > 1, what it can compute before byte j of a step (the
    later bytes unknown) is bit for bit what the Learner's step records for that byte."""
    learner = config(cfg_name, update_every=6).build_learner()
    data = np.frombuffer(b"abracadabra, abracadabra! and so on", dtype=np.uint8)
    pos = 0
    for size in step_sizes(data.size, 6, learner.model_cfg.context):
        chunk = data[pos : pos + size].copy()
        rows = []
        for j in range(size):
            hidden = chunk.copy()
            hidden[j:] = PLACEHOLDER
            row = predict_in_step(learner, hidden, j)
            other = chunk.copy()
            other[j:] = 255 - PLACEHOLDER  # a different placeholder changes nothing
            assert np.array_equal(predict_in_step(learner, other, j), row)
            rows.append(row)
        out = learner.step(chunk)
        assert np.array_equal(np.asarray(out.probs, dtype=np.float64), np.stack(rows))
        pos += size


@pytest.mark.parametrize("k", [1, 4])
@pytest.mark.parametrize("name", [n for n in available() if n != "cache"])
def test_round_trip_with_each_mechanism(name: str, k: int) -> None:
    """Every mechanism is deterministic enough for the decoder to replay it."""
    cfg = RunConfig.from_dict({"mechanisms": [{"name": name}], "learner": {"update_every": k}})
    data = TEXT + b"again: " + TEXT[:60]
    assert decompress_bytes(compress_bytes(data, cfg)) == data


def test_step_sizes_follow_the_learner_run_schedule() -> None:
    data = bytes(range(100))
    for k, ctx in [(1, 32), (7, 32), (32, 32), (4, 5)]:
        cfg = RunConfig.from_dict({"model": {"context": ctx}, "learner": {"update_every": k}})
        learner = cfg.build_learner()
        from mugpt.corpus import Stream

        learner.run(Stream.from_bytes(data))
        assert learner.counters.steps == len(list(step_sizes(len(data), k, ctx)))
        assert sum(step_sizes(len(data), k, ctx)) == len(data)


def test_payload_is_the_prequential_code_length_within_a_few_bytes() -> None:
    data = TEXT * 3
    blob, report = encode(data)
    ideal = report.prequential_bits / 8
    # one 32-bit word of termination plus quantisation; BOS mass dropped can only help
    assert report.payload_bytes <= ideal + 8
    assert report.payload_bytes >= report.coded_bits / 8 - 2
    assert report.coded_bits <= report.prequential_bits + 1.0
    assert report.compressed_bytes == report.header_bytes + report.payload_bytes == len(blob)
    # the Learner's own record of the same run (encode's default: the seed preset), outside
    # the codec
    learner = RunConfig().build_learner()
    for b in data:
        learner.step(bytes([b]))
    assert report.prequential_bits == pytest.approx(float(learner.losses.sum()), rel=1e-9)


def test_compression_is_deterministic_and_header_describes_the_run() -> None:
    cfg = RunConfig.from_dict(
        {"model": {"d_model": 8, "n_heads": 2}, "optim": {"lr": 0.02}, "seed": 5}
    )
    data = b"determinism matters " * 4
    blob = compress_bytes(data, cfg)
    assert compress_bytes(data, cfg) == blob
    header = read_header(blob)
    expected = cfg.to_dict()
    if "backend" in expected["learner"]:  # the file pins the backend that was used
        expected["learner"]["backend"] = cfg.build_learner().backend
        assert header.config["learner"]["backend"] in ("numba", "numpy")
    assert header.config == expected
    assert header.length == len(data) and header.crc32 == zlib.crc32(data)
    assert {"numpy", "blas", "machine", "mugpt", "code"} <= set(header.platform)
    assert decompress_bytes(blob) == data


def test_the_backend_used_is_pinned_in_the_file() -> None:
    data = b"numba or numpy, the decoder uses the encoder's kernels"
    for backend in ("auto", "numpy"):
        cfg = RunConfig.from_dict({"learner": {"backend": backend}})
        blob = compress_bytes(data, cfg)
        pinned = read_header(blob).config["learner"]["backend"]
        assert pinned == cfg.build_learner().backend != "auto"
        assert decompress_bytes(blob) == data


def test_a_byte_the_model_gives_zero_probability_is_still_encodable() -> None:
    probs = np.zeros((4, 257))
    probs[:, 65] = 1.0
    probs[1, 66] = np.nan  # a diverged model's output must not break the coder either
    probs[3] = np.inf  # nor a row with no usable mass (it is coded as uniform)
    freq = np.stack([quantised(row) for row in probs])
    assert (freq >= 1).all() and (freq.sum(axis=1) == 2**24).all()
    assert freq[0, 65] == 2**24 - 255 and (freq[3] == 2**16).all()
    symbols = np.array([65, 66, 0, 200])
    payload, bits = rc.encode_rows(probs, symbols)
    assert rc.decode_rows(payload, probs).tolist() == symbols.tolist()
    # 24 bits for each of the two bytes given no mass, 8 for the uniform row
    assert bits == pytest.approx(24 + 24 + 8 - np.log2(1 - 255 / 2**24), abs=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(0, 400), sharp=st.floats(0, 60))
def test_the_range_coder_round_trips_and_costs_its_coded_bits(seed: int, n: int, sharp: float) -> None:  # fmt: skip
    """Any rows, any symbols (likely or not): the symbols come back and the payload is the
    coded bits within the coder's termination (at most 8 bytes over, 4 under)."""
    rng = np.random.default_rng(seed)
    rows = rng.random((n, 257)) ** sharp  # sharp rows: near-certain bytes, long carries
    likely = rows[:, :256].argmax(axis=1)
    symbols = np.where(rng.random(n) < 0.9, likely, rng.integers(0, 256, n))
    payload, bits = rc.encode_rows(rows, symbols)
    assert rc.decode_rows(payload, rows).tolist() == symbols.tolist()
    assert bits - 32 <= 8 * len(payload) <= bits + 64


def test_the_payload_ends_with_its_last_needed_byte() -> None:
    """The decoder reads zeros past the end, so the encoder leaves trailing zeros out; a
    truncated payload then decodes to other symbols (the CRCs catch it)."""
    rows = np.full((64, 257), 1.0)
    symbols = np.arange(64) * 3 % 256
    payload, _ = rc.encode_rows(rows, symbols)
    assert len(payload) in (64, 65) and payload[-1] != 0  # 64 uniform bytes: 8 bits each
    assert rc.decode_rows(payload[:-1], rows).tolist() != symbols.tolist()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=48), k=st.sampled_from([1, 3, 16]))
def test_round_trip_property(data: bytes, k: int) -> None:
    cfg = RunConfig.from_dict({"learner": {"update_every": k}})
    assert decompress_bytes(compress_bytes(data, cfg)) == data


# ---------------------------------------------------------------------------- bad files


@pytest.fixture(scope="module")
def blob() -> bytes:
    return compress_bytes(b"a small file to damage, " * 3)


def test_wrong_magic(blob: bytes) -> None:
    with pytest.raises(CompressedFileError, match="not a μGPT compressed file"):
        decode(b"PK\x03\x04" + blob[4:])
    with pytest.raises(CompressedFileError, match="not a μGPT compressed file"):
        decode(b"")


@pytest.mark.parametrize("cut", [3, 12, 30, -1, -4])
def test_truncated(blob: bytes, cut: int) -> None:
    with pytest.raises(CompressedFileError, match=r"truncated|not a μGPT"):
        decode(blob[:cut])


def test_trailing_bytes(blob: bytes) -> None:
    with pytest.raises(CompressedFileError, match="unexpected byte"):
        decode(blob + b"\x00")


def test_every_single_bit_flip_is_detected(blob: bytes) -> None:
    for i in range(len(blob)):
        for bit in range(8):
            damaged = bytearray(blob)
            damaged[i] ^= 1 << bit
            with pytest.raises(CompressedFileError):
                decode(bytes(damaged))


def test_unsupported_version(blob: bytes) -> None:
    damaged = blob[:8] + (3).to_bytes(2, "little") + blob[10:]
    with pytest.raises(CompressedFileError, match="format version 3 is not supported"):
        decode(damaged)


def test_a_version_1_file_is_refused_with_the_way_out(blob: bytes) -> None:
    old = blob[:8] + (1).to_bytes(2, "little") + blob[10:]
    with pytest.raises(CompressedFileError, match=r"format version 1 .*constriction.* cannot be read by this version: decompress the file with the mugpt that made it"):  # fmt: skip
        decode(old)


def _rewrite(blob: bytes, **changes: object) -> bytes:
    header, payload = unpack(blob)
    for key, value in changes.items():
        setattr(header, key, value)
    return pack(header, payload)


def test_wrong_original_crc_stops_after_decoding(blob: bytes) -> None:
    damaged = _rewrite(blob, crc32=read_header(blob).crc32 ^ 1)
    with pytest.raises(CompressedFileError, match="fail the CRC32 check"):
        decode(damaged)


def test_platform_mismatch_warns_then_decodes(blob: bytes) -> None:
    platform = dict(read_header(blob).platform, numpy="0.0.1", machine="pdp11")
    other = _rewrite(blob, platform=platform)
    with pytest.warns(PlatformMismatchWarning, match=r"machine: pdp11 → .*numpy: 0\.0\.1 →"):
        out, _ = decode(other)
    assert out == decompress_bytes(blob)


def test_platform_mismatch_and_crc_failure_name_the_platform(blob: bytes) -> None:
    platform = dict(read_header(blob).platform, numpy="0.0.1")
    other = _rewrite(blob, platform=platform, crc32=read_header(blob).crc32 ^ 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PlatformMismatchWarning)
        with pytest.raises(CompressedFileError, match="different numeric platform"):
            decode(other)


def test_unknown_configuration_is_a_clear_error(blob: bytes) -> None:
    header = read_header(blob)
    config = json.loads(json.dumps(header.config))
    config["mechanisms"] = [{"name": "no_such_mechanism"}]
    with pytest.raises(CompressedFileError, match=r"cannot be rebuilt.*no_such_mechanism"):
        decode(_rewrite(blob, config=config))


STRONG_LIKE = [
    pytest.param({"preset": "strong"}, id="strong"),
    pytest.param({"preset": "strong", "learner": {"update_every": 7}}, id="strong-k7"),
    pytest.param({"preset": "strong", "learner": {"update_every": 1}}, id="strong-k1"),
    pytest.param({"learner": {"update_every": 13}}, id="seed-k13"),
    pytest.param({"preset": "strong", "learner": {"batch_streams": 3}}, id="strong-B3"),
    pytest.param(
        {"model": {"n_layers": 2, "tied_head": True}, "learner": {"update_every": 9}},
        id="two-layers-tied-k9",
    ),
    pytest.param(
        {"preset": "strong", "mechanisms": [{"name": "cache"}]},
        id="strong+cache",
        marks=needs_cache,
    ),
    pytest.param({"preset": "strong", "mechanisms": [{"name": "knn"}]}, id="strong+knn"),
    pytest.param(
        {"learner": {"update_every": 5}, "mechanisms": [{"name": "ngram_mix"}]},
        id="seed+ngram_mix-k5",
    ),
]


@pytest.mark.parametrize("values", STRONG_LIKE)
def test_the_incremental_decoder_round_trips_with_no_full_forward_per_byte(
    values: dict[str, object], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the compiled model the decoder computes a step's window position by position
    (model/incremental.py) and hands the finished window to the step: the full-window
    forward is never run while decoding, and the bytes (CRC-checked) come back."""
    from mugpt.model import fast

    cfg = RunConfig.from_dict(values)
    if cfg.build_learner().backend != "numba":
        pytest.skip("the incremental decoder runs on the numba backend")
    data = b"the cat sat on the mat; the dog sat on the log. " * 5 + TEXT
    blob = compress_bytes(data, cfg)
    calls = [0]
    full_forward = fast.FastGPT.forward

    def counting(self: object, idx: np.ndarray) -> object:
        calls[0] += 1
        return full_forward(self, idx)  # type: ignore[arg-type]

    monkeypatch.setattr(fast.FastGPT, "forward", counting)
    assert decompress_bytes(blob) == data
    assert calls[0] == 0


@pytest.mark.parametrize("length", [10**6, 2_000_000])
def test_a_longer_length_stops_one_step_after_the_real_end(blob: bytes, length: int) -> None:
    """The decoded bytes may not cost more than the prequential bits the encoder recorded:
    a length edit stops within one step of the real end (the seed preset's k is 1)."""
    header = read_header(blob)
    with pytest.raises(CompressedFileError, match=r"the first [\d,]+ of [\d,]+ decoded bytes") as err:  # fmt: skip
        decode(_rewrite(blob, length=length))
    stopped = int(str(err.value).split("the first ")[1].split(" of")[0].replace(",", ""))
    assert stopped == header.length + 1
    assert f"{header.prequential_bits:,.3f} the encoder recorded" in str(err.value)


@pytest.mark.parametrize("length", [10**6, 2_000_000])
def test_a_length_its_payload_cannot_hold_stops_as_the_payload_runs_out(blob: bytes, length: int) -> None:  # fmt: skip
    """With the recorded bits edited too, the payload's own budgets still stop the decode."""
    header = read_header(blob)
    with pytest.raises(CompressedFileError, match=r"payload is used up after [\d,]+ of") as err:
        decode(_rewrite(blob, length=length, prequential_bits=1e9))
    stopped = int(str(err.value).split("after ")[1].split(" of")[0].replace(",", ""))
    # it stops within a few thousand bytes of the real end, not after the header's length
    assert header.length < stopped < header.length + 5_000


def test_valid_files_decode_to_exactly_the_recorded_bits() -> None:
    """What the decoder's stop relies on: its running sum of losses is the encoder's."""
    from mugpt.compress.coder import recorded_loss_limit

    data = b"the recorded bits, summed step by step, " * 40
    for k in (1, 7):
        cfg = RunConfig().with_overrides({"learner.update_every": k})
        packed, report = encode(data, cfg)
        assert read_header(packed).prequential_bits == round(report.prequential_bits, 3)
        out, decoded = decode(packed)
        assert out == data
        assert abs(decoded.prequential_bits - report.prequential_bits) < 1e-9
        assert decoded.prequential_bits <= recorded_loss_limit(read_header(packed).prequential_bits)


@pytest.mark.parametrize("k", [1, 8])
def test_valid_files_stay_within_the_payload_bit_budget(k: int) -> None:
    from mugpt.compress.coder import payload_bit_budget

    rng = np.random.default_rng(k)
    for data in (bytes(rng.integers(0, 256, 3000, dtype=np.uint8)), b"a" * 20_000):
        cfg = RunConfig().with_overrides({"learner.update_every": k})
        packed, report = encode(data, cfg)
        header, payload = unpack(packed)
        assert report.coded_bits <= payload_bit_budget(len(payload), header.length)
        assert decompress_bytes(packed) == data


def test_the_compiled_decoder_and_the_bytewise_one_agree(monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The strong preset decodes in compiled steps (compress/steps.py); the bytewise decoder,
    which checks every step's rows against the Learner's, gets the same bytes and bits."""
    from mugpt.compress import coder

    cfg = RunConfig.from_dict({"preset": "strong"})
    if cfg.build_learner().backend != "numba":
        pytest.skip("the compiled decoder runs on the numba backend")
    data = TEXT * 3 + RANDOM[:50]
    blob, report = encode(data, cfg)

    def refuse(*args: object) -> float:
        raise AssertionError("the bytewise decoder ran")

    with monkeypatch.context() as patch:
        patch.setattr(coder, "_decode_bytewise", refuse)
        out, compiled = decode(blob)
    monkeypatch.setattr(coder, "_compiled_decoder_ok", lambda learner: False)
    again, bytewise = decode(blob)
    assert out == again == data
    assert compiled.coded_bits == bytewise.coded_bits == report.coded_bits
    assert compiled.prequential_bits == bytewise.prequential_bits == report.prequential_bits
