"""Exports of one run for other tools: the per-byte log as JSON Lines and Parquet, and
TensorBoard scalars.

- ``log.jsonl`` — one JSON object per byte: ``{"index", "byte", "phase", "loss_bits"}``, the
  same columns as ``log.csv``; readable by ``pandas.read_json(path, lines=True)``, ``jq``,
  DuckDB and others.
- ``log.parquet`` — the same table, typed (``index`` int64, ``byte`` uint8, ``phase`` a
  dictionary-encoded string, ``loss_bits`` float64), with ``summary.json`` in the file's
  key-value metadata under ``mugpt.summary``. Needs ``pyarrow`` (``pip install 'mugpt[parquet]'``).
- ``tensorboard/`` — an event file for ``tensorboard --logdir``: ``loss/bpb`` (mean loss per bin
  of bytes, at most ``TB_POINTS`` points, the step is the byte index at the bin's end),
  ``loss/running_bpb`` (mean since byte 0), ``phase/<i>_<label>/bpb``, ``summary/*``
  (bpb, bytes/s, updates) and ``baseline/*`` (the compressors), plus the config as text.
  Needs ``tensorboardX`` (``pip install 'mugpt[tensorboard]'``).

Every file is written beside its final name and renamed into place, so an export is either
complete or absent.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.engine.checkpoint import atomic_write_bytes
from mugpt.errors import ConfigError

FORMATS = ("jsonl", "parquet", "tensorboard")
TB_POINTS = 2000
"""Most points per TensorBoard loss curve (the per-byte log keeps every byte)."""


@dataclass
class RunLog:
    """What an export needs from a run: the per-byte table and its summary and config."""

    index: np.ndarray  # (n,) int64
    byte: np.ndarray  # (n,) uint8
    phase: list[str]  # (n,) phase label of each byte
    loss_bits: np.ndarray  # (n,) float64
    summary: dict[str, Any]
    config: dict[str, Any]


def export_run(
    run: str | Path | Mapping[str, Any] | Any,
    formats: str | Iterable[str] = ("jsonl",),
    out_dir: str | Path | None = None,
) -> dict[str, Path]:
    """Exports a run's per-byte log and figures; returns ``{format: path written}``.

    ``run`` is a run directory (as ``mugpt run --out`` or a sweep writes it), a sweep result
    dict (its ``run_dir`` is used) or an in-memory :class:`~mugpt.engine.RunResult` (then
    ``out_dir`` is required). ``formats``: any of ``jsonl``, ``parquet``, ``tensorboard``, as
    a list or a comma-separated string. Files go to ``out_dir``, by default the run directory:
    ``log.jsonl``, ``log.parquet``, ``tensorboard/``.

    Example:
        >>> import json, tempfile
        >>> from mugpt.corpus import Stream
        >>> from mugpt.engine import Learner
        >>> result = Learner().run(Stream.from_bytes(b"hi there"))
        >>> paths = export_run(result, "jsonl", out_dir=tempfile.mkdtemp())
        >>> rows = [json.loads(line) for line in paths["jsonl"].read_text().splitlines()]
        >>> len(rows), rows[0]["byte"], rows[0]["phase"], rows[0]["loss_bits"] > 7
        (8, 104, 'input', True)
    """
    wanted = _parse_formats(formats)
    log, default_out = _load(run)
    if out_dir is None:
        if default_out is None:
            raise ConfigError("export_run of an in-memory result needs out_dir=FOLDER")
        out_dir = default_out
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for fmt in wanted:
        if fmt == "jsonl":
            paths[fmt] = write_jsonl(log, out / "log.jsonl")
        elif fmt == "parquet":
            paths[fmt] = write_parquet(log, out / "log.parquet")
        else:
            paths[fmt] = write_tensorboard(log, out / "tensorboard")
    return paths


def _parse_formats(formats: str | Iterable[str]) -> list[str]:
    items = formats.split(",") if isinstance(formats, str) else list(formats)
    wanted = [f.strip().lower() for f in items if f.strip()]
    if not wanted:
        raise ConfigError(f"no export format given; choose from {', '.join(FORMATS)}")
    for f in wanted:
        if f not in FORMATS:
            raise ConfigError(f"unknown export format {f!r}; choose from {', '.join(FORMATS)}")
    return list(dict.fromkeys(wanted))


def check_formats(formats: str | Iterable[str]) -> list[str]:
    """Validates export formats before any work: known names and their libraries installed.

    An empty list is allowed (nothing to export). Raises :class:`ConfigError` otherwise.

    >>> check_formats("jsonl"), check_formats([])
    (['jsonl'], [])
    """
    import importlib.util

    items = formats.split(",") if isinstance(formats, str) else list(formats)
    if not [f for f in items if f.strip()]:
        return []
    wanted = _parse_formats(items)
    needs = {"parquet": ("pyarrow", "parquet"), "tensorboard": ("tensorboardX", "tensorboard")}
    for fmt in wanted:
        if fmt in needs and importlib.util.find_spec(needs[fmt][0]) is None:
            raise ConfigError(
                f"the {fmt} export needs {needs[fmt][0]}; install it with: "
                f"pip install 'mugpt[{needs[fmt][1]}]', or drop {fmt} from --export"
            )
    return wanted


# ---------------------------------------------------------------------- reading a run


def _load(run: Any) -> tuple[RunLog, Path | None]:
    if isinstance(run, str | os.PathLike):
        return load_run_dir(os.fspath(run)), Path(run)
    if isinstance(run, Mapping):
        if not run.get("run_dir"):
            raise ConfigError("this result has no run_dir; pass the run directory instead")
        return load_run_dir(run["run_dir"]), Path(run["run_dir"])
    if hasattr(run, "losses") and hasattr(run, "counters"):
        return _from_result(run), None
    raise ConfigError(
        f"cannot export {type(run).__name__}; give a run directory, a sweep result or a RunResult"
    )


def load_run_dir(path: str | Path) -> RunLog:
    """Reads a run directory's per-byte log (``log.csv`` or ``log.parquet``), summary and
    config; raises ConfigError naming what is missing."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(f"run directory {str(folder)!r} does not exist")
    csv_path, parquet_path = folder / "log.csv", folder / "log.parquet"
    summary = _read_json(folder / "summary.json")
    config = _read_json(folder / "config.json")
    if csv_path.is_file():
        from mugpt.engine.rundir import read_log_csv

        cols = read_log_csv(csv_path)
        phase = cols["phase"].tolist()
    elif parquet_path.is_file():
        cols = _read_parquet(parquet_path)
        phase = list(cols["phase"])
    else:
        raise ConfigError(f"{str(folder)!r} has no per-byte log (log.csv); is it a run directory?")  # fmt: skip
    return RunLog(
        index=np.asarray(cols["index"], dtype=np.int64),
        byte=np.asarray(cols["byte"], dtype=np.uint8),
        phase=[str(p) for p in phase],
        loss_bits=np.asarray(cols["loss_bits"], dtype=np.float64),
        summary=summary,
        config=config,
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc}") from None
    return data if isinstance(data, dict) else {}


def _read_parquet(path: Path) -> dict[str, Any]:
    pq = _pyarrow_parquet()
    table = pq.read_table(path)
    return {name: table.column(name).to_pylist() for name in ("index", "byte", "phase", "loss_bits")}  # fmt: skip


def _from_result(result: Any) -> RunLog:
    from mugpt.engine.summary import build_summary

    n = int(result.losses.size)
    stream = result.stream
    if stream is not None:
        names = [p.label for p in stream.phases]
        phase = [names[i] for i in stream.phase_ids()[:n].tolist()]
        data = np.frombuffer(stream.data[:n], dtype=np.uint8)
    else:
        phase, data = ["input"] * n, np.zeros(n, dtype=np.uint8)
    return RunLog(
        index=np.arange(n, dtype=np.int64),
        byte=data.copy(),
        phase=phase,
        loss_bits=np.asarray(result.losses, dtype=np.float64),
        summary=build_summary(result, baselines=False),
        config={},
    )


# ---------------------------------------------------------------------- writers


def write_jsonl(log: RunLog, path: Path) -> Path:
    """One JSON object per byte; floats keep their full precision."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            chunk = 65536
            for lo in range(0, log.index.size, chunk):
                hi = min(log.index.size, lo + chunk)
                fh.write(
                    "".join(
                        f'{{"index":{i},"byte":{b},"phase":{json.dumps(p)},"loss_bits":{_num(x)}}}\n'
                        for i, b, p, x in zip(
                            log.index[lo:hi].tolist(), log.byte[lo:hi].tolist(),
                            log.phase[lo:hi], log.loss_bits[lo:hi].tolist(),
                        )
                    )
                )  # fmt: skip
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _num(x: float) -> str:
    return repr(x) if math.isfinite(x) else "null"


def _pyarrow_parquet() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(
            "the parquet export needs pyarrow; install it with: pip install 'mugpt[parquet]'"
        ) from None
    return pq


def write_parquet(log: RunLog, path: Path) -> Path:
    """The per-byte table as Parquet, with the run's summary in the file metadata."""
    pq = _pyarrow_parquet()
    import pyarrow as pa

    table = pa.table(
        {
            "index": pa.array(log.index, type=pa.int64()),
            "byte": pa.array(log.byte, type=pa.uint8()),
            "phase": pa.array(log.phase, type=pa.string()).dictionary_encode(),
            "loss_bits": pa.array(log.loss_bits, type=pa.float64()),
        }
    )
    meta = {b"mugpt.summary": json.dumps(log.summary).encode(),
            b"mugpt.config": json.dumps(log.config).encode()}  # fmt: skip
    table = table.replace_schema_metadata(meta)
    import io

    buf = io.BytesIO()
    pq.write_table(table, buf)
    atomic_write_bytes(path, buf.getvalue())
    return path


def binned(losses: np.ndarray, points: int = TB_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(bin end index, mean loss of the bin) for at most ``points`` equal bins of bytes.

    >>> ends, means = binned(np.array([1.0, 3.0, 5.0]), points=2)
    >>> ends.tolist(), means.tolist()
    ([2, 3], [2.0, 5.0])
    """
    n = losses.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    size = -(-n // points)
    starts = np.arange(0, n, size)
    ends = np.minimum(starts + size, n)
    sums = np.add.reduceat(losses, starts)
    return ends, sums / (ends - starts)


def write_tensorboard(log: RunLog, folder: Path) -> Path:
    """Scalars for ``tensorboard --logdir FOLDER`` (see the module docstring for the tags)."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise ConfigError(
            "the tensorboard export needs tensorboardX; install it with: "
            "pip install 'mugpt[tensorboard]'"
        ) from None
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        os.chmod(staging, 0o755)
        writer = SummaryWriter(logdir=str(staging), flush_secs=3600)
        losses = log.loss_bits
        ends, means = binned(losses)
        cumulative = np.cumsum(losses)
        for end, mean in zip(ends.tolist(), means.tolist()):
            writer.add_scalar("loss/bpb", mean, global_step=end)
            writer.add_scalar("loss/running_bpb", cumulative[end - 1] / end, global_step=end)
        n = int(losses.size)
        for i, ph in enumerate(log.summary.get("phases") or []):
            if ph.get("bpb") is not None:
                step = min(int(ph.get("end", n)), n)
                writer.add_scalar(f"phase/{i}_{ph.get('label')}/bpb", ph["bpb"], global_step=step)
        for key in ("bpb", "bytes_per_s", "updates", "skipped_updates", "replay_updates"):
            value = log.summary.get(key)
            if isinstance(value, int | float):
                writer.add_scalar(f"summary/{key}", value, global_step=n)
        for name, value in (log.summary.get("baselines") or {}).items():
            if isinstance(value, int | float):
                writer.add_scalar(f"baseline/{name}", value, global_step=n)
        if log.config:
            writer.add_text("config", "```\n" + json.dumps(log.config, indent=2) + "\n```", 0)
        writer.close()
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
