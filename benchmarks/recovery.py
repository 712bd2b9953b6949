"""Recovery after a shift over several seeds: what an adaptive-LR boost (at oracle or at
detected alarms; of every weight or of one parameter group), a reset of Adam's moments and a
short replay burst from the new phase (at oracle boundaries or detected alarms) buy against no
boost, with 95% intervals.

Part 2 of ``benchmarks/detectors.py`` (one seed) repeated over ``--seeds`` seeds (a seed
changes the initial weights, never the bytes), on the same streams and variants
(:func:`detectors.learn`): for each variant the bits per byte over the first 2 kB and 10 kB
of every phase that follows a boundary (mean over boundaries), the mean recovery bytes
(DESIGN §5) and the stream's bpb; then each variant minus "no boost" on the same seed, as a
paired 95% Student-t interval (:func:`mugpt.sweep.stats.mean_ci`). A difference is called a
gain or a loss only where its interval excludes zero.

    python benchmarks/recovery.py                          # writes docs/results/recovery.md
    python benchmarks/recovery.py --seeds 5 --jobs 2 --streams code,default --out /tmp/r.md
"""

from __future__ import annotations

import argparse
import platform
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from detectors import BURST_BYTES, BURST_STRIDE, STREAMS, early_bits, learn

from mugpt.bench.measure import cpu_model
from mugpt.engine.metrics import phase_metrics
from mugpt.sweep.stats import mean_ci

BOOST = [{"name": "adaptive_lr"}]
# a detector that never fires: the mechanism is on (its boost applies at the oracle's alarms)
NEVER = [{"name": "adaptive_lr", "detector": "ema", "threshold": 10.0, "rearm": 10.0}]
# the block test's alarms with no boost: they only time the replay bursts
DETECT_ONLY = [{"name": "adaptive_lr", "boost": 1.0}]
VARIANTS: dict[str, tuple[list[dict[str, Any]], str | None]] = {
    "no boost": ([], None),
    "boost at oracle alarms": (NEVER, "boost"),
    "boost at detected alarms (blocks)": (BOOST, None),
    # the same boost at the true boundaries, limited to one parameter group
    **{
        f"boost of the {group} only at oracle alarms": ([{**NEVER[0], "params": group}], "boost")
        for group in ("embeddings", "blocks", "head")
    },
    "Adam moments reset at oracle alarms": ([], "reset"),  # seed-adam only
    "replay burst at oracle boundaries": ([], "burst"),
    "replay burst at detected alarms (blocks)": (DETECT_ONLY, "burst at alarms"),
}
METRICS = ("bpb", "first 2 kB", "first 10 kB", "recovery bytes")


def variants(preset: str) -> list[str]:
    return [v for v in VARIANTS if preset == "seed-adam" or "Adam" not in v]


def run_task(task: tuple[str, str, str, int]) -> tuple[tuple[str, str, str, int], dict[str, float | None], float]:  # fmt: skip
    """One run: (stream, preset, variant, seed) → its metrics and CPU seconds."""
    name, preset, variant, seed = task
    mechs, oracle = VARIANTS[variant]
    stream, losses, cpu, _ = learn(STREAMS[name][0], preset, mechs, oracle, seed=seed)
    rec = [r["recovery_bytes"] for r in phase_metrics(losses, stream)[1:]]
    rec_vals = [r for r in rec if r is not None]
    metrics = {
        "bpb": float(losses.mean()),
        "first 2 kB": early_bits(stream, losses, 2000),
        "first 10 kB": early_bits(stream, losses, 10000),
        "recovery bytes": float(np.mean(rec_vals)) if rec_vals else None,
    }
    return task, metrics, cpu


def _ci(values: list[float | None], digits: int) -> str:
    r = mean_ci(values)
    if r.mean is None:
        return "—"
    half = "" if r.ci95 is None else f" ± {r.ci95:.{digits}f}"
    return f"{r.mean:.{digits}f}{half}"


def _delta(values: list[float | None], digits: int) -> str:
    r = mean_ci(values)
    if r.mean is None:
        return "—"
    if r.ci95 is None:
        return f"{r.mean:+.{digits}f}"
    word = "" if abs(r.mean) <= r.ci95 else (" **lower**" if r.mean < 0 else " **higher**")
    return f"{r.mean:+.{digits}f} ± {r.ci95:.{digits}f}{word}"


def tables(results: dict[tuple[str, str, str, int], dict[str, float | None]], names: list[str],
           seeds: list[int]) -> list[str]:  # fmt: skip
    digits = {"bpb": 4, "first 2 kB": 4, "first 10 kB": 4, "recovery bytes": 0}
    lines = [
        "| stream | preset | variant | " + " | ".join(METRICS) + " |",
        "|---|---|---|" + "---|" * len(METRICS),
    ]
    deltas = [
        "| stream | preset | variant | " + " | ".join(f"Δ {m}" for m in METRICS) + " |",
        "|---|---|---|" + "---|" * len(METRICS),
    ]
    for name in names:
        for preset in ("seed", "seed-adam"):
            for variant in variants(preset):
                runs = [results[(name, preset, variant, s)] for s in seeds]
                base = [results[(name, preset, "no boost", s)] for s in seeds]
                cells = [_ci([r[m] for r in runs], digits[m]) for m in METRICS]
                lines.append(f"| {name} | {preset} | {variant} | " + " | ".join(cells) + " |")
                if variant == "no boost":
                    continue
                diffs = []
                for m in METRICS:
                    pairs = [(r[m], b[m]) for r, b in zip(runs, base, strict=True)]
                    diffs.append(_delta([None if a is None or b is None else a - b for a, b in pairs], digits[m]))  # fmt: skip
                deltas.append(f"| {name} | {preset} | {variant} | " + " | ".join(diffs) + " |")
    return [*lines, "", "Each variant minus no boost on the same seed (paired):", "", *deltas]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="docs/results/recovery.md")
    ap.add_argument("--streams", default="code,counting,codecount,default")
    ap.add_argument("--seeds", type=int, default=3, help="seeds 0 … N−1 (>= 2)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes")
    args = ap.parse_args()
    if args.seeds < 2:
        raise SystemExit("error: --seeds must be at least 2 (an interval needs two runs)")
    names = args.streams.split(",")
    unknown = [n for n in names if n not in STREAMS]
    if unknown:
        raise SystemExit(f"error: unknown stream(s) {unknown}; choose from {sorted(STREAMS)}")
    seeds = list(range(args.seeds))
    tasks = [(n, p, v, s) for n in names for p in ("seed", "seed-adam") for v in variants(p) for s in seeds]  # fmt: skip
    t0 = time.perf_counter()
    results: dict[tuple[str, str, str, int], dict[str, float | None]] = {}
    cpu_total = 0.0
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for task, metrics, cpu in pool.map(run_task, tasks):
            results[task] = metrics
            cpu_total += cpu
            print(task, {k: None if v is None else round(v, 4) for k, v in metrics.items()}, flush=True)  # fmt: skip
    lines = [
        "# Recovery after a shift, over seeds",
        "",
        f"From `python {' '.join(shlex.quote(a) for a in sys.argv)}` (benchmarks/recovery.py). "
        f"CPU: {cpu_model()}; Python {platform.python_version()}. The seed model under `seed` "
        "(SGD + clipping, lr 0.02) and `seed-adam`, k = 1, window loss over all positions, seeds "
        f"{', '.join(map(str, seeds))} (initial weights; the bytes are the same). Mean ± half-width "
        "of the 95% t interval over seeds. *first 2 kB*, *first 10 kB*: bits per byte over the "
        "first bytes of each phase after a boundary (mean over boundaries); *recovery bytes*: "
        "bytes after a boundary until the trailing loss is within 10% of the phase's final level "
        "(mean over recovered boundaries). *Oracle* alarms are raised at the true boundaries (the "
        "best a detector could do); *detected* uses the default block test inside the run. A "
        f"*replay burst* is one extra update on each of the windows ending every {BURST_STRIDE} "
        f"bytes of the first {BURST_BYTES} bytes after a boundary (or an alarm), made once those "
        "bytes are learned, with no LR boost; the bytes before it count in *first 2 kB*. The "
        "streams are described in [detectors.md](detectors.md).",
        "",
        *tables(results, names, seeds),
        "",
        f"{len(tasks)} runs, {cpu_total:.0f} CPU s, {time.perf_counter() - t0:.0f} s wall on "
        f"{args.jobs} worker process{'es' if args.jobs > 1 else ''}.",
    ]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
