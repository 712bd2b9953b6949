"""The ``mugpt`` command line: a thin layer that parses arguments and calls the library.

Each command lives in its own module of this package with a ``register(subparsers)`` function
that adds its parser and sets ``func``; this file only dispatches and turns user errors into
one clear line and a non-zero exit code.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mugpt import __version__
from mugpt.errors import MugptError

# module names in help order; a module registers one or more commands
COMMAND_MODULES = ("serve", "run", "ablate", "bench", "codec", "sweep", "sample")

DESCRIPTION = """\
μGPT: watch and measure a tiny GPT learn online, byte by byte.

A byte-level transformer, written in NumPy with a hand-written backward pass, reads a stream
once under the prequential protocol: predict the next byte, record its loss, then learn from
it. Bits per byte is then an honest compressed size, comparable with gzip, xz and PPMd.
"""

EPILOG = """\
examples:
  mugpt serve                       open the browser lab on the default phased stream
  mugpt run --out runs/first        learn the default stream, write a run directory
  mugpt run book.txt --update-every 32 --d-model 32
  mugpt sample --checkpoint runs/first/checkpoint.npz --prompt "Once upon"

`mugpt COMMAND --help` explains each command with an example.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mugpt",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"mugpt {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"mugpt.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"mugpt.cli.{name}":
                continue  # command not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except MugptError as exc:
        print(f"mugpt {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mugpt {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
