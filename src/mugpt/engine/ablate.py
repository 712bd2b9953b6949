"""Ablation: the same stream with no mechanism, each mechanism alone, and all together.

Every arm runs for several seeds (the seed changes the model's initialisation and the
mechanisms' random draws; the stream is the same bytes for every run). Each figure is given as
a mean with a 95% confidence interval from Student's t distribution, and as the *paired*
difference from the baseline (arm − baseline on the same seed), whose interval removes the
seed-to-seed variation the two share.

Example:
    >>> from mugpt.corpus import Stream
    >>> from mugpt.engine.config import RunConfig
    >>> cfg = RunConfig.from_dict({"learner": {"update_every": 8}})
    >>> res = ablate(cfg, Stream.from_bytes(b"abcab" * 60), seeds=2, jobs=1,
    ...              mechanisms=[{"name": "grad_clip"}])
    >>> [arm.name for arm in res.arms]
    ['baseline', 'grad_clip']
    >>> row = res.row("grad_clip", "bpb")
    >>> row["n"], row["diff_mean"] is not None
    (2, True)
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import io
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mugpt.engine.checkpoint import atomic_write_bytes
from mugpt.engine.config import SEED_LR_BY_K, RunConfig
from mugpt.engine.metrics import detection_scores, phase_metrics
from mugpt.errors import ConfigError

if TYPE_CHECKING:
    from mugpt.corpus import Stream

DETECTION_TOLERANCE = 2000
"""Bytes after a boundary within which an alarm counts as a detection (as in summary.json)."""

METRICS: list[tuple[str, str, str]] = [
    # key, header, number format
    ("bpb", "bpb", ".4f"),
    ("recovery_bytes", "recovery (B)", ",.0f"),
    ("forgetting_bpb", "forgetting", "+.4f"),
    ("updates", "updates", ",.0f"),
    ("bytes_per_s", "bytes/s", ",.0f"),
]
"""The headline figures of an arm, in table order (per-phase bpb columns come after bpb)."""


# ---------------------------------------------------------------------- statistics


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Computed without SciPy: the density is integrated with Simpson's rule and the CDF is
    inverted by bisection (accurate to about 1e-6 for p ≤ 0.999).

    Example:
        >>> round(t_quantile(0.975, 2), 3), round(t_quantile(0.975, 10), 3)
        (4.303, 2.228)
    """
    if not 0.5 <= p < 1.0:
        raise ValueError(f"p must be in [0.5, 1), got {p}")
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    if p == 0.5:
        return 0.0
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def cdf(t: float) -> float:
        x = np.linspace(0.0, t, 4001)  # an even number of intervals for Simpson's rule
        f = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
        h = t / 4000
        return 0.5 + h / 3 * float(f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, hi * 2
    for _ in range(60):
        mid = (lo + hi) / 2
        if cdf(mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> dict[str, Any]:
    """Mean and half-width of the two-sided ``confidence`` t interval of the non-None values.

    Example:
        >>> r = mean_ci([1.0, 2.0, 3.0])
        >>> r["n"], r["mean"], round(r["half_width"], 3)
        (3, 2.0, 2.484)
    """
    x = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    n = int(x.size)
    if n == 0:
        return {"n": 0, "mean": None, "half_width": None, "low": None, "high": None}
    mean = float(x.mean())
    if n == 1:
        return {"n": 1, "mean": mean, "half_width": None, "low": None, "high": None}
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    half = t_quantile(0.5 + confidence / 2, n - 1) * sem
    return {"n": n, "mean": mean, "half_width": half, "low": mean - half, "high": mean + half}


# ---------------------------------------------------------------------- arms and runs


@dataclass
class Arm:
    """One configuration of the ablation: a name and the mechanisms it switches on."""

    name: str
    mechanisms: list[dict[str, Any]]
    strict_online: bool = True


def plan_arms(mechanisms: Sequence[dict[str, Any]] | None = None) -> list[Arm]:
    """Baseline, each mechanism alone, and (with two or more) all together.

    ``mechanisms`` are ``{"name": ..., **params}`` entries; None means all seven built-ins
    with their defaults.

    Example:
        >>> [a.name for a in plan_arms([{"name": "cache"}, {"name": "replay", "k": 2}])]
        ['baseline', 'cache', 'replay', 'all']
        >>> plan_arms([{"name": "replay"}])[1].strict_online
        False
    """
    from mugpt.mechanisms import REGISTRY, available

    names = available()
    entries = [dict(m) for m in mechanisms] if mechanisms else [{"name": n} for n in DEFAULT_ORDER]
    seen: set[str] = set()
    for entry in entries:
        name = entry.get("name")
        if name not in names:
            raise ConfigError(f"unknown mechanism {name!r}; choose one of {names}")
        if name in seen:
            raise ConfigError(f"mechanism {name!r} is listed twice; give it once")
        seen.add(name)

    def strict(group: list[dict[str, Any]]) -> bool:
        return all(REGISTRY[e["name"]].strict_online for e in group)

    arms = [Arm("baseline", [], True)]
    arms += [Arm(e["name"], [e], strict([e])) for e in entries]
    if len(entries) > 1:
        arms.append(Arm("all", entries, strict(entries)))
    return arms


DEFAULT_ORDER = (
    "selective_backprop", "replay", "adaptive_lr", "grad_clip", "cache", "knn", "ngram_mix",
)  # fmt: skip


def scanned_lr(config: RunConfig) -> float | None:
    """The learning rate ``benchmarks/lr_scan.py`` measured as best for this configuration's
    optimiser and k (:data:`mugpt.engine.config.SEED_LR_BY_K`, docs/results/lr-scan.md), or
    None when the scan did not cover it: another model than the seed model, another k, the
    window loss over the newest positions only, or sub-streams.

    Example:
        >>> scanned_lr(RunConfig.from_dict({"learner": {"update_every": 16}}))
        0.3
        >>> scanned_lr(RunConfig.from_dict({"learner": {"update_every": 8}})) is None
        True
    """
    seed_model = RunConfig.from_dict({"preset": "seed"}).model.to_dict()
    model = config.model.to_dict()
    same_model = all(model.get(k) == v for k, v in seed_model.items() if k != "seed")
    learner, opt = config.learner, config.optim
    table = SEED_LR_BY_K.get(opt.name, {})
    scanned_optim = (
        opt.grad_clip == 1.0
        and opt.weight_decay == 0.0
        and (opt.momentum == 0.0 if opt.name == "sgd" else (opt.beta1, opt.beta2) == (0.9, 0.999))
    )
    if not (same_model and scanned_optim) or learner.window_loss != "all" or learner.batch_streams != 1:  # fmt: skip
        return None
    return table.get(learner.update_every)


def with_scanned_lr(config: RunConfig) -> RunConfig:
    """``config`` with the scanned lr for its optimiser and k (:func:`scanned_lr`), so a
    baseline at k > 1 is not judged at the k = 1 rate the presets carry. A configuration the
    scan did not cover is an error that names what to give instead.

    Example:
        >>> with_scanned_lr(RunConfig.from_dict({"learner": {"update_every": 4}})).optim.lr
        0.1
    """
    lr = scanned_lr(config)
    if lr is None:
        ks = sorted(SEED_LR_BY_K.get(config.optim.name, {}))
        raise ConfigError(
            f"no scanned lr for {config.optim.name} at update_every="
            f"{config.learner.update_every} with this model (the scan covers the seed model, "
            f"full-window loss, k in {ks}); give --lr yourself or run benchmarks/lr_scan.py"
        )
    return config.replace(optim=replace(config.optim, lr=lr))


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def run_arm(config: dict[str, Any], stream: Stream, max_bytes: int | None) -> dict[str, Any]:
    """Runs one (arm, seed) and returns its figures (a JSON-able dict)."""
    cfg = RunConfig.from_dict(config)
    learner = cfg.build_learner()
    result = learner.run(stream, max_bytes=max_bytes)
    n = result.bytes
    phases = phase_metrics(result.losses, stream)
    seen = [p for p in phases if p["bytes_seen"] > 0]
    recov = [float(p["recovery_bytes"]) for p in seen if p["recovered"]]
    forget = [float(p["forgetting_bpb"]) for p in seen if p["forgetting_bpb"] is not None]
    counters = result.counters
    out: dict[str, Any] = {
        "bytes": n,
        "bpb": result.bpb,
        "phase_bpb": [p["bpb"] for p in phases],
        "recovery_bytes": _mean_or_none(recov),
        "not_recovered": sum(1 for p in seen if p["recovered"] is False),
        "forgetting_bpb": _mean_or_none(forget),
        "updates": counters["updates"] + counters["replay_updates"],
        "main_updates": counters["updates"],
        "replay_updates": counters["replay_updates"],
        "skipped": counters["skipped"],
        "bytes_per_s": result.bytes_per_s,
        "seconds": result.seconds,
        "mechanisms": result.mechanisms,
    }
    alarms = [int(e["index"]) for e in result.events if e.get("kind") == "alarm"]
    if any(m["name"] == "adaptive_lr" for m in result.mechanisms):
        bounds = [b.index for b in stream.boundaries if b.index < n]
        scores = detection_scores(alarms, bounds, n, DETECTION_TOLERANCE)
        out["detection"] = {k: scores[k] for k in ("detected", "missed", "mean_delay", "alarms", "false_alarms", "false_alarms_per_mb")}  # fmt: skip
    return out


def _job(
    args: tuple[str, int, dict[str, Any], Stream, int | None],
) -> tuple[str, int, dict[str, Any]]:
    arm, seed, config, stream, max_bytes = args
    return arm, seed, run_arm(config, stream, max_bytes)


def _one_blas_thread() -> None:
    """Worker initialiser: one BLAS and one numba thread per process (the processes are the
    parallelism; more threads would only compete for the same cores)."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    try:
        import numba

        numba.set_num_threads(1)
    except (ImportError, ValueError):  # pragma: no cover - numba is a dependency
        pass


# ---------------------------------------------------------------------- the result


@dataclass
class AblationResult:
    """All runs of an ablation and the table built from them."""

    arms: list[Arm]
    seeds: list[int]
    phases: list[str]  # "index:label" for each phase of the stream
    runs: dict[str, dict[int, dict[str, Any]]]  # arm → seed → figures
    config: dict[str, Any]  # the base RunConfig (without mechanisms)
    stream: dict[str, Any]
    max_bytes: int | None
    seconds: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.rows:
            self.rows = self._build_rows()

    # -------------------------------------------------------------- the table

    def metric_keys(self) -> list[tuple[str, str, str]]:
        """(key, header, format) of every column: bpb, per-phase bpb, then the rest."""
        phase_cols = [(f"phase:{i}", f"bpb {p}", ".4f") for i, p in enumerate(self.phases)]
        if len(self.phases) < 2:
            phase_cols = []  # one phase: its bpb is the overall bpb
        return [METRICS[0], *phase_cols, *METRICS[1:]]

    @staticmethod
    def _value(run: dict[str, Any], key: str) -> float | None:
        if key.startswith("phase:"):
            value = run["phase_bpb"][int(key.split(":")[1])]
        else:
            value = run.get(key)
        return None if value is None else float(value)

    def _build_rows(self) -> list[dict[str, Any]]:
        rows = []
        base = self.runs.get("baseline", {})
        for arm in self.arms:
            runs = self.runs.get(arm.name, {})
            for key, header, fmt in self.metric_keys():
                values = [self._value(runs[s], key) for s in self.seeds if s in runs]
                stats = mean_ci(values)
                diffs: list[float | None] = []
                for s in self.seeds:
                    if s in runs and s in base:
                        a, b = self._value(runs[s], key), self._value(base[s], key)
                        diffs.append(None if a is None or b is None else a - b)
                diff = mean_ci(diffs)
                rows.append(
                    {
                        "arm": arm.name,
                        "strict_online": arm.strict_online,
                        "metric": key,
                        "header": header,
                        "format": fmt,
                        **stats,
                        "diff_n": diff["n"],
                        "diff_mean": diff["mean"],
                        "diff_half_width": diff["half_width"],
                        "diff_low": diff["low"],
                        "diff_high": diff["high"],
                    }
                )
        return rows

    def row(self, arm: str, metric: str) -> dict[str, Any]:
        for r in self.rows:
            if r["arm"] == arm and r["metric"] == metric:
                return r
        raise KeyError((arm, metric))

    @staticmethod
    def cell(mean: float | None, half: float | None, fmt: str, signed: bool = False) -> str:
        """``mean ± half`` formatted; "—" when undefined."""
        if mean is None:
            return "—"
        f = fmt if not signed or fmt.startswith("+") else "+" + fmt
        text = format(mean, f)
        return text if half is None else f"{text} ± {format(half, fmt.lstrip('+'))}"

    def table(self, diff: bool = False) -> tuple[list[str], list[list[str]]]:
        """Header and rows of the main table (``diff=False``) or of the paired differences."""
        keys = self.metric_keys()
        header = ["arm", "strict online", *(h if not diff else f"Δ {h}" for _, h, _ in keys)]
        body = []
        for arm in self.arms:
            if diff and arm.name == "baseline":
                continue
            cells = [arm.name, "yes" if arm.strict_online else "no"]
            for key, _h, fmt in keys:
                r = self.row(arm.name, key)
                if diff:
                    cells.append(self.cell(r["diff_mean"], r["diff_half_width"], fmt, True))
                else:
                    cells.append(self.cell(r["mean"], r["half_width"], fmt))
            body.append(cells)
        return header, body

    def mechanism_counters(self) -> dict[str, dict[str, float]]:
        """Per arm, the mean over seeds of each numeric mechanism counter (and detection)."""
        out: dict[str, dict[str, float]] = {}
        for arm in self.arms:
            sums: dict[str, list[float]] = {}
            for s in self.seeds:
                run = self.runs.get(arm.name, {}).get(s)
                if run is None:
                    continue
                for mech in run["mechanisms"]:
                    for key, value in mech["counters"].items():
                        if isinstance(value, int | float) and not isinstance(value, bool):
                            sums.setdefault(f"{mech['name']}.{key}", []).append(float(value))
                for key, value in (run.get("detection") or {}).items():
                    if isinstance(value, int | float):
                        sums.setdefault(f"detection.{key}", []).append(float(value))
            if sums:
                out[arm.name] = {k: float(np.mean(v)) for k, v in sums.items()}
        return out

    # -------------------------------------------------------------- outputs

    def describe_setup(self) -> str:
        learner = self.config.get("learner", {})
        model = self.config.get("model", {})
        limit = f", first {self.max_bytes:,} bytes" if self.max_bytes else ""
        try:
            scanned = scanned_lr(RunConfig.from_dict(self.config))
        except ConfigError:
            scanned = None
        lr = self.config.get("optim", {}).get("lr")
        tuned = (
            " (the lr scan's best for this k)"
            if scanned is not None and lr == scanned
            else f" (not the lr scan's {scanned} for this k)"
            if scanned is not None
            else " (a setting outside the lr scan)"
        )
        return (
            f"stream `{self.stream.get('spec') or 'default'}` ({self.stream.get('bytes', 0):,} "
            f"bytes{limit}); seeds {self.seeds}; update_every k = {learner.get('update_every')}, "
            f"window loss {learner.get('window_loss')}; model d_model={model.get('d_model')}, "
            f"layers={model.get('n_layers')}, context={model.get('context')}; "
            f"optimiser {self.config.get('optim', {}).get('name')} "
            f"lr={lr}{tuned}"
        )

    def to_markdown(self) -> str:
        """Both tables, the setup and the mechanism counters, as Markdown."""

        def md(header: list[str], body: list[list[str]]) -> str:
            lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            lines += ["| " + " | ".join(row) + " |" for row in body]
            return "\n".join(lines)

        parts = [
            "# Ablation",
            "",
            self.describe_setup() + ".",
            "",
            "Mean ± half-width of the 95% t interval over seeds. bpb = prequential bits per "
            "byte (lower is better); recovery = bytes after a boundary until the trailing "
            "loss is within 10% of the phase's final level (mean over recovered boundaries); "
            "forgetting = bpb at a revisit minus bpb where the label was left; updates = "
            "optimiser steps (main + replay). Arms that are not strict-online train on "
            "windows other than the current one (replay).",
            "",
            md(*self.table()),
            "",
            "## Paired difference from the baseline (same seed)",
            "",
            "Arm minus baseline, seed by seed; negative bpb is better.",
            "",
            md(*self.table(diff=True)),
            "",
            "## Mechanism counters (mean over seeds)",
            "",
        ]
        for arm, counters in self.mechanism_counters().items():
            items = ", ".join(f"{k} = {_short(v)}" for k, v in counters.items())
            parts.append(f"- **{arm}**: {items}")
        parts.append("")
        return "\n".join(parts)

    def to_csv(self) -> str:
        """One line per (arm, metric): mean, CI, paired difference and its CI."""
        buf = io.StringIO()
        cols = ["arm", "strict_online", "metric", "n", "mean", "half_width", "low", "high",
                "diff_n", "diff_mean", "diff_half_width", "diff_low", "diff_high"]  # fmt: skip
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(cols)
        for r in self.rows:
            writer.writerow(["" if r[c] is None else r[c] for c in cols])
        return buf.getvalue()

    def runs_csv(self) -> str:
        """One line per (arm, seed) with the raw figures."""
        buf = io.StringIO()
        keys = [k for k, _h, _f in self.metric_keys()]
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["arm", "seed", "bytes", *keys, "replay_updates", "skipped", "seconds"])
        for arm in self.arms:
            for s in self.seeds:
                run = self.runs.get(arm.name, {}).get(s)
                if run is None:
                    continue
                values = [self._value(run, k) for k in keys]
                writer.writerow(
                    [arm.name, s, run["bytes"], *("" if v is None else v for v in values),
                     run["replay_updates"], run["skipped"], round(run["seconds"], 3)]
                )  # fmt: skip
        return buf.getvalue()

    def plot(self, path: str | Path) -> None:
        """A PNG: Δ bpb from the baseline per arm (overall and per phase) and bytes/s."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        arms = [a for a in self.arms if a.name != "baseline"]
        keys = [("bpb", "overall")]
        if len(self.phases) > 1:
            keys += [(f"phase:{i}", p) for i, p in enumerate(self.phases)]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 0.6 * len(arms) + 2.5))
        height = 0.8 / len(keys)
        y = np.arange(len(arms))
        for j, (key, label) in enumerate(keys):
            means = [self.row(a.name, key)["diff_mean"] or 0.0 for a in arms]
            errs = [self.row(a.name, key)["diff_half_width"] or 0.0 for a in arms]
            ax1.barh(y + j * height, means, height, xerr=errs, label=label, capsize=2)
        ax1.axvline(0.0, color="black", linewidth=0.8)
        ax1.set_yticks(y + 0.4 - height / 2, [a.name for a in arms])
        ax1.invert_yaxis()
        ax1.set_xlabel("Δ bpb vs baseline (paired, 95% CI; < 0 is better)")
        ax1.legend(fontsize=7)
        all_arms = self.arms
        speed = [self.row(a.name, "bytes_per_s")["mean"] or 0.0 for a in all_arms]
        speed_err = [self.row(a.name, "bytes_per_s")["half_width"] or 0.0 for a in all_arms]
        y2 = np.arange(len(all_arms))
        ax2.barh(y2, speed, xerr=speed_err, color="gray", capsize=2)
        ax2.set_yticks(y2, [a.name for a in all_arms])
        ax2.invert_yaxis()
        ax2.set_xlim(left=0.0)
        ax2.set_xlabel("bytes/s (mean, 95% CI)")
        fig.suptitle(self.describe_setup(), fontsize=7, wrap=True)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        plt.close(fig)
        atomic_write_bytes(path, buf.getvalue())

    def save(self, out_dir: str | Path) -> dict[str, Path]:
        """Writes ablation.md, ablation.csv, runs.csv, ablation.json and ablation.png."""
        import json

        out = Path(out_dir)
        paths = {
            "markdown": out / "ablation.md",
            "csv": out / "ablation.csv",
            "runs": out / "runs.csv",
            "json": out / "ablation.json",
            "plot": out / "ablation.png",
        }
        atomic_write_bytes(paths["markdown"], self.to_markdown().encode())
        atomic_write_bytes(paths["csv"], self.to_csv().encode())
        atomic_write_bytes(paths["runs"], self.runs_csv().encode())
        payload = {
            "config": self.config,
            "stream": self.stream,
            "max_bytes": self.max_bytes,
            "seeds": self.seeds,
            "arms": [vars(a) for a in self.arms],
            "runs": {a: {str(s): r for s, r in v.items()} for a, v in self.runs.items()},
            "rows": self.rows,
            "seconds": self.seconds,
        }
        atomic_write_bytes(paths["json"], json.dumps(_json_safe(payload), indent=1).encode())
        self.plot(paths["plot"])
        return paths


def load_ablation(path: str | Path) -> AblationResult:
    """Reads the ``ablation.json`` that :meth:`AblationResult.save` wrote (to re-render it).

    Example:
        >>> import tempfile
        >>> from mugpt.corpus import Stream
        >>> res = ablate(RunConfig(), Stream.from_bytes(b"ab" * 20), seeds=2, jobs=1,
        ...              mechanisms=[{"name": "grad_clip"}])
        >>> out = res.save(tempfile.mkdtemp())
        >>> load_ablation(out["json"]).to_markdown() == res.to_markdown()
        True
    """
    import json

    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return AblationResult(
            arms=[Arm(**a) for a in data["arms"]],
            seeds=[int(s) for s in data["seeds"]],
            phases=list(data["stream"]["phases"]),
            runs={a: {int(s): r for s, r in v.items()} for a, v in data["runs"].items()},
            config=data["config"],
            stream=data["stream"],
            max_bytes=data["max_bytes"],
            seconds=float(data["seconds"]),
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"cannot read ablation results {str(path)!r}: {exc}") from None


def _short(v: float) -> str:
    """A counter for reading: thousands separated, four significant digits below 1000."""
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ---------------------------------------------------------------------- the driver


ProgressFn = Callable[[int, int, str], None]


def ablate(
    config: RunConfig,
    stream: Stream,
    seeds: int | Sequence[int] = 3,
    mechanisms: Sequence[dict[str, Any]] | None = None,
    max_bytes: int | None = None,
    jobs: int | None = None,
    progress: ProgressFn | None = None,
    arms: Sequence[Arm] | None = None,
) -> AblationResult:
    """Runs every arm of :func:`plan_arms` on ``stream`` for each seed and tabulates them.

    ``config`` gives the model, optimiser and protocol (its own mechanisms are ignored:
    pass them as ``mechanisms``, default all seven). ``arms`` replaces the plan by explicit
    arms (one named "baseline", the reference of the paired differences), for comparisons
    such as one mechanism at several settings. ``seeds`` is a count (seeds ``config.seed``,
    ``config.seed + 1``, ...) or an explicit list. ``jobs`` processes run in parallel
    (default: the number of cores; 1 runs in this process). ``progress(done, total, label)``
    is called after each run.

    Example:
        >>> from mugpt.corpus import Stream
        >>> skip = [{"name": "selective_backprop", "tau": 9.0}]  # above every window loss
        >>> arms = [Arm("baseline", []), Arm("skip all", skip)]
        >>> res = ablate(RunConfig(), Stream.from_bytes(b"ab" * 40), seeds=2, jobs=1, arms=arms)
        >>> res.row("baseline", "updates")["mean"], res.row("skip all", "updates")["mean"]
        (80.0, 0.0)
    """
    seed_list = (
        [config.seed + i for i in range(seeds)]
        if isinstance(seeds, int)
        else [int(s) for s in seeds]
    )
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ConfigError(f"give one or more distinct seeds; got {seed_list}")
    if isinstance(seeds, int) and seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if max_bytes is not None and max_bytes < 1:
        raise ConfigError(f"max_bytes must be at least 1, got {max_bytes}")
    if len(stream) == 0:
        raise ConfigError("the stream is empty; there is nothing to learn")
    if arms is None:
        arms = plan_arms(mechanisms)
    else:
        arms = list(arms)
        names = [a.name for a in arms]
        if len(set(names)) != len(names) or "baseline" not in names:
            raise ConfigError(f"give arms with distinct names, one of them 'baseline'; got {names}")
    base = config.to_dict()
    base["mechanisms"] = []
    tasks = []
    for seed in seed_list:  # seed-major, so partial progress covers every arm
        for arm in arms:
            cfg = {**base, "seed": seed, "mechanisms": arm.mechanisms}
            cfg["model"] = {k: v for k, v in base["model"].items() if k != "seed"}
            cfg["learner"] = {k: v for k, v in base["learner"].items() if k != "seed"}
            RunConfig.from_dict(cfg).build_mechanisms()  # validate before any work
            tasks.append((arm.name, seed, cfg, stream, max_bytes))
    runs: dict[str, dict[int, dict[str, Any]]] = {a.name: {} for a in arms}
    n_jobs = jobs if jobs is not None else (os.cpu_count() or 1)
    if n_jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {n_jobs}")
    t0 = time.perf_counter()
    done = 0
    if n_jobs == 1:
        for task in tasks:
            arm_name, seed, figures = _job(task)
            runs[arm_name][seed] = figures
            done += 1
            if progress:
                progress(done, len(tasks), f"{arm_name} seed {seed}")
    else:
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(
            max_workers=min(n_jobs, len(tasks)), mp_context=ctx, initializer=_one_blas_thread
        ) as pool:
            futures = [pool.submit(_job, task) for task in tasks]
            for fut in cf.as_completed(futures):
                arm_name, seed, figures = fut.result()
                runs[arm_name][seed] = figures
                done += 1
                if progress:
                    progress(done, len(tasks), f"{arm_name} seed {seed}")
    limit = len(stream) if max_bytes is None else min(len(stream), max_bytes)
    phases = [f"{i}:{p.label}" for i, p in enumerate(stream.phases) if p.start < limit]
    stream_info = {"spec": stream.spec, "bytes": len(stream), "phases": phases}
    return AblationResult(
        arms=arms,
        seeds=seed_list,
        phases=phases,
        runs=runs,
        config=base,
        stream=stream_info,
        max_bytes=max_bytes,
        seconds=time.perf_counter() - t0,
    )
