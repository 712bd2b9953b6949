"""``mugpt compress`` and ``mugpt decompress``: the prequential code length made into a file."""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mugpt.cli.common import add_run_config_args, run_config_from_args
from mugpt.compress.container import CompressedFileError
from mugpt.errors import MugptError, StreamError

COMPRESS_DESCRIPTION = """\
Compress a file with μGPT: a Learner reads the bytes once under the prequential protocol
(predict, record, learn) and a range coder turns each prediction into bits, so the payload
is the run's prequential code length to within a few bytes. The file carries the full run
configuration, the original length and CRC32, and a fingerprint of the numeric platform;
`mugpt decompress` replays the same Learner to recover the bytes exactly.

The default configuration is --preset strong: the strongest preset that runs at >= 40,000
bytes/s on one thread (a 32-wide network mixed with count models of orders 0-10, k = 24);
--preset seed is the original μGPT (about 9,000 bytes/s and about 4 bits per byte on the
first 20 kB of text, where gzip -9 takes 1.7-3.0: larger files than gzip's).

Prints a progress bar and a final line (to stderr): original and compressed size, bits per
byte of the file and of the run's prequential code length, and speed. Decompression is a
little slower than compression with --update-every 1 and about k times slower in forward
passes with --update-every k, since the decoder predicts each byte before it knows it.

Portability: a file decodes bit for bit on the platform that made it (same CPU family, NumPy,
BLAS, numba, μGPT version). Elsewhere it may fail; the decoder warns up front and the CRC32
check then stops with an error rather than emit wrong bytes.
"""

#: The preset ``mugpt compress`` uses without --preset or --config: the strongest that runs
#: at >= 40,000 bytes/s on one thread (docs/bench.md; docs/results/heldout.md).
DEFAULT_PRESET = "strong"

COMPRESS_EPILOG = """\
examples:
  mugpt compress book.txt book.mgz                  the strong preset (the default)
  mugpt compress book.txt book.mgz --preset seed    the original μGPT, k = 1
  mugpt compress book.txt book.mgz --update-every 8 --d-model 32
  mugpt compress notes.txt notes.mgz --mech cache
  cat notes.txt | mugpt compress - - > notes.mgz
  mugpt decompress book.mgz book.out && cmp book.txt book.out
"""

DECOMPRESS_DESCRIPTION = """\
Decompress a file made by `mugpt compress`: rebuild the Learner from the configuration in the
file's header, replay it byte by byte, and write the recovered bytes once their length and
CRC32 match. On any error (not a μGPT file, corrupt or truncated, CRC mismatch) nothing is
written. An existing OUT is refused unless --force.
"""

DECOMPRESS_EPILOG = """\
examples:
  mugpt decompress book.mgz book.txt
  mugpt decompress book.mgz - | head
  cat book.mgz | mugpt decompress - book.txt --force
"""


def register(sub: Any) -> None:
    c = sub.add_parser(
        "compress",
        help="compress a file with a μGPT Learner and a range coder",
        description=COMPRESS_DESCRIPTION,
        epilog=COMPRESS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _io_args(c, "file to compress, or - for stdin", "compressed file to write, or - for stdout")
    add_run_config_args(c, default_preset=DEFAULT_PRESET)
    c.set_defaults(func=compress_main)
    d = sub.add_parser(
        "decompress",
        help="recover the bytes of a `mugpt compress` file",
        description=DECOMPRESS_DESCRIPTION,
        epilog=DECOMPRESS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _io_args(d, "compressed file, or - for stdin", "file to write, or - for stdout")
    d.set_defaults(func=decompress_main)


def _io_args(p: argparse.ArgumentParser, in_help: str, out_help: str) -> None:
    p.add_argument("input", metavar="IN", help=in_help)
    p.add_argument("output", metavar="OUT", help=out_help)
    p.add_argument("--force", "-f", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", "-q", action="store_true",
                   help="no progress bar and no final line")  # fmt: skip


# ---------------------------------------------------------------------------- input/output


def _read_input(name: str) -> bytes:
    if name == "-":
        return sys.stdin.buffer.read()
    path = Path(name)
    if path.is_dir():
        raise StreamError(f"IN {name!r} is a directory; give a file or - for stdin")
    if not path.exists():
        raise StreamError(f"IN {name!r} does not exist; give a readable file or - for stdin")
    if not path.is_file():  # a device or FIFO could be endless or block
        raise StreamError(f"IN {name!r} is not a regular file (a device, FIFO or socket); give a file")  # fmt: skip
    try:
        return path.read_bytes()
    except OSError as exc:
        raise StreamError(f"cannot read IN {name!r}: {exc.strerror}; check its permissions") from None  # fmt: skip


def _check_output(args: argparse.Namespace) -> None:
    """Refuses, before any work, an OUT that exists (without --force) or is IN itself."""
    if args.output == "-":
        return
    out = Path(args.output)
    if out.is_dir():
        raise StreamError(f"OUT {args.output!r} is a directory; give a file path")
    if args.input != "-" and out.exists() and out.resolve() == Path(args.input).resolve():
        raise StreamError(f"OUT {args.output!r} is the same file as IN; write elsewhere")
    if out.exists() and not args.force:
        raise StreamError(f"OUT {args.output!r} exists; use --force to replace it")


def _write_output(name: str, data: bytes) -> None:
    if name == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    from mugpt.engine.checkpoint import atomic_write_bytes

    try:
        atomic_write_bytes(name, data)
    except OSError as exc:
        raise StreamError(f"cannot write OUT {name!r}: {exc.strerror}") from None


# ---------------------------------------------------------------------------- progress


@contextmanager
def _progress(label: str, total: int, quiet: bool) -> Iterator[Any]:
    """A rich progress bar on stderr; yields the ``progress(done, total, bpb)`` callback."""
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    bar = Progress(
        TextColumn(f"[bold]{label}[/]"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} B"),
        TextColumn("{task.fields[speed]:>8,.0f} B/s"),
        TextColumn("bpb {task.fields[bpb]:.3f}"),
        TimeRemainingColumn(),
        console=console,
        disable=quiet or not console.is_terminal,
        transient=True,
    )
    task = bar.add_task(label, total=max(total, 1), speed=0.0, bpb=float("nan"))

    def update(done: int, total: int, bpb: float) -> None:
        elapsed = bar.tasks[task].elapsed or 0.0
        speed = done / elapsed if elapsed > 0 else 0.0
        bar.update(task, completed=done, total=total, speed=speed, bpb=bpb)

    with bar:
        yield update


def _bits_guard(progress: Any, payload_bytes: int) -> Any:
    """Wraps ``progress`` to stop a decode whose bytes already cost more than the payload holds.

    A payload of P bytes codes about 8 P bits. The running prequential cost may exceed the
    coded cost (its floor is 2^-40 where the coder's is 2^-24, so at most 40/24 of it, plus
    BOS's share), hence the allowance of twice 8 P plus 4096 bits: a valid file never reaches
    it, and a crafted header whose length the payload cannot hold stops within a fraction of
    a second instead of decoding for minutes.
    """
    allowed = 2 * 8 * payload_bytes + 4096

    def guarded(done: int, total: int, bpb: float) -> None:
        if done and bpb == bpb and bpb * done > allowed:  # bpb == bpb: not NaN
            raise CompressedFileError(
                f"the payload is used up after {done:,} of {total:,} bytes (the header's "
                "length is more than its payload can hold); the file is corrupt"
            )
        progress(done, total, bpb)

    return guarded


def _say(line: str, quiet: bool) -> None:
    if not quiet:
        print(line, file=sys.stderr, flush=True)


@contextmanager
def _warnings_to_stderr(command: str) -> Iterator[None]:
    """Shows warnings as one ``mugpt CMD: warning: ...`` line, as soon as they are issued."""

    def show(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:  # fmt: skip
        print(f"mugpt {command}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = show
        yield


# ---------------------------------------------------------------------------- commands


def compress_main(args: argparse.Namespace) -> int:
    from mugpt.compress import encode

    cfg = run_config_from_args(args, default_preset=DEFAULT_PRESET)
    _check_output(args)
    if args.output == "-" and sys.stdout.isatty() and not args.force:
        raise StreamError("refusing to write compressed bytes to a terminal; redirect stdout or give OUT")  # fmt: skip
    data = _read_input(args.input)
    with (
        _warnings_to_stderr("compress"),
        _progress("compressing", len(data), args.quiet) as progress,
    ):
        blob, report = encode(data, cfg, progress)
    _write_output(args.output, blob)
    _say(report.summary_line("compressed"), args.quiet)
    return 0


def decompress_main(args: argparse.Namespace) -> int:
    from mugpt.compress import decode, read_header

    _check_output(args)
    blob = _read_input(args.input)
    try:
        header = read_header(blob)
        with (
            _warnings_to_stderr("decompress"),
            _progress("decompressing", header.length, args.quiet) as progress,
        ):
            data, report = decode(blob, _bits_guard(progress, header.payload_bytes))
    except MugptError as exc:
        if args.input != "-":
            raise type(exc)(f"{args.input}: {exc}") from None
        raise
    _write_output(args.output, data)
    _say(report.summary_line("decompressed"), args.quiet)
    return 0


__all__ = ["compress_main", "decompress_main", "register"]
