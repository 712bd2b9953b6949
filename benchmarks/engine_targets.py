"""The engine's speed targets, measured side by side in one run (one thread, warm caches):

- decompress vs compress, ``--preset strong``, on the same bytes (target ≥ 0.8×);
- the seed presets at their own lr (seed: SGD 0.02; seed-adam: Adam at 1e-2, the case in which
  float32 subnormals once slowed learning) vs the same at lr 1e-4 (target ≥ 0.9×);
- the seed preset at k = 1 vs the PyTorch eager reference ``mugpt.bench.torch_ref``
  (target ≥ 10×);
- the coder with sub-streams (``batch_streams`` 4 and 16) beside one stream, and its
  decompress vs compress (``--only substreams``);
- the seed preset at k = 1 with each of the seven mechanisms (default settings) vs the
  plain seed preset, all on the compiled loop (target ≥ 0.8×; ``--only mechanisms``).

Each pair is run A, B, A, B, ... ``--repeats`` times; the figures are medians of process CPU
time (wall medians beside them) and the ratio is the median of the pair-by-pair ratios, so
that a comparison holds while a shared machine's speed drifts. The CPU model and the measured
single-thread float32 matmul peak (``mugpt.bench.measure.measure_peak``) head the output.

    python benchmarks/engine_targets.py                 # all five, 3 pairs each
    python benchmarks/engine_targets.py --only codec --repeats 5
    python benchmarks/engine_targets.py --file some.txt --codec-bytes 60k
    python benchmarks/engine_targets.py --only mechanisms --repeats 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

from mugpt.bench.measure import cpu_model, measure_peak  # noqa: E402
from mugpt.corpus import Stream, default_stream  # noqa: E402
from mugpt.corpus.spec import SIZE_HELP, parse_size  # noqa: E402
from mugpt.engine.config import RunConfig  # noqa: E402

Timing = tuple[float, float]  # (cpu seconds, wall seconds)


def _timed(fn: Callable[[], Any]) -> Timing:
    c, w = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - w


def paired(name_a: str, a: Callable[[], Any], name_b: str, b: Callable[[], Any], n_bytes: int,
           repeats: int, target: float | None) -> None:  # fmt: skip
    """Runs a, b alternately ``repeats`` times and prints medians and the A/B speed ratio
    (against ``target``, when there is one)."""
    ta: list[Timing] = []
    tb: list[Timing] = []
    for _ in range(repeats):
        ta.append(_timed(a))
        tb.append(_timed(b))
    ratios = [tb_i[0] / ta_i[0] for ta_i, tb_i in zip(ta, tb, strict=True)]  # speed A / speed B
    for name, ts in ((name_a, ta), (name_b, tb)):
        cpu = statistics.median(t[0] for t in ts)
        wall = statistics.median(t[1] for t in ts)
        print(f"  {name:<34} {n_bytes / cpu:>10,.0f} B/s cpu  {n_bytes / wall:>10,.0f} B/s wall"
              f"  (cpu s: {', '.join(f'{t[0]:.2f}' for t in ts)})")  # fmt: skip
    med = statistics.median(ratios)
    verdict = "" if target is None else f"; target >= {target}x: " + ("meets" if med >= target else "misses")  # fmt: skip
    print(f"  speed {name_a} / {name_b}: median {med:.3f}x (pairs: "
          f"{', '.join(f'{r:.3f}' for r in ratios)}){verdict}")  # fmt: skip
    sys.stdout.flush()


def bench_codec(data: bytes, repeats: int) -> None:
    from mugpt.compress.coder import decode, encode

    cfg = RunConfig.from_dict({"preset": "strong"})
    blob, report = encode(data, cfg)  # warm-up: kernels loaded or compiled
    assert decode(blob)[0] == data
    print(f"\ncodec, --preset strong, {len(data):,} bytes -> {len(blob):,} ({report.bpb:.4f} bpb)")
    paired("decompress", lambda: decode(blob), "compress", lambda: encode(data, cfg),
           len(data), repeats, 0.8)  # fmt: skip


def bench_substreams(data: bytes, repeats: int) -> None:
    """The coder with sub-streams (``batch_streams`` B) beside one stream: size and speed."""
    from mugpt.compress.coder import decode, encode

    def cfg(b: int) -> RunConfig:
        return RunConfig.from_dict({"preset": "strong", "learner": {"batch_streams": b}})

    print(f"\ncodec with sub-streams, --preset strong, {len(data):,} bytes")
    for b in (1, 4, 16):
        blob, report = encode(data, cfg(b))  # warm-up, and the size
        assert decode(blob)[0] == data
        print(f"  B = {b:>2}: {len(blob):,} bytes, {report.bpb:.4f} bpb")
    for b in (4, 16):
        blob = encode(data, cfg(b))[0]
        paired(f"compress B = {b}", lambda b=b: encode(data, cfg(b)), "compress B = 1",
               lambda: encode(data, cfg(1)), len(data), repeats, None)  # fmt: skip
        paired(f"decompress B = {b}", lambda blob=blob: decode(blob), f"compress B = {b}",
               lambda b=b: encode(data, cfg(b)), len(data), repeats, 0.8)  # fmt: skip


def bench_lr(data: bytes, repeats: int) -> None:
    """Speed independent of the values: each seed preset at its own lr against the same at
    lr 1e-4 (a model that stays unsure), on the same bytes."""
    stream = Stream.from_bytes(data)

    def config(preset: str, lr: float | None) -> RunConfig:
        return RunConfig.from_dict({"preset": preset, **({"optim": {"lr": lr}} if lr else {})})

    for preset, own in (("seed", None), ("seed-adam", 1e-2)):
        lr_own = own or config(preset, None).optim.lr
        bpb = {
            lr: float(config(preset, lr).build_learner().run(stream).bpb) for lr in (lr_own, 1e-4)
        }
        print(f"\n{preset} preset, k = 1, {len(data):,} bytes: bpb {bpb[lr_own]:.4f} at lr {lr_own:g}, "
              f"{bpb[1e-4]:.4f} at lr 1e-4")  # fmt: skip
        a, b = config(preset, lr_own), config(preset, 1e-4)
        paired(f"{preset} lr {lr_own:g}", lambda a=a: a.build_learner().run(stream),
               f"{preset} lr 1e-4", lambda b=b: b.build_learner().run(stream), len(data), repeats, 0.9)  # fmt: skip


def bench_torch(data: bytes, repeats: int) -> None:
    import torch

    from mugpt.bench.torch_ref import TorchLearner

    torch.set_num_threads(1)
    cfg = RunConfig.from_dict({})
    stream = Stream.from_bytes(data)
    ours = cfg.build_learner().run(stream)
    theirs = TorchLearner(cfg).run(data)
    print(f"\nseed preset, k = 1, {len(data):,} bytes vs PyTorch {torch.__version__} eager: bpb "
          f"{float(ours.bpb):.4f} vs {float(np.mean(theirs)):.4f}")  # fmt: skip
    paired("mugpt (compiled)", lambda: cfg.build_learner().run(stream),
           "torch eager reference", lambda: TorchLearner(cfg).run(data), len(data), repeats, 10.0)  # fmt: skip


MECHANISMS = ("grad_clip", "selective_backprop", "adaptive_lr", "replay", "cache", "knn",
              "ngram_mix")  # fmt: skip


def bench_mechanisms(data: bytes, repeats: int) -> None:
    stream = Stream.from_bytes(data)

    def run(mechanism: str | None) -> Callable[[], Any]:
        cfg = RunConfig.from_dict({"mechanisms": [{"name": mechanism}] if mechanism else []})
        return lambda: cfg.build_learner().run(stream)

    for name in (None, *MECHANISMS):  # warm-up: kernels loaded or compiled
        run(name)()
    print(f"\nseed preset, k = 1, {len(data):,} bytes, each mechanism vs none")
    for name in MECHANISMS:
        paired(f"seed+{name}", run(name), "seed", run(None), len(data), repeats, 0.8)


def _size(text: str) -> int:
    """A size flag's bytes by the project's one size parser (``60k``, ``64Ki``, ``1.5M``)."""
    value = parse_size(text)
    if value is None or value < 1:
        raise SystemExit(
            f"error: size {text!r} is not a whole number of bytes (e.g. 60k); {SIZE_HELP}"
        )
    return value


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--only", choices=["codec", "substreams", "lr", "torch", "mechanisms"], action="append",
                    help="run only these comparisons (repeatable; default all)")  # fmt: skip
    ap.add_argument("--repeats", type=int, default=3, help="pairs per comparison (>= 3)")
    ap.add_argument("--file", help="the bytes to use (default: the built-in default stream)")
    ap.add_argument("--codec-bytes", default="60k")
    ap.add_argument("--lr-bytes", default="100k")
    ap.add_argument("--torch-bytes", default="5k")
    ap.add_argument("--mechanism-bytes", default="30k")
    args = ap.parse_args()
    if args.repeats < 3:
        raise SystemExit("error: --repeats must be at least 3 (medians of three or more)")
    if args.file:
        try:
            with open(args.file, "rb") as f:
                source = f.read()
        except OSError as exc:
            raise SystemExit(f"error: cannot read --file {args.file}: {exc.strerror}") from None
    else:
        source = default_stream().data
    peak = measure_peak()
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs), one thread")
    print(f"matmul peak: {peak['gflops']:.1f} GFLOP/s wall, {peak['gflops_cpu']:.1f} GFLOP/s cpu "
          f"(float32 {peak['size']}x{peak['size']} product via NumPy's BLAS, best of 7)")  # fmt: skip
    print(f"data: {args.file or 'the default stream'}; medians of {args.repeats} A/B pairs")
    only = args.only or ["codec", "substreams", "lr", "torch", "mechanisms"]
    if "codec" in only:
        bench_codec(source[: _size(args.codec_bytes)], args.repeats)
    if "substreams" in only:
        bench_substreams(source[: _size(args.codec_bytes)], args.repeats)
    if "lr" in only:
        bench_lr(source[: _size(args.lr_bytes)], args.repeats)
    if "torch" in only:
        bench_torch(source[: _size(args.torch_bytes)], args.repeats)
    if "mechanisms" in only:
        bench_mechanisms(source[: _size(args.mechanism_bytes)], args.repeats)


if __name__ == "__main__":
    main()
