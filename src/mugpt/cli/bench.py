"""``mugpt bench``: speed, bits per byte and memory of μGPT, PyTorch eager and compressors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mugpt.errors import ConfigError, StreamError

DESCRIPTION = """\
Time μGPT configurations, a PyTorch eager implementation of the same model and protocol, and
gzip, bzip2, xz, zstd and PPMd, all on the same bytes, single-threaded (BLAS, numba and torch
pinned to one thread), each workload in a fresh child process.

For each: bytes/s (median of --repeats runs; wall clock, and process CPU time beside it),
prequential bits per byte, peak memory (getrusage ru_maxrss of the child; Δ = above its size
before the timed work), the analytic FLOPs per byte of the configuration (forward + backward +
optimiser of the window; see docs/bench.md), the GFLOP/s that makes and its share of the
machine's measured single-thread float32 matmul peak, and μGPT's speed-up over PyTorch.

Configurations: seed (the original μGPT, k = 1), seed-k32 (k = 32), seed-B16 (16 sub-streams),
strong (the strong preset), any preset name, each optionally with mechanisms at their
default settings, NAME+MECHANISM+... (e.g. seed+knn, to time what kNN costs), and overrides
NAME:section.key=value,... (e.g. seed:learner.update_every=8,learner.batch_streams=4).
"""

EPILOG = """\
examples:
  mugpt bench                                   default stream, seed, seed-k32, strong
  mugpt bench --bytes 50k --configs seed-k32 --no-torch --json bench.json
  mugpt bench book.txt --configs "seed:learner.batch_streams=16,learner.update_every=4"
  mugpt bench --stream file:/data/tinystories.txt --configs strong --no-torch
  mugpt bench --configs "seed;seed+cache;seed+knn;seed+replay" --no-torch --no-baselines
  mugpt bench --configs strong --freeze-network --no-torch    the count models' share alone
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="speed, bpb and memory of μGPT vs PyTorch eager and compressors",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", metavar="INPUT", help="a file to benchmark on")
    p.add_argument("--stream", metavar="SPEC", help="a stream spec instead (see mugpt run)")
    p.add_argument("--bytes", default="10k", metavar="N",
                   help="bytes to learn from the start of the data (k/M suffixes; default 10k)")  # fmt: skip
    p.add_argument("--configs", metavar="LIST",
                   help="semicolon- or comma-free list: NAME[:overrides];NAME... (default: "
                   "seed;seed-k32;strong)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3, help="timed runs per workload (median)")
    p.add_argument("--torch", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the PyTorch eager reference (needs torch)")  # fmt: skip
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=True,
                   help="also time gzip, bzip2, xz, zstd and PPMd")  # fmt: skip
    p.add_argument("--experts", action=argparse.BooleanOptionalAction, default=True,
                   help="for a configuration with a mixture (ngram_mix), one more untimed run "
                   "that shows each expert's mean weight and the bits the mixture saved by it")  # fmt: skip
    p.add_argument("--freeze-network", action="store_true",
                   help="every configuration with its network frozen (no backward pass or "
                   "update; mechanisms still learn): bpb minus the unfrozen bpb is the "
                   "network's share")  # fmt: skip
    p.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    p.add_argument("--quiet", action="store_true", help="print only the table")
    p.set_defaults(func=main)


def _data(args: argparse.Namespace) -> tuple[bytes, Any, str]:
    from mugpt.cli.run import parse_size
    from mugpt.corpus import build_stream, default_stream

    n = parse_size(args.bytes)
    if args.input and args.stream:
        raise ConfigError("give INPUT or --stream, not both")
    if args.input:
        path = Path(args.input)
        try:
            data = path.read_bytes()[:n]
        except OSError as exc:
            raise StreamError(f"cannot read {args.input!r}: {exc.strerror or exc}") from None
        return data, [0], str(path)
    stream = build_stream(args.stream) if args.stream else default_stream()
    starts = [int(s) for s in stream.doc_starts if s < n]
    return stream.data[:n], starts or [0], args.stream or "the default stream"


def main(args: argparse.Namespace) -> int:
    from rich.console import Console

    from mugpt.bench import render_table, run_bench
    from mugpt.bench.run import render_experts

    console = Console() if sys.stdout.isatty() else Console(width=140)
    data, starts, source = _data(args)
    configs = [c for c in (args.configs or "").split(";") if c.strip()] or None
    say = None if args.quiet else (lambda msg: console.print(f"[dim]… {msg}[/dim]"))
    report = run_bench(
        data, starts, configs=configs, repeats=args.repeats, torch=args.torch,
        baselines=args.baselines, source=source, progress=say, experts=args.experts,
        freeze_network=args.freeze_network,
    )  # fmt: skip
    console.print(render_table(report))
    for table in render_experts(report):
        console.print(table)
    if args.json:
        report.write_json(args.json)
        if not args.quiet:
            console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    from mugpt.cli import main as cli_main

    sys.exit(cli_main(["bench", *sys.argv[1:]]))
