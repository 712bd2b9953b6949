"""The stream spec language: sizes, labels, budgets and error messages that point at the token."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mugpt.corpus import build_stream, format_size, list_sources, parse_size, parse_spec
from mugpt.corpus.spec import split_phases
from mugpt.errors import StreamError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("123", 123),
        ("50k", 50_000),
        ("50K", 50_000),
        ("2M", 2_000_000),
        ("1G", 1_000_000_000),
        ("1.5M", 1_500_000),
        ("64Ki", 65_536),
        ("3Mi", 3 * 1024**2),
        ("10kB", 10_000),
        ("4KiB", 4096),
        ("100B", 100),
    ],
)
def test_parse_size_units(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "k", "50q", "-5", "1.5", "0.5k1", "1e3", "all", "5iB"])
def test_parse_size_rejects_non_sizes(text: str) -> None:
    assert parse_size(text) is None


@given(st.integers(min_value=1, max_value=10**13))
def test_format_size_round_trips(n: int) -> None:
    assert parse_size(format_size(n)) == n


def test_phases_labels_budgets_and_defaults(tmp_path: Path) -> None:
    f = tmp_path / "notes.txt"
    f.write_text("x")
    phases = parse_spec(f"prose=stdlib-prose:50k, code=stdlib-code:64Ki,file:{f},random:1M")
    assert [(p.label, p.source, p.budget) for p in phases] == [
        ("prose", "stdlib-prose", 50_000),
        ("code", "stdlib-code", 65_536),
        ("notes.txt", f"file:{f.resolve()}", None),
        ("random", "random", 1_000_000),
    ]


def test_colon_in_path_budget_is_last_token_only_if_size(tmp_path: Path) -> None:
    weird = tmp_path / "a:b"
    weird.mkdir()
    (weird / "x.txt").write_text("hello")
    [p] = parse_spec(f"file:{weird}/x.txt:20k")
    assert (p.source, p.budget) == (f"file:{(weird / 'x.txt').resolve()}", 20_000)
    [p] = parse_spec(f"file:{weird}/x.txt")
    assert (p.source, p.budget) == (f"file:{(weird / 'x.txt').resolve()}", None)
    [p] = parse_spec("text:ratio 3:2:all")
    assert (p.source, p.budget) == ("text:ratio 3:2", None)
    [p] = parse_spec("text:ratio 3:2")
    assert (p.source, p.budget) == ("text:ratio 3", 2)


def test_escaped_comma_in_text_and_positions() -> None:
    assert split_phases(r"a=text:x\,y , b=random:1k") == [("a=text:x,y", 0), ("b=random:1k", 14)]
    s = build_stream(r"t=text:one\, two,counting:5")
    assert s.data.startswith(b"one, two")
    assert build_stream(s.spec).data == s.data


def test_tinystories_forms_parse() -> None:
    def split(spec: str) -> tuple[str, int | None]:
        [p] = parse_spec(spec)
        return p.source, p.budget

    assert split("tinystories:valid:1M") == ("tinystories:valid", 1_000_000)
    assert split("tinystories:train:10k") == ("tinystories:train", 10_000)
    assert split("tinystories:5k") == ("tinystories:valid", 5000)
    assert parse_spec("tinystories:train:1k")[0].label == "tinystories"


@pytest.mark.parametrize(
    ("spec", "token", "position"),
    [
        ("prose=stdlib-prose:50q", "50q", 19),
        ("a=random:1k,b=stdlib-code:12x", "12x", 26),
        ("a=random:1k, nope:5k", "nope", 13),
        ("a=random:1k,,b=random:1k", "empty phase", 12),
        ("a=random:1k,", "empty phase", 12),
        ("my label=random:1k", "my label", 0),
        ("x=random", "random", 2),
        ("x=stdlib-prose", "stdlib-prose", 2),
        ("x=random:0", "budget 0", 2),
        ("x=random:1k:2k", "random:1k:2k", 2),
        ("x=tinystories:test:1k", "test", 14),
        ("x=file:", "file:", 2),
        ("prose = nope:5k", "nope", 8),
        ("a=random:1k, b=nope", "nope", 15),
    ],
)
def test_malformed_spec_names_token_and_position(spec: str, token: str, position: int) -> None:
    with pytest.raises(StreamError) as err:
        parse_spec(spec)
    message = str(err.value)
    assert token in message
    assert f"at character {position} " in message
    assert "\n" not in message


def test_unknown_source_lists_valid_ones() -> None:
    with pytest.raises(StreamError, match="unknown source 'bogus'") as err:
        parse_spec("bogus:1k")
    for name in ("stdlib-prose", "stdlib-code", "random", "repeat", "counting", "stories"):
        assert name in str(err.value)
    assert "tinystories:train" in list_sources() and "file:PATH" in list_sources()


def test_empty_spec_and_missing_budget_errors() -> None:
    with pytest.raises(StreamError, match="empty"):
        parse_spec("   ")
    with pytest.raises(StreamError, match=r"needs a budget.*'counting:50k'"):
        parse_spec("counting")


def test_missing_file_and_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(StreamError, match=r"file not found: .*nope\.txt"):
        build_stream(f"file:{tmp_path}/nope.txt")
    with pytest.raises(StreamError, match="use dir:"):
        build_stream(f"file:{tmp_path}")
    with pytest.raises(StreamError, match="folder not found"):
        build_stream(f"dir:{tmp_path}/nope")
    with pytest.raises(StreamError, match="has no files"):
        build_stream(f"dir:{tmp_path}")


def test_canonical_spec_round_trips(tmp_path: Path) -> None:
    f = tmp_path / "d.txt"
    f.write_bytes(b"0123456789" * 10)
    spec = f"a=counting:1500, b=file:{f}:30,random:64Ki,b=file:{f},t=text:abc:7:all"
    s = build_stream(spec, seed=3)
    assert s.spec == (
        f"a=counting:1500,b=file:{f.resolve()}:30,random=random:64Ki,"
        f"b=file:{f.resolve()},t=text:abc:7:all"
    )
    again = build_stream(s.spec, seed=3)
    assert again.data == s.data and again.phases == s.phases
    assert again.doc_starts.tolist() == s.doc_starts.tolist()


def test_whitespace_around_label_and_phases_is_ignored() -> None:
    [a, b] = parse_spec(" prose = stdlib-prose:5k ,\n code=stdlib-code:1k ")
    assert (a.label, a.source, a.budget) == ("prose", "stdlib-prose", 5000)
    assert (b.label, b.source, b.budget) == ("code", "stdlib-code", 1000)
