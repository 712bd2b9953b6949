"""Checkpoints continue a run bit for bit, and bad ones fail clearly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mugpt.corpus import Stream
from mugpt.corpus.stream import Phase
from mugpt.engine import Learner, LearnerConfig, load_checkpoint, save_checkpoint
from mugpt.errors import CheckpointError
from mugpt.model import ModelConfig, OptimConfig

DATA = (b"It was the best of times, it was the worst of times. " * 12)[:600]


@pytest.mark.parametrize("k", [1, 5])
def test_resume_in_a_fresh_process_is_bit_for_bit(tmp_path: Path, k: int) -> None:
    cfg = (
        ModelConfig(n_layers=2, d_model=16),
        OptimConfig(lr=0.02),
        [],
        LearnerConfig(update_every=k, seed=7),
    )
    stream = Stream.from_bytes(DATA)
    straight = Learner(*cfg).run(stream).losses

    first = Learner(*cfg)
    first.run(stream, max_bytes=len(DATA) // 2)
    ckpt = tmp_path / "half.npz"
    save_checkpoint(first, ckpt)
    out = tmp_path / "losses.npy"
    code = textwrap.dedent(f"""
        import numpy as np
        from mugpt.corpus import Stream
        from mugpt.engine import load_checkpoint
        learner = load_checkpoint({str(ckpt)!r})
        data = open({str(tmp_path / "data.bin")!r}, 'rb').read()
        np.save({str(out)!r}, learner.run(Stream.from_bytes(data)).losses)
    """)
    (tmp_path / "data.bin").write_bytes(DATA)
    subprocess.run([sys.executable, "-c", code], check=True)
    resumed = np.load(out)
    assert resumed.shape == straight.shape
    assert np.array_equal(resumed, straight)  # exact equality, not closeness


def test_checkpoint_keeps_counters_rng_and_position(tmp_path: Path) -> None:
    learner = Learner(learner_cfg=LearnerConfig(seed=5))
    learner.run(Stream.from_bytes(DATA[:50]))
    learner.rng.random()
    save_checkpoint(learner, tmp_path / "c.npz")
    restored = load_checkpoint(tmp_path / "c.npz")
    assert restored.position == 50
    assert restored.counters == learner.counters
    assert restored.rng.random() == learner.rng.random()
    assert restored.optimizer.t == learner.optimizer.t


def _saved(tmp_path: Path) -> Path:
    learner = Learner()
    learner.step(b"abc")
    path = tmp_path / "ok.npz"
    save_checkpoint(learner, path)
    return path


def test_truncated_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)


def test_bit_flipped_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = _saved(tmp_path)
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 3] ^= 0xFF  # inside the parameter array: the zip CRC catches it
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_not_a_checkpoint_and_missing_file(tmp_path: Path) -> None:
    other = tmp_path / "x.npz"
    np.savez(other, a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a μGPT checkpoint"):
        load_checkpoint(other)
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_checkpoint(tmp_path / "text.npz")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.npz")


def test_mismatched_parameters_are_refused(tmp_path: Path) -> None:
    import json
    import zipfile

    path = _saved(tmp_path)
    with np.load(path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    header = json.loads(arrays["header"].tobytes())
    header["config"]["model"]["d_model"] = 32
    header["config"]["model"]["n_heads"] = 4
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    assert zipfile.is_zipfile(bad)
    with pytest.raises(CheckpointError, match="does not match"):
        load_checkpoint(bad)


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    path = _saved(tmp_path)
    before = path.read_bytes()
    learner = Learner()

    def boom(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(learner, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ok.npz"]  # no temp file left


# ------------------------------------------------------------------ resume from any stop point

MECHS = [
    "grad_clip",
    "selective_backprop",
    "adaptive_lr",
    "replay",
    "cache",
    "knn",
    "ngram_mix",
]
STOP_DATA = (b"Call me Ishmael. Some years ago - never mind how long precisely - " * 8)[:420]
CUT = 203  # not a multiple of 3, 4 or 8


def _docs(data: bytes, doc_starts: list[int]) -> Stream:
    phases = [Phase("input", "bytes", 0, len(data))]
    return Stream(data=data, phases=phases, doc_starts=np.array(doc_starts, dtype=np.int64))


def _learner_cfg(k: int, mech: str | None) -> tuple:  # type: ignore[type-arg]
    from mugpt.mechanisms import make_mechanism

    names = MECHS if mech == "all" else ([] if mech is None else [mech])
    return (
        ModelConfig(),
        OptimConfig(lr=0.01),
        [make_mechanism(name) for name in names],
        LearnerConfig(update_every=k, seed=3),
    )


@pytest.mark.parametrize("mech", [None, *MECHS, "all"])
@pytest.mark.parametrize("k", [1, 3, 4, 8])
def test_resume_from_a_stop_inside_a_step_is_bit_for_bit(
    tmp_path: Path, k: int, mech: str | None
) -> None:
    stream = _docs(STOP_DATA, [0, 150, 151, 300])
    straight = Learner(*_learner_cfg(k, mech)).run(stream).losses

    first = Learner(*_learner_cfg(k, mech))
    part = first.run(stream, max_bytes=CUT)
    # the call ends on a step boundary at or before the cap, never inside a step
    assert CUT - k < part.bytes <= CUT
    ckpt = tmp_path / "cut.npz"
    save_checkpoint(first, ckpt)
    resumed = load_checkpoint(ckpt)
    losses = resumed.run(stream).losses
    assert losses.shape == straight.shape
    assert np.array_equal(losses, straight)  # every loss, bit for bit


def test_stops_follow_the_steps_when_documents_shorten_them() -> None:
    # k = 24 with context 32: steps holding many document starts are shortened, so step
    # boundaries are not multiples of k; calls capped anywhere still equal a straight run
    doc_starts = [0, *range(40, 90, 2), 200, 201, 202]
    stream = _docs(STOP_DATA[:300], doc_starts)
    cfg = (ModelConfig(), OptimConfig(lr=0.01), [], LearnerConfig(update_every=24))
    straight = Learner(*cfg).run(stream).losses
    learner = Learner(*cfg)
    for cap in (37, 61, 99, 150, 211, 250, 300):
        learner.run(stream, max_bytes=cap)
        assert learner.position <= cap
    assert np.array_equal(learner.losses, straight)


def test_cli_resume_after_a_stop_inside_a_step_equals_the_straight_run(tmp_path: Path) -> None:
    from mugpt.cli import main

    text = tmp_path / "text.txt"
    text.write_bytes(
        (b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs. ") * 260
    )
    straight, half, rest = tmp_path / "s", tmp_path / "h", tmp_path / "r"
    common = ["--quiet", "--no-baselines", "--mech", "replay", "--mech", "adaptive_lr"]
    main(["run", str(text), "--out", str(straight), "--update-every", "4", *common])
    main(["run", str(text), "--out", str(half), "--update-every", "4",
          "--max-bytes", "10001", *common])  # fmt: skip
    main(["run", "--resume", str(half / "checkpoint.npz"), str(text), "--out", str(rest),
          "--quiet", "--no-baselines"])  # fmt: skip
    assert (straight / "log.csv").read_text() == (rest / "log.csv").read_text()
