"""Compressed sizes and speeds: μGPT's range coder beside gzip, xz, zstd and PPMd.

Runs ``mugpt.compress.encode`` / ``decode`` (checking the round trip) for each preset on each
input, times the classic compressors with the settings of :mod:`mugpt.engine.baselines`, and
prints a Markdown table (``--out FILE`` also writes it, with the command and the machine).

    python benchmarks/compress_table.py --tinystories-bytes 200000 --out docs/results/compress.md
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyppmd
import zstandard

from mugpt.compress import decode, encode
from mugpt.corpus import default_stream
from mugpt.engine.baselines import PPMD_MEMORY, PPMD_ORDER, ZSTD_LEVEL, baseline_sizes
from mugpt.engine.config import PRESETS, RunConfig

TINYSTORIES = Path("/work/shared/data/tinystories-2mb.txt")

Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]
CLASSIC: dict[str, Codec] = {
    "gzip -9": (lambda d: gzip.compress(d, 9, mtime=0), gzip.decompress),
    "xz -9e": (
        lambda d: lzma.compress(d, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME),
        lzma.decompress,
    ),
    f"zstd -{ZSTD_LEVEL}": (
        zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress,
        zstandard.ZstdDecompressor().decompress,
    ),
    f"PPMd order {PPMD_ORDER}": (
        lambda d: pyppmd.compress(d, max_order=PPMD_ORDER, mem_size=PPMD_MEMORY),
        lambda c: pyppmd.decompress(c, max_order=PPMD_ORDER, mem_size=PPMD_MEMORY),
    ),
}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def measure(name: str, data: bytes, presets: list[str], log: Callable[[str], None]) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    reference = baseline_sizes(data)
    for label, (comp, decomp) in CLASSIC.items():
        blob, t_c = timed(lambda comp=comp: comp(data))
        back, t_d = timed(lambda decomp=decomp, blob=blob: decomp(blob))
        assert back == data, label
        rows.append(_row(name, label, data, len(blob), None, t_c, t_d))
    assert rows[0]["size"] == reference["gzip"] and rows[3]["size"] == reference["ppmd"]
    for preset in presets:
        cfg = RunConfig.from_dict(_config_values(preset))
        log(f"{name}: μGPT {preset} compressing {len(data):,} bytes ...")
        (blob, report), t_c = timed(lambda cfg=cfg: encode(data, cfg))
        log(f"  {report.summary_line('compressed')}")
        (back, dreport), t_d = timed(lambda blob=blob: decode(blob))
        log(f"  {dreport.summary_line('decompressed')}")
        assert back == data, preset
        k = cfg.learner.update_every
        label = f"μGPT {preset}" if preset in PRESETS else f"μGPT {preset[: preset.index('={')]}"
        rows.append(_row(name, f"{label} (k={k})", data, len(blob), report.prequential_bpb, t_c, t_d))  # fmt: skip
    return rows


def _config_values(spec: str) -> dict[str, Any]:
    """A preset name, or ``LABEL={json of a run config}``."""
    if spec in PRESETS:
        return {"preset": spec}
    values: dict[str, Any] = json.loads(spec[spec.index("={") + 1 :])
    return values


def _row(name: str, label: str, data: bytes, size: int, preq: float | None, t_c: float, t_d: float) -> dict[str, Any]:  # fmt: skip
    n = len(data)
    return {"data": name, "compressor": label, "bytes": n, "size": size, "bpb": 8 * size / n,
            "prequential_bpb": preq, "compress_Bps": n / t_c, "decompress_Bps": n / t_d}  # fmt: skip


def _speed(bps: float) -> str:
    return f"{bps / 1e6:,.1f} MB/s" if bps >= 1e6 else f"{bps / 1e3:,.1f} kB/s"


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| data | compressor | size (bytes) | bpb | prequential bpb | compress | decompress |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        preq = "" if r["prequential_bpb"] is None else f"{r['prequential_bpb']:.4f}"
        lines.append(
            f"| {r['data']} | {r['compressor']} | {r['size']:,} | {r['bpb']:.4f} | {preq} | "
            f"{_speed(r['compress_Bps'])} | {_speed(r['decompress_Bps'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--presets", default=",".join(p for p in ("seed", "strong") if p in PRESETS),
                    help="comma list of presets to measure")  # fmt: skip
    ap.add_argument("--variant", action="append", default=[], metavar="LABEL=JSON",
                    help='also a run config, e.g. \'seed k=8={"learner": {"update_every": 8}}\'')  # fmt: skip
    ap.add_argument("--default-bytes", type=int, default=0, help="prefix of the default stream (0 = all)")  # fmt: skip
    ap.add_argument("--tinystories-bytes", type=int, default=200_000, help="prefix (0 = all 2 MiB)")  # fmt: skip
    ap.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = ap.parse_args()
    presets = [p for p in args.presets.split(",") if p] + list(args.variant)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    inputs = {}
    default = default_stream().data
    inputs[
        "default stream" + (f" (first {args.default_bytes:,} B)" if args.default_bytes else "")
    ] = default[: args.default_bytes] if args.default_bytes else default
    if TINYSTORIES.exists():
        story = TINYSTORIES.read_bytes()
        label = "tinystories-2mb" + (f" (first {args.tinystories_bytes:,} B)" if args.tinystories_bytes else "")  # fmt: skip
        inputs[label] = story[: args.tinystories_bytes] if args.tinystories_bytes else story
    rows: list[dict[str, Any]] = []
    for name, data in inputs.items():
        rows += measure(name, data, presets, log)
        print(markdown(rows), flush=True)
        if args.json:
            args.json.write_text(json.dumps({"machine": platform.machine(), "rows": rows}, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
