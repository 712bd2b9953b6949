"""Byte streams for μGPT: sources, the spec language, phases, boundaries, TinyStories.

The corpus layer knows nothing of the model: it turns a spec such as
``prose=stdlib-prose:50k,code=stdlib-code:50k,prose=stdlib-prose:50k`` into a materialised
:class:`Stream` — bytes, contiguous :class:`Phase` segments, and document starts where the
learner inserts BOS (DESIGN §2). See ``docs/streams.md``.

>>> from mugpt.corpus import build_stream
>>> s = build_stream("a=text:hello,b=counting:10")
>>> s.data[:5], [(b.index, b.from_label, b.to_label) for b in s.boundaries]
(b'hello', [(5, 'a', 'b')])
"""

from mugpt.corpus.build import (
    DEFAULT_SPEC,
    StreamWarning,
    build_phases,
    build_stream,
    default_stream,
    load_stream_file,
)
from mugpt.corpus.sources import Source
from mugpt.corpus.spec import (
    PhaseSpec,
    describe_sources,
    format_size,
    list_sources,
    parse_size,
    parse_spec,
)
from mugpt.corpus.stream import Boundary, Phase, Stream
from mugpt.corpus.tinystories import tinystories_cached

__all__ = [
    "DEFAULT_SPEC",
    "Boundary",
    "Phase",
    "PhaseSpec",
    "Source",
    "Stream",
    "StreamWarning",
    "build_phases",
    "build_stream",
    "default_stream",
    "describe_sources",
    "format_size",
    "list_sources",
    "load_stream_file",
    "parse_size",
    "parse_spec",
    "tinystories_cached",
]
