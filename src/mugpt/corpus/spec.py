"""The stream spec language: ``label=source:budget`` phases separated by commas.

Grammar (informal)::

    spec    := phase ("," phase)*
    phase   := [label "="] source [":" budget]
    label   := [A-Za-z0-9_.-]+            (defaults to the source's name)
    budget  := size | "all"
    size    := number [k | M | G | Ki | Mi | Gi] [B]     e.g. 50000, 50k, 1.5M, 64Ki

Sizes are bytes; ``k`` = 1000, ``M`` = 1000², ``G`` = 1000³ (what ``bpb`` figures and "MB"
mean everywhere in μGPT), ``Ki`` = 1024, ``Mi`` = 1024², ``Gi`` = 1024³.

Sources whose argument may contain ``:`` (``file:PATH``, ``dir:PATH``, ``text:TEXT``) take the
last ``:``-token as the budget only if it parses as a size or ``all``; otherwise the whole rest
is the argument and the budget is "all". A literal comma (in ``text:``) is written ``\\,``.
Whitespace around phases is ignored.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from mugpt.corpus.sources import DirSource, FileSource, Source, StdinSource, TextSource
from mugpt.corpus.stdlib import StdlibCodeSource, StdlibProseSource
from mugpt.corpus.synthetic import (
    CountingSource,
    LinguaSource,
    RandomSource,
    RepeatSource,
    StoriesSource,
)
from mugpt.corpus.tinystories import SPLITS, TinyStoriesSource
from mugpt.errors import StreamError

_UNITS = {
    "": 1, "k": 1000, "K": 1000, "M": 1000**2, "G": 1000**3,
    "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3,
}  # fmt: skip
# ASCII digits only: ``\d`` would also admit full-width and other Unicode digits.
_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)[ \t]*(Ki|Mi|Gi|k|K|M|G)?B?")
_LABEL_RE = re.compile(r"[A-Za-z0-9_.\-]+")
SIZE_HELP = "write a size like 50000, 50k, 1.5M or 64Ki"
#: The most bytes one stream may hold (256 MiB), checked before anything is read or generated.
MAX_STREAM_BYTES = 256 * 1024**2
#: The most phases one spec may have.
MAX_PHASES = 1000
#: How much of a user's text an error message quotes.
QUOTE_CHARS = 60


def quote(text: str, limit: int = QUOTE_CHARS) -> str:
    """``text`` in quotes for an error message, cut to ``limit`` characters.

    >>> quote("abc"), quote("x" * 100, 10)
    ("'abc'", "'xxxxxxxxxx...' (100 characters)")
    """
    if len(text) <= limit:
        return f"'{text}'"
    return f"'{text[:limit]}...' ({len(text)} characters)"


def parse_size(text: str) -> int | None:
    """Bytes denoted by ``text``, or None if it is not a size (``k`` = 1000, ``Ki`` = 1024).

    Only ASCII digits count, and a size must be a whole number of bytes: ``1.5k`` is 1500
    but ``1.5`` or ``0.0001k`` (a fraction of a byte) is not a size.

    >>> parse_size("50k"), parse_size("64Ki"), parse_size("1.5M"), parse_size("7"), parse_size("x")
    (50000, 65536, 1500000, 7, None)
    >>> parse_size("1.5"), parse_size("\uff15\uff10k")
    (None, None)
    """
    m = _SIZE_RE.fullmatch(text.strip())
    if m is None:
        return None
    try:
        value = Decimal(m.group(1)) * _UNITS[m.group(2) or ""]
    except InvalidOperation:  # pragma: no cover - the regex admits only plain decimals
        return None
    if value != value.to_integral_value():
        return None  # a fraction of a byte
    return int(value)


def format_size(n: int) -> str:
    """The shortest exact spelling of ``n`` bytes in the spec language.

    >>> format_size(50000), format_size(2_000_000), format_size(65536), format_size(1234)
    ('50k', '2M', '64Ki', '1234')
    """
    for suffix, unit in (("G", 1000**3), ("M", 1000**2), ("Gi", 1024**3), ("Mi", 1024**2)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    for suffix, unit in (("k", 1000), ("Ki", 1024)):
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


# ---- the source registry -----------------------------------------------------------------


@dataclass(frozen=True)
class SourceKind:
    """One kind of source in the registry."""

    name: str
    usage: str  # how it is written, e.g. "file:PATH"
    help: str
    takes_argument: bool = False  # file/dir/text: everything after "name:" is the argument
    needs_budget: bool = False


SOURCE_KINDS: dict[str, SourceKind] = {
    k.name: k
    for k in [
        SourceKind("file", "file:PATH", "one file, one document", takes_argument=True),
        SourceKind(
            "dir",
            "dir:PATH",
            "every file under a folder, sorted; a file is a document",
            takes_argument=True,
        ),
        SourceKind("text", "text:TEXT", "inline text, one document", takes_argument=True),
        SourceKind("stdin", "stdin", "standard input, read once"),
        SourceKind(
            "stdlib-code", "stdlib-code", "the standard library's Python source", needs_budget=True
        ),
        SourceKind(
            "stdlib-prose",
            "stdlib-prose",
            "English docstrings of the standard library",
            needs_budget=True,
        ),
        SourceKind("random", "random", "uniform random bytes (8 bpb is ideal)", needs_budget=True),
        SourceKind(
            "repeat",
            "repeat",
            "copy task: random letter blocks written several times",
            needs_budget=True,
        ),
        SourceKind("counting", "counting", "numbers counting up, one per line", needs_budget=True),
        SourceKind("stories", "stories", "generated short English-like stories", needs_budget=True),
        SourceKind(
            "lingua", "lingua", "text in a made-up language (Zipf words)", needs_budget=True
        ),
        SourceKind(
            "tinystories",
            "tinystories:valid",
            "TinyStories validation split (HF Hub)",
            needs_budget=True,
        ),
    ]
}


def list_sources() -> list[str]:
    """How each source is written, for help and error messages.

    >>> list_sources()[:3]
    ['file:PATH', 'dir:PATH', 'text:TEXT']
    """
    names = [k.usage for k in SOURCE_KINDS.values()]
    return [*names, *(f"tinystories:{s}" for s in SPLITS if f"tinystories:{s}" not in names)]


def describe_sources() -> dict[str, str]:
    """``{usage: one-line description}`` for every source."""
    out = {k.usage: k.help for k in SOURCE_KINDS.values()}
    out["tinystories:train"] = "TinyStories training split (HF Hub, ~2 GB download)"
    return out


# ---- parsing -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseSpec:
    """One parsed phase: take ``budget`` bytes (None = all that is left) from ``source``."""

    label: str
    source: str  # canonical source spec, e.g. "stdlib-prose" or "file:/abs/x.txt"
    budget: int | None
    where: str = ""  # where it was written, for error messages ("at character 12 of ...")

    @property
    def kind(self) -> str:
        return self.source.split(":", 1)[0]

    def to_spec(self) -> str:
        """This phase in canonical spec syntax; parsing it gives the same phase."""
        source = self.source.replace(",", "\\,")
        if self.budget is not None:
            return f"{self.label}={source}:{format_size(self.budget)}"
        kind = SOURCE_KINDS[self.kind]
        if kind.takes_argument and ":" in self.source.split(":", 1)[1]:
            last = self.source.rsplit(":", 1)[1]
            if last.strip() == "all" or parse_size(last) is not None:
                return (
                    f"{self.label}={source}:all"  # keep the argument's tail from becoming a budget
                )
        return f"{self.label}={source}"


def split_phases(spec: str) -> list[tuple[str, int]]:
    """Split at unescaped commas; return ``(token, position)`` with whitespace stripped.

    >>> split_phases("a=text:x\\\\,y, b=random:1k")
    [('a=text:x,y', 0), ('b=random:1k', 13)]
    """
    tokens: list[tuple[str, int]] = []
    buf: list[str] = []
    start = 0
    i = 0
    while i <= len(spec):
        ch = spec[i] if i < len(spec) else ","
        if ch == "\\" and i + 1 < len(spec) and spec[i + 1] == ",":
            buf.append(",")
            i += 2
            continue
        if ch == ",":
            raw = "".join(buf)
            stripped = raw.lstrip()
            tokens.append((stripped.rstrip(), start + len(raw) - len(stripped)))
            buf = []
            start = i + 1
        else:
            buf.append(ch)
        i += 1
    return tokens


def _where(spec: str, pos: int) -> str:
    return f"at character {pos} of stream spec {quote(spec)}"


def _locate(spec: str, pos: int, offset: int) -> str:
    return _where(spec, pos + offset)


def parse_phase(
    text: str,
    where: str,
    base_dir: Path | None = None,
    locate: Callable[[int], str] | None = None,
) -> PhaseSpec:
    """Parse one ``[label=]source[:budget]``; ``where`` locates it in error messages.

    ``locate(offset)``, when given, says where character ``offset`` of ``text`` was written,
    so that an error points at the bad part (the source after a label, the budget) rather
    than at the phase's start. Relative ``file:``/``dir:`` paths resolve against
    ``base_dir`` (default: the working dir).

    >>> parse_phase("prose=stdlib-prose:50k", "here")
    PhaseSpec(label='prose', source='stdlib-prose', budget=50000, where='here')
    """

    def at(offset: int) -> str:
        return where if locate is None else locate(offset)

    label: str | None = None
    rest = text
    head, eq, tail = text.partition("=")
    src = 0  # where the source begins in text
    if eq and ":" not in head:
        src = len(head) + 1 + len(tail) - len(tail.lstrip())
        head, tail = head.strip(), tail.strip()
        if not _LABEL_RE.fullmatch(head):
            raise StreamError(
                f"bad label {quote(head)} {where}; use letters, digits, '_', '-' or '.'"
            )
        label, rest = head, tail
    phase_at, where = where, at(src)
    if not rest:
        raise StreamError(
            f"phase {quote(text)} {where} has no source; valid: {', '.join(list_sources())}"
        )
    name, _, arg = rest.partition(":")
    kind = SOURCE_KINDS.get(name)
    if kind is None:
        raise StreamError(
            f"unknown source {quote(name)} {where}; valid sources: {', '.join(list_sources())}"
        )
    after_name = at(src + len(name) + 1)  # the source's first argument or its budget
    budget: int | None = None  # None: all that is left
    if kind.takes_argument:
        argument = arg
        if ":" in arg:
            before, _, last = arg.rpartition(":")
            if last.strip() == "all":
                argument = before
            elif (size := parse_size(last)) is not None:
                argument, budget = before, size
        if not argument:
            raise StreamError(f"source {quote(rest)} {where} needs an argument: {kind.usage}")
        if name == "text":
            source = f"text:{argument}"
        else:
            path = Path(argument).expanduser()
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            source = f"{name}:{path.resolve()}"
    else:
        parts = arg.split(":") if arg else []
        if name == "tinystories":
            split = "valid"
            if parts and parts[0] in SPLITS:
                split = parts.pop(0)
            elif parts and parse_size(parts[0]) is None and parts[0] != "all":
                raise StreamError(
                    f"unknown TinyStories split {quote(parts[0])} {after_name}; use one of: "
                    + ", ".join(f"tinystories:{s}" for s in SPLITS)
                )
            source = f"tinystories:{split}"
        else:
            source = name
        if len(parts) > 1:
            raise StreamError(f"too many ':' in {quote(rest)} {where}; write {kind.usage}:BUDGET")
        if parts and parts[0] != "all":
            budget = parse_size(parts[0])
            budget_at = at(src + len(rest) - len(parts[0]))
            if budget is None:
                raise StreamError(f"bad budget {quote(parts[0])} {budget_at}; {SIZE_HELP}")
    if budget is None and kind.needs_budget:
        raise StreamError(
            f"source '{source}' {where} needs a budget ({source} is "
            f"{'endless' if source in {'random', 'repeat', 'counting', 'stories', 'lingua'} else 'large'}); "
            f"write e.g. '{source}:50k'"
        )
    if budget == 0:
        raise StreamError(f"phase {quote(text)} {where} has budget 0; give a positive size")
    if label is None:
        label = default_label(source)
    return PhaseSpec(label=label, source=source, budget=budget, where=phase_at)


def default_label(source: str) -> str:
    """The label of a phase that names none: the source's name, or a file's base name.

    >>> default_label("stdlib-prose"), default_label("file:/data/my notes.txt")
    ('stdlib-prose', 'my_notes.txt')
    """
    name, _, arg = source.partition(":")
    if name in ("file", "dir"):
        base = Path(arg).name or name
        return re.sub(r"[^A-Za-z0-9_.\-]", "_", base)
    return name


def parse_spec(spec: str) -> list[PhaseSpec]:
    """Parse a whole stream spec into phases, or raise :class:`StreamError` at the bad token.

    >>> [(p.label, p.source, p.budget) for p in parse_spec("a=random:1k, counting:2Ki")]
    [('a', 'random', 1000), ('counting', 'counting', 2048)]
    """
    if not spec.strip():
        raise StreamError("the stream spec is empty; write e.g. 'prose=stdlib-prose:50k'")
    tokens = split_phases(spec)
    if len(tokens) > MAX_PHASES:
        raise StreamError(
            f"the stream spec has {len(tokens)} phases, more than the cap of {MAX_PHASES}; "
            "merge phases or use fewer"
        )
    phases = []
    for token, pos in tokens:
        where = _where(spec, pos)
        if not token:
            raise StreamError(f"empty phase {where} (two commas or a trailing comma?); remove it")
        phases.append(parse_phase(token, where, locate=functools.partial(_locate, spec, pos)))
    return phases


def make_source(source: str, seed: int) -> Source:
    """Create the reader of a canonical source spec (as in :attr:`PhaseSpec.source`)."""
    name, _, arg = source.partition(":")
    factories: dict[str, Callable[[], Source]] = {
        "file": lambda: FileSource(arg),
        "dir": lambda: DirSource(arg),
        "text": lambda: TextSource(arg),
        "stdin": StdinSource,
        "stdlib-code": StdlibCodeSource,
        "stdlib-prose": StdlibProseSource,
        "random": lambda: RandomSource(seed),
        "repeat": lambda: RepeatSource(seed),
        "counting": lambda: CountingSource(seed),
        "stories": lambda: StoriesSource(seed),
        "lingua": lambda: LinguaSource(seed),
        "tinystories": lambda: TinyStoriesSource(arg or "valid"),
    }
    if name not in factories:
        raise StreamError(f"unknown source '{source}'; valid sources: {', '.join(list_sources())}")
    return factories[name]()
