"""The materialised byte stream: data, phases, boundaries and document starts.

Vocabulary words follow DESIGN §2: a **phase** is a named segment of the stream from one
source, a **boundary** is the byte index (0-based, BOS not counted) where a phase starts, and a
**document start** is a byte index before which the learner inserts ``BOS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Phase:
    """One phase: bytes ``[start, end)`` of the stream came from ``source``.

    >>> Phase("prose", "stdlib-prose", 0, 100).end
    100
    """

    label: str  # e.g. "prose"; labels may recur (A, B, A)
    source: str  # the source spec, e.g. "stdlib-prose" or "file:/x.txt"
    start: int  # byte index (0-based, BOS not counted), inclusive
    end: int  # exclusive

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class Boundary:
    """A phase change: the phase ``to_label`` starts at byte ``index``."""

    index: int  # byte index where the new phase starts
    from_label: str
    to_label: str


@dataclass
class Stream:
    """A whole stream, materialised in memory, with its phases and document starts.

    Invariants (checked on construction): phases are contiguous and cover ``[0, len(data))``;
    ``doc_starts`` is a sorted, unique int64 array of byte indexes that contains 0 when the data
    is non-empty and every phase start.

    >>> s = Stream.from_bytes(b"hello")
    >>> len(s), s.labels(), s.doc_starts.tolist(), s.boundaries
    (5, ['input'], [0], [])
    """

    data: bytes
    phases: list[Phase]
    doc_starts: np.ndarray
    spec: str = ""  # canonical spec: build_stream(spec, seed) rebuilds the same stream
    seed: int = 0
    # Human-readable remarks made while building, e.g. a phase cut short by a finite source.
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.doc_starts = np.asarray(self.doc_starts, dtype=np.int64)
        self._validate()

    def _validate(self) -> None:
        n = len(self.data)
        if not self.phases:
            if n:
                raise ValueError("a non-empty stream needs at least one phase")
        else:
            if self.phases[0].start != 0 or self.phases[-1].end != n:
                raise ValueError(
                    f"phases must cover [0, {n}); got {self.phases[0]}..{self.phases[-1]}"
                )
            for prev, cur in zip(self.phases, self.phases[1:]):
                if cur.start != prev.end:
                    raise ValueError(f"phases are not contiguous: {prev} then {cur}")
            for ph in self.phases:
                if ph.end < ph.start:
                    raise ValueError(f"phase with negative length: {ph}")
        ds = self.doc_starts
        if ds.ndim != 1:
            raise ValueError("doc_starts must be one-dimensional")
        if ds.size:
            if np.any(np.diff(ds) <= 0):
                raise ValueError("doc_starts must be sorted and unique")
            if ds[0] < 0 or ds[-1] >= max(n, 1):
                raise ValueError(f"doc_starts must lie in [0, {n})")
        if n:
            if ds.size == 0 or ds[0] != 0:
                raise ValueError("doc_starts must contain 0 for non-empty data")
            starts = np.array([p.start for p in self.phases if p.end > p.start], dtype=np.int64)
            if not np.all(np.isin(starts, ds)):
                raise ValueError("every phase start must be a document start")

    def __len__(self) -> int:
        return len(self.data)

    @property
    def boundaries(self) -> list[Boundary]:
        """Phase starts except the first, with the labels on either side."""
        return [
            Boundary(cur.start, prev.label, cur.label)
            for prev, cur in zip(self.phases, self.phases[1:])
        ]

    def phase_ids(self) -> np.ndarray:
        """An int32 array, one entry per byte: the index into :attr:`phases` of its phase."""
        lengths = np.array([len(p) for p in self.phases], dtype=np.int64)
        return np.repeat(np.arange(len(self.phases), dtype=np.int32), lengths)

    def labels(self) -> list[str]:
        """Unique phase labels in order of first appearance."""
        return list(dict.fromkeys(p.label for p in self.phases))

    @classmethod
    def from_bytes(cls, data: bytes, label: str = "input", source: str = "bytes") -> Stream:
        """Wrap raw bytes as a stream of one phase and one document.

        >>> Stream.from_bytes(b"abc", label="x").phases
        [Phase(label='x', source='bytes', start=0, end=3)]
        """
        data = bytes(data)
        starts = np.zeros(1 if data else 0, dtype=np.int64)
        return cls(data=data, phases=[Phase(label, source, 0, len(data))], doc_starts=starts)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (everything but the bytes).

        ``boundaries`` is a list of byte indexes, as in the run directory's ``summary.json``;
        the labels on either side are those of the neighbouring ``phases``.
        """
        return {
            "spec": self.spec,
            "seed": self.seed,
            "bytes": len(self.data),
            "documents": int(self.doc_starts.size),
            "labels": self.labels(),
            "phases": [
                {"label": p.label, "source": p.source, "start": p.start, "end": p.end}
                for p in self.phases
            ],
            "boundaries": [b.index for b in self.boundaries],
            "notes": list(self.notes),
        }
