"""``mugpt sample``: generate bytes from a checkpoint."""

from __future__ import annotations

import argparse
import sys
from typing import Any

DESCRIPTION = """\
Generate text from a trained checkpoint. The model continues PROMPT (after the stream it
had read, unless --fresh) with temperature, top-k and top-p (nucleus) sampling, seeded so the
same command prints the same text. Bytes that are not valid UTF-8 are shown as U+FFFD;
--raw writes the exact bytes instead.
"""

EPILOG = """\
examples:
  mugpt sample --checkpoint runs/first/checkpoint.npz --prompt "Once upon a time"
  mugpt sample --checkpoint ckpt.npz --prompt "def " -n 300 --temperature 0.7 --top-k 20
  mugpt sample --checkpoint ckpt.npz --prompt "" --raw > out.bin
"""


def register(sub: Any) -> None:
    p = sub.add_parser(
        "sample",
        help="generate text from a checkpoint",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="a checkpoint.npz")
    p.add_argument("--prompt", default="", help="text to continue (UTF-8)")
    p.add_argument("-n", "--length", type=int, default=200, help="bytes to generate (200)")
    p.add_argument(
        "--temperature", type=float, default=1.0, help="> 0; below 1 is more conservative (1.0)"
    )
    p.add_argument("--top-k", type=int, default=0, help="keep the k likeliest bytes (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus mass to keep (1 = off)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (0)")
    p.add_argument("--fresh", action="store_true", help="start from BOS, not the stream's tail")
    p.add_argument("--raw", action="store_true", help="write raw bytes to stdout")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from mugpt.engine import load_checkpoint
    from mugpt.errors import ConfigError
    from mugpt.model import generate, show_bytes

    if args.length < 0 or args.length > 1_000_000:
        raise ConfigError(f"-n {args.length} must be between 0 and 1000000")
    learner = load_checkpoint(args.checkpoint)
    history = None if args.fresh or learner.history.size == 0 else learner.history
    prompt = args.prompt.encode("utf-8")
    out = generate(
        learner.model,
        prompt,
        args.length,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        history=history,
    )
    if args.raw:
        sys.stdout.buffer.write(prompt + out)
    else:
        print(show_bytes(prompt + out))
    return 0
