"""Real compression: range coding driven by the prequential Learner.

The prequential code length (DESIGN §2) is what an arithmetic coder could reach; this package
reaches it. :func:`compress_bytes` runs a Learner over the bytes and range-codes each
prediction; :func:`decompress_bytes` rebuilds the same Learner from the file's header, replays
it, and recovers the bytes exactly (checked by CRC32). See ``docs/compress.md``.

Example:
    >>> from mugpt.compress import compress_bytes, decompress_bytes
    >>> blob = compress_bytes(b"to be or not to be")
    >>> decompress_bytes(blob)
    b'to be or not to be'
"""

from mugpt.compress.coder import (
    CodecReport,
    PlatformMismatchWarning,
    compress_bytes,
    decode,
    decompress_bytes,
    encode,
    read_header,
)
from mugpt.compress.container import FORMAT_VERSION, MAGIC, CompressedFileError, Header

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "CodecReport",
    "CompressedFileError",
    "Header",
    "PlatformMismatchWarning",
    "compress_bytes",
    "decode",
    "decompress_bytes",
    "encode",
    "read_header",
]
