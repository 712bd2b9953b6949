"""What the lab may read: the data folders the user named, its uploads, its built-in sources.

Every ``file:``/``dir:`` phase of a stream spec and every run directory opened through the API
is resolved (``~``, ``..`` and symbolic links) and must land inside one of the allowed folders;
``file:`` must be a regular file (not a device, FIFO or socket), ``dir:`` a folder whose files,
links followed, all stay inside too. A refusal is a :class:`LimitError` (403) naming the
allowed folders and the ``--data`` flag. A path outside the folders gets the same answer
whether or not it exists, so the API cannot be used to probe the file system.

Example:
    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "notes.txt").write_text("hello")
    >>> roots = DataRoots([root])
    >>> roots.check_spec(f"a=file:{root}/notes.txt,b=random:1k")
    >>> roots.check_spec("a=file:/etc/hostname")
    Traceback (most recent call last):
    ...
    mugpt.serve.limits.LimitError: phase 'a=file:/etc/hostname' is outside the folders this lab may read ...
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from mugpt.serve.limits import LimitError

REFUSED = 403
RUN_DIR_FILES = ("config.json", "summary.json", "log.csv", "events.json")
"""The files :func:`mugpt.serve.history.history_from_run_dir` reads from a run directory."""


def _resolve(path: str | Path) -> Path | None:
    """The absolute, link-free form of ``path``, or None if it cannot be resolved (a loop,
    a name too long, a NUL byte)."""
    try:
        return Path(path).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):
        return None


class DataRoots:
    """The folders the lab may read, resolved once at start.

    ``folders`` are the user's (``--data``; shown in messages), ``internal`` are the server's
    own (its uploads folder; allowed, named generically).
    """

    def __init__(self, folders: Iterable[str | Path], internal: Iterable[str | Path] = ()) -> None:
        self.folders = [p for p in (_resolve(f) for f in folders) if p is not None]
        self.internal = [p for p in (_resolve(f) for f in internal) if p is not None]

    def describe(self) -> str:
        """The allowed folders, as the messages name them."""
        names = ", ".join(repr(str(p)) for p in self.folders) or "none"
        return f"{names} and the lab's uploads"

    def _refusal(self, what: str) -> LimitError:
        return LimitError(
            REFUSED,
            f"{what} is outside the folders this lab may read ({self.describe()}); "
            "upload the text, or restart mugpt serve with --data DIR to allow a folder",
        )

    def contains(self, path: Path) -> bool:
        """Whether a resolved path lies inside an allowed folder."""
        return any(
            path == root or path.is_relative_to(root) for root in self.folders + self.internal
        )

    def inside(self, path: str | Path, what: str) -> Path:
        """The resolved ``path`` if it is inside an allowed folder, else the refusal (the same
        answer whether or not the path exists)."""
        resolved = _resolve(path)
        if resolved is None or not self.contains(resolved):
            raise self._refusal(what)
        return resolved

    def check_file(self, path: str | Path, what: str) -> Path:
        """``path`` resolved, inside the folders, and a regular file."""
        resolved = self.inside(path, what)
        mode = _mode(resolved)
        if mode is None:
            raise LimitError(422, f"{what} does not exist; check the path")
        if stat.S_ISDIR(mode):
            raise LimitError(422, f"{what} is a folder; use dir:PATH to read every file in it")
        if not stat.S_ISREG(mode):
            raise LimitError(
                REFUSED,
                f"{what} is not a regular file (devices, FIFOs and sockets are refused); "
                "give a file, or upload the text",
            )
        return resolved

    def check_dir(self, path: str | Path, what: str) -> Path:
        """``path`` resolved, inside the folders, a folder, and every file the ``dir:`` source
        would read (links followed) inside the folders too."""
        from mugpt.corpus.sources import walk_files

        resolved = self.inside(path, what)
        mode = _mode(resolved)
        if mode is None:
            raise LimitError(422, f"{what} does not exist; check the path")
        if not stat.S_ISDIR(mode):
            raise LimitError(422, f"{what} is not a folder; use file:PATH for a single file")
        for found in walk_files(resolved):
            self._check_entry(
                found,
                f"{what} holds {str(found)!r}, a link that",
                f"{what} holds {str(found)!r}, which is not a regular file (devices, "
                "FIFOs and sockets are refused); remove it or point dir: at another folder",
            )
        return resolved

    def _check_entry(self, entry: Path, link_out: str, not_regular: str) -> None:
        """An entry of a folder being read: where it leads (links followed) must be a regular
        file inside the folders; ``link_out`` and ``not_regular`` begin the refusals."""
        real = _resolve(entry)
        if real is None or not self.contains(real):
            raise self._refusal(link_out)
        mode = _mode(real)
        if mode is None or not stat.S_ISREG(mode):
            raise LimitError(REFUSED, not_regular)

    def check_spec(self, spec: str) -> None:
        """Checks every ``file:``/``dir:`` phase of a stream spec (parsed by the corpus's own
        parser, so the paths are exactly those the worker will open)."""
        from mugpt.corpus import parse_spec
        from mugpt.corpus.spec import split_phases

        # messages quote each phase as written: the parsed path has its links resolved,
        # and naming a link's target would tell what lies outside the folders
        for (written, _), phase in zip(split_phases(spec), parse_spec(spec), strict=True):
            kind, _, arg = phase.source.partition(":")
            what = f"phase {written!r}"
            if kind == "file":
                self.check_file(arg, what)
            elif kind == "dir":
                self.check_dir(arg, what)

    def check_run_dir(self, path: str | Path) -> Path:
        """A run directory to open: inside the folders, and each file the viewer reads a
        regular file inside them. Outside: the same refusal whether or not it exists."""
        what = f"run directory {str(path)!r}"
        resolved = self.inside(path, what)
        if _mode(resolved) is None or not stat.S_ISDIR(_mode(resolved) or 0):
            raise LimitError(404, f"{what} does not exist or is not a folder")
        for name in RUN_DIR_FILES:
            entry = resolved / name
            if not os.path.lexists(entry):
                continue
            self._check_entry(
                entry,
                f"{what} holds {name}, a link that",
                f"{what}: {name} is not a regular file (devices, FIFOs and sockets are refused)",
            )
        return resolved


def _mode(path: Path) -> int | None:
    try:
        return path.stat().st_mode
    except (OSError, ValueError):
        return None
