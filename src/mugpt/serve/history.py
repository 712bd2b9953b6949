"""What a page needs to draw a run from the start: the server keeps it, bounded in size.

A page that connects (or reconnects, or falls behind) gets a ``hello`` with this history and
then follows the live ``update`` messages. Series are kept at a bounded resolution: when a
series grows past its cap, neighbouring points are merged pairwise (loss bins keep their
byte-weighted mean), so memory stays flat however long a run is.

A finished run directory (``config.json``, ``summary.json``, ``log.csv``) can be turned into
the same history with :func:`history_from_run_dir`, so the page views it like a live run.
"""

from __future__ import annotations

import csv
import json
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.errors import ConfigError

LOSS_CAP = 4000
"""Most loss bins kept per run; past it, the bin width doubles (neighbours merge)."""
SERIES_CAP = 2000
"""Most points of the running-bpb and learning-rate series."""
EVENTS_KEPT = 300
TEXT_KEPT = 2000
ALARMS_KEPT = 2000
LATEST_KEYS = (
    "state", "pos", "total", "bpb", "bytes_per_s", "max_bytes_per_s", "lr", "base_lr",
    "grad_norm", "counters", "topk", "next_byte", "attention", "phases", "mechanisms",
)  # fmt: skip
LOSS_KEYS = ("x", "n", "mean", "min", "max", "ema", "skips", "replays")


def empty_loss() -> dict[str, Any]:
    """An empty loss series; ``width`` is the bytes each bin covers (a power of two)."""
    out: dict[str, Any] = {k: [] for k in LOSS_KEYS}
    out["width"] = 1
    return out


def fold_loss(target: dict[str, Any], loss: dict[str, Any], cap: int = LOSS_CAP) -> None:
    """Folds bins (any sizes, in byte order) into ``target``'s aligned bins, in place.

    Bin ``k`` of ``target`` covers bytes ``[k·width, (k+1)·width)``; an incoming bin crossing a
    boundary is shared out by bytes (same mean, min and max on both sides). When the run outgrows ``cap`` bins the width doubles
    and neighbours merge, so the series always starts at byte 0, every bin covers the same
    number of bytes, and memory stays flat. Each bin keeps the byte-weighted mean, the
    lowest and highest loss seen in it (spikes stay visible), the EMA at its end and its
    counts of skipped and replay updates. The page (``app.js``) folds the same way.

    >>> t = empty_loss()
    >>> fold_loss(t, {"x": [0, 1, 2, 3, 4], "n": [1] * 5, "mean": [8.0, 6.0, 4.0, 2.0, 9.0],
    ...               "ema": [8.0, 7.0, 6.0, 5.0, 6.0]}, cap=2)
    >>> t["width"], t["x"], t["n"], t["mean"], t["min"], t["max"]
    (4, [0, 4], [4, 1], [5.0, 9.0], [2.0, 9.0], [8.0, 9.0])
    """
    xs = loss.get("x") or []
    if not xs:
        return
    size = len(xs)
    ns, means = loss["n"], loss["mean"]
    mins = loss.get("min") or means
    maxs = loss.get("max") or means
    emas = loss.get("ema") or means
    skips = loss.get("skips") or [0] * size
    replays = loss.get("replays") or [0] * size
    last = xs[-1] + ns[-1] - 1
    while last // target["width"] >= cap:
        _double_width(target)
    width = target["width"]
    tx, tn, tmean = target["x"], target["n"], target["mean"]
    for i in range(size):
        x, end = xs[i], xs[i] + ns[i]
        while x < end:  # a bin crossing a boundary is split, its bytes shared out
            start = (x // width) * width
            n = min(end, start + width) - x
            x += n
            if tx and tx[-1] == start:
                total = tn[-1] + n
                tmean[-1] = (tmean[-1] * tn[-1] + means[i] * n) / total
                tn[-1] = total
                target["min"][-1] = min(target["min"][-1], mins[i])
                target["max"][-1] = max(target["max"][-1], maxs[i])
                target["ema"][-1] = emas[i]
            else:
                tx.append(start)
                tn.append(n)
                tmean.append(means[i])
                target["min"].append(mins[i])
                target["max"].append(maxs[i])
                target["ema"].append(emas[i])
                target["skips"].append(0)
                target["replays"].append(0)
        target["skips"][-1] += skips[i]
        target["replays"][-1] += replays[i]


def _double_width(target: dict[str, Any]) -> None:
    width = target["width"] * 2
    old = {k: target[k] for k in LOSS_KEYS}
    new: dict[str, Any] = {k: [] for k in LOSS_KEYS}
    for i in range(len(old["x"])):
        start = (old["x"][i] // width) * width
        if new["x"] and new["x"][-1] == start:
            n = new["n"][-1] + old["n"][i]
            new["mean"][-1] = (new["mean"][-1] * new["n"][-1] + old["mean"][i] * old["n"][i]) / n
            new["n"][-1] = n
            new["min"][-1] = min(new["min"][-1], old["min"][i])
            new["max"][-1] = max(new["max"][-1], old["max"][i])
            new["ema"][-1] = old["ema"][i]
            new["skips"][-1] += old["skips"][i]
            new["replays"][-1] += old["replays"][i]
        else:
            new["x"].append(start)
            for key in LOSS_KEYS[1:]:
                new[key].append(old[key][i])
    target.update(new)
    target["width"] = width


class RunHistory:
    """The bounded history of one run, fed with the worker's ``update`` messages.

    Example:
        >>> h = RunHistory()
        >>> h.apply({"type": "update", "pos": 2, "bpb": 7.5, "lr": 0.01, "grad_norm": 1.0,
        ...          "loss": {"x": [0], "n": [2], "mean": [7.5], "ema": [7.5],
        ...                   "skips": [0], "replays": [0]}, "text": [[0, 104, 8.0], [1, 105, 7.0]],
        ...          "events": [], "state": "running"})
        >>> snap = h.snapshot()
        >>> snap["loss"]["mean"], snap["latest"]["pos"], len(snap["text"])
        ([7.5, 7.5], 2, 2)
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.loss: dict[str, Any] = empty_loss()
        self.bpb: dict[str, list[Any]] = {"x": [], "y": []}
        self.lr: dict[str, list[Any]] = {"x": [], "lr": [], "grad_norm": []}
        self.baselines: list[dict[str, Any]] = []
        self.alarms: deque[dict[str, Any]] = deque(maxlen=ALARMS_KEPT)
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_KEPT)
        self.text: deque[list[Any]] = deque(maxlen=TEXT_KEPT)
        self.latest: dict[str, Any] = {}

    def apply(self, message: dict[str, Any]) -> None:
        """Folds one ``update`` message in."""
        loss = message.get("loss")
        if loss and loss.get("x"):
            fold_loss(self.loss, loss)
        pos = message.get("pos")
        if (
            pos
            and message.get("bpb") is not None
            and (not self.bpb["x"] or self.bpb["x"][-1] != pos)
        ):
            self.bpb["x"].append(pos)
            self.bpb["y"].append(message["bpb"])
            self._thin(self.bpb)
            self.lr["x"].append(pos)
            self.lr["lr"].append(message.get("lr"))
            self.lr["grad_norm"].append(message.get("grad_norm"))
            self._thin(self.lr)
        if message.get("baselines"):
            self.baselines.append(message["baselines"])
        for event in message.get("events") or []:
            self.events.append(event)
            if event.get("kind") == "alarm":
                self.alarms.append(event)
        self.text.extend(message.get("text") or [])
        for key in LATEST_KEYS:
            if key in message:
                self.latest[key] = message[key]

    @staticmethod
    def _thin(series: dict[str, list[Any]]) -> None:
        size = len(series["x"])
        if size > SERIES_CAP:
            for key, values in series.items():
                thinned = values[::2]  # every other point, and always the newest
                if (size - 1) % 2:
                    thinned.append(values[-1])
                series[key] = thinned

    def snapshot(self, lite: bool = False) -> dict[str, Any]:
        """Everything a page needs to redraw the run (``lite``: the loss curves only)."""
        latest = self.latest
        if lite:
            keep = ("state", "pos", "total", "bpb")
            return {
                "loss": self.loss,
                "bpb": self.bpb,
                "latest": {k: latest[k] for k in keep if k in latest},
            }
        return {
            "loss": self.loss,
            "bpb": self.bpb,
            "lr": self.lr,
            "baselines": self.baselines,
            "alarms": list(self.alarms),
            "events": list(self.events),
            "text": list(self.text),
            "latest": latest,
        }


def lite_update(message: dict[str, Any]) -> dict[str, Any]:
    """The part of an ``update`` a comparison overlay needs."""
    keep = ("type", "generation", "state", "pos", "total", "bpb", "loss")
    return {k: message[k] for k in keep if k in message}


# ---------------------------------------------------------------------------- run directories


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{str(path)!r} must hold a JSON object")
    return value


def read_log(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Reads a per-byte ``log.csv`` (columns index, byte, phase, loss_bits)."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                return np.zeros(0, np.uint8), np.zeros(0), []
            cols = {name.strip(): i for i, name in enumerate(header)}
            if "loss_bits" not in cols:
                raise ConfigError(f"{str(path)!r} has no loss_bits column (columns: {header})")
            ib, ip, il = cols.get("byte"), cols.get("phase"), cols["loss_bits"]
            data, phases, losses = [], [], []
            for row in reader:
                if not row:
                    continue
                losses.append(float(row[il]))
                data.append(int(row[ib]) if ib is not None else 32)
                phases.append(row[ip] if ip is not None else "")
    except FileNotFoundError:
        raise ConfigError(
            f"{str(path.parent)!r} has no log.csv (a run directory needs one)"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError, IndexError) as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc}") from None
    return np.array(data, dtype=np.uint8), np.array(losses, dtype=np.float64), phases


def history_from_losses(
    losses: np.ndarray, data: np.ndarray, summary: dict[str, Any], ema_alpha: float = 0.01
) -> RunHistory:
    """Builds the history a page draws from a run's per-byte losses."""
    from mugpt.engine.metrics import ema

    history = RunHistory()
    n = int(losses.size)
    if n:
        width = 1
        while (n - 1) // width >= LOSS_CAP:
            width *= 2
        smooth = ema(losses, ema_alpha)
        starts = np.arange(0, n, width)
        counts = np.minimum(width, n - starts)
        sums = np.add.reduceat(losses, starts)
        history.loss = {
            "x": starts.tolist(),
            "n": counts.tolist(),
            "mean": np.round(sums / counts, 4).tolist(),
            "min": np.round(np.minimum.reduceat(losses, starts), 4).tolist(),
            "max": np.round(np.maximum.reduceat(losses, starts), 4).tolist(),
            "ema": np.round(smooth[starts + counts - 1], 4).tolist(),
            "skips": [0] * starts.size,
            "replays": [0] * starts.size,
            "width": width,
        }
        cumulative = np.cumsum(losses) / np.arange(1, n + 1)
        points = np.unique(np.linspace(1, n, min(n, SERIES_CAP)).astype(np.int64))
        history.bpb = {"x": points.tolist(), "y": np.round(cumulative[points - 1], 4).tolist()}
        tail = slice(max(0, n - TEXT_KEPT), n)
        history.text.extend(
            [i, int(b), round(float(bits), 2)]
            for i, b, bits in zip(range(tail.start, n), data[tail], losses[tail])
        )
    baselines = summary.get("baselines")
    if isinstance(baselines, dict) and n:
        history.baselines.append({"n": n, "bpb": baselines})
    history.latest = {
        "state": "finished",
        "pos": n,
        "total": n,
        "bpb": float(losses.mean()) if n else None,
        "counters": summary.get("counters") or {},
        "phases": summary.get("phases") or [],
        "mechanisms": summary.get("mechanisms") or [],
    }
    return history


def history_from_run_dir(path: str | Path) -> tuple[dict[str, Any], dict[str, Any], RunHistory]:
    """Reads a run directory into (config dict, stream description, history)."""
    root = Path(path).expanduser()
    try:
        found = root.is_dir()
    except (OSError, ValueError):  # e.g. a name too long for the file system
        found = False
    if not found:
        raise ConfigError(f"run directory {str(root)!r} does not exist or is not a folder")
    config = _read_json(root / "config.json")
    summary = _read_json(root / "summary.json")
    data, losses, phase_labels = read_log(root / "log.csv")
    phases = []
    for row in summary.get("phases") or []:
        if isinstance(row, dict) and {"label", "start", "end"} <= set(row):
            phases.append({k: row[k] for k in ("label", "start", "end")})
    if not phases and phase_labels:
        start = 0
        for i in range(1, len(phase_labels) + 1):
            if i == len(phase_labels) or phase_labels[i] != phase_labels[start]:
                phases.append({"label": phase_labels[start], "start": start, "end": i})
                start = i
    stream = {
        "spec": config.get("stream", summary.get("stream", "")),
        "bytes": int(losses.size),
        "phases": phases,
        "boundaries": [p["start"] for p in phases[1:]],
    }
    history = history_from_losses(losses, data, summary)
    events = _read_events(root / "events.json")
    for event in events[-EVENTS_KEPT:]:
        history.events.append(event)
    history.alarms.extend(e for e in events if e.get("kind") == "alarm")
    return config, stream, history


def _read_events(path: Path) -> list[dict[str, Any]]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    if isinstance(value, dict):
        value = value.get("events", [])
    return [e for e in value if isinstance(e, dict)] if isinstance(value, list) else []
