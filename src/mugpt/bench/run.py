"""``mugpt bench``: μGPT configurations, the PyTorch eager reference and classic compressors,
timed on the same bytes, with FLOPs per byte and the fraction of the machine's matmul peak.

Example:
    >>> report = run_bench(b"abc" * 300, configs=["seed-k32"], repeats=1, torch=False,
    ...                    baselines=False, peak=False)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.bench import measure
from mugpt.bench.flops import flops_per_byte
from mugpt.engine.baselines import BASELINES
from mugpt.engine.checkpoint import atomic_write_bytes
from mugpt.engine.config import PRESETS, SEED_LR_BY_K, RunConfig
from mugpt.errors import ConfigError

BENCH_CONFIGS: dict[str, dict[str, Any]] = {
    "seed": {"preset": "seed"},
    # the seed preset's lr is the scan's k = 1 value; at k = 32 it takes the scan's own
    "seed-k32": {
        "preset": "seed",
        "optim": {"lr": SEED_LR_BY_K["sgd"][32]},
        "learner": {"update_every": 32},
    },
    "seed-B16": {"preset": "seed", "learner": {"batch_streams": 16}},
    "strong": {"preset": "strong"},
}
"""Named benchmark configurations (any preset name works too)."""


def default_configs() -> list[str]:
    return ["seed", "seed-k32"] + (["strong"] if "strong" in PRESETS else [])


@dataclass
class BenchRow:
    """One timed workload."""

    name: str
    kind: str  # "mugpt" | "torch" | "compressor"
    backend: str
    bytes_per_s: float  # median over the repeats, wall clock
    bytes_per_s_cpu: float  # median over the repeats, process CPU time
    bpb: float
    peak_rss_mb: float
    rss_delta_mb: float
    seconds: list[float]
    update_every: int | None = None
    batch_streams: int | None = None
    window_loss: str | None = None
    params: int | None = None
    flops_per_byte: float | None = None
    gflops: float | None = None  # FLOPs per byte × bytes/s (CPU time)
    peak_fraction: float | None = None  # gflops / the machine's measured peak (CPU time)
    speedup_vs_torch: float | None = None
    config: dict[str, Any] = field(default_factory=dict)
    experts: list[dict[str, Any]] | None = None  # a mixture's attribution (untimed extra run)


@dataclass
class BenchReport:
    source: str
    bytes: int
    repeats: int
    peak_gflops: float | None  # by process CPU time (robust to other load on the machine)
    peak_gflops_wall: float | None
    machine: dict[str, Any]
    rows: list[BenchRow]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["memory_method"] = (
            "peak resident set (VmHWM, reset via /proc/self/clear_refs just before the timed "
            "work) of a fresh child process per workload (peak_rss_mb), minus its resident set "
            "at the start of the work (rss_delta_mb)"
        )
        out["flops_method"] = "analytic, see mugpt.bench.flops and docs/bench.md"
        return out

    def write_json(self, path: str | Path) -> None:
        text = json.dumps(self.to_dict(), indent=2, default=_jsonable) + "\n"
        atomic_write_bytes(path, text.encode())


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"not JSON-serialisable: {type(value).__name__}")


def _parse_value(text: str) -> Any:
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text.strip()


def parse_config_spec(spec: str) -> RunConfig:
    """``NAME[+MECHANISM...][:section.key=value,...]`` → a RunConfig. NAME is a benchmark
    configuration (:data:`BENCH_CONFIGS`) or a preset; each ``+MECHANISM`` adds that mechanism
    with its default settings (to time what it costs beside the same configuration without).

    Example:
        >>> cfg = parse_config_spec("seed:learner.update_every=8,model.d_model=32")
        >>> cfg.learner.update_every, cfg.model.d_model
        (8, 32)
        >>> [m["name"] for m in parse_config_spec("seed-k32+replay+cache").mechanisms]
        ['replay', 'cache']
        >>> [m["name"] for m in parse_config_spec("strong+knn").mechanisms]
        ['ngram_mix', 'knn']
    """
    head, _, rest = spec.partition(":")
    name, *mechanisms = (part.strip() for part in head.split("+"))
    if name in BENCH_CONFIGS:
        base = BENCH_CONFIGS[name]
    elif name in PRESETS:
        base = {"preset": name}
    else:
        raise ConfigError(
            f"unknown benchmark configuration {name!r}; choose one of "
            f"{sorted(set(BENCH_CONFIGS) | set(PRESETS))} (optionally NAME:section.key=value,...)"
        )
    if base.get("preset", "seed") not in PRESETS:
        raise ConfigError(f"configuration {name!r} needs preset {base['preset']!r}, not in this build")  # fmt: skip
    overrides: dict[str, Any] = {}
    for token in filter(None, (t.strip() for t in rest.split(","))):
        key, eq, value = token.partition("=")
        if not eq or "." not in key:
            raise ConfigError(f"bad override {token!r} in {spec!r}: write section.key=value")
        overrides[key.strip()] = _parse_value(value)
    if mechanisms:
        from mugpt.mechanisms import available

        known = available()
        for mech in mechanisms:
            if mech not in known:
                raise ConfigError(
                    f"unknown mechanism {mech!r} in {spec!r}; choose from {sorted(known)}"
                )
    cfg = RunConfig.from_dict(base)
    if mechanisms:  # after the preset's own mechanisms (strong+knn keeps ngram_mix)
        values = cfg.to_dict()
        values["mechanisms"] = list(values["mechanisms"]) + [{"name": m} for m in mechanisms]
        cfg = RunConfig.from_dict(values)
    return cfg.with_overrides(overrides) if overrides else cfg


def machine_info() -> dict[str, Any]:
    import numba

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "numba": numba.__version__,
        "threads": "1 (OMP/OpenBLAS/MKL/numba/torch pinned)",
    }


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


Progress = Callable[[str], None]


def run_bench(
    data: bytes,
    doc_starts: Sequence[int] | np.ndarray = (0,),
    configs: Sequence[str] | None = None,
    repeats: int = 3,
    torch: bool = True,
    baselines: bool = True,
    peak: bool = True,
    source: str = "",
    progress: Progress | None = None,
    experts: bool = True,
    freeze_network: bool = False,
) -> BenchReport:
    """Times every workload on ``data`` (each in a fresh single-thread child process); with
    ``experts``, a configuration with a mixture makes one more run, not timed, that
    attributes it to its experts (``BenchRow.experts``); ``freeze_network`` times every
    configuration with its network frozen."""
    if repeats < 1:
        raise ConfigError(f"repeats={repeats} must be >= 1 (3 gives a median of three)")
    if len(data) < 64:
        raise ConfigError(f"benchmark data has {len(data)} bytes; give at least 64")
    say = progress or (lambda _msg: None)
    starts = np.asarray(doc_starts, dtype=np.int64)
    names = list(configs) if configs else default_configs()
    parsed = [(name, parse_config_spec(name)) for name in names]
    if freeze_network:  # every configuration with its network frozen (the network share)
        parsed = [(f"{name} (frozen)", cfg.with_overrides({"learner.freeze_network": True})) for name, cfg in parsed]  # fmt: skip
    peak_gflops = peak_wall = None
    if peak:
        say("measuring the float32 matmul peak")
        measured = measure.in_child(measure.measure_peak)
        peak_gflops, peak_wall = float(measured["gflops_cpu"]), float(measured["gflops"])
    rows: list[BenchRow] = []
    torch_on = torch and _torch_available()
    for name, cfg in parsed:
        say(f"mugpt {name}")
        r = measure.in_child(measure.measure_mugpt, cfg.to_dict(), data, starts, repeats, experts)
        row = _model_row(name, "mugpt", cfg, r, peak_gflops)
        row.experts = r.get("experts")
        rows.append(row)
        eligible = not cfg.mechanisms and cfg.learner.batch_streams == 1
        if torch_on and eligible:
            say(f"torch eager {name}")
            t = measure.in_child(measure.measure_torch, cfg.to_dict(), data, starts, repeats)
            trow = _model_row(f"torch {name}", "torch", cfg, t, peak_gflops)
            row.speedup_vs_torch = row.bytes_per_s / trow.bytes_per_s
            rows.append(trow)
    if baselines:
        for comp in BASELINES:
            say(f"{comp}")
            r = measure.in_child(measure.measure_compressor, comp, data, repeats)
            rows.append(BenchRow(name=comp, kind="compressor", **_common(r)))
    return BenchReport(
        source=source,
        bytes=len(data),
        repeats=repeats,
        peak_gflops=peak_gflops,
        peak_gflops_wall=peak_wall,
        machine=machine_info(),
        rows=rows,
    )


def _common(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("backend", "bytes_per_s", "bytes_per_s_cpu", "bpb", "peak_rss_mb", "rss_delta_mb")
    return {k: r[k] for k in keys} | {"seconds": list(r["seconds"])}


def _model_row(
    name: str, kind: str, cfg: RunConfig, r: dict[str, Any], peak: float | None
) -> BenchRow:
    k, b = cfg.learner.update_every, cfg.learner.batch_streams
    fpb = flops_per_byte(cfg.model, k, b)
    gflops = fpb * r["bytes_per_s_cpu"] / 1e9
    return BenchRow(
        name=name,
        kind=kind,
        update_every=k,
        batch_streams=b,
        window_loss=cfg.learner.window_loss,
        params=cfg.model.n_params,
        flops_per_byte=fpb,
        gflops=gflops,
        peak_fraction=gflops / peak if peak else None,
        config=cfg.to_dict(),
        **_common(r),
    )


def experts_table(rows: list[dict[str, Any]], title: str = "") -> Any:
    """A table of a mixture's experts: mean weight and the bits the mixture saved by each."""
    from rich.table import Table

    table = Table(
        title=title
        or "experts of the mixture (saved: the mixture's bits without the expert, other "
        "weights as they were, minus its bits)"
    )
    for col in ("expert", "mean weight", "saved bpb", "saved bits"):
        table.add_column(col, justify="left" if col == "expert" else "right")
    for r in rows:
        weight, per_byte = r.get("mean_weight"), r.get("bpb_saved")
        table.add_row(
            r["expert"],
            "—" if weight is None else f"{weight:.3f}",
            "—" if per_byte is None else f"{per_byte:+.4f}",
            f"{r['bits_saved']:,.0f}",
        )
    return table


def render_experts(report: BenchReport) -> list[Any]:
    """One table per configuration with a mixture: its experts' mean weights and the bits
    the mixture saved by each (see ``NgramMix.track_experts``)."""
    return [
        experts_table(row.experts, f"experts of {row.name}'s mixture (bpb saved: the "
                      "mixture without the expert, other weights as they were, minus it)")
        for row in report.rows
        if row.experts
    ]  # fmt: skip


def render_table(report: BenchReport) -> Any:
    """A rich Table of the report."""
    from rich.table import Table

    peak = f"{report.peak_gflops:.1f} GFLOP/s" if report.peak_gflops else "not measured"
    table = Table(
        title=f"mugpt bench — {report.bytes:,} bytes of {report.source or 'input'}; median of "
        f"{report.repeats}; 1 thread; float32 matmul peak {peak} (GFLOP/s and % peak by CPU "
        "time)",
        title_justify="left",
    )
    for col in ("name", "k", "B", "bytes/s", "B/s cpu", "bpb", "RSS MB (Δ)", "kFLOP/B",
                "GFLOP/s", "% peak", "× torch"):  # fmt: skip
        table.add_column(col, justify="left" if col == "name" else "right", no_wrap=True)

    def opt(v: float | None, fmt: str) -> str:
        return "—" if v is None else format(v, fmt)

    for row in report.rows:
        table.add_row(
            row.name,
            opt(row.update_every, "d"),
            opt(row.batch_streams, "d"),
            f"{row.bytes_per_s:,.0f}",
            f"{row.bytes_per_s_cpu:,.0f}",
            f"{row.bpb:.3f}",
            f"{row.peak_rss_mb:.0f} ({row.rss_delta_mb:.1f})",
            opt(None if row.flops_per_byte is None else row.flops_per_byte / 1e3, ",.1f"),
            opt(row.gflops, ".2f"),
            opt(None if row.peak_fraction is None else 100 * row.peak_fraction, ".1f"),
            opt(row.speedup_vs_torch, ".1f"),
        )
    return table


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))
