"""Compression with sub-streams (``batch_streams`` B > 1): the file is the engine's batched
run coded step by step, window by window, and decodes to the same bytes and the same bits."""

from __future__ import annotations

import copy
import zlib

import pytest

from mugpt.compress import CompressedFileError, decode, encode, read_header
from mugpt.compress.container import pack, unpack
from mugpt.corpus.stream import Stream
from mugpt.engine.config import RunConfig
from mugpt.errors import ConfigError

TEXT = b"the cat sat on the mat; the dog sat on the log. " * 8 + bytes(range(0, 256, 3))

CASES = [
    pytest.param({"learner": {"update_every": 4, "batch_streams": 3}}, id="seed-k4-B3"),
    pytest.param({"learner": {"update_every": 1, "batch_streams": 2}}, id="seed-k1-B2"),
    pytest.param({"preset": "strong", "learner": {"batch_streams": 4}}, id="strong-B4"),
    pytest.param(
        {"preset": "strong", "learner": {"batch_streams": 4, "substream_bytes": 50}},
        id="strong-B4-blocks",
    ),
    pytest.param(
        {
            "preset": "strong",
            "learner": {"update_every": 5, "batch_streams": 7},
            "mechanisms": [{"name": "ngram_mix"}, {"name": "selective_backprop"}],
        },
        id="strong-k5-B7-select",
    ),
]


def _compiled(cfg: RunConfig) -> None:
    if cfg.build_learner().backend != "numba":
        pytest.skip("sub-streams are coded by the compiled coder (numba backend)")


@pytest.mark.parametrize("values", CASES)
def test_sub_streams_round_trip_with_the_engines_bits(values: dict[str, object]) -> None:
    """The coder's B > 1 is the engine's: the losses it records are those of ``Learner.run``
    on the same bytes with the same configuration, bit for bit, and the decoder's Learner
    repeats them."""
    cfg = RunConfig.from_dict(values)
    _compiled(cfg)
    blob, report = encode(TEXT, cfg)
    out, decoded = decode(blob)
    assert out == TEXT
    assert decoded.coded_bits == pytest.approx(report.coded_bits, rel=1e-12)  # summed apart
    assert decoded.prequential_bits == report.prequential_bits
    learner = cfg.build_learner()
    learner.run(Stream.from_bytes(TEXT))
    assert float(learner.losses.sum()) == report.prequential_bits
    # the payload costs what the scored rows promise (quantised), within the coder's slack
    assert abs(8 * report.payload_bytes - report.coded_bits) < 64


@pytest.mark.parametrize("data", [b"", b"x", b"abc", bytes(range(256))])
def test_sub_streams_round_trip_short_inputs(data: bytes) -> None:
    """Fewer bytes than sub-streams: each byte its own sub-stream."""
    cfg = RunConfig.from_dict({"preset": "strong", "learner": {"batch_streams": 8}})
    _compiled(cfg)
    assert decode(encode(data, cfg)[0])[0] == data


def test_the_file_records_the_batched_run() -> None:
    """The header keeps B, and the decoder's Learner made the batched run's steps (B
    windows a step: fewer, larger steps than one stream)."""
    one = RunConfig.from_dict({"preset": "strong"})
    four = RunConfig.from_dict({"preset": "strong", "learner": {"batch_streams": 4}})
    _compiled(one)
    steps = []
    for cfg in (one, four):
        blob = encode(TEXT, cfg)[0]
        assert read_header(blob).config["learner"]["batch_streams"] == cfg.learner.batch_streams
        learner = cfg.build_learner()
        learner.run(Stream.from_bytes(TEXT))
        steps.append(learner.counters.steps)
    assert steps[1] < steps[0]


@pytest.mark.parametrize(
    "values, named",
    [
        ({"learner": {"batch_streams": 4, "backend": "numpy"}}, "numba backend"),
        (
            {"learner": {"batch_streams": 4}, "mechanisms": [{"name": "knn"}]},
            "drop --batch-streams",
        ),
    ],
)
def test_sub_streams_the_compiled_coder_cannot_code_are_refused(values: dict[str, object], named: str) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match="batch_streams=4 is coded by the compiled coder only") as err:  # fmt: skip
        encode(TEXT, RunConfig.from_dict(values))
    assert named in str(err.value)


def test_a_damaged_sub_stream_file_is_an_error_not_a_crash() -> None:
    cfg = RunConfig.from_dict({"preset": "strong", "learner": {"batch_streams": 3}})
    _compiled(cfg)
    blob = encode(TEXT, cfg)[0]
    header, payload = unpack(blob)
    # the payload cut short (its CRC made to match): the decoder runs out and says so, or
    # (when the missing bits decode cheaply) the decoded bytes fail their CRC32
    for keep in (0.2, 0.5, 0.9):
        short = payload[: int(len(payload) * keep)]
        cut = _with(header, payload_bytes=len(short), payload_crc32=zlib.crc32(short))
        with pytest.raises(CompressedFileError, match=r"used up after [\d,]+ of 470 bytes|cannot be decoded at byte|fail the CRC32 check"):  # fmt: skip
            decode(pack(cut, short))
    # a longer length than was coded (with B > 1 it moves every sub-stream's bounds): the
    # bits run out, or the bytes fail their CRC32
    with pytest.raises(CompressedFileError, match=r"decoded bytes already cost|used up|fail the CRC32 check"):  # fmt: skip
        decode(pack(_with(header, length=header.length * 3), payload))
    assert decode(blob)[0] == TEXT


def _with(header: object, **changes: object) -> object:
    header = copy.deepcopy(header)
    for key, value in changes.items():
        setattr(header, key, value)
    return header
