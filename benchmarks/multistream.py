"""The speed / bits-per-byte trade-off of multi-stream batching (batch_streams = B).

Each run learns the same bytes with B contiguous sub-streams stepped together (one update per
step on B windows). Prints a Markdown table; ``--json`` also writes the figures.

    python benchmarks/multistream.py                       # default stream, seed config, k = 1
    python benchmarks/multistream.py --update-every 8 --streams 1,4,16,64 --bytes 300000
    python benchmarks/multistream.py --input /work/shared/data/tinystories-2mb.txt
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mugpt.corpus import Stream, default_stream
from mugpt.engine.config import RunConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--input", help="a file (default: the built-in default stream)")
    ap.add_argument("--bytes", type=int, default=300_000)
    ap.add_argument("--preset", default="seed")
    ap.add_argument("--update-every", type=int, default=1)
    ap.add_argument("--streams", default="1,4,16,64")
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args()
    if args.input:
        data = Path(args.input).read_bytes()[: args.bytes]
        stream, source = Stream.from_bytes(data), args.input
    else:
        full = default_stream()
        stream = Stream(full.data[: args.bytes], full.phases, full.doc_starts)
        source = "the default stream"
    rows = []
    print(f"{len(stream.data):,} bytes of {source}; preset {args.preset}, k = {args.update_every}")
    print("| B | bytes/s (CPU) | bpb | updates |")
    print("|---:|---:|---:|---:|")
    for b in (int(x) for x in args.streams.split(",")):
        cfg = RunConfig.from_dict(
            {
                "preset": args.preset,
                "learner": {"update_every": args.update_every, "batch_streams": b},
            }
        )
        cfg.build_learner().run(Stream.from_bytes(stream.data[:256]))  # load the kernels
        learner = cfg.build_learner()
        t = time.process_time()
        result = learner.run(stream)
        seconds = time.process_time() - t
        row = {"B": b, "bytes_per_s_cpu": len(stream.data) / seconds, "bpb": result.bpb,
               "updates": result.counters["updates"]}  # fmt: skip
        rows.append(row)
        print(f"| {b} | {row['bytes_per_s_cpu']:,.0f} | {row['bpb']:.4f} | {row['updates']:,} |", flush=True)  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({"source": source, "bytes": len(stream.data), "k": args.update_every, "rows": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
