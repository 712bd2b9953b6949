"""Numba's on-disk cache, kept fresh across files.

Numba keys a cached kernel by the modification time and size of the one file that defines
it. μGPT's kernels call kernels of other files (the loop in ``engine/loop.py`` inlines the
mechanisms' kernels of ``mechanisms/*.py`` and the model's of ``model/fast.py``), so an edit
of a callee left the caller's cached machine code in place: it ran the old callee, and with
a changed array layout it read out of bounds. Here every kernel of the package is keyed by
the stamps of *all* the package's files that define kernels: changing any of them recompiles
them all once, which is slow but never wrong.

The cache locators below wrap numba's own three (``NUMBA_CACHE_DIR`` if set, else the
package's ``__pycache__`` folders, else the user's cache folder) and only change the stamp, for files inside this package;
everything else keeps numba's behaviour. Importing :mod:`mugpt.model.constants` (which every
kernel file does for ``JIT_OPTIONS``) registers them, before any kernel is decorated. If a
numba version lacks the hooks this relies on, nothing is registered and numba's own rule
applies.

Example:
    >>> stamp = package_stamp()
    >>> any(path.endswith("loop.py") for path, _, _ in stamp)
    True
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

PACKAGE = Path(__file__).resolve().parent.parent
"""The ``mugpt`` package folder."""
MARKER = b"@njit"
"""A file that holds this text defines kernels and is part of every kernel's stamp."""


@functools.cache
def package_stamp() -> tuple[tuple[str, float, int], ...]:
    """(path, mtime, size) of every file of the package that defines a kernel, sorted."""
    stamps = []
    for path in sorted(PACKAGE.rglob("*.py")):
        try:
            if MARKER in path.read_bytes():
                st = path.stat()
                stamps.append((str(path.relative_to(PACKAGE)), st.st_mtime, st.st_size))
        except OSError:
            continue
    return tuple(stamps)


def _inside(py_file: str) -> bool:
    try:
        return Path(py_file).resolve().is_relative_to(PACKAGE)
    except (OSError, ValueError):
        return False


def _register() -> bool:
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - numba is a dependency
        return False
    impl = getattr(caching, "CacheImpl", None)
    names = ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")
    found = [getattr(caching, n, None) for n in names]
    classes = getattr(impl, "_locator_classes", None)
    if impl is None or not isinstance(classes, list) or None in found:
        return False
    bases: list[type] = [b for b in found if isinstance(b, type)]
    if any(getattr(c, "_mugpt", False) for c in classes):
        return True
    made = []
    for base in bases:

        def get_source_stamp(self: Any) -> Any:
            return ("mugpt", package_stamp())

        def from_function(cls: Any, py_func: Any, py_file: str, _base: Any = base) -> Any:
            if not _inside(py_file):
                return None
            return _base.from_function.__func__(cls, py_func, py_file)

        made.append(
            type(
                "Package" + base.__name__,
                (base,),
                {
                    "_mugpt": True,
                    "get_source_stamp": get_source_stamp,
                    "from_function": classmethod(from_function),
                },
            )
        )
    classes[:0] = made
    return True


REGISTERED = os.environ.get("MUGPT_NUMBA_FILE_STAMPS") != "1" and _register()
"""Whether the package-wide stamp is in use (``MUGPT_NUMBA_FILE_STAMPS=1`` turns it off)."""
