"""``mugpt run``: learn a stream prequentially and write a run directory."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from mugpt.cli.common import add_run_config_args, run_config_from_args
from mugpt.errors import ConfigError, StreamError

DESCRIPTION = """\
Learn a byte stream online, under the prequential protocol: each byte is predicted, its loss
recorded, and only then learned from. Prints a progress bar (bytes/s, running bits per byte),
then a per-phase table beside gzip, bzip2, xz, zstd and PPMd on the same bytes, and writes a
run directory: config.json, summary.json, log.csv (per-byte losses), events.json,
checkpoint.npz and plot.png.

What is read: INPUT (a file, or - for standard input), else --stream / --stream-file, else
the `stream` of --config, else the built-in default phased stream (prose, code, stories,
prose again).
"""

EPILOG = """\
examples:
  mugpt run                                   the default stream, seed config, k = 1
  mugpt run book.txt --out runs/book --update-every 32
  mugpt run --stream "prose=stdlib-prose:50k,code=stdlib-code:50k,prose=stdlib-prose:50k"
  cat notes.txt | mugpt run - --d-model 32 --layers 2 --lr 3e-3
  mugpt run --mech replay:capacity=256 --mech cache --max-bytes 100k
  mugpt run --resume runs/book/checkpoint.npz book.txt --out runs/book-more
  mugpt run book.txt --preset strong --experts       what each expert of the mixture saves
  mugpt run book.txt --preset strong --freeze-network  the count models alone (no learning)

stream spec: comma-separated phases LABEL=SOURCE:BUDGET (budget in bytes, k/M suffixes);
sources: file:PATH, dir:PATH, text:..., stdin, stdlib-prose, stdlib-code, random, repeat,
counting, stories, tinystories:valid|train. A label may recur to measure forgetting.
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="learn a stream online and write a run directory",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", nargs="?", metavar="INPUT", help="a file to learn, or - for stdin")
    s = p.add_argument_group("stream")
    s.add_argument(
        "--stream",
        metavar="SPEC",
        help="a phased stream, e.g. a=stdlib-prose:50k,b=stdlib-code:50k",
    )
    s.add_argument("--stream-file", metavar="FILE", help="a TOML/JSON file of phases")
    s.add_argument("--shuffle", action="store_true", help="shuffle the phase order (seeded)")
    s.add_argument(
        "--max-bytes",
        metavar="N",
        help="stop after N bytes in all (k/M suffixes), at the last step boundary at or "
        "before N, so --resume continues bit for bit",
    )
    o = p.add_argument_group("output")
    o.add_argument("--out", metavar="DIR", help="run directory (default runs/run-DATE-TIME)")
    o.add_argument("--force", action="store_true", help="replace a non-empty --out directory")
    o.add_argument("--resume", metavar="CHECKPOINT", help="continue a run from its checkpoint")
    o.add_argument("--no-baselines", action="store_true", help="skip gzip/xz/PPMd yardsticks")
    o.add_argument(
        "--export",
        metavar="FORMATS",
        default="",
        help="also export the per-byte log: jsonl, parquet, tensorboard (comma list)",
    )
    o.add_argument(
        "--experts",
        action="store_true",
        help="attribute a mixture (ngram_mix) to its experts: per expert its mean weight and "
        "the bits the mixture saved by it (a counterfactual mixture without it, computed "
        "alongside); in summary.json and the table. Same bits, slower",
    )
    o.add_argument("--quiet", action="store_true", help="no progress bar or table")
    o.add_argument(
        "--max-params",
        metavar="N",
        type=int,
        default=DEFAULT_MAX_PARAMS,
        help=f"refuse models with more than N parameters (default {DEFAULT_MAX_PARAMS:,})",
    )
    add_run_config_args(p)
    p.set_defaults(func=main)


#: The default of --max-params: models larger than this are refused before any allocation.
DEFAULT_MAX_PARAMS = 50_000_000


def parse_size(text: str, flag: str = "--max-bytes") -> int:
    """``300``, ``50k``, ``2M``, ``64Ki`` → bytes, with the stream spec's rules (one parser).

    >>> parse_size("50k"), parse_size("64Ki")
    (50000, 65536)
    """
    from mugpt.corpus.spec import SIZE_HELP, quote
    from mugpt.corpus.spec import parse_size as parse_spec_size

    value = parse_spec_size(text)
    if value is None:
        raise ConfigError(f"{flag} {quote(text)} is not a whole number of bytes; {SIZE_HELP}")
    if value < 1:
        raise ConfigError(f"{flag} {quote(text)} must be at least 1 byte")
    return value


def resolve_stream(
    args: argparse.Namespace, cfg: Any, max_bytes: int | None = None
) -> tuple[Any, str]:
    """Builds the stream the arguments ask for; returns it and its spec (for config.json).

    Nothing past ``max_bytes`` (or the stream cap) is read or generated.
    """
    from mugpt.corpus import Stream, build_stream, default_stream, load_stream_file
    from mugpt.corpus.spec import MAX_STREAM_BYTES, format_size

    shuffle = getattr(args, "shuffle", False)
    if args.input is not None:
        limit = MAX_STREAM_BYTES if max_bytes is None else min(max_bytes, MAX_STREAM_BYTES)
        over = (
            f"INPUT {args.input!r} holds more than the stream cap of "
            f"{format_size(MAX_STREAM_BYTES)}; give --max-bytes to learn only its start"
        )
        if args.input == "-":
            data = sys.stdin.buffer.read(limit + 1)
            if len(data) > limit:
                if max_bytes is None or max_bytes > MAX_STREAM_BYTES:
                    raise StreamError(over)
                data = data[:limit]
            if not data:
                raise StreamError("standard input is empty; pipe some bytes in or give a file")
            return Stream.from_bytes(data, label="stdin", source="stdin"), "stdin"
        path = Path(args.input)
        if path.is_dir():
            raise StreamError(
                f"INPUT {args.input!r} is a directory; give a file, or use --stream dir:{args.input}"
            )
        if not path.exists():
            raise StreamError(
                f"INPUT {args.input!r} does not exist; give a readable file or - for stdin"
            )
        if not path.is_file():
            raise StreamError(
                f"INPUT {args.input!r} is not a regular file (a device, FIFO or socket); "
                "give a regular file or - for stdin"
            )
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)  # never more than the cap: read, not read-then-check
        except OSError as exc:
            raise StreamError(
                f"cannot read INPUT {args.input!r}: {exc.strerror}; check its permissions"
            ) from None
        if not data:
            raise StreamError(f"INPUT {args.input!r} is empty; there is nothing to learn")
        if len(data) > limit:
            if max_bytes is None or max_bytes > MAX_STREAM_BYTES:
                raise StreamError(over)
            data = data[:limit]
        spec = f"input=file:{path.resolve()}"
        stream = Stream.from_bytes(data, label="input", source=f"file:{path.resolve()}")
        stream.spec = spec
        return stream, spec
    if args.stream is not None:
        if not args.stream.strip():
            raise StreamError(
                "--stream is empty; give a spec like 'prose=stdlib-prose:50k', or leave "
                "--stream out for the default stream"
            )
        stream = build_stream(args.stream, seed=cfg.seed, shuffle=shuffle, max_bytes=max_bytes)
        return stream, args.stream
    if args.stream_file:
        stream = load_stream_file(args.stream_file, seed=cfg.seed)
        return stream, stream.spec
    if cfg.stream:
        stream = build_stream(cfg.stream, seed=cfg.seed, shuffle=shuffle, max_bytes=max_bytes)
        return stream, cfg.stream
    stream = default_stream(seed=cfg.seed)
    return stream, stream.spec


def _progress(quiet: bool) -> Any:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]learning[/]"),
        BarColumn(),
        TextColumn("{task.completed:,.0f}/{task.total:,.0f} B"),
        TextColumn("{task.fields[speed]:>8,.0f} B/s"),
        TextColumn("bpb {task.fields[bpb]:.3f}"),
        TimeRemainingColumn(),
        transient=False,
        disable=quiet,
        console=_console(),
    )


def _console() -> Any:
    from rich.console import Console

    return Console(stderr=True)


def print_summary(summary: dict[str, Any], out: Path | None) -> None:
    """The per-phase table and the headline figures beside the compressors."""
    from rich.console import Console
    from rich.table import Table

    console = Console()

    def fmt(x: Any, spec: str = ".3f") -> str:
        return "—" if x is None else format(x, spec)

    table = Table(title="per phase (prequential bits per byte)")
    for col in ("phase", "label", "bytes", "bpb", "recovery (B)", "forgetting (bpb)"):
        table.add_column(col, justify="right" if col not in ("label",) else "left")
    for i, row in enumerate(summary["phases"]):
        rec = row.get("recovery_bytes")
        rec_text = (
            fmt(rec, ",d")
            if rec is not None
            else ("not recovered" if row.get("recovered") is False else "—")
        )
        table.add_row(
            str(i),
            row["label"],
            f"{row['bytes_seen']:,}",
            fmt(row["bpb"]),
            rec_text,
            fmt(row.get("forgetting_bpb"), "+.3f"),
        )
    console.print(table)
    totals = Table(title="whole stream (bits per byte; lower is better)")
    totals.add_column("model")
    totals.add_column("bpb", justify="right")
    totals.add_row("μGPT (prequential)", fmt(summary["bpb"]))
    names = {
        "gzip": "gzip -9",
        "bzip2": "bzip2 -9",
        "xz": "xz -9e",
        "zstd": "zstd -19",
        "ppmd": "PPMd order 6",
    }
    for key, value in (summary.get("baselines") or {}).items():
        totals.add_row(names.get(key, key), fmt(value))
    console.print(totals)
    if summary.get("experts"):
        from mugpt.bench.run import experts_table

        console.print(experts_table(summary["experts"]))
    mech_text = (
        ", ".join(
            m["name"] + ("" if m.get("strict_online", True) else " (not strict-online)")
            for m in summary.get("mechanisms", [])
        )
        or "none"
    )
    streams = ""
    if (summary.get("batch_streams") or 1) > 1:
        block = summary.get("substream_bytes") or 0
        streams = f"B = {summary['batch_streams']}" + (f" × {block:,} B blocks" if block else "")
        streams += " · "
    console.print(
        f"{summary['bytes']:,} bytes · {summary['bytes_per_s']:,.0f} B/s · "
        f"{summary['updates']:,} updates · {summary.get('params', 0):,} params · "
        f"k = {summary.get('update_every')} · {streams}window loss {summary.get('window_loss')} · "
        f"mechanisms: {mech_text}" + (" · network frozen" if summary.get("freeze_network") else "")
    )
    if out is not None:
        console.print(f"run directory: [bold]{out}[/]")


def _write_results(
    out: Path, learner: Any, result: Any, cfg: Any, summary: dict[str, Any], args: Any, spec: str
) -> Path:
    """Writes the run directory (and exports); if that fails, keeps the run in a temp folder."""
    import tempfile

    from mugpt.engine.export import export_run
    from mugpt.engine.rundir import write_run_dir

    formats = [f.strip() for f in args.export.split(",") if f.strip()]
    extra_config = {"stream_spec": spec}
    try:
        out = write_run_dir(
            out, learner, result, cfg, summary, force=args.force, extra_config=extra_config
        )
        if formats:
            export_run(out, formats=formats)
        return out
    except OSError as exc:
        reason = exc.strerror or str(exc)
        fallback = Path(tempfile.mkdtemp(prefix="mugpt-run-")) / out.name
        try:
            write_run_dir(fallback, learner, result, cfg, summary, extra_config=extra_config)
            if formats:
                export_run(fallback, formats=formats)
        except OSError as again:
            raise ConfigError(
                f"could not write the run directory {str(out)!r} ({reason}) nor a copy in "
                f"{str(fallback.parent)!r} ({again.strerror or again}); free some space"
            ) from None
        raise ConfigError(
            f"could not write the run directory {str(out)!r} ({reason}); the finished run "
            f"was saved to {str(fallback)!r} instead"
        ) from None


def main(args: argparse.Namespace) -> int:
    from mugpt.cli.common import resume_conflicts
    from mugpt.engine import load_checkpoint
    from mugpt.engine.config import RunConfig
    from mugpt.engine.export import check_formats
    from mugpt.engine.rundir import check_out_dir, prepare_out_dir
    from mugpt.engine.summary import build_summary

    if args.max_params < 1:
        raise ConfigError(f"--max-params {args.max_params} must be at least 1")
    formats = [f.strip() for f in args.export.split(",") if f.strip()]
    check_formats(formats)  # an unknown --export format is refused before any work
    out = Path(args.out) if args.out else Path("runs") / time.strftime("run-%Y%m%d-%H%M%S")
    check_out_dir(out, args.force)
    max_bytes = parse_size(args.max_bytes) if args.max_bytes else None
    if args.resume:
        learner = load_checkpoint(args.resume)
        extra = getattr(learner, "checkpoint_extra", {})
        saved = extra.get("run_config", {})
        conflicts = resume_conflicts(args, saved)
        if conflicts:
            raise ConfigError(
                "--resume keeps the checkpoint's configuration, but these flags change it: "
                + "; ".join(conflicts)
                + "; drop them (or start a new run without --resume)"
            )
        cfg = RunConfig.from_dict(saved)
        if args.input is None and args.stream is None and not args.stream_file:
            spec = extra.get("stream_spec", "")
            if spec == "stdin":
                raise StreamError(
                    "this run read standard input; give the same bytes again as INPUT (or -)"
                )
            args.stream = spec or None
    else:
        cfg = run_config_from_args(args)
        learner = None
    n_params = cfg.model.n_params
    if n_params > args.max_params:
        raise ConfigError(
            f"the model has {n_params:,} parameters, more than --max-params "
            f"{args.max_params:,}; make it smaller or raise --max-params"
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # read one step (or block) past the cap: a run told to stop at it stops at the last
        # step boundary before it, and must see that the stream goes on to know where that is
        ahead = max(cfg.learner.update_every, cfg.learner.block_bytes)
        stream, spec = resolve_stream(args, cfg, None if max_bytes is None else max_bytes + ahead)
    for w in caught:
        _console().print(f"[yellow]warning:[/] {w.message}")
    if learner is None:
        learner = cfg.build_learner()
    if args.experts:
        from mugpt.engine.summary import track_experts

        if not track_experts(learner.mechanisms):
            raise ConfigError(
                "--experts attributes a mixture to its experts, and this run has none; add "
                "--mech ngram_mix or use --preset strong"
            )
    if learner.position > len(stream):
        raise StreamError(
            f"the checkpoint is at byte {learner.position:,} but the stream has only "
            f"{len(stream):,} bytes; resume with the same stream"
        )
    prepare_out_dir(out)  # a path that cannot be written fails now, before any learning
    total = len(stream) if max_bytes is None else min(len(stream), max_bytes)
    with _progress(args.quiet) as progress:
        task = progress.add_task(
            "learn", total=total, completed=learner.position, speed=0.0, bpb=float("nan")
        )
        t0, start_pos = time.perf_counter(), learner.position

        def report(pos: int, end: int, bpb: float) -> None:
            speed = (pos - start_pos) / max(time.perf_counter() - t0, 1e-9)
            progress.update(task, completed=pos, speed=speed, bpb=bpb)

        result = learner.run(stream, max_bytes=max_bytes, progress=report)
    summary = build_summary(result, cfg, baselines=not args.no_baselines)
    out = _write_results(out, learner, result, cfg, summary, args, spec)
    if not args.quiet:
        print_summary(summary, out)
    return 0
