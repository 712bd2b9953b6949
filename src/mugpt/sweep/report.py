"""A sweep's results: loading, aggregation across seeds, tables and plots.

Each config point's figures are the mean over its seeds with a 95% confidence interval of the
mean (Student's t with n - 1 degrees of freedom; see :mod:`mugpt.sweep.stats`). Files written
into the sweep folder by :func:`write_report`:

- ``results.md`` — tables per stream: bpb, bytes/s, updates and per-phase bpb, then recovery
  and forgetting per phase, the compressors on the same bytes, and any failed run's error;
- ``results.csv`` (and ``results.parquet`` when pyarrow is installed) — one row per point;
- ``runs.csv`` — one row per run;
- ``pareto.png`` (bpb against bytes/s, with the Pareto front), ``phases.png`` (per-phase bpb
  bars) and ``curves.png`` (loss curves overlaid, mean over seeds).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.engine.checkpoint import atomic_write_bytes
from mugpt.sweep.spec import point_label, stream_label
from mugpt.sweep.stats import MeanCI, mean_ci
from mugpt.sweep.store import SweepStore

METRICS = ("bpb", "bytes_per_s", "updates", "skipped_updates", "replay_updates", "seconds")
BASELINES = ("gzip", "bzip2", "xz", "zstd", "ppmd")


# ---------------------------------------------------------------------- loading


def load_sweep_results(folder: str | Path, current_only: bool = True) -> list[dict[str, Any]]:
    """Every run of the sweep in ``folder``, one dict each, in the order they were planned.

    Keys: ``run_id``, ``point_id`` (shared by the seeds of one config point), ``seed``,
    ``status`` (pending, running, done, failed, interrupted), ``error``, ``labels`` (swept key
    → shown name), ``values`` (swept key → value), ``label`` (``key=name, ...``), ``config``
    (the full run config), ``max_bytes``, ``wall_s``, ``attempts``, ``backend``; for finished
    runs ``result`` (summary.json's figures plus ``curve``, ``run_dir``, ``resumed_from``) and
    the headline ``bpb``, ``bytes_per_s``, ``updates``, ``bytes`` (None otherwise).
    ``current_only`` keeps the runs of the sweep file as last run (edits may drop some).

    Example:
        >>> import tempfile
        >>> from mugpt.sweep import SweepSpec
        >>> out = tempfile.mkdtemp()
        >>> plan = SweepSpec.from_dict({"seeds": 2, "grid": {"optim.lr": [0.01]}}).plan()
        >>> store = SweepStore(out)
        >>> store.add_runs(plan)
        2
        >>> store.mark_done(plan[0].run_id, {"bpb": 2.5, "bytes": 100}, wall_s=3.0)
        >>> store.close()
        >>> [(r["label"], r["seed"], r["status"], r["bpb"]) for r in load_sweep_results(out)]
        [('optim.lr=0.01', 0, 'done', 2.5), ('optim.lr=0.01', 1, 'pending', None)]
    """
    store = SweepStore.open_existing(folder)
    try:
        planned = store.get_meta("planned")
        rows = store.rows(planned if current_only and planned else None)
    finally:
        store.close()
    if planned:
        order = {rid: i for i, rid in enumerate(planned)}
        rows.sort(key=lambda r: order.get(r["run_id"], len(order)))
    for row in rows:
        row["label"] = point_label(row["labels"] or {})
        result = row.get("result") if row["status"] == "done" else None
        row["result"] = result
        for key in ("bpb", "bytes_per_s", "updates", "bytes"):
            row[key] = result.get(key) if result else None
    return rows


# ---------------------------------------------------------------------- aggregation


def _stream_of(row: dict[str, Any]) -> tuple[str, str]:
    spec = row["config"].get("stream", "")
    name = (row["labels"] or {}).get("stream") or stream_label(spec)
    return spec, name


def aggregate(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One dict per config point: its labels, seed counts and every figure as a MeanCI.

    Keys: ``point_id``, ``labels``, ``config_label`` (the labels without the stream),
    ``stream``, ``stream_label``, ``update_every``, ``window_loss``, ``n`` (finished seeds),
    ``failed``, ``total``, ``metrics`` (name → MeanCI), ``phases`` (list of dicts: ``label``,
    ``bpb``, ``recovery_bytes``, ``forgetting_bpb`` as MeanCI and ``recovered`` "k/n"),
    ``baselines`` (compressor → mean bpb), ``curve`` (mean over seeds) and ``boundaries``.
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(row["point_id"], []).append(row)
    out = []
    for point_id, members in groups.items():
        first = members[0]
        done = [m["result"] for m in members if m["status"] == "done" and m["result"]]
        labels = dict(first["labels"] or {})
        spec, name = _stream_of(first)
        learner = first["config"].get("learner", {})
        group: dict[str, Any] = {
            "point_id": point_id,
            "labels": labels,
            "config_label": _config_label(labels),
            "stream": spec,
            "stream_label": name,
            "update_every": learner.get("update_every"),
            "window_loss": learner.get("window_loss"),
            "n": len(done),
            "failed": sum(m["status"] == "failed" for m in members),
            "total": len(members),
            "seeds": [m["seed"] for m in members if m["status"] == "done"],
            "metrics": {k: mean_ci(r.get(k) for r in done) for k in METRICS},
            "phases": _phases(done),
            "baselines": _baselines(done),
            "curve": _mean_curve(done),
            "boundaries": done[0].get("boundaries", []) if done else [],
            "strict_online": all(r.get("strict_online", True) for r in done),
        }
        out.append(group)
    return out


def _config_label(labels: dict[str, str]) -> str:
    """The name of a point apart from its stream: the value alone when one key is swept."""
    rest = {k: v for k, v in labels.items() if k != "stream"}
    if len(rest) == 1:
        return next(iter(rest.values()))
    return point_label(rest) or "base"


def phase_names(labels: Sequence[str]) -> list[str]:
    """Phase labels made unique for headings: a revisit gets its visit number.

    >>> phase_names(["prose", "code", "prose"])
    ['prose', 'code', 'prose #2']
    """
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out


def _phases(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    count = max((len(r.get("phases") or []) for r in results), default=0)
    longest = max((r.get("phases") or [] for r in results), key=len, default=[])
    names = phase_names([p["label"] for p in longest])
    rows = []
    for i in range(count):
        items = [r["phases"][i] for r in results if len(r.get("phases") or []) > i]
        recovered = [p.get("recovered") for p in items if p.get("recovered") is not None]
        rows.append(
            {
                "index": i,
                "label": items[0]["label"],
                "name": names[i],
                "bpb": mean_ci(p.get("bpb") for p in items),
                "recovery_bytes": mean_ci(p.get("recovery_bytes") for p in items),
                "recovered": f"{sum(recovered)}/{len(recovered)}" if recovered else None,
                "forgetting_bpb": mean_ci(p.get("forgetting_bpb") for p in items),
            }
        )
    return rows


def _baselines(results: list[dict[str, Any]]) -> dict[str, float]:
    out = {}
    for name in BASELINES:
        m = mean_ci((r.get("baselines") or {}).get(name) for r in results)
        if m.mean is not None:
            out[name] = m.mean
    return out


def _mean_curve(results: list[dict[str, Any]]) -> dict[str, list[float]]:
    curves: list[dict[str, Any]] = [
        r["curve"] for r in results if r.get("curve") and r["curve"]["x"]
    ]
    if not curves:
        return {"x": [], "bpb": []}
    x = np.asarray(curves[0]["x"], dtype=np.float64)
    ys = [
        np.interp(x, np.asarray(c["x"], np.float64), np.asarray(c["bpb"], np.float64))
        for c in curves
    ]
    return {"x": x.tolist(), "bpb": np.mean(ys, axis=0).tolist()}


# ---------------------------------------------------------------------- tables


def _axis_keys(groups: list[dict[str, Any]]) -> list[str]:
    keys: list[str] = []
    for g in groups:
        for k in g["labels"]:
            if k != "stream" and k not in keys:
                keys.append(k)
    return keys


def _ci_cols(prefix: str, m: MeanCI) -> dict[str, Any]:
    return {f"{prefix}_mean": m.mean, f"{prefix}_ci95": m.ci95}


def table_rows(groups: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The flat per-point table of ``results.csv`` (means and 95% CI half-widths)."""
    keys = _axis_keys(groups)
    rows = []
    for g in groups:
        row: dict[str, Any] = {"stream": g["stream_label"]}
        row.update({k: g["labels"].get(k, "") for k in keys})
        row.update(update_every=g["update_every"], window_loss=g["window_loss"], seeds=g["n"],
                   failed=g["failed"])  # fmt: skip
        for name in METRICS:
            row.update(_ci_cols(name, g["metrics"][name]))
        for p in g["phases"]:
            tag = f"phase{p['index']}_{p['label']}"
            row.update(_ci_cols(f"{tag}_bpb", p["bpb"]))
            row.update(_ci_cols(f"{tag}_recovery_bytes", p["recovery_bytes"]))
            row[f"{tag}_recovered"] = p["recovered"]
            row.update(_ci_cols(f"{tag}_forgetting_bpb", p["forgetting_bpb"]))
        for name, value in g["baselines"].items():
            row[f"baseline_{name}_bpb"] = value
        rows.append(row)
    return rows


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buf.getvalue().encode()


def _run_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in (r["labels"] or {}) if k not in keys]
    out = []
    for r in rows:
        res = r["result"] or {}
        item = {"run_id": r["run_id"], "status": r["status"], "seed": r["seed"]}
        item.update({k: (r["labels"] or {}).get(k, "") for k in keys})
        item.update(bpb=r["bpb"], bytes_per_s=r["bytes_per_s"], updates=r["updates"],
                    bytes=r["bytes"], wall_s=r["wall_s"], backend=r["backend"],
                    run_dir=res.get("run_dir"),
                    error=(r["error"] or "").splitlines()[0] if r["status"] == "failed" else "")  # fmt: skip
        out.append(item)
    return out


def markdown(groups: list[dict[str, Any]], rows: list[dict[str, Any]], title: str) -> str:
    """The ``results.md`` text."""
    keys = _axis_keys(groups) or ["config"]
    lines = [f"# Sweep `{title}`", ""]
    done = sum(r["status"] == "done" for r in rows)
    failed = [r for r in rows if r["status"] == "failed"]
    other = len(rows) - done - len(failed)
    ks = sorted({g["update_every"] for g in groups if g["update_every"] is not None})
    wl = sorted({g["window_loss"] for g in groups if g["window_loss"]})
    budgets = sorted({r["max_bytes"] for r in rows if r["max_bytes"]})
    lines.append(
        f"{len(rows)} runs: {done} done, {len(failed)} failed"
        + (f", {other} not finished" if other else "")
        + f" · update_every k = {', '.join(map(str, ks))} · window loss {', '.join(wl)}"
        + (f" · budget {', '.join(f'{b:,}' for b in budgets)} bytes per run" if budgets else "")
    )
    lines += [
        "",
        "Figures are means over seeds ± the 95% confidence interval of the mean "
        "(Student's t, n − 1 degrees of freedom); bpb is prequential bits per byte "
        "(lower is better); bytes/s is the learner's throughput on one core.",
    ]
    for stream in dict.fromkeys(g["stream_label"] for g in groups):
        part = [g for g in groups if g["stream_label"] == stream]
        lines += ["", f"## Stream: {stream}", ""]
        spec = part[0]["stream"] or "the built-in default stream"
        lines.append(f"`{spec}`")
        lines.append("")
        names = [p["name"] for p in max((g["phases"] for g in part), key=len)]
        head = [*keys, "seeds", "bpb", "bytes/s", "updates", *[f"bpb {p}" for p in names]]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" if i < len(keys) else "---:" for i in range(len(head))) + "|")  # fmt: skip
        for g in part:
            cells = [g["labels"].get(k, g["config_label"] if k == "config" else "") for k in keys]
            m = g["metrics"]
            seeds = f"{g['n']}" + (f" ({g['failed']} failed)" if g["failed"] else "")
            cells += [seeds, m["bpb"].format(), m["bytes_per_s"].format(",.0f"),
                      m["updates"].format(",.0f")]  # fmt: skip
            cells += [p["bpb"].format() for p in g["phases"]]
            cells += [""] * (len(head) - len(cells))
            if not g["strict_online"]:
                cells[0] += " †"
            lines.append("| " + " | ".join(cells) + " |")
        if any(not g["strict_online"] for g in part):
            lines += ["", "† trains on data other than the current window (replay): not strictly online."]  # fmt: skip
        shift_cols = []
        for p in max((g["phases"] for g in part), key=len):
            if p["index"] > 0:
                shift_cols.append(("recovery_bytes", p["index"], f"recovery {p['name']} (B)"))
            if any(len(g["phases"]) > p["index"] and g["phases"][p["index"]]["forgetting_bpb"].mean is not None for g in part):  # fmt: skip
                shift_cols.append(("forgetting_bpb", p["index"], f"forgetting {p['name']} (bpb)"))
        if shift_cols:
            lines += ["", "Recovery: bytes after a boundary until the loss is back within 10% of "
                      "the phase's final level (k/n seeds recovered). Forgetting: bpb on a "
                      "revisit's first bytes minus bpb where the label was left.", ""]  # fmt: skip
            head2 = [*keys, *[c[2] for c in shift_cols]]
            lines.append("| " + " | ".join(head2) + " |")
            lines.append("|" + "|".join("---" if i < len(keys) else "---:" for i in range(len(head2))) + "|")  # fmt: skip
            for g in part:
                cells = [
                    g["labels"].get(k, g["config_label"] if k == "config" else "") for k in keys
                ]
                for field, idx, _ in shift_cols:
                    if idx >= len(g["phases"]):
                        cells.append("")
                        continue
                    p = g["phases"][idx]
                    text = p[field].format(",.0f" if field == "recovery_bytes" else "+.3f")
                    if field == "recovery_bytes" and p["recovered"]:
                        text += f" ({p['recovered']})"
                    cells.append(text)
                lines.append("| " + " | ".join(cells) + " |")
        base: dict[str, list[float]] = {}
        for g in part:
            for name, value in g["baselines"].items():
                base.setdefault(name, []).append(value)
        if base:
            text = " · ".join(f"{n} {float(np.mean(v)):.3f}" for n, v in base.items())
            lines += ["", f"Compressors on the same bytes (bpb): {text}."]
    if failed:
        lines += ["", "## Failed runs", ""]
        for r in failed:
            first = (r["error"] or "").splitlines()[0] if r["error"] else "unknown error"
            lines.append(f"- `{r['run_id']}` {r['label'] or 'base'} seed={r['seed']}: {first}")
    lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------- plots


def _colors(groups: list[dict[str, Any]]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    names = list(dict.fromkeys(g["config_label"] for g in groups))
    return {name: cmap(i % 10) for i, name in enumerate(names)}


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indexes of the points (speed, bpb) no other point beats on both (faster and lower),
    ordered by speed.

    >>> pareto_front([(1.0, 3.0), (2.0, 2.5), (3.0, 2.8), (0.5, 3.5)])
    [1, 2]
    """
    front = []
    for i, (s, b) in enumerate(points):
        dominated = any(
            (s2 >= s and b2 <= b) and (s2 > s or b2 < b)
            for j, (s2, b2) in enumerate(points)
            if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _streams(groups: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(g["stream_label"] for g in groups if g["n"]))


def plot_pareto(groups: list[dict[str, Any]], path: Path) -> None:
    """bpb against bytes/s per config point, with CI bars and the Pareto front."""
    plt = _pyplot()
    streams = _streams(groups)
    colors = _colors(groups)
    fig, axes = plt.subplots(1, len(streams), figsize=(6.2 * len(streams), 4.6), dpi=110, squeeze=False)  # fmt: skip
    for ax, stream in zip(axes[0], streams):
        part = [g for g in groups if g["stream_label"] == stream and g["n"]]
        pts = [(g["metrics"]["bytes_per_s"].mean, g["metrics"]["bpb"].mean) for g in part]
        for g, (x, y) in zip(part, pts):
            xe, ye = g["metrics"]["bytes_per_s"].ci95, g["metrics"]["bpb"].ci95
            ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color=colors[g["config_label"]],
                        capsize=3)  # fmt: skip
            ax.annotate(g["config_label"], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)  # fmt: skip
        front = pareto_front(pts)
        if len(front) > 1:
            ax.plot([pts[i][0] for i in front], [pts[i][1] for i in front], "--", color="#666",
                    lw=1, zorder=0, label="Pareto front")  # fmt: skip
        lo, hi = ax.get_xlim()
        ax.set_xlim(max(lo, 0.0), hi)  # a wide interval must not suggest negative speeds
        ax.set_title(f"{stream}", fontsize=10)
        ax.set_xlabel("bytes/s (higher is better)")
        ax.set_ylabel("bits per byte (lower is better)")
        ax.grid(alpha=0.3)
        if len(front) > 1:
            ax.legend(fontsize=7, loc="best")
    fig.suptitle("accuracy against speed (mean ± 95% CI over seeds)", fontsize=11)
    _save(fig, path)


def plot_phases(groups: list[dict[str, Any]], path: Path) -> None:
    """Per-phase bpb bars, one bar per config point, with 95% CI whiskers."""
    plt = _pyplot()
    streams = _streams(groups)
    colors = _colors(groups)
    fig, axes = plt.subplots(1, len(streams), figsize=(6.2 * len(streams), 4.6), dpi=110,
                             squeeze=False, layout="constrained")  # fmt: skip
    for ax, stream in zip(axes[0], streams):
        part = [g for g in groups if g["stream_label"] == stream and g["n"]]
        n_phases = max(len(g["phases"]) for g in part)
        width = 0.8 / max(1, len(part))
        for j, g in enumerate(part):
            xs = np.arange(len(g["phases"])) - 0.4 + width * (j + 0.5)
            ys = [p["bpb"].mean or 0.0 for p in g["phases"]]
            es = [p["bpb"].ci95 or 0.0 for p in g["phases"]]
            ax.bar(xs, ys, width, yerr=es, capsize=2, color=colors[g["config_label"]],
                   label=g["config_label"])  # fmt: skip
        longest = max((g["phases"] for g in part), key=len)
        ax.set_xticks(np.arange(n_phases), [p["name"] for p in longest], fontsize=8)
        ax.set_ylabel("bits per byte")
        ax.set_title(stream, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    handles, labels = axes[0][-1].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="outside lower center", ncol=min(4, len(labels)))  # fmt: skip
    fig.suptitle("bits per byte per phase (mean ± 95% CI over seeds)", fontsize=11)
    _save(fig, path)


def plot_curves(groups: list[dict[str, Any]], path: Path) -> None:
    """Loss curves (binned mean bpb, averaged over seeds) overlaid, boundaries dashed."""
    plt = _pyplot()
    streams = _streams(groups)
    colors = _colors(groups)
    fig, axes = plt.subplots(len(streams), 1, figsize=(10, 3.6 * len(streams)), dpi=110, squeeze=False)  # fmt: skip
    for ax, stream in zip(axes[:, 0], streams):
        part = [g for g in groups if g["stream_label"] == stream and g["n"]]
        for g in part:
            x, y = coarsen(g["curve"]["x"], g["curve"]["bpb"], CURVE_PLOT_POINTS)
            ax.plot(x, y, lw=1.1, color=colors[g["config_label"]],
                    label=f"{g['config_label']} (n={g['n']})")  # fmt: skip
        for b in part[0]["boundaries"]:
            ax.axvline(b, color="#888", lw=0.8, ls="--")
        ax.set_title(stream, fontsize=10)
        ax.set_xlabel("byte")
        ax.set_ylabel("bits per byte")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("prequential loss, binned and averaged over seeds", fontsize=11)
    _save(fig, path)


CURVE_PLOT_POINTS = 120


def coarsen(x: Sequence[float], y: Sequence[float], points: int) -> tuple[np.ndarray, np.ndarray]:
    """Merges neighbouring bins of a curve (equal-width bins: a plain mean) down to at most
    ``points``, for a readable overlay.

    >>> [a.tolist() for a in coarsen([1, 2, 3, 4], [1.0, 3.0, 5.0, 7.0], 2)]
    [[2.0, 4.0], [2.0, 6.0]]
    """
    xs, ys = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    group = max(1, -(-xs.size // points))
    if group == 1:
        return xs, ys
    starts = np.arange(0, xs.size, group)
    counts = np.diff(np.append(starts, xs.size))
    return xs[np.minimum(starts + group, xs.size) - 1], np.add.reduceat(ys, starts) / counts


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    buf = io.BytesIO()
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(buf, format="png")
    _pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())


# ---------------------------------------------------------------------- all of it


def write_report(folder: str | Path) -> dict[str, Path]:
    """(Re)writes the tables and plots of the sweep in ``folder``; returns their paths.

    Keys of the result: ``markdown``, ``csv``, ``runs_csv``, ``parquet`` (if pyarrow is
    installed), ``pareto``, ``phases``, ``curves`` (plots only when some run finished).
    """
    folder = Path(folder)
    rows = load_sweep_results(folder)
    store = SweepStore.open_existing(folder)
    try:
        name = str(store.get_meta("name", folder.name))
    finally:
        store.close()
    groups = aggregate(rows)
    table = table_rows(groups)
    paths: dict[str, Path] = {}
    paths["markdown"] = folder / "results.md"
    atomic_write_bytes(paths["markdown"], markdown(groups, rows, name).encode())
    paths["csv"] = folder / "results.csv"
    atomic_write_bytes(paths["csv"], _csv_bytes(table))
    paths["runs_csv"] = folder / "runs.csv"
    atomic_write_bytes(paths["runs_csv"], _csv_bytes(_run_rows(rows)))
    parquet = _parquet_bytes(table)
    if parquet is not None:
        paths["parquet"] = folder / "results.parquet"
        atomic_write_bytes(paths["parquet"], parquet)
    if any(g["n"] for g in groups):
        for key, fn in (("pareto", plot_pareto), ("phases", plot_phases), ("curves", plot_curves)):
            paths[key] = folder / f"{key}.png"
            fn(groups, paths[key])
    return paths


def _parquet_bytes(table: list[dict[str, Any]]) -> bytes | None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        return None
    columns: list[str] = []
    for row in table:
        columns += [c for c in row if c not in columns]
    data = {c: [_plain(row.get(c)) for row in table] for c in columns}
    buf = io.BytesIO()
    pq.write_table(pa.table(data), buf)
    return buf.getvalue()


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
