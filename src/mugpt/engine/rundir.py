"""The run directory (DESIGN §6): config.json, summary.json, the per-byte log, events, a
checkpoint and a plot — written into a hidden staging folder and renamed into place only when
complete, so a directory named ``--out`` is never half written."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.engine.checkpoint import save_checkpoint
from mugpt.engine.learner import Learner, RunResult
from mugpt.errors import ConfigError

LOG_NAME = "log.csv"
FILES = ("config.json", "summary.json", LOG_NAME, "events.json", "checkpoint.npz", "plot.png")


def check_out_dir(out: Path, force: bool) -> None:
    """Refuses a non-empty existing directory unless ``force`` (checked before any work)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} exists and is not a directory; choose another path")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"--out {str(out)!r} already holds files; choose a new directory or pass --force "
            "to replace it"
        )


def prepare_out_dir(out: Path) -> None:
    """Makes sure ``out`` can be written (its parent created, a probe file written and removed).

    Called before learning, so a path under a file, under ``/proc`` or in a read-only folder
    fails at once with one line instead of after the run.
    """
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.probe-", dir=out.parent)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"cannot write the run directory --out {str(out)!r}: "
            f"{exc.strerror or exc}; choose a writable folder"
        ) from None


def write_log_csv(path: Path, losses: np.ndarray, data: bytes, labels: list[str]) -> None:
    """Per-byte log: ``index,byte,phase,loss_bits`` (loss with 6 decimals)."""
    n = losses.size
    byte_values = np.frombuffer(data[:n], dtype=np.uint8)
    with path.open("w", encoding="utf-8", newline="") as fh:
        fh.write("index,byte,phase,loss_bits\n")
        chunk = 65536
        for lo in range(0, n, chunk):
            hi = min(n, lo + chunk)
            rows = [
                f"{i},{b},{lab},{x:.6f}\n"
                for i, b, lab, x in zip(
                    range(lo, hi),
                    byte_values[lo:hi].tolist(),
                    labels[lo:hi],
                    losses[lo:hi].tolist(),
                )
            ]
            fh.write("".join(rows))


def plot_run(path: Path, result: RunResult, summary: dict[str, Any]) -> None:
    """Loss per byte (smoothed), phase bands, boundaries and the compressors' lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mugpt.engine.metrics import ema

    losses = result.losses
    fig, ax = plt.subplots(figsize=(11, 4.5), dpi=110)
    if losses.size:
        alpha = min(1.0, 2.0 / (1 + max(50, losses.size // 200)))
        ax.plot(
            np.arange(losses.size),
            ema(losses, alpha),
            lw=1.2,
            color="#1f4e9c",
            label="μGPT loss (EMA)",
        )
    stream = result.stream
    palette = ["#f3e3c3", "#d9ecd0", "#d6e4f5", "#f2d4dc", "#e6dcf2", "#f5f0c4"]
    if stream is not None:
        labels = stream.labels()
        for phase in stream.phases:
            if phase.start >= losses.size:
                break
            color = palette[labels.index(phase.label) % len(palette)]
            ax.axvspan(phase.start, min(phase.end, losses.size), color=color, alpha=0.6, lw=0)
            ax.text(
                phase.start,
                0.98,
                f" {phase.label}",
                transform=ax.get_xaxis_transform(),
                va="top",
                fontsize=8,
                color="#444",
            )
        for b in summary.get("boundaries", []):
            ax.axvline(b, color="#888", lw=0.8, ls="--")
    styles = {"gzip": ":", "xz": "--", "ppmd": "-."}
    for name, bpb in (summary.get("baselines") or {}).items():
        if name in styles and bpb is not None:
            ax.axhline(bpb, color="#555", lw=1, ls=styles[name], label=f"{name} {bpb:.2f} bpb")
    ax.set_xlabel("byte")
    ax.set_ylabel("bits per byte")
    ax.set_ylim(0, 8.5)
    ax.set_xlim(0, max(1, losses.size))
    ax.set_title(
        f"prequential loss — {summary.get('bpb') or float('nan'):.3f} bpb over {losses.size:,} bytes"
    )
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_run_dir(
    out: str | Path,
    learner: Learner,
    result: RunResult,
    run_config: Any,
    summary: dict[str, Any],
    *,
    force: bool = False,
    extra_config: dict[str, Any] | None = None,
) -> Path:
    """Writes every file of the contract into a staging folder, then renames it to ``out``."""
    out = Path(out)
    check_out_dir(out, force)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.partial-{os.getpid()}"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        config = {**run_config.to_dict(), **(extra_config or {})}
        if result.stream is not None:
            config["stream_description"] = result.stream.to_dict()
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (staging / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        (staging / "events.json").write_text(json.dumps(result.events, indent=1) + "\n")
        stream = result.stream
        if stream is not None:
            ids = stream.phase_ids()[: result.bytes]
            names = [p.label for p in stream.phases]
            labels = [names[i] for i in ids.tolist()]
            data = stream.data
        else:
            labels, data = ["input"] * result.bytes, b"\0" * result.bytes
        write_log_csv(staging / LOG_NAME, result.losses, data, labels)
        save_checkpoint(
            learner,
            staging / "checkpoint.npz",
            extra={"run_config": run_config.to_dict(), **(extra_config or {})},
        )
        plot_run(staging / "plot.png", result, summary)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_log_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Reads a run's per-byte log back into arrays (index, byte, phase, loss_bits)."""
    rows = Path(path).read_text(encoding="utf-8").splitlines()[1:]
    parts = [r.split(",") for r in rows]
    return {
        "index": np.array([int(p[0]) for p in parts], dtype=np.int64),
        "byte": np.array([int(p[1]) for p in parts], dtype=np.uint8),
        "phase": np.array([p[2] for p in parts]),
        "loss_bits": np.array([float(p[3]) for p in parts]),
    }
