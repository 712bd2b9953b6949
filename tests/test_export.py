"""Exports of one run: JSON Lines, Parquet and TensorBoard, read back and checked."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mugpt.cli import main as cli_main
from mugpt.engine.config import RunConfig
from mugpt.engine.export import TB_POINTS, export_run
from mugpt.engine.rundir import write_run_dir
from mugpt.engine.summary import build_summary
from mugpt.errors import ConfigError

STREAM = "x=counting:900,y=text:hello world hello world hello world"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    cfg = RunConfig.from_dict({"stream": STREAM, "learner": {"update_every": 4}, "seed": 2})
    learner = cfg.build_learner()
    result = learner.run(cfg.build_stream())
    summary = build_summary(result, cfg, baselines=True)
    out = tmp_path_factory.mktemp("export") / "run"
    write_run_dir(out, learner, result, cfg, summary)
    return out, result


def read_events(folder: Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in a TensorBoard event file (TFRecord framing:
    u64 length, u32 CRC, payload, u32 CRC)."""
    from tensorboardX.proto import event_pb2

    files = list(folder.glob("events.out.tfevents.*"))
    assert len(files) == 1
    data = files[0].read_bytes()
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack("<Q", data[pos : pos + 8])
        event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
        pos += 12 + length + 4
        out += [(event.step, v.tag, v.simple_value) for v in event.summary.value if v.HasField("simple_value")]  # fmt: skip
    return out


def test_jsonl_has_every_byte_of_the_log(run_dir: tuple[Path, Any]) -> None:
    out, result = run_dir
    paths = export_run(out, formats="jsonl")
    assert paths == {"jsonl": out / "log.jsonl"}
    rows = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
    data = result.stream.data
    assert len(rows) == result.bytes == 900 + len("hello world hello world hello world")
    assert [r["index"] for r in rows] == list(range(len(rows)))
    assert bytes(r["byte"] for r in rows) == data
    assert [r["phase"] for r in rows[899:901]] == ["x", "y"]
    # log.csv keeps 6 decimals; so does the JSONL exported from it
    assert np.allclose([r["loss_bits"] for r in rows], result.losses, atol=5e-7, rtol=0)


def test_parquet_round_trip_with_types_and_summary(run_dir: tuple[Path, Any]) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    out, result = run_dir
    path = export_run(out, formats=["parquet"])["parquet"]
    table = pq.read_table(path)
    assert table.column_names == ["index", "byte", "phase", "loss_bits"]
    assert str(table.schema.field("byte").type) == "uint8"
    assert str(table.schema.field("phase").type) == "dictionary<values=string, indices=int32, ordered=0>"  # fmt: skip
    assert table.num_rows == result.bytes
    assert bytes(table.column("byte").to_pylist()) == result.stream.data
    assert np.allclose(table.column("loss_bits").to_numpy(), result.losses, atol=5e-7, rtol=0)
    meta = table.schema.metadata
    summary = json.loads(meta[b"mugpt.summary"])
    assert summary == json.loads((out / "summary.json").read_text())
    assert json.loads(meta[b"mugpt.config"])["seed"] == 2


def test_tensorboard_scalars_match_the_run(run_dir: tuple[Path, Any]) -> None:
    pytest.importorskip("tensorboardX")
    out, result = run_dir
    folder = export_run(out, formats="tensorboard")["tensorboard"]
    events = read_events(folder)
    tags = {tag for _, tag, _ in events}
    n = result.bytes
    assert {"loss/bpb", "loss/running_bpb", "summary/bpb", "summary/updates",
            "phase/0_x/bpb", "phase/1_y/bpb", "baseline/gzip"} <= tags  # fmt: skip
    curve = [(step, v) for step, tag, v in events if tag == "loss/bpb"]
    assert len(curve) == n and curve[-1][0] == n  # fewer bytes than TB_POINTS: one per byte
    assert n < TB_POINTS
    assert np.allclose([v for _, v in curve], result.losses, atol=1e-5)
    running = [v for _, tag, v in events if tag == "loss/running_bpb"]
    assert running[-1] == pytest.approx(result.bpb, abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    by_tag = {tag: (step, v) for step, tag, v in events}
    assert by_tag["summary/bpb"] == (n, pytest.approx(summary["bpb"], abs=1e-5))
    assert by_tag["phase/0_x/bpb"] == (900, pytest.approx(result.losses[:900].mean(), abs=1e-5))
    # exporting again replaces the folder rather than adding a second event file
    export_run(out, formats="tensorboard")
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1


def test_long_runs_are_binned_for_tensorboard(tmp_path: Path) -> None:
    pytest.importorskip("tensorboardX")
    from mugpt.engine.export import RunLog, write_tensorboard

    n = 5 * TB_POINTS + 3
    losses = np.linspace(8.0, 2.0, n)
    log = RunLog(np.arange(n), np.zeros(n, np.uint8), ["a"] * n, losses, {}, {})
    events = read_events(write_tensorboard(log, tmp_path / "tb"))
    curve = [(step, v) for step, tag, v in events if tag == "loss/bpb"]
    assert len(curve) <= TB_POINTS and curve[-1][0] == n
    size = -(-n // TB_POINTS)
    assert curve[0] == (size, pytest.approx(losses[:size].mean(), abs=1e-5))


def test_in_memory_result_needs_a_folder_and_exports_exact_losses(tmp_path: Path) -> None:
    from mugpt.corpus import Stream
    from mugpt.engine import Learner

    result = Learner().run(Stream.from_bytes(b"abcabcabd" * 5))
    with pytest.raises(ConfigError, match="needs out_dir"):
        export_run(result, "jsonl")
    path = export_run(result, "jsonl", out_dir=tmp_path)["jsonl"]
    losses = [json.loads(line)["loss_bits"] for line in path.read_text().splitlines()]
    assert losses == result.losses.tolist()


@pytest.mark.parametrize(
    ("formats", "message"),
    [("csv", "unknown export format 'csv'; choose from jsonl, parquet, tensorboard"),
     ("", "no export format given")],
)  # fmt: skip
def test_bad_formats_and_missing_runs_are_clear_errors(formats: str, message: str, tmp_path: Path) -> None:  # fmt: skip
    with pytest.raises(ConfigError, match=message):
        export_run(tmp_path, formats)
    with pytest.raises(ConfigError, match="does not exist"):
        export_run(tmp_path / "nope", "jsonl")
    with pytest.raises(ConfigError, match="has no per-byte log"):
        export_run(tmp_path, "jsonl")


def test_mugpt_run_export_flag_writes_the_files(tmp_path: Path) -> None:
    out = tmp_path / "run"
    code = cli_main(["run", "--stream", "text:export me please and export me", "--out", str(out),
                     "--quiet", "--no-baselines", "--export", "jsonl,parquet"])  # fmt: skip
    assert code == 0
    rows = (out / "log.jsonl").read_text().splitlines()
    assert len(rows) == len("export me please and export me")
    assert (out / "log.parquet").is_file()
