"""Byte sources: where the bytes of a phase come from.

A source is a lazy, stateful reader. :meth:`Source.read` returns the next ``n`` bytes and the
offsets (within what it returned) where documents start. Reading continues exactly where the
previous read stopped, so when two phases name the same source (``prose, code, prose``) the
second visit gets *new* bytes: a revisit measures memory, not repetition.

Finite sources (files, folders, text, stdin, the standard library, TinyStories) can run out.
A phase that asks for more than is left takes what is left and the stream records a note;
a phase that would get no bytes at all is an error. Generated sources never run out, so their
phases need a budget.
"""

from __future__ import annotations

import os
import stat
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

from mugpt.errors import StreamError

#: Chunk size for reading files: big enough to be fast, small enough to stay lazy.
READ_CHUNK = 1 << 20

#: A chunk of bytes and whether it begins a new document.
Chunk = tuple[bytes, bool]


class Source(ABC):
    """A lazy reader of bytes with document starts.

    Subclasses implement :meth:`_chunks`, a generator of ``(bytes, starts_document)`` pairs;
    this class cuts them to the requested budgets and remembers the position between reads.
    """

    #: Whether the source can run out (and so may be read without a budget, "all").
    finite: bool = True
    #: Whether a phase must give a budget (infinite sources, or huge ones like the stdlib).
    needs_budget: bool = False

    def __init__(self, spec: str) -> None:
        self.spec = spec  # the canonical source spec, e.g. "file:/abs/x.txt"
        self._iter: Iterator[Chunk] | None = None
        self._pending = memoryview(b"")
        self._pending_starts_doc = False
        self.exhausted = False
        self.bytes_read = 0

    @abstractmethod
    def _chunks(self) -> Iterator[Chunk]:
        """Yield ``(data, starts_document)`` until the source is exhausted (or forever)."""

    def read(self, n: int | None) -> tuple[bytes, list[int]]:
        """Return up to ``n`` more bytes (all that is left when ``n`` is None) and doc starts.

        The returned offsets are relative to the returned bytes; offset 0 is always included
        when anything is returned, because a phase always starts a document.

        >>> src = TextSource("hello world")
        >>> src.read(5), src.read(None)
        ((b'hello', [0]), (b' world', [0]))
        """
        if n is None and not self.finite:
            raise StreamError(f"source '{self.spec}' never ends; give the phase a budget")
        if self._iter is None:
            self._iter = self._chunks()
        out = bytearray()
        starts: list[int] = []
        while n is None or len(out) < n:
            if not self._pending:
                try:
                    chunk, new_doc = next(self._iter)
                except StopIteration:
                    self.exhausted = True
                    break
                if not chunk:
                    continue
                self._pending = memoryview(chunk)
                self._pending_starts_doc = new_doc
            take = len(self._pending) if n is None else min(n - len(out), len(self._pending))
            if not out or self._pending_starts_doc:
                starts.append(len(out))
            out += self._pending[:take]
            self._pending = self._pending[take:]
            self._pending_starts_doc = False
        self.bytes_read += len(out)
        return bytes(out), starts


def _file_chunks(path: Path) -> Iterator[Chunk]:
    """Yield a file's bytes as one document, reopening per chunk so no handle stays open."""
    offset = 0
    first = True
    while True:
        try:
            with open(path, "rb") as f:
                if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # replaced since it was checked
                    raise StreamError(f"'{path}' is not a regular file; give a regular file")
                f.seek(offset)
                chunk = f.read(READ_CHUNK)
        except OSError as e:
            raise StreamError(
                f"cannot read '{path}': {e.strerror}; check the path and permissions"
            ) from e
        if not chunk:
            return
        yield chunk, first
        first = False
        offset += len(chunk)


class FileSource(Source):
    """``file:PATH`` — one file, one document. Read lazily: only the budget is read.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "a.txt"; _ = p.write_bytes(b"abc")
    >>> FileSource(p).read(None)
    (b'abc', [0])
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        super().__init__(f"file:{self.path}")
        if not self.path.exists():
            raise StreamError(f"file not found: '{path}'; check the path (file:PATH)")
        if self.path.is_dir():
            raise StreamError(f"'{path}' is a folder; use dir:{path} to read every file in it")
        if not self.path.is_file():  # a device, FIFO or socket could be endless or block
            raise StreamError(
                f"'{path}' is not a regular file (a device, FIFO or socket); give a regular file"
            )
        if not os.access(self.path, os.R_OK):
            raise StreamError(f"file '{path}' is not readable; check its permissions")

    def _chunks(self) -> Iterator[Chunk]:
        yield from _file_chunks(self.path)


def walk_files(root: Path, skip_dirs: frozenset[str] = frozenset()) -> Iterator[Path]:
    """Yield regular files under ``root`` depth-first, each folder's entries sorted by name.

    Hidden entries (names starting with ``.``), folders named in ``skip_dirs`` and symbolic
    links to folders are skipped.
    The order depends only on the names, never on the file system's listing order.
    """
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir(follow_symlinks=False):  # a linked folder could loop forever
            if entry.name not in skip_dirs:
                yield from walk_files(Path(entry.path), skip_dirs)
        elif entry.is_file():
            yield Path(entry.path)


class DirSource(Source):
    """``dir:PATH`` — every file under a folder, recursively, in sorted order; a file is a
    document. Hidden files and folders (``.git``, ...) are skipped.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser().resolve()
        super().__init__(f"dir:{self.path}")
        if not self.path.exists():
            raise StreamError(f"folder not found: '{path}'; check the path (dir:PATH)")
        if not self.path.is_dir():
            raise StreamError(f"'{path}' is not a folder; use file:{path} for a single file")
        if next(walk_files(self.path), None) is None:
            raise StreamError(f"folder '{path}' has no files; point dir: at a folder with data")

    def _chunks(self) -> Iterator[Chunk]:
        for path in walk_files(self.path):
            yield from _file_chunks(path)


class TextSource(Source):
    """``text:SOME TEXT`` — inline UTF-8 text, one document (handy for tests and demos)."""

    def __init__(self, text: str) -> None:
        super().__init__(f"text:{text}")
        self.text = text

    def _chunks(self) -> Iterator[Chunk]:
        yield self.text.encode("utf-8"), True


class StdinSource(Source):
    """``stdin`` — standard input, read once in full at the first read; one document."""

    def __init__(self) -> None:
        super().__init__("stdin")

    def _chunks(self) -> Iterator[Chunk]:
        stream = sys.stdin
        if stream is None:
            raise StreamError("there is no standard input; pipe data in or use file:PATH")
        if stream.isatty():
            raise StreamError(
                "stdin is a terminal; pipe data in (cat x.txt | mugpt ...) or use file:PATH"
            )
        yield stream.buffer.read(), True
