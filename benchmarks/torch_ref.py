"""μGPT's compiled engine against its PyTorch eager reference (mugpt.bench.torch_ref), same
config and bytes, one thread each; also checks that both compute the same losses.

    python benchmarks/torch_ref.py --bytes 5000 --update-every 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from mugpt.bench.torch_ref import TorchLearner
from mugpt.corpus import Stream, default_stream
from mugpt.engine.config import RunConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--bytes", type=int, default=5000)
    ap.add_argument("--update-every", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(1)
    data = default_stream().data[: args.bytes]
    cfg = RunConfig.from_dict({"learner": {"update_every": args.update_every}})
    learner = cfg.build_learner()
    learner.run(Stream.from_bytes(data[:64]))
    learner = cfg.build_learner()
    t = time.process_time()
    ours = learner.run(Stream.from_bytes(data)).losses
    t_ours = time.process_time() - t
    t = time.process_time()
    theirs = TorchLearner(cfg).run(data)
    t_torch = time.process_time() - t
    print(f"{len(data):,} bytes, k = {args.update_every}")
    print(f"mugpt ({learner.backend}): {len(data) / t_ours:,.0f} bytes/s, bpb {ours.mean():.4f}")
    print(f"torch eager:  {len(data) / t_torch:,.0f} bytes/s, bpb {theirs.mean():.4f}")
    print(f"speed-up {t_torch / t_ours:.1f}x; first 100 losses differ by at most "
          f"{np.abs(ours[:100] - theirs[:100]).max():.2e} bits (float32 rounding)")  # fmt: skip


if __name__ == "__main__":
    main()
