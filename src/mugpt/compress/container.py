"""The compressed file format (version 2): a checked header, then the range coder's bytes.

Layout, all integers little-endian::

    offset  size  field
    0       8     magic  b"\\xb5GPTz\\r\\n\\x1a" (µ in Latin-1, "GPTz"; the CR LF and ^Z catch
                  text-mode transfers, as in PNG)
    8       2     format version (uint16) = 2
    10      4     header length H in bytes (uint32)
    14      4     CRC32 of the H header bytes (uint32)
    18      H     header: UTF-8 JSON (see :class:`Header`), zlib-compressed with the fixed
                  preset dictionary ``HEADER_ZDICT`` (typical keys and values, so a usual
                  header takes about a hundred bytes)
    18+H    P     payload: the range coder's code value, most significant byte first
                  (mugpt.compress.range; trailing zero bytes of its last word omitted); P
                  is in the header

The header carries everything the decoder needs to rebuild the same Learner (the full run
configuration), the original length and CRC32, the payload's length and CRC32, and the
numeric platform it was made on. Nothing may follow the payload.

Version 1 held the words of another range coder (``constriction``'s, quantising differently):
this version cannot read those files and says so.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from mugpt.errors import MugptError

MAGIC = b"\xb5GPTz\r\n\x1a"
FORMAT_VERSION = 2
#: Versions this mugpt recognises but cannot read, with what to do about them.
OLD_VERSIONS = {
    1: "format version 1 (written with constriction's range coder by an earlier mugpt) cannot "
    "be read by this version: decompress the file with the mugpt that made it, then compress "
    "the bytes again with this one",
}
_PREFIX = struct.Struct("<8sHII")  # magic, version, header length, header CRC32
MAX_HEADER_BYTES = 1 << 24
HEADER_ZDICT = (
    b'{"coder":{"library":"mugpt","name":"range","precision_bits":24,"state_bits":64,'
    b'"symbols":256,"word_bits":32},"config":{"learner":{"seed":0,"update_every":1,'
    b'"window_loss":"all"},"mechanisms":[{"name":"cache","enabled":true}],"model":{'
    b'"activation":"relu","context":32,"d_ff":64,"d_model":16,"dtype":"float32",'
    b'"init_std":0.08,"n_heads":4,"n_layers":1,"seed":0,"tied_head":false,"vocab_size":257},'
    b'"optim":{"beta1":0.9,"beta2":0.999,"eps":1e-08,"grad_clip":1.0,"lr":0.01,'
    b'"momentum":0.0,"name":"adam","weight_decay":0.0},"preset":"seed","seed":0,"stream":""},'
    b'"crc32":,"length":,"payload_bytes":,"payload_crc32":,"platform":{"blas":[{'
    b'"architecture":"Haswell","internal_api":"openblas","version":"0.3.'
    b'"}],"byteorder":"little","code":"","machine":"x86_64",'
    b'"mugpt":"0.1.0","numba":null,"numpy":"2.'
    b'"},"prequential_bits":'
)
"""zlib preset dictionary for the header (part of format version 2: never change it)."""


class CompressedFileError(MugptError, ValueError):
    """A compressed file that is not μGPT's, is corrupt or truncated, or does not decode to
    the bytes it promises."""


@dataclass
class Header:
    """What a compressed file says about itself.

    ``config`` is ``RunConfig.to_dict()``; ``length`` and ``crc32`` describe the original
    bytes; ``payload_bytes`` and ``payload_crc32`` the coded words that follow; ``platform``
    is :func:`mugpt.compress.fingerprint.platform_fingerprint` of the encoder;
    ``prequential_bits`` is the encoder's Σ −log2 p, reported, and a bound the decoder
    holds the decoded bytes to (:func:`mugpt.compress.coder.recorded_loss_limit`).

    Example:
        >>> h = Header(config={"seed": 0}, length=3, crc32=0x352441C2, payload_bytes=0, payload_crc32=0)
        >>> unpack(pack(h, b""))[0] == h
        True
    """

    config: dict[str, Any]
    length: int
    crc32: int
    payload_bytes: int
    payload_crc32: int
    platform: dict[str, Any] = field(default_factory=dict)
    prequential_bits: float = 0.0
    coder: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        values = {
            "config": self.config,
            "length": self.length,
            "crc32": self.crc32,
            "payload_bytes": self.payload_bytes,
            "payload_crc32": self.payload_crc32,
            "platform": self.platform,
            "prequential_bits": self.prequential_bits,
            "coder": self.coder,
        }
        return json.dumps(values, sort_keys=True, separators=(",", ":")).encode("utf-8")

    @classmethod
    def from_json(cls, text: bytes) -> Header:
        try:
            values = json.loads(text.decode("utf-8"))
            header = cls(
                config=values["config"],
                length=int(values["length"]),
                crc32=int(values["crc32"]),
                payload_bytes=int(values["payload_bytes"]),
                payload_crc32=int(values["payload_crc32"]),
                platform=dict(values.get("platform", {})),
                prequential_bits=float(values.get("prequential_bits", 0.0)),
                coder=dict(values.get("coder", {})),
            )
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise CompressedFileError(f"the header is unreadable ({exc}); the file is corrupt") from None  # fmt: skip
        if header.length < 0 or header.payload_bytes < 0:
            raise CompressedFileError("the header holds impossible sizes; the file is corrupt")
        if not isinstance(header.config, dict):
            raise CompressedFileError("the header's configuration is not an object; the file is corrupt")  # fmt: skip
        return header


#: Bits of slack a range coder's termination may save against the information content: its
#: state (two 32-bit words), so a payload of P bytes codes at most 8 P + this many bits
#: (mugpt.compress.range's final state holds at most 32 bits of it: ample).
CODER_SLACK_BITS = 64
#: The largest model a compressed file may ask the decoder to build (parameters).
MAX_DECODE_PARAMS = 50_000_000


def max_length(payload_bytes: int) -> int:
    """The most original bytes a payload of ``payload_bytes`` bytes can hold.

    The coder quantises every byte's probability to at least the floor f = 2^-24
    (``range.PRECISION_BITS``) and keeps all 256 bytes possible, so one byte's probability is
    at most 1 - 255 f and each byte costs at least b = -log2(1 - 255 f) ≈ 2.19e-5 bits.
    ``length`` bytes thus need at least ``length * b`` bits, and a payload of P bytes holds at
    most floor((8 P + CODER_SLACK_BITS) / b) bytes (about 365,000 per payload byte).

    >>> max_length(0), max_length(48)
    (2918648, 20430542)
    """
    import math

    from mugpt.compress.range import N_SYMBOLS, PRECISION_BITS

    floor = 2.0**-PRECISION_BITS
    min_bits = -math.log2(1.0 - (N_SYMBOLS - 1) * floor)
    return int((8 * payload_bytes + CODER_SLACK_BITS) / min_bits)


def check_header(header: Header) -> None:
    """Refuses a header whose sizes the payload cannot hold or whose model is too large.

    Called by :func:`unpack` before anything is allocated for decoding.
    """
    limit = max_length(header.payload_bytes)
    if header.length > limit:
        raise CompressedFileError(
            f"the header claims {header.length:,} bytes but a {header.payload_bytes:,}-byte "
            f"payload can hold at most {limit:,}; the file is corrupt"
        )
    from mugpt.model.config import ModelConfig

    model = header.config.get("model", {})
    try:
        n_params = ModelConfig.from_dict(dict(model)).n_params if model else 0
    except Exception:  # an unusable model is reported when the decoder rebuilds it
        return
    if n_params > MAX_DECODE_PARAMS:
        raise CompressedFileError(
            f"the file's model has {n_params:,} parameters, more than the decoder's cap of "
            f"{MAX_DECODE_PARAMS:,}; the file is corrupt or was not made by mugpt compress"
        )


def pack(header: Header, payload: bytes) -> bytes:
    """The whole file: prefix, compressed header, payload."""
    assert header.payload_bytes == len(payload)
    packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_ZDICT)
    body = packer.compress(header.to_json()) + packer.flush()
    return _PREFIX.pack(MAGIC, FORMAT_VERSION, len(body), zlib.crc32(body)) + body + payload


def unpack(blob: bytes) -> tuple[Header, bytes]:
    """Parses and checks a file; returns its header and payload.

    Every failure is a :class:`CompressedFileError` naming what is wrong: not a μGPT file,
    a newer format, a corrupt header or payload, a truncated file, trailing bytes.
    """
    blob = bytes(blob)
    if len(blob) < len(MAGIC) or blob[: len(MAGIC)] != MAGIC:
        raise CompressedFileError(
            "not a μGPT compressed file (wrong magic bytes); make one with `mugpt compress`"
        )
    if len(blob) < _PREFIX.size:
        raise CompressedFileError(
            f"the file is truncated: {len(blob)} bytes, shorter than the {_PREFIX.size}-byte prefix"
        )
    _magic, version, header_len, header_crc = _PREFIX.unpack_from(blob)
    if version in OLD_VERSIONS:
        raise CompressedFileError(OLD_VERSIONS[version])
    if version != FORMAT_VERSION:
        raise CompressedFileError(
            f"format version {version} is not supported by this mugpt (it reads version "
            f"{FORMAT_VERSION}); the file is corrupt or needs another mugpt release"
        )
    if header_len > MAX_HEADER_BYTES:
        raise CompressedFileError(f"the header claims {header_len} bytes; the file is corrupt")
    start = _PREFIX.size
    body = blob[start : start + header_len]
    if len(body) < header_len:
        raise CompressedFileError(
            f"the file is truncated: the header needs {header_len} bytes, {len(body)} are there"
        )
    if zlib.crc32(body) != header_crc:
        raise CompressedFileError("the header is corrupt (its CRC32 does not match)")
    try:
        unpacker = zlib.decompressobj(15, HEADER_ZDICT)
        text = unpacker.decompress(body, MAX_HEADER_BYTES * 4)
        if not unpacker.eof:
            raise zlib.error("incomplete or oversized header stream")
    except zlib.error as exc:
        raise CompressedFileError(f"the header is corrupt ({exc})") from None
    header = Header.from_json(text)
    payload = blob[start + header_len :]
    if len(payload) < header.payload_bytes:
        raise CompressedFileError(
            f"the file is truncated: the payload needs {header.payload_bytes} bytes, "
            f"{len(payload)} are there"
        )
    if len(payload) > header.payload_bytes:
        extra = len(payload) - header.payload_bytes
        raise CompressedFileError(
            f"{extra} unexpected byte(s) follow the payload; the file is corrupt or two files "
            "were joined"
        )
    if zlib.crc32(payload) != header.payload_crc32:
        raise CompressedFileError("the payload is corrupt (its CRC32 does not match)")
    check_header(header)
    return header, payload


def header_bytes(blob: bytes) -> int:
    """Size of everything before the payload (prefix and compressed header)."""
    _magic, _version, header_len, _crc = _PREFIX.unpack_from(blob)
    return _PREFIX.size + int(header_len)
