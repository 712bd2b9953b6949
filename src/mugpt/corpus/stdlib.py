"""Built-in sources from the running interpreter's standard library (no download needed).

``stdlib-code``: the standard library's ``.py`` files, one document per file.
``stdlib-prose``: English docstrings of those files, found with :mod:`ast`, one document per
docstring, filtered to mostly-ASCII prose.

Both walk the library in a fixed order (each folder sorted by name, depth first) and skip test
suites, ``site-packages`` and build-specific files, so for a given Python version they yield
the same bytes everywhere. Both are lazy: they open only as many files as the budget needs.
"""

from __future__ import annotations

import ast
import sysconfig
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from mugpt.corpus.sources import Chunk, Source, walk_files
from mugpt.errors import StreamError

#: Folders never read: test suites, third-party packages, caches.
SKIP_DIRS = frozenset(
    {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
)


def stdlib_root() -> Path:
    """The folder of the running interpreter's pure-Python standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not (root / "os.py").is_file():
        raise StreamError(
            f"the standard library sources are not at '{root}' (an embedded Python?); "
            "use file:PATH or dir:PATH instead of stdlib-code/stdlib-prose"
        )
    return root


def stdlib_files(root: Path | None = None) -> Iterator[Path]:
    """The ``.py`` files read by the stdlib sources, in their fixed order (lazy)."""
    root = stdlib_root() if root is None else root
    for path in walk_files(root, SKIP_DIRS):
        rel = path.relative_to(root)
        if path.suffix != ".py" or rel.parts[0].startswith("config-"):
            continue  # config-3.x-*/python-config.py is build-specific
        if path.name.startswith(("_sysconfigdata", "test_")):
            continue  # build paths of this machine; stray tests
        yield path


class StdlibCodeSource(Source):
    """``stdlib-code`` — standard-library Python source, one document per file.

    >>> src = StdlibCodeSource()
    >>> data, starts = src.read(200)
    >>> len(data), starts[0]
    (200, 0)
    """

    needs_budget = True

    def __init__(self, root: Path | None = None) -> None:
        super().__init__("stdlib-code")
        self.root = stdlib_root() if root is None else root

    def _chunks(self) -> Iterator[Chunk]:
        for path in stdlib_files(self.root):
            try:
                data = path.read_bytes()
            except OSError:
                continue  # an unreadable library file is skipped, deterministically so
            yield data, True


def is_prose(text: str) -> bool:
    """Whether a docstring reads as English prose rather than code, tables or symbols.

    Rules: at least 80 characters and 10 words, at least 99% ASCII, at least 75% letters and
    spaces, and fewer than a fifth of its lines doctest prompts.

    >>> is_prose("Return the number of items in the container, counting duplicates once each time.")
    True
    >>> is_prose(">>> f(1, 2)\\n3\\n>>> g([1, 2, 3])\\n[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]")
    False
    """
    if len(text) < 80 or len(text.split()) < 10:
        return False
    n = len(text)
    if sum(1 for ch in text if ord(ch) < 128) < 0.99 * n:
        return False
    if sum(1 for ch in text if ch.isalpha() or ch == " ") < 0.75 * n:
        return False
    lines = text.splitlines()
    prompts = sum(1 for line in lines if line.lstrip().startswith((">>>", "...")))
    return prompts < 0.2 * len(lines)


# Nodes searched for docstrings: definitions, and blocks that hold definitions at module level.
_DOC_CONTAINERS = (
    ast.ClassDef,
    ast.FunctionDef,
    ast.AsyncFunctionDef,
    ast.If,
    ast.Try,
    ast.ExceptHandler,
)


def _docstrings_in_order(tree: ast.AST) -> Iterator[str]:
    """Docstrings of a module, its classes and functions, in source order."""
    if isinstance(tree, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
        doc = ast.get_docstring(tree, clean=True)
        if doc:
            yield doc
    for child in ast.iter_child_nodes(tree):
        if isinstance(child, _DOC_CONTAINERS):
            yield from _docstrings_in_order(child)


@lru_cache(maxsize=4096)
def file_prose(path: Path) -> tuple[bytes, ...]:
    """The prose docstrings of one file, each encoded and ending in a newline (cached)."""
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (OSError, SyntaxError, ValueError):
        return ()
    return tuple(
        (doc + "\n").encode("utf-8") for doc in _docstrings_in_order(tree) if is_prose(doc)
    )


class StdlibProseSource(Source):
    """``stdlib-prose`` — English docstrings of the standard library, one document each.

    >>> data, starts = StdlibProseSource().read(300)
    >>> len(data), data.isascii()
    (300, True)
    """

    needs_budget = True

    def __init__(self, root: Path | None = None) -> None:
        super().__init__("stdlib-prose")
        self.root = stdlib_root() if root is None else root

    def _chunks(self) -> Iterator[Chunk]:
        for path in stdlib_files(self.root):
            for doc in file_prose(path):
                yield doc, True
