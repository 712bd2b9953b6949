"""`mugpt run` and `mugpt sample` as a user meets them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mugpt.cli import main

CHECK = Path(__file__).resolve().parents[2] / "shared" / "tools" / "check_summary.py"


def _mugpt(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mugpt", *args], input=stdin, capture_output=True, timeout=300
    )


@pytest.fixture()
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "book.txt"
    path.write_bytes(b"Alice was beginning to get very tired of sitting by her sister. " * 30)
    return path


def test_run_on_a_file_writes_the_run_directory_contract(tmp_path: Path, text_file: Path) -> None:
    out = tmp_path / "run"
    assert main(["run", str(text_file), "--out", str(out), "--update-every", "4", "--quiet"]) == 0
    for name in (
        "config.json",
        "summary.json",
        "log.csv",
        "events.json",
        "checkpoint.npz",
        "plot.png",
    ):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bytes"] == text_file.stat().st_size
    assert summary["params"] == 11856 and summary["update_every"] == 4
    log = (out / "log.csv").read_text().splitlines()
    assert log[0] == "index,byte,phase,loss_bits" and len(log) == summary["bytes"] + 1
    mean = sum(float(r.split(",")[3]) for r in log[1:]) / summary["bytes"]
    assert mean == pytest.approx(summary["bpb"], abs=1e-5)  # the log and the summary agree
    if CHECK.exists():
        checked = subprocess.run(
            [sys.executable, str(CHECK), str(out / "summary.json"), "--need-baselines"],
            capture_output=True,
            text=True,
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["learner"]["update_every"] == 4


def test_run_with_substreams_in_blocks(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    out = tmp_path / "run"
    flags = ["--batch-streams", "4", "--substream-bytes", "256", "--update-every", "2"]
    assert main(["run", str(text_file), "--out", str(out), *flags]) == 0
    assert "B = 4 × 256 B blocks" in " ".join(capsys.readouterr().out.split())  # rich wraps lines
    summary = json.loads((out / "summary.json").read_text())
    assert (summary["batch_streams"], summary["substream_bytes"]) == (4, 256)
    config = json.loads((out / "config.json").read_text())
    assert config["learner"]["batch_streams"] == 4 and config["learner"]["substream_bytes"] == 256
    from mugpt.corpus import Stream
    from mugpt.engine.config import RunConfig

    sections = {k: v for k, v in config.items() if k in ("model", "optim", "learner", "seed")}
    learner = RunConfig.from_dict(sections).build_learner()
    straight = learner.run(Stream.from_bytes(text_file.read_bytes())).losses
    logged = [float(r.split(",")[3]) for r in (out / "log.csv").read_text().splitlines()[1:]]
    assert logged == pytest.approx(straight.tolist(), abs=1e-6)


def test_run_from_stdin_and_sample_from_its_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "r"
    done = _mugpt(
        "run", "-", "--out", str(out), "--quiet", "--no-baselines", stdin=b"abcabcabc" * 20
    )
    assert done.returncode == 0, done.stderr.decode()
    assert json.loads((out / "summary.json").read_text())["bytes"] == 180
    sample = _mugpt(
        "sample",
        "--checkpoint",
        str(out / "checkpoint.npz"),
        "--prompt",
        "abc",
        "-n",
        "30",
        "--seed",
        "2",
    )
    again = _mugpt(
        "sample",
        "--checkpoint",
        str(out / "checkpoint.npz"),
        "--prompt",
        "abc",
        "-n",
        "30",
        "--seed",
        "2",
    )
    assert sample.returncode == 0 and sample.stdout == again.stdout
    assert sample.stdout.decode().startswith("abc")


def test_resume_continues_the_same_losses(tmp_path: Path, text_file: Path) -> None:
    straight, half, rest = tmp_path / "s", tmp_path / "h", tmp_path / "r"
    n = text_file.stat().st_size
    main(
        [
            "run",
            str(text_file),
            "--out",
            str(straight),
            "--quiet",
            "--no-baselines",
            "--update-every",
            "8",
        ]
    )
    main(
        [
            "run",
            str(text_file),
            "--out",
            str(half),
            "--quiet",
            "--no-baselines",
            "--update-every",
            "8",
            "--max-bytes",
            str(n // 2),
        ]
    )
    main(
        [
            "run",
            "--resume",
            str(half / "checkpoint.npz"),
            str(text_file),
            "--out",
            str(rest),
            "--quiet",
            "--no-baselines",
        ]
    )
    assert (straight / "log.csv").read_text() == (rest / "log.csv").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["EMPTY"], "is empty"),
        (["DIR"], "is a directory"),
        (["MISSING"], "does not exist"),
        (["FILE", "--heads", "3"], "must divide d_model"),
        (["FILE", "--d-model", "-8"], "must be a positive integer"),
        (["FILE", "--lr", "0"], "lr=0.0 must be a positive number"),
        (["FILE", "--config", "CONFIG"], "unknown model key(s) ['widht']"),
        (["FILE", "--update-every", "64"], "must not exceed the context"),
        (["FILE", "--mech", "teleport"], "unknown mechanism 'teleport'"),
        (["--stream", "a=nosuch:10k"], "nosuch"),
    ],
)
def test_bad_input_is_one_clear_line_and_no_run_directory(
    tmp_path: Path, args: list[str], message: str
) -> None:
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "ok.txt").write_bytes(b"hello")
    (tmp_path / "cfg.toml").write_text("[model]\nwidht = 3\n")
    subs = {
        "EMPTY": tmp_path / "empty.txt",
        "DIR": tmp_path,
        "MISSING": tmp_path / "nope.txt",
        "FILE": tmp_path / "ok.txt",
        "CONFIG": tmp_path / "cfg.toml",
    }
    argv = [str(subs.get(a, a)) for a in args]
    out = tmp_path / "out"
    done = _mugpt("run", *argv, "--out", str(out), "--quiet")
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_refuses_to_overwrite_a_run_directory_without_force(
    tmp_path: Path, text_file: Path
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    done = _mugpt("run", str(text_file), "--out", str(out), "--quiet")
    assert done.returncode == 2 and "--force" in done.stderr.decode()
    assert (out / "precious.txt").read_text() == "keep me"


def test_every_command_has_help_with_an_example() -> None:
    from mugpt.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    assert {"run", "sample"} <= set(sub.choices)  # type: ignore[union-attr]
    for name, p in sub.choices.items():  # type: ignore[union-attr]
        assert "example" in (p.epilog or "").lower(), name


def test_run_with_a_frozen_network_and_its_experts(tmp_path: Path, text_file: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    mix = ["--update-every", "4", "--mech", "ngram_mix:max_order=4,table_bits=12"]
    common = [str(text_file), *mix, "--no-baselines", "--experts"]
    assert main(["run", *common, "--out", str(tmp_path / "learns"), "--quiet"]) == 0
    assert main(["run", *common, "--out", str(tmp_path / "frozen"), "--freeze-network"]) == 0
    printed = capsys.readouterr().out
    assert "network frozen" in printed and "experts of the mixture" in printed
    learns = json.loads((tmp_path / "learns" / "summary.json").read_text())
    frozen = json.loads((tmp_path / "frozen" / "summary.json").read_text())
    config = json.loads((tmp_path / "frozen" / "config.json").read_text())
    assert config["learner"]["freeze_network"] is True and frozen["freeze_network"] is True
    assert frozen["updates"] == 0 and frozen["counters"]["backward_passes"] == 0
    assert learns["updates"] == learns["counters"]["steps"] and learns["freeze_network"] is False
    assert frozen["bpb"] != learns["bpb"]
    experts = frozen["experts"]
    assert [e["expert"] for e in experts] == ["network"] + [f"order {o}" for o in range(5)]
    assert all(e["bytes"] == frozen["bytes"] for e in experts)
    # on a text repeated thirty times the long contexts are what predicts
    assert experts[5]["bits_saved"] > 0
    # --experts needs a mixture
    assert main(["run", str(text_file), "--experts", "--out", str(tmp_path / "none")]) == 2
    assert "--experts" in capsys.readouterr().err
