"""Streams, sources and stream files: exact boundaries, document starts, revisits, seeds."""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from mugpt.corpus import (
    DEFAULT_SPEC,
    Boundary,
    Phase,
    Stream,
    StreamWarning,
    build_stream,
    default_stream,
    load_stream_file,
)
from mugpt.corpus import stdlib as stdlib_mod
from mugpt.corpus.stdlib import StdlibCodeSource, StdlibProseSource, is_prose, stdlib_files
from mugpt.corpus.synthetic import make_story
from mugpt.errors import StreamError

# ---- the Stream data model ---------------------------------------------------------------


def test_stream_accessors() -> None:
    s = build_stream("a=text:hello,b=text:xyz,a=text:ab")
    assert len(s) == 10
    assert s.phases == [
        Phase("a", "text:hello", 0, 5),
        Phase("b", "text:xyz", 5, 8),
        Phase("a", "text:ab", 8, 10),
    ]
    assert s.boundaries == [Boundary(5, "a", "b"), Boundary(8, "b", "a")]
    assert s.phase_ids().tolist() == [0] * 5 + [1] * 3 + [2] * 2
    assert s.phase_ids().dtype == np.int32
    assert s.labels() == ["a", "b"]
    assert s.doc_starts.tolist() == [0, 5, 8] and s.doc_starts.dtype == np.int64
    d = s.to_dict()
    assert d["boundaries"] == [5, 8] and d["bytes"] == 10 and d["seed"] == 0
    assert d["phases"][1] == {"label": "b", "source": "text:xyz", "start": 5, "end": 8}
    json.dumps(d)


def test_from_bytes() -> None:
    s = Stream.from_bytes(b"abc", label="x", source="file:/a")
    assert s.phases == [Phase("x", "file:/a", 0, 3)]
    assert s.doc_starts.tolist() == [0] and s.boundaries == [] and s.labels() == ["x"]
    empty = Stream.from_bytes(b"")
    assert len(empty) == 0 and empty.doc_starts.size == 0 and empty.phase_ids().size == 0


def test_stream_rejects_broken_invariants() -> None:
    with pytest.raises(ValueError, match="contiguous"):
        Stream(b"abcd", [Phase("a", "t", 0, 2), Phase("b", "t", 3, 4)], np.array([0, 3]))
    with pytest.raises(ValueError, match="phase start"):
        Stream(b"abcd", [Phase("a", "t", 0, 2), Phase("b", "t", 2, 4)], np.array([0]))
    with pytest.raises(ValueError, match="sorted"):
        Stream(b"abcd", [Phase("a", "t", 0, 4)], np.array([0, 2, 2]))


# ---- building: boundaries, documents, revisits, seeds ------------------------------------


def test_boundaries_are_exact_byte_indexes() -> None:
    s = build_stream("p=stdlib-prose:3k,c=stdlib-code:2500,r=random:1Ki,p=stdlib-prose:700")
    assert [p.start for p in s.phases] == [0, 3000, 5500, 6524]
    assert len(s) == 7224
    assert [b.index for b in s.boundaries] == [3000, 5500, 6524]
    assert [(b.from_label, b.to_label) for b in s.boundaries] == [
        ("p", "c"),
        ("c", "r"),
        ("r", "p"),
    ]
    assert set(s.doc_starts.tolist()) >= {0, 3000, 5500, 6524}


def test_doc_starts_follow_source_documents(tmp_path: Path) -> None:
    (tmp_path / "b.txt").write_bytes(b"BBBB")
    (tmp_path / "a.txt").write_bytes(b"AA")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.txt").write_bytes(b"CCC")
    (tmp_path / ".hidden").write_bytes(b"secret")
    (tmp_path / "empty.txt").write_bytes(b"")
    s = build_stream(f"d=dir:{tmp_path}")
    assert s.data == b"AABBBBCCC"  # sorted by name, depth first; hidden and empty skipped
    assert s.doc_starts.tolist() == [0, 2, 6]


def test_revisit_continues_where_it_left_off() -> None:
    whole = build_stream("stdlib-code:6000").data
    s = build_stream("c=stdlib-code:2000,r=random:100,c=stdlib-code:4000")
    assert s.data[:2000] == whole[:2000]
    assert s.data[2100:] == whole[2000:6000]
    stories = build_stream("stories:3000", seed=5).data
    t = build_stream("s=stories:1000,counting:50,s=stories:2000", seed=5)
    assert t.data[:1000] + t.data[1050:] == stories


def test_revisit_of_a_file_continues_and_cut_phase_warns(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_bytes(b"0123456789")
    with pytest.warns(StreamWarning, match="asked for 8 bytes .* had only 6 left"):
        s = build_stream(f"a=file:{f}:4,b=text:--,a=file:{f}:8")
    assert s.data == b"0123--456789"
    assert [p.end for p in s.phases] == [4, 6, 12]
    assert any("cut short" in n for n in s.notes)
    assert s.to_dict()["notes"] == s.notes
    with pytest.raises(StreamError, match=r"gets no bytes: .* used up by earlier phases"):
        build_stream(f"a=file:{f},a=file:{f}:5")


def test_empty_file_phase_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "empty.txt"
    f.write_bytes(b"")
    with pytest.raises(StreamError, match=r"phase 'e' at character 0 .* is empty"):
        build_stream(f"e=file:{f}")


def test_generated_sources_are_seeded_and_deterministic() -> None:
    spec = "random:2k,repeat:2k,counting:2k,stories:2k"
    assert build_stream(spec, seed=1).data == build_stream(spec, seed=1).data
    assert build_stream(spec, seed=1).data != build_stream(spec, seed=2).data
    # a source's bytes do not depend on the other phases
    assert build_stream("counting:2k", seed=1).data == build_stream(spec, seed=1).data[4000:6000]


def test_shuffle_is_a_seeded_permutation_and_spec_rebuilds_it() -> None:
    spec = "a=counting:100,b=random:200,c=repeat:300,d=stories:400,e=text:hello"
    s1 = build_stream(spec, seed=7, shuffle=True)
    assert s1.data == build_stream(spec, seed=7, shuffle=True).data
    assert sorted(p.label for p in s1.phases) == ["a", "b", "c", "d", "e"]
    orders = {
        tuple(p.label for p in build_stream(spec, seed=k, shuffle=True).phases) for k in range(8)
    }
    assert len(orders) > 1
    again = build_stream(s1.spec, seed=7)
    assert again.data == s1.data and again.phases == s1.phases


def test_bad_seed() -> None:
    with pytest.raises(StreamError, match="seed"):
        build_stream("counting:10", seed=-1)


def test_synthetic_source_shapes() -> None:
    rnd = build_stream("random:100k").data
    counts = np.bincount(np.frombuffer(rnd, dtype=np.uint8), minlength=256)
    assert counts.min() > 250 and counts.max() < 550  # uniform: ~390 each
    for line in build_stream("repeat:5k").data.split(b"\n")[:-1]:
        copies = line.split(b" ")
        assert 2 <= len(copies) <= 6 and len(set(copies)) == 1 and 8 <= len(copies[0]) <= 48
    numbers = [int(x) for x in build_stream("counting:5k").data.split(b"\n")[:-1]]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    s = build_stream("stories:10k")
    assert s.data.isascii() and s.doc_starts.size > 5
    starts = s.doc_starts.tolist()
    assert all(s.data[i - 1 : i] == b"\n" for i in starts[1:])


def test_story_keeps_its_character() -> None:
    import random

    story = make_story(random.Random(3))
    name = story.split(" named ")[-1].split(".")[0] if " named " in story else None
    name = name or story.split(" called ")[-1].split(".")[0]
    assert story.count(name) >= 3


def test_text_and_stdin_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    assert build_stream("text:héllo").data == "héllo".encode()

    class FakeStdin:
        buffer = io.BytesIO(b"piped data")

        def isatty(self) -> bool:
            return False

    monkeypatch.setattr(sys, "stdin", FakeStdin())
    s = build_stream("in=stdin:5,text:|,in=stdin")
    assert s.data == b"piped| data"


# ---- the standard-library sources --------------------------------------------------------


def test_stdlib_order_skips_tests_and_site_packages() -> None:
    files = list(stdlib_files())
    assert len(files) > 300
    root = stdlib_mod.stdlib_root()
    rels = [f.relative_to(root) for f in files]
    for rel in rels:
        assert not {"test", "tests", "idle_test", "site-packages"} & set(rel.parts)
        assert not rel.name.startswith("_sysconfigdata")
    assert Path("os.py") in rels and Path("json/__init__.py") in rels


def test_stdlib_sources_are_deterministic_and_lazy(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[Path] = []
    original = Path.read_bytes

    def counting_read(self: Path) -> bytes:
        opened.append(self)
        return original(self)

    a = StdlibCodeSource().read(20_000)
    monkeypatch.setattr(Path, "read_bytes", counting_read)
    b = StdlibCodeSource().read(20_000)
    assert a == b
    assert len(opened) < 10  # a 20 kB budget opens a handful of files, not 700
    files = list(stdlib_files())
    assert b[0][: len(original(files[0]))] == original(files[0])


def test_stdlib_prose_is_english_docstrings() -> None:
    data, starts = StdlibProseSource().read(20_000)
    assert data == StdlibProseSource().read(20_000)[0]
    assert data.isascii() and len(starts) > 10
    text = data.decode()
    assert text.count(" the ") > 50
    assert "def " not in text[:2000] or text.count("def ") < 5


def test_is_prose_filter() -> None:
    assert is_prose(
        "Return a new list containing all the items from the iterable in ascending order."
    )
    assert not is_prose("x = f(a, b) + g[c:d] * 2  # {}[]()<>=+-*/%\n" * 3)
    assert not is_prose("Short.")
    assert not is_prose("Übergröße Straße für Grüße und Flöße über große Gewässer " * 2)


def test_stdlib_exhaustion_cuts_phase_short(tmp_path: Path) -> None:
    (tmp_path / "os.py").write_text(
        "'''A module docstring that is long enough to be kept as prose here.'''\n"
    )
    (tmp_path / "b.py").write_text("x = 1\n")
    (tmp_path / "test").mkdir()
    (tmp_path / "test" / "t.py").write_text("skipped = True\n")
    src = StdlibCodeSource(root=tmp_path)
    data, starts = src.read(10_000)
    assert data == b"x = 1\n" + (tmp_path / "os.py").read_bytes()
    assert starts == [0, 6] and src.exhausted
    assert src.read(10) == (b"", [])


# ---- the default stream ------------------------------------------------------------------


def test_default_stream_shape() -> None:
    s = default_stream()
    assert s.spec == DEFAULT_SPEC
    assert [p.label for p in s.phases] == ["prose", "code", "stories", "prose"]
    assert 250_000 <= len(s) <= 350_000
    assert [b.index for b in s.boundaries] == [75_000, 150_000, 225_000]
    assert s.data[:75_000] != s.data[225_000:]  # the revisit reads new docstrings
    assert default_stream().data == s.data


# ---- stream files ------------------------------------------------------------------------


def test_load_toml_and_json_stream_files(tmp_path: Path) -> None:
    (tmp_path / "d.txt").write_bytes(b"relative file")
    toml = tmp_path / "s.toml"
    toml.write_text(
        'seed = 4\nshuffle = false\n[[phase]]\nlabel = "n"\nsource = "counting"\nbudget = "1k"\n'
        '[[phase]]\nsource = "file:d.txt"\n'
        '[[phase]]\nlabel = "n"\nsource = "counting"\nbudget = 500\n'
    )
    s = load_stream_file(toml)
    assert s.seed == 4 and len(s) == 1000 + 13 + 500
    assert s.data[1000:1013] == b"relative file"
    assert s.data == build_stream(s.spec, seed=4).data
    assert load_stream_file(toml, seed=9).seed == 9
    js = tmp_path / "s.json"
    js.write_text(
        json.dumps({"seed": 4, "phase": [{"label": "n", "source": "counting", "budget": "1k"}]})
    )
    assert load_stream_file(js).data == s.data[:1000]


@pytest.mark.parametrize(
    ("content", "key"),
    [
        ("phases = []\n", "'phases'"),
        ('seed = "x"\n[[phase]]\nsource = "counting"\nbudget = 5\n', "'seed'"),
        ('shuffle = 1\n[[phase]]\nsource = "counting"\nbudget = 5\n', "'shuffle'"),
        ("seed = 1\n", "'phase'"),
        ("[[phase]]\nbudget = 5\n", "'phase[0].source'"),
        ('[[phase]]\nsource = "counting"\nbudget = "5q"\n', "'phase[0].budget'"),
        ('[[phase]]\nsource = "counting"\nbudget = 5\nsize = 3\n', "'phase[0].size'"),
        ('[[phase]]\nsource = "counting"\nbudget = 5\n[[phase]]\nsource = "nope"\n', "phase[1]"),
        ('[[phase]]\nsource = "counting"\nbudget = 5\nlabel = 3\n', "'phase[0].label'"),
        ("[[phase]\n", "TOML"),
    ],
)
def test_bad_stream_file_names_the_key(tmp_path: Path, content: str, key: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(content)
    with pytest.raises(StreamError) as err:
        load_stream_file(f)
    assert key in str(err.value) and "\n" not in str(err.value)


def test_missing_stream_file(tmp_path: Path) -> None:
    with pytest.raises(StreamError, match="stream file not found"):
        load_stream_file(tmp_path / "nope.toml")
