"""`mugpt compress` / `mugpt decompress`: files, stdin/stdout, refusals and clean failures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mugpt.cli import main
from mugpt.compress import read_header

DATA = b"It was the best of times, it was the worst of times.\n" * 3


@pytest.fixture
def original(tmp_path: Path) -> Path:
    path = tmp_path / "book.txt"
    path.write_bytes(DATA)
    return path


def test_compress_then_decompress_files(original: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    packed, unpacked = tmp_path / "book.mgz", tmp_path / "book.out"
    assert main(["compress", str(original), str(packed)]) == 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith(f"compressed {len(DATA):,} → {packed.stat().st_size:,} bytes")
    assert "bpb" in line and "prequential" in line and "B/s" in line
    assert main(["decompress", str(packed), str(unpacked)]) == 0
    assert unpacked.read_bytes() == DATA
    assert capsys.readouterr().err.strip().startswith("decompressed")


def test_configuration_flags_reach_the_file(original: Path, tmp_path: Path) -> None:
    packed = tmp_path / "book.mgz"
    args = ["compress", str(original), str(packed), "--update-every", "4", "--d-model", "8",
            "--heads", "2", "--lr", "0.02", "--seed", "3", "--quiet"]  # fmt: skip
    assert main(args) == 0
    config = read_header(packed.read_bytes()).config
    assert config["learner"]["update_every"] == 4
    assert (config["model"]["d_model"], config["model"]["n_heads"]) == (8, 2)
    assert config["optim"]["lr"] == 0.02 and config["seed"] == 3
    out = tmp_path / "back"
    assert main(["decompress", str(packed), str(out), "-q"]) == 0
    assert out.read_bytes() == DATA


def test_quiet_prints_nothing(original: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["compress", str(original), str(tmp_path / "x.mgz"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_existing_output_is_refused_unless_force(original: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    packed, target = tmp_path / "book.mgz", tmp_path / "target.txt"
    assert main(["compress", str(original), str(packed), "-q"]) == 0
    target.write_bytes(b"precious")
    assert main(["decompress", str(packed), str(target)]) == 2
    assert "exists; use --force" in capsys.readouterr().err
    assert target.read_bytes() == b"precious"
    assert main(["compress", str(original), str(packed)]) == 2  # compress refuses too
    assert main(["decompress", str(packed), str(target), "--force", "-q"]) == 0
    assert target.read_bytes() == DATA


def test_output_onto_input_is_refused(original: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert main(["compress", str(original), str(original), "--force"]) == 2
    assert "same file as IN" in capsys.readouterr().err
    assert original.read_bytes() == DATA


@pytest.mark.parametrize("damage", ["truncate", "flip", "magic"])
def test_bad_file_gives_a_clear_error_and_no_output(
    damage: str, original: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packed = tmp_path / "book.mgz"
    assert main(["compress", str(original), str(packed), "-q"]) == 0
    blob = bytearray(packed.read_bytes())
    if damage == "truncate":
        blob = blob[: len(blob) - 5]
    elif damage == "flip":
        blob[len(blob) // 2] ^= 0x10
    else:
        blob[:4] = b"GIF8"
    packed.write_bytes(bytes(blob))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert main(["decompress", str(packed), str(out_dir / "book.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mugpt decompress: error: ")
    assert {"truncate": "truncated", "flip": "corrupt", "magic": "not a μGPT"}[damage] in err
    assert list(out_dir.iterdir()) == []  # neither the output nor a temporary file


def test_sub_streams_round_trip(original: Path, tmp_path: Path) -> None:
    packed, back = tmp_path / "x.mgz", tmp_path / "back.txt"
    assert main(["compress", str(original), str(packed), "--batch-streams", "4", "--quiet"]) == 0
    assert main(["decompress", str(packed), str(back), "--quiet"]) == 0
    assert back.read_bytes() == original.read_bytes()


def test_sub_streams_the_compiled_coder_cannot_code_are_refused(original: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    argv = ["compress", str(original), str(tmp_path / "x.mgz"), "--batch-streams", "4"]
    assert main([*argv, "--backend", "numpy"]) == 2
    err = capsys.readouterr().err
    assert "batch_streams=4 is coded by the compiled coder only" in err and "numba" in err
    assert not (tmp_path / "x.mgz").exists()


def test_missing_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compress", str(tmp_path / "nope"), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_stdin_to_stdout_pipeline(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONIOENCODING": "utf-8"}
    packed = subprocess.run(
        [sys.executable, "-m", "mugpt", "compress", "-", "-", "--update-every", "8"],
        input=DATA, capture_output=True, check=True, env=env, timeout=300,
    )  # fmt: skip
    assert packed.stdout.startswith(b"\xb5GPTz")
    assert b"compressed" in packed.stderr
    unpacked = subprocess.run(
        [sys.executable, "-m", "mugpt", "decompress", "-", "-"],
        input=packed.stdout, capture_output=True, check=True, env=env, timeout=300,
    )  # fmt: skip
    assert unpacked.stdout == DATA
    bad = subprocess.run(
        [sys.executable, "-m", "mugpt", "decompress", "-", "-"],
        input=packed.stdout[:-3], capture_output=True, env=env, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == b"" and b"truncated" in bad.stderr


def test_help_teaches_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("compress", "decompress"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and f"mugpt {command}" in text
