"""``mugpt ablate``: the same stream with no mechanism, each mechanism alone, and all together."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from mugpt.cli.common import add_run_config_args, run_config_from_args
from mugpt.errors import ConfigError

DESCRIPTION = """\
Measure what each continual-learning mechanism does. The same stream is learned by several
arms: the baseline (no mechanism), each mechanism alone, and all of them together, each for
several seeds (the seed changes the initialisation and the mechanisms' draws; the bytes stay
the same). Runs go to parallel processes.

The table gives, per arm, the prequential bits per byte overall and per phase, the mean
recovery after a boundary, the mean forgetting on a revisit, the optimiser updates made and
the speed — each as mean ± 95% confidence interval (Student's t over seeds) — then the paired
difference from the baseline (same seed) with its interval. Arms that train on other windows
than the current one (replay) are marked "not strict online".

Written to --out: ablation.md, ablation.csv (one line per arm and metric), runs.csv (one line
per run), ablation.json and ablation.png.
"""

EPILOG = """\
examples:
  mugpt ablate --max-bytes 100k --update-every 16
  mugpt ablate --stream "a=stdlib-prose:50k,b=stdlib-code:50k,a=stdlib-prose:50k" --seeds 5
  mugpt ablate book.txt --mech cache:lam=0.2 --mech knn --jobs 2 --out runs/abl-book
  mugpt ablate --stream file:data/tinystories.txt --max-bytes 200k --update-every 16

--mech chooses the mechanisms to compare (default: all seven with their defaults), with the
same NAME:key=value,... syntax as `mugpt run`: selective_backprop, replay, adaptive_lr,
grad_clip, cache, knn, ngram_mix.

Without --lr, the seed model at k = 1, 4, 16 or 32 learns at the rate the published lr scan
found best for its optimiser and k (docs/results/lr-scan.md), so that no mechanism is judged
against a baseline at the wrong rate; the table's setup line says which rate was used.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "ablate",
        help="compare mechanisms against the baseline over seeds, with confidence intervals",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", metavar="INPUT", help="a file to learn, or - for stdin")
    s = p.add_argument_group("stream")
    s.add_argument("--stream", metavar="SPEC", help="a phased stream, e.g. a=stdlib-prose:50k,...")
    s.add_argument("--stream-file", metavar="FILE", help="a TOML/JSON file of phases")
    s.add_argument("--shuffle", action="store_true", help="shuffle the phase order (seeded)")
    s.add_argument("--max-bytes", metavar="N", help="learn only the first N bytes (k/M suffixes)")
    a = p.add_argument_group("ablation")
    a.add_argument("--seeds", type=int, default=3, metavar="N", help="seeds per arm (default 3)")
    a.add_argument(
        "--jobs", type=int, default=None, metavar="N", help="parallel processes (default: cores)"
    )
    a.add_argument("--out", metavar="DIR", help="output folder (default runs/ablate-DATE-TIME)")
    a.add_argument("--quiet", action="store_true", help="no progress bar or table")
    add_run_config_args(p)
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from mugpt.cli.run import parse_size, resolve_stream
    from mugpt.engine.ablate import ablate, scanned_lr, with_scanned_lr

    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.jobs is not None and args.jobs < 1:
        raise ConfigError(f"--jobs must be at least 1, got {args.jobs}")
    cfg = run_config_from_args(args)
    mechanisms = cfg.mechanisms or None
    stream, spec = resolve_stream(args, cfg)
    cfg = cfg.replace(stream=spec, mechanisms=[])
    if args.cfg_lr is None and scanned_lr(cfg) is not None:
        cfg = with_scanned_lr(cfg)
    max_bytes = parse_size(args.max_bytes) if args.max_bytes else None
    out = Path(args.out) if args.out else Path("runs") / time.strftime("ablate-%Y%m%d-%H%M%S")

    console = Console(stderr=True)
    with Progress(
        TextColumn("[bold]ablating[/]"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} runs"),
        TextColumn("{task.fields[last]}"),
        TimeElapsedColumn(),
        console=console,
        disable=args.quiet,
    ) as bar:
        task = bar.add_task("runs", total=None, last="")

        def progress(done: int, total: int, label: str) -> None:
            bar.update(task, completed=done, total=total, last=label)

        result = ablate(
            cfg,
            stream,
            seeds=args.seeds,
            mechanisms=mechanisms,
            max_bytes=max_bytes,
            jobs=args.jobs,
            progress=progress,
        )
    paths = result.save(out)
    if not args.quiet:
        print_tables(result)
        Console().print(f"written: {', '.join(str(p) for p in paths.values())}")
    return 0


def print_tables(result: Any) -> None:
    """The main table and the paired differences, as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:  # piped or redirected: room for every column
        console = Console(width=200)
    console.print(result.describe_setup())
    for diff, title in (
        (False, "ablation (mean ± 95% CI over seeds)"),
        (True, "paired difference from the baseline (same seed; Δ bpb < 0 is better)"),
    ):
        header, body = result.table(diff=diff)
        table = Table(title=title)
        for i, col in enumerate(header):
            table.add_column(col, justify="left" if i < 2 else "right", overflow="fold")
        for row in body:
            table.add_row(*row)
        console.print(table)
