"""Checkpoints continue a run bit for bit, and bad ones fail clearly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from mugpt.corpus import Stream
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
