"""Learning-rate scan of the seed model: SGD (global-norm clipping) and Adam, per k.

Every scan run learns the same TUNING bytes (the first ``--bytes`` of the built-in default
stream) with the seed model, once per seed; a seed changes the initial weights and the
Learner's generator, never the bytes. Both optimisers are scanned over their lr grid at every
k of ``--ks`` (k = 1, the strict per-byte protocol, first). Then, at k = 1 only, each
optimiser's best lr and its two neighbours in the grid, and the former seed optimiser (Adam,
lr 0.01), are run on HELD-OUT bytes that no choice looks at, each learned from scratch: the
next ``--bytes`` of the default stream after the tuning bytes, and the first ``--bytes`` of
TinyStories.
One process, one run at a time. Writes ``OUT.csv`` (one row per run) and ``OUT.md`` (mean bpb
and a 95% interval over seeds).

    python benchmarks/lr_scan.py                                  # writes docs/results/lr-scan.*
    python benchmarks/lr_scan.py --bytes 50000 --seeds 3 --ks 1,4,16
    python benchmarks/lr_scan.py --sgd-lrs 0.01,0.03 --adam-lrs 1e-4 --ks 1 --out /tmp/scan
"""

from __future__ import annotations

import argparse
import csv
import math
import platform
import shlex
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from mugpt.bench.measure import cpu_model
from mugpt.corpus import DEFAULT_SPEC, Phase, Stream, build_stream, default_stream
from mugpt.engine.config import RunConfig

SGD_LRS = "0.001,0.003,0.01,0.02,0.03,0.05,0.1,0.3,1,3"
ADAM_LRS = "3e-5,1e-4,2e-4,3e-4,5e-4,1e-3,3e-3,1e-2,3e-2"
TINYSTORIES = "/work/shared/data/tinystories-2mb.txt"
#: the seed preset's optimiser before this scan, run on the held-out sets for reference
FORMER_SEED = ("adam", 0.01)
NAMES = {"sgd": "SGD", "adam": "Adam"}
CSV_COLUMNS = ["data", "optimiser", "k", "lr", "seed", "bpb", "phase_bpb", "updates", "clipped", "cpu_s"]  # fmt: skip


@dataclass
class Run:
    data: str  # "tuning" or the name of a held-out set
    optimiser: str
    k: int
    lr: float
    seed: int
    bpb: float
    phase_bpb: dict[str, float]
    updates: int
    clipped: int
    seconds: float


def tail_of(stream: Stream, start: int, size: int) -> Stream:
    """Bytes ``start .. start + size`` of ``stream`` as a stream of their own (phases and
    document starts kept, a document starting at the first byte)."""
    end = min(start + size, len(stream.data))
    phases = [
        Phase(p.label, p.source, max(p.start, start) - start, min(p.end, end) - start)
        for p in stream.phases
        if p.end > start and p.start < end
    ]
    starts = [0] + [int(s) - start for s in stream.doc_starts if start < s < end]
    return Stream(stream.data[start:end], phases, np.asarray(starts, dtype=np.int64))


def optim_section(optimiser: str, lr: float, clip: float) -> dict[str, object]:
    if optimiser == "sgd":
        return {"name": "sgd", "lr": lr, "momentum": 0.0, "grad_clip": clip}
    return {"name": "adam", "lr": lr, "beta1": 0.9, "beta2": 0.999, "grad_clip": clip}


def one_run(data: str, stream: Stream, optimiser: str, k: int, lr: float, seed: int, clip: float) -> Run:  # fmt: skip
    cfg = RunConfig.from_dict(
        {
            "preset": "seed",
            "seed": seed,
            "optim": optim_section(optimiser, lr, clip),
            "learner": {"update_every": k, "window_loss": "all"},
        }
    )
    learner = cfg.build_learner()
    t0 = time.process_time()
    result = learner.run(stream)
    seconds = time.process_time() - t0
    phase_bpb = {
        f"{ph.label}@{ph.start}": float(result.losses[ph.start : ph.end].mean())
        for ph in stream.phases
    }
    updates = int(result.counters.get("updates", 0))
    clipped = int(learner.optimizer.clipped_steps)
    return Run(data, optimiser, k, lr, seed, result.bpb, phase_bpb, updates, clipped, seconds)


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% Student-t interval over seeds."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, math.nan
    sem = statistics.stdev(values) / math.sqrt(len(values))
    return mean, float(stats.t.ppf(0.975, len(values) - 1)) * sem


def cell(runs: list[Run], data: str, optimiser: str, k: int, lr: float) -> list[Run]:
    return [r for r in runs if (r.data, r.optimiser, r.k, r.lr) == (data, optimiser, k, lr)]


def best_lr(runs: list[Run], optimiser: str, k: int) -> float:
    lrs = {r.lr for r in runs if (r.data, r.optimiser, r.k) == ("tuning", optimiser, k)}
    return min(lrs, key=lambda lr: interval([r.bpb for r in cell(runs, "tuning", optimiser, k, lr)])[0])  # fmt: skip


def scan_table(runs: list[Run], optimiser: str, k: int) -> list[str]:
    """Markdown rows for one optimiser at one k on the tuning set; the best mean in bold."""
    lrs = sorted({r.lr for r in runs if (r.data, r.optimiser, r.k) == ("tuning", optimiser, k)})
    best = best_lr(runs, optimiser, k)
    lines = [
        "| lr | bpb (mean ± 95%) | per seed | updates | clipped | CPU s / run |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for lr in lrs:
        mine = cell(runs, "tuning", optimiser, k, lr)
        mean, half = interval([r.bpb for r in mine])
        seeds = ", ".join(f"{r.bpb:.3f}" for r in mine)
        cpu = statistics.fmean(r.seconds for r in mine)
        clipped = statistics.fmean(r.clipped for r in mine)
        name = f"**{lr:g}**" if lr == best else f"{lr:g}"
        lines.append(
            f"| {name} | {mean:.3f} ± {half:.3f} | {seeds} | {mine[0].updates:,} | "
            f"{clipped:,.0f} | {cpu:.1f} |"
        )
    return lines


def held_out_table(runs: list[Run], sets: list[str]) -> list[str]:
    arms = sorted(
        {(r.optimiser, r.lr) for r in runs if r.data in sets}, key=lambda a: (a[0] != "sgd", a[1])
    )
    tuning = {(o, lr): interval([r.bpb for r in cell(runs, "tuning", o, 1, lr)]) for o, lr in arms}
    lines = [
        "| optimiser | lr | tuning set | " + " | ".join(sets) + " |",
        "|---|---:|---:|" + "---:|" * len(sets),
    ]
    for optimiser, lr in arms:
        row = [NAMES[optimiser], f"{lr:g}", "{:.3f} ± {:.3f}".format(*tuning[optimiser, lr])]
        for name in sets:
            mean, half = interval([r.bpb for r in cell(runs, name, optimiser, 1, lr)])
            row.append(f"{mean:.3f} ± {half:.3f}")
        if (optimiser, lr) == FORMER_SEED:
            row[1] += " (former seed)"
        lines.append("| " + " | ".join(row) + " |")
    return lines


def write_csv(path: Path, runs: list[Run]) -> None:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in runs:
            phases = ";".join(f"{key}={v:.6f}" for key, v in r.phase_bpb.items())
            w.writerow(
                [r.data, r.optimiser, r.k, f"{r.lr:g}", r.seed, f"{r.bpb:.6f}", phases]
                + [r.updates, r.clipped, f"{r.seconds:.2f}"]
            )


def write_md(path: Path, runs: list[Run], args: argparse.Namespace, sets: dict[str, Stream], cpu_s: float) -> None:  # fmt: skip
    tuning = sets["tuning"]
    phases = ", ".join(f"{p.label} {p.start:,}–{p.end:,}" for p in tuning.phases)
    held = [name for name in sets if name != "tuning"]
    out = [
        "# Learning-rate scan of the seed model",
        "",
        f"- command: `{args.command}`",
        f"- machine: {cpu_model()} ({platform.machine()}, {platform.system()}), "
        f"Python {platform.python_version()}; one run at a time in one process",
        f"- tuning set: the first {len(tuning.data):,} bytes of the built-in default stream "
        f"(`{DEFAULT_SPEC}`): {phases}",
    ]
    for name in held:
        s = sets[name]
        what = ", ".join(f"{p.label} {p.start:,}–{p.end:,}" for p in s.phases)
        out.append(
            f"- held-out set `{name}`: {len(s.data):,} bytes ({what}); no choice looks at it"
        )
    out += [
        f"- model: the seed model ({RunConfig().model.n_params:,} parameters, float32), window "
        "loss over the full causal block, no mechanism",
        f"- SGD: no momentum, global-norm clipping at {args.clip:g}; Adam: β1 0.9, β2 0.999, "
        f"ε 1e-8, global-norm clipping at {args.clip:g}",
        f"- {args.seeds} seeds per cell (a seed changes the initial weights, not the bytes); "
        "± is the half-width of a 95% Student-t interval over seeds",
        f"- CPU time of the whole scan: {cpu_s / 60:.1f} min",
        "",
        "bpb is prequential bits per byte over the whole set (lower is better); the best mean",
        "of each table is in bold. `clipped` counts the updates whose gradient norm was above",
        "the clip (mean over seeds).",
        "",
        "## Best lr per k (tuning set)",
        "",
        "| k | SGD lr | SGD bpb | Adam lr | Adam bpb |",
        "|---:|---:|---:|---:|---:|",
    ]
    ks = sorted({r.k for r in runs if r.data == "tuning"})
    for k in ks:
        row = [str(k)]
        for optimiser in ("sgd", "adam"):
            lr = best_lr(runs, optimiser, k)
            mean, half = interval([r.bpb for r in cell(runs, "tuning", optimiser, k, lr)])
            row += [f"{lr:g}", f"{mean:.3f} ± {half:.3f}"]
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    if held:
        out += ["## Held-out sets, k = 1", "", *held_out_table(runs, held), ""]
    for k in ks:
        for optimiser in ("sgd", "adam"):
            out += [f"## {NAMES[optimiser]}, k = {k}", "", *scan_table(runs, optimiser, k), ""]
    path.write_text("\n".join(out))


def neighbours(grid: list[float], lr: float) -> list[float]:
    i = sorted(grid).index(lr)
    return sorted(grid)[max(0, i - 1) : i + 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--bytes", type=int, default=100_000, help="tuning bytes (default 100000)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--sgd-lrs", default=SGD_LRS)
    ap.add_argument("--adam-lrs", default=ADAM_LRS)
    ap.add_argument("--ks", default="1,4,16,32", help="update_every values scanned")
    ap.add_argument("--clip", type=float, default=1.0, help="global-norm gradient clip")
    ap.add_argument("--tinystories", default=TINYSTORIES, help="held-out file ('' skips it)")
    ap.add_argument("--no-held-out", action="store_true", help="the tuning scan only")
    ap.add_argument("--out", default="docs/results/lr-scan", help="writes OUT.md and OUT.csv")
    args = ap.parse_args()
    args.command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    sets = {"tuning": build_stream(DEFAULT_SPEC, seed=0, max_bytes=args.bytes)}
    if not args.no_held_out:
        rest = tail_of(default_stream(seed=0), args.bytes, args.bytes)
        sets[f"default stream, bytes {args.bytes:,}–{2 * args.bytes:,}"] = rest
        if args.tinystories and Path(args.tinystories).is_file():
            spec = f"stories=file:{args.tinystories}:{args.bytes}"
            sets[f"TinyStories, first {args.bytes:,} bytes"] = build_stream(spec, seed=0)
    ks = sorted({int(k) for k in args.ks.split(",")})
    grids = {
        "sgd": [float(x) for x in args.sgd_lrs.split(",") if x],
        "adam": [float(x) for x in args.adam_lrs.split(",") if x],
    }
    runs: list[Run] = []
    start = time.process_time()

    def go(data: str, optimiser: str, k: int, lr: float) -> None:
        for seed in range(args.seeds):
            run = one_run(data, sets[data], optimiser, k, lr, seed, args.clip)
            runs.append(run)
            print(
                f"{data[:12]:<12} k={k:<3} {optimiser:<4} lr={lr:<7g} seed={seed} "
                f"bpb={run.bpb:.4f} cpu={run.seconds:.1f}s",
                flush=True,
            )

    for k in ks:
        for optimiser, lrs in grids.items():
            for lr in lrs:
                go("tuning", optimiser, k, lr)
    if 1 in ks:
        arms = [(o, lr) for o in grids for lr in neighbours(grids[o], best_lr(runs, o, 1))]
        if FORMER_SEED not in arms:
            arms.append(FORMER_SEED)
        for data in [name for name in sets if name != "tuning"]:
            for optimiser, lr in arms:
                if not cell(runs, "tuning", optimiser, 1, lr):
                    go("tuning", optimiser, 1, lr)
                go(data, optimiser, 1, lr)
    cpu_s = time.process_time() - start
    print(f"scan CPU time {cpu_s:.0f} s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_csv(out.with_suffix(".csv"), runs)
    write_md(out.with_suffix(".md"), runs, args, sets, cpu_s)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
