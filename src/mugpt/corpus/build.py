"""Build a :class:`Stream` from a spec string or a stream file, and the built-in default."""

from __future__ import annotations

import json
import tomllib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.corpus.sources import Source
from mugpt.corpus.spec import (
    MAX_STREAM_BYTES,
    PhaseSpec,
    format_size,
    parse_phase,
    parse_size,
    parse_spec,
)
from mugpt.corpus.spec import make_source as _make_source
from mugpt.corpus.stream import Phase, Stream
from mugpt.corpus.synthetic import source_seed
from mugpt.errors import StreamError

#: The built-in stream: offline, deterministic for a Python version and seed, 300 kB.
#: English prose, then Python code, then generated stories, then a *return* to prose (new
#: docstrings, continuing where the first prose phase stopped) so forgetting can be measured.
DEFAULT_SPEC = (
    "prose=stdlib-prose:75k,code=stdlib-code:75k,stories=stories:75k,prose=stdlib-prose:75k"
)


class StreamWarning(UserWarning):
    """Something about a built stream the user should know (e.g. a phase was cut short)."""


def _check_seed(seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise StreamError(f"bad seed {seed!r}; the seed must be a non-negative integer")
    return int(seed)


def build_phases(
    phases: Sequence[PhaseSpec],
    seed: int = 0,
    shuffle: bool = False,
    max_bytes: int | None = None,
) -> Stream:
    """Materialise parsed phases into a :class:`Stream`.

    Bounded before anything is read: with ``max_bytes`` the stream holds at most its first
    ``max_bytes`` bytes (later phases are not read at all); without it, budgets adding up to
    more than :data:`~mugpt.corpus.spec.MAX_STREAM_BYTES` are refused, and a source read to
    its end stops (and is refused) one byte past that cap.

    Phases naming the same source share one reader, so a revisit continues where the previous
    visit stopped. A finite source that runs out cuts its phase short (a :class:`StreamWarning`
    is issued and the stream's ``notes`` say so); a phase that gets no bytes is an error.
    """
    seed = _check_seed(seed)
    phases = list(phases)
    if not phases:
        raise StreamError("the stream has no phases; give at least one, e.g. 'stdlib-prose:50k'")
    if shuffle:
        order = np.random.default_rng(source_seed(seed, "shuffle")).permutation(len(phases))
        phases = [phases[i] for i in order]
    if max_bytes is not None and max_bytes < 1:
        raise StreamError(f"max_bytes={max_bytes!r} must be at least 1")
    asked = sum(ph.budget or 0 for ph in phases)
    if max_bytes is None and asked > MAX_STREAM_BYTES:
        raise StreamError(
            f"the stream's budgets add up to {asked:,} bytes, more than the stream cap of "
            f"{format_size(MAX_STREAM_BYTES)}; lower the budgets or give --max-bytes"
        )
    limit = MAX_STREAM_BYTES if max_bytes is None else min(max_bytes, MAX_STREAM_BYTES)
    readers: dict[str, Source] = {}
    data = bytearray()
    doc_starts: list[int] = []
    out: list[Phase] = []
    notes: list[str] = []
    for ph in phases:
        room = limit - len(data)
        if room <= 0:
            break  # max_bytes reached: the remaining phases are never read
        reader = readers.get(ph.source)
        if reader is None:
            reader = readers[ph.source] = _make_source(ph.source, seed)
        revisit = reader.bytes_read > 0
        # read at most the room left (one byte more, to tell "over the cap" from "exactly")
        want = room + 1 if ph.budget is None else min(ph.budget, room)
        chunk, starts = reader.read(want)
        if len(chunk) > room:
            if max_bytes is None or max_bytes > MAX_STREAM_BYTES:
                raise StreamError(
                    f"phase '{ph.label}' {ph.where}: source '{ph.source}' holds more than the "
                    f"stream cap of {format_size(MAX_STREAM_BYTES)}; give it a budget or "
                    "--max-bytes"
                )
            chunk = chunk[:room]  # the one byte read past --max-bytes is not used
            starts = [s for s in starts if s < room]
        if not chunk:
            state = "was used up by earlier phases" if revisit else "is empty"
            raise StreamError(
                f"phase '{ph.label}' {ph.where} gets no bytes: source '{ph.source}' {state}; "
                "lower the budgets or remove the phase"
            )
        if ph.budget is not None and len(chunk) < min(ph.budget, room):
            note = (
                f"phase '{ph.label}' asked for {ph.budget} bytes but source '{ph.source}' "
                f"had only {len(chunk)} left; the phase was cut short"
            )
            notes.append(note)
            warnings.warn(note, StreamWarning, stacklevel=3)
        base = len(data)
        doc_starts.extend(base + s for s in starts)
        data += chunk
        out.append(Phase(ph.label, ph.source, base, len(data)))
    spec = ",".join(p.to_spec() for p in phases)
    return Stream(
        data=bytes(data),
        phases=out,
        doc_starts=np.array(doc_starts, dtype=np.int64),
        spec=spec,
        seed=seed,
        notes=notes,
    )


def build_stream(
    spec: str, seed: int = 0, shuffle: bool = False, max_bytes: int | None = None
) -> Stream:
    """Build the stream a spec describes (see :mod:`mugpt.corpus.spec` for the syntax).

    ``seed`` seeds the generated sources and, with ``shuffle=True``, a permutation of the
    phases. The result's ``spec`` is canonical (post-shuffle order, absolute paths) and
    ``build_stream(s.spec, s.seed)`` rebuilds the same bytes.

    >>> s = build_stream("a=counting:1k,b=random:500,a=counting:1k", seed=1)
    >>> len(s), [b.index for b in s.boundaries], s.labels()
    (2500, [1000, 1500], ['a', 'b'])

    ``max_bytes`` bounds what is built before anything is read (see :func:`build_phases`):

    >>> len(build_stream("a=random:999999999999M", max_bytes=1000))
    1000
    """
    return build_phases(parse_spec(spec), seed=seed, shuffle=shuffle, max_bytes=max_bytes)


def default_stream(seed: int = 0) -> Stream:
    """The built-in stream :data:`DEFAULT_SPEC`: prose → code → stories → prose, 300 kB.

    >>> s = default_stream()
    >>> [p.label for p in s.phases], len(s)
    (['prose', 'code', 'stories', 'prose'], 300000)
    """
    return build_stream(DEFAULT_SPEC, seed=seed)


_FILE_KEYS = ("seed", "shuffle", "phase")
_PHASE_KEYS = ("label", "source", "budget")


def _read_stream_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise StreamError(f"stream file not found: '{path}'; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise StreamError(f"cannot read stream file '{path}': {e}; check the file") from None
    suffix = path.suffix.lower()
    if suffix == ".json":
        loaders = ["json"]
    elif suffix == ".toml":
        loaders = ["toml"]
    else:
        loaders = ["toml", "json"]
    error = ""
    for kind in loaders:
        try:
            doc = json.loads(text) if kind == "json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
            error = f"{kind.upper()} error: {e}"
            continue
        if not isinstance(doc, dict):
            raise StreamError(f"stream file '{path}' must hold a table/object at the top level")
        return doc
    raise StreamError(f"stream file '{path}' is not valid ({error}); fix the syntax")


def load_stream_file(path: str | Path, seed: int | None = None) -> Stream:
    """Build a stream from a TOML or JSON file with the same structure as a spec.

    Top-level keys: ``seed`` (int, optional), ``shuffle`` (bool, optional), ``phase`` (a list
    of tables with ``source`` and optional ``label`` and ``budget``). A ``source`` is written
    as in a spec; a ``budget`` is a size string (``"50k"``), an integer or ``"all"``. Relative
    ``file:``/``dir:`` paths are relative to the stream file's folder. A ``seed`` argument
    other than None overrides the file's seed.

    >>> import tempfile, pathlib
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "s.toml"
    >>> _ = p.write_text('[[phase]]\\nsource = "counting"\\nbudget = "1k"\\n')
    >>> len(load_stream_file(p))
    1000
    """
    path = Path(path)
    doc = _read_stream_file(path)
    name = f"stream file '{path}'"
    for key in doc:
        if key not in _FILE_KEYS:
            raise StreamError(f"{name}: unknown key '{key}'; valid keys: {', '.join(_FILE_KEYS)}")
    file_seed = doc.get("seed", 0)
    if isinstance(file_seed, bool) or not isinstance(file_seed, int) or file_seed < 0:
        raise StreamError(f"{name}: key 'seed' must be a non-negative integer, got {file_seed!r}")
    shuffle = doc.get("shuffle", False)
    if not isinstance(shuffle, bool):
        raise StreamError(f"{name}: key 'shuffle' must be true or false, got {shuffle!r}")
    raw_phases = doc.get("phase")
    if not isinstance(raw_phases, list) or not raw_phases:
        raise StreamError(
            f"{name}: key 'phase' must be a non-empty list of tables "
            '([[phase]] in TOML, "phase": [...] in JSON)'
        )
    phases = []
    for i, entry in enumerate(raw_phases):
        where = f"in phase[{i}] of {name}"
        if not isinstance(entry, dict):
            raise StreamError(f"{name}: phase[{i}] must be a table with a 'source' key")
        for key in entry:
            if key not in _PHASE_KEYS:
                raise StreamError(
                    f"{name}: unknown key 'phase[{i}].{key}'; valid keys: {', '.join(_PHASE_KEYS)}"
                )
        source = entry.get("source")
        if not isinstance(source, str) or not source.strip():
            raise StreamError(f"{name}: key 'phase[{i}].source' is missing or not a string")
        label = entry.get("label")
        if label is not None and not isinstance(label, str):
            raise StreamError(f"{name}: key 'phase[{i}].label' must be a string")
        budget = entry.get("budget")
        if budget is None:
            suffix = ""
        elif isinstance(budget, int) and not isinstance(budget, bool) and budget >= 0:
            suffix = f":{budget}"
        elif isinstance(budget, str) and (
            budget.strip() == "all" or parse_size(budget) is not None
        ):
            suffix = f":{budget.strip()}"
        else:
            raise StreamError(
                f"{name}: key 'phase[{i}].budget' is {budget!r}; use a size like \"50k\", "
                'an integer number of bytes, or "all"'
            )
        text = (f"{label}=" if label is not None else "") + source.strip() + suffix
        phases.append(parse_phase(text, where, base_dir=path.parent))
    return build_phases(phases, seed=file_seed if seed is None else seed, shuffle=shuffle)
