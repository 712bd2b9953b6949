"""Inputs are bounded and refused before work: stream specs, sizes, paths, compressed headers."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mugpt.cli import main
from mugpt.compress.container import (
    CompressedFileError,
    Header,
    max_length,
    pack,
    unpack,
)
from mugpt.corpus import build_stream
from mugpt.corpus.spec import MAX_PHASES, parse_size, parse_spec
from mugpt.errors import StreamError


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_spec_parser_raises_only_stream_errors_of_bounded_length(spec: str) -> None:
    try:
        phases = parse_spec(spec)
    except StreamError as exc:
        assert len(str(exc)) < 1000
    else:
        assert 1 <= len(phases) <= MAX_PHASES
        assert all(p.budget is None or p.budget > 0 for p in phases)


def test_spec_error_points_at_the_bad_phase_and_many_phases_give_a_short_error() -> None:
    with pytest.raises(StreamError, match="at character 14 of"):  # the source, after "b="
        parse_spec("a=random:1k,b=bogus:1k")
    with pytest.raises(StreamError) as info:
        parse_spec(",".join(["random:1k"] * 10_000))
    assert "10000 phases, more than the cap of 1000" in str(info.value)
    assert len(str(info.value)) < 200


def test_sizes_take_ascii_digits_and_whole_bytes_only() -> None:
    assert parse_size("1.5k") == 1500
    assert parse_size("\uff15\uff10k") is None  # full-width 50k
    assert parse_size("\u0665") is None  # Arabic-Indic 5
    assert parse_size("1.5") is None


def test_huge_budget_with_max_bytes_builds_only_max_bytes() -> None:
    assert len(build_stream("a=random:999999999999M", max_bytes=1000)) == 1000
    with pytest.raises(StreamError, match="stream cap of 256Mi; lower the budgets or give"):
        build_stream("a=random:999999999999M")


def test_huge_budget_run_stays_small_in_memory(tmp_path: Path) -> None:
    def peak_kb(spec: str, out: str) -> int:
        code = (
            "import resource, sys; from mugpt.cli import main; "
            f"rc = main(['run', '--stream', {spec!r}, '--max-bytes', '1k', "
            f"'--quiet', '--no-baselines', '--out', {str(tmp_path / out)!r}]); "
            "print(rc, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              timeout=300)  # fmt: skip
        rc, peak = done.stdout.split()[-2:]
        assert rc == "0", done.stderr
        return int(peak)

    # the same run on a 1 kB budget first (it also compiles whatever the engine needs), then
    # on a budget of ~10^18 bytes: the huge budget may cost no more than a few MB beyond it
    small = peak_kb("a=random:1k", "small")
    huge = peak_kb("a=random:999999999999M", "huge")
    assert huge < small + 50_000, (small, huge)  # KiB; the old code grew by GBs


def _run_fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert main(["run", "--quiet", "--no-baselines", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_devices_and_fifos_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    err = _run_fails(["--stream", "file:/dev/zero", "--out", str(tmp_path / "a")], capsys)
    assert "'/dev/zero' is not a regular file" in err
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    err = _run_fails([str(fifo), "--out", str(tmp_path / "b")], capsys)
    assert "is not a regular file" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--stream", ""], "--stream is empty"),
        (["--max-bytes", "\uff11k"], "--max-bytes '１k' is not a whole number of bytes"),
        (["--export", "xml"], "unknown export format 'xml'"),
        (["--d-model", "4096", "--d-ff", "16384"], "more than --max-params 50,000,000"),
        (["--out", "/proc/nope/run"], "cannot write the run directory --out '/proc/nope/run'"),
    ],
)
def test_bad_run_inputs_fail_before_learning(
    args: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if "--out" not in args:
        args = [*args, "--out", str(tmp_path / "run")]
    err = _run_fails(args, capsys)
    assert message in err
    assert not (tmp_path / "run").exists()


def test_out_under_a_file_fails_before_learning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("x")
    err = _run_fails(["--out", str(tmp_path / "f" / "run"), "--max-bytes", "1k"], capsys)
    assert "cannot write the run directory" in err


def test_resume_with_conflicting_flags_names_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "r"
    args = ["--stream", "a=counting:2k", "--quiet", "--no-baselines"]
    assert main(["run", *args, "--max-bytes", "1k", "--out", str(run)]) == 0
    ckpt = str(run / "checkpoint.npz")
    assert main(["run", "--resume", ckpt, "--d-model", "32", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "--d-model 32 (the checkpoint has 16)" in err
    assert not (tmp_path / "s").exists()
    # the checkpoint's own values are no conflict
    assert main(["run", "--resume", ckpt, "--d-model", "16", *args, "--out", str(tmp_path / "t")]) == 0  # fmt: skip


def _header(length: int, payload: bytes) -> Header:
    return Header(
        config={"seed": 0},
        length=length,
        crc32=0,
        payload_bytes=len(payload),
        payload_crc32=zlib.crc32(payload),
    )


def test_max_length_is_the_floor_bound() -> None:
    import math

    min_bits = -math.log2(1 - 255 * 2.0**-24)
    assert max_length(1000) == int((8000 + 64) / min_bits)
    payload = b"\0" * 8
    unpack(pack(_header(max_length(8), payload), payload))
    with pytest.raises(CompressedFileError, match="can hold at most"):
        unpack(pack(_header(max_length(8) + 1, payload), payload))


@settings(max_examples=200, deadline=2000)
@given(
    length=st.integers(0, 10**15),
    payload_words=st.integers(0, 4),
    model=st.dictionaries(
        st.sampled_from(["d_model", "d_ff", "n_layers", "context", "n_heads"]),
        st.integers(-5, 10**7),
    ),
)
def test_crafted_headers_with_valid_crc_give_the_clear_error(
    length: int, payload_words: int, model: dict[str, int]
) -> None:
    payload = b"\1\2\3\4" * payload_words
    header = dataclasses.replace(_header(length, payload), config={"model": model})
    try:
        got, _ = unpack(pack(header, payload))
    except CompressedFileError:
        return
    assert got.length <= max_length(len(payload))


def test_fingerprint_agrees_across_processes_with_extras_loaded() -> None:
    plain = "from mugpt.compress.fingerprint import platform_fingerprint as f; print(f())"
    extras = ""
    for name in ("scipy.linalg", "torch", "ray", "pyarrow", "river"):
        extras += f"\ntry:\n    import {name}\nexcept ImportError:\n    pass"
    loaded = extras + "\n" + plain.replace("; ", "\n")
    a = subprocess.run([sys.executable, "-c", plain], capture_output=True, text=True, timeout=300)
    b = subprocess.run([sys.executable, "-c", loaded], capture_output=True, text=True, timeout=300)
    assert a.returncode == b.returncode == 0, b.stderr
    assert a.stdout == b.stdout
