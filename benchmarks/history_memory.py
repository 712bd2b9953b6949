"""Memory of one run's loss history in the lab server, after feeding it synthetic losses.

Feeds :class:`mugpt.serve.history.RunHistory` update messages like a worker's (bins of 64
bytes, 20 per update) up to each size and prints the bins kept and the bytes of the arrays
(numbers × 8 bytes, and the lists' actual size in this Python, numbers included).

    python benchmarks/history_memory.py 300000 10000000
"""

from __future__ import annotations

import sys

import numpy as np

from mugpt.serve.history import LOSS_KEYS, RunHistory


def feed(history: RunHistory, total: int, bin_bytes: int = 64, per_update: int = 20) -> None:
    rng = np.random.default_rng(0)
    pos = 0
    while pos < total:
        xs = list(range(pos, min(total, pos + bin_bytes * per_update), bin_bytes))
        ns = [min(bin_bytes, total - x) for x in xs]
        means = (4 + rng.random(len(xs))).round(4).tolist()
        pos = xs[-1] + ns[-1]
        history.apply(
            {
                "type": "update",
                "pos": pos,
                "bpb": 4.5,
                "lr": 1e-3,
                "grad_norm": 1.0,
                "loss": {
                    "x": xs,
                    "n": ns,
                    "mean": means,
                    "min": [m - 3 for m in means],
                    "max": [m + 3 for m in means],
                    "ema": means,
                    "skips": [0] * len(xs),
                    "replays": [0] * len(xs),
                },
            }
        )


def deep_size(values: list[object]) -> int:
    return sys.getsizeof(values) + sum(sys.getsizeof(v) for v in values)


def main(sizes: list[int]) -> None:
    for total in sizes:
        history = RunHistory()
        feed(history, total)
        series = [history.loss[k] for k in LOSS_KEYS]
        series += [history.bpb["x"], history.bpb["y"], history.lr["x"], history.lr["lr"]]
        series.append(history.lr["grad_norm"])
        numbers = sum(len(s) for s in series)
        print(
            f"{total:>10,} bytes: {len(history.loss['x']):,} loss bins of "
            f"{history.loss['width']} bytes from byte {history.loss['x'][0]}, "
            f"{len(history.bpb['x']):,} bpb points; arrays {numbers * 8 / 1024:,.0f} KiB "
            f"as 8-byte numbers, {sum(deep_size(s) for s in series) / 1024:,.0f} KiB as Python lists"
        )


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [300_000, 10_000_000])
