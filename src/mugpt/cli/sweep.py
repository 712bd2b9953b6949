"""``mugpt sweep``: run a sweep file on local cores or Ray, report it, show its status."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DESCRIPTION = """\
Run many independent learning runs — a grid and/or a seeded random search over any config
key, times seeds — and compare them with means and 95% confidence intervals across seeds.

A sweep file (TOML) names a [base] run config, a [grid] of values and/or a [random] search,
the seeds and a byte budget per run; see docs/sweep.md and examples/sweep-small.toml.
Results go to an output folder: a SQLite store keyed by each run's config hash, one run
directory per run, and the report (results.md, results.csv, pareto.png, phases.png,
curves.png). Running the same sweep again skips finished runs and resumes interrupted ones
from their checkpoints; Ctrl-C stops cleanly.
"""

EPILOG = """\
examples:
  mugpt sweep run examples/sweep-small.toml                 local cores, out: sweeps/small
  mugpt sweep run examples/sweep-small.toml --workers 1 --out sweeps/try
  mugpt sweep run big.toml --backend ray                    a private Ray on this machine
  mugpt sweep run big.toml --backend ray --address auto     join a running Ray cluster
  mugpt sweep run big.toml --dry-run                        list the runs, run nothing
  mugpt sweep status sweeps/small
  mugpt sweep report sweeps/small                           regenerate tables and plots
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid/random search × seeds locally or on Ray, and report it",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    actions = p.add_subparsers(dest="sweep_command", metavar="ACTION")

    r = actions.add_parser(
        "run",
        help="run (or resume) the runs of a sweep file",
        description="Run every run of FILE not finished yet, then write the report.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    r.add_argument("file", metavar="FILE", help="the sweep file (TOML)")
    r.add_argument("--out", metavar="DIR", help="output folder (default sweeps/NAME)")
    r.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local worker processes (default) or Ray")  # fmt: skip
    r.add_argument("--address", metavar="ADDR",
                   help="Ray cluster to join: auto or HOST:PORT (default: start a private one)")  # fmt: skip
    r.add_argument("--workers", type=int, metavar="N",
                   help="runs at a time (default: the number of cores)")  # fmt: skip
    r.add_argument("--retry-failed", action="store_true", help="run failed runs again")
    r.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    r.add_argument("--no-report", action="store_true", help="skip the tables and plots")
    r.set_defaults(func=cmd_run)

    rep = actions.add_parser(
        "report",
        help="regenerate the tables and plots of a sweep folder",
        description="Rewrite results.md, results.csv, runs.csv and the plots of DIR.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  mugpt sweep report sweeps/small\n",
    )
    rep.add_argument("dir", metavar="DIR", help="a folder `mugpt sweep run` wrote")
    rep.set_defaults(func=cmd_report)

    st = actions.add_parser(
        "status",
        help="show how many runs are done, failed or pending",
        description="Counts of the runs of DIR by status, and the errors of failed runs.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n  mugpt sweep status sweeps/small\n"
            "  mugpt sweep status sweeps/small --json\n"
        ),
    )
    st.add_argument("dir", metavar="DIR", help="a folder `mugpt sweep run` wrote")
    st.add_argument("--json", action="store_true", help="one JSON object per run on stdout")
    st.set_defaults(func=cmd_status)
    p.set_defaults(func=lambda args: p.print_help() or 0)


def cmd_run(args: argparse.Namespace) -> int:
    from mugpt.sweep.driver import default_out_dir, run_sweep
    from mugpt.sweep.spec import SweepSpec

    spec = SweepSpec.load(args.file)
    out = Path(args.out) if args.out else default_out_dir(spec)
    if args.dry_run:
        plan = spec.plan()
        print(f"sweep {spec.name}: {len(plan)} runs → {out}")
        for r in plan:
            budget = f"{r.max_bytes:,} B" if r.max_bytes else "whole stream"
            print(f"  {r.run_id}  {r.label or 'base'}  seed={r.seed}  {budget}")
        return 0
    outcome = run_sweep(
        Path(args.file),
        out,
        backend=args.backend,
        workers=args.workers,
        address=args.address,
        retry_failed=args.retry_failed,
        report=not args.no_report,
    )
    return 1 if outcome.counts.get("failed") else 0


def cmd_report(args: argparse.Namespace) -> int:
    from mugpt.sweep.report import write_report

    paths = write_report(args.dir)
    print_summary_table(args.dir)
    for key, path in paths.items():
        print(f"{key:>9}: {path}")
    return 0


def print_summary_table(folder: str) -> None:
    """Prints each point of the sweep (per stream) with its mean bpb, 95% interval, bytes/s
    and seed count, so the report is readable without opening ``results.md``."""
    from rich.console import Console
    from rich.table import Table

    from mugpt.sweep.report import aggregate, load_sweep_results, table_rows

    rows = table_rows(aggregate(load_sweep_results(folder)))
    if not rows:
        print(f"{folder}: no finished runs yet")
        return
    fixed = {"stream", "update_every", "window_loss", "seeds", "failed"}
    axes = [k for k in rows[0] if k not in fixed and not k.startswith(("phase", "baseline_"))
            and not k.endswith(("_mean", "_ci95"))]  # fmt: skip
    table = Table(title=f"sweep {folder}", show_lines=False)
    for name in ["stream", *axes, "k", "seeds", "bpb (95% CI)", "bytes/s"]:
        table.add_column(name, justify="right" if name in ("k", "seeds", "bytes/s") else "left")

    def num(value: object, fmt: str) -> str:
        return "—" if value is None else format(value, fmt)

    for r in rows:
        bpb = num(r.get("bpb_mean"), ".4f")
        if r.get("bpb_ci95") is not None:
            bpb += f" ± {r['bpb_ci95']:.4f}"
        table.add_row(str(r["stream"]), *(str(r.get(a, "")) for a in axes),
                      str(r["update_every"]), str(r["seeds"]), bpb,
                      num(r.get("bytes_per_s_mean"), ",.0f"))  # fmt: skip
    Console(width=160).print(table)


def cmd_status(args: argparse.Namespace) -> int:
    from mugpt.sweep.report import load_sweep_results

    rows = load_sweep_results(args.dir)
    if args.json:
        for r in rows:
            keep = {k: r[k] for k in ("run_id", "status", "seed", "label", "bpb", "bytes_per_s",
                                      "updates", "bytes", "wall_s", "attempts", "error")}  # fmt: skip
            print(json.dumps(keep))
        return 0
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"{args.dir}: {len(rows)} runs · " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))  # fmt: skip
    for r in rows:
        if r["status"] == "failed":
            first = (r["error"] or "").splitlines()[0] if r["error"] else "unknown error"
            print(f"  failed  {r['run_id']}  {r['label'] or 'base'} seed={r['seed']}: {first}")
        elif r["status"] in ("interrupted", "running"):
            print(f"  {r['status']:<7} {r['run_id']}  {r['label'] or 'base'} seed={r['seed']}")
    return 0
