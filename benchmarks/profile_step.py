"""Where a compiled step's time goes: each kernel of one step of the seed config (one window
of 32 positions), timed in a compiled loop by process CPU time (best of 5).

    python benchmarks/profile_step.py
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from numba import njit

from mugpt.model import ModelConfig, OptimConfig
from mugpt.model import fast as F


def _best(f: Any, *args: Any, reps: int = 2000) -> float:
    f(*args, 1)
    best = float("inf")
    for _ in range(5):
        t = time.process_time()
        f(*args, reps)
        best = min(best, (time.process_time() - t) / reps)
    return best * 1e6


@njit(error_model="numpy")
def _forward(flat: Any, offs: Any, dims: Any, ws: Any, reps: int) -> None:
    for _ in range(reps):
        F.forward_batch(flat, offs, dims, ws, 1)


@njit(error_model="numpy")
def _backward(flat: Any, offs: Any, dims: Any, ws: Any, grads: Any, reps: int) -> None:
    for _ in range(reps):
        F.backward_batch(flat, offs, dims, ws, grads, 1)


@njit(error_model="numpy")
def _attention(ws: Any, reps: int) -> None:
    for _ in range(reps):
        F._attention_forward(ws, 0, 0, 4)


@njit(error_model="numpy")
def _attention_back(ws: Any, reps: int) -> None:
    for _ in range(reps):
        F._attention_backward(ws, 0, 0, 4)


@njit(error_model="numpy")
def _softmax(ws: Any, reps: int) -> None:
    for _ in range(reps):
        F._softmax_rows(ws.probs[0], ws.probs.shape[1], ws.lanes, ws.ebits)


@njit(error_model="numpy")
def _head(ws: Any, flat: Any, reps: int) -> None:
    c, v = ws.hidden.shape[2], ws.probs.shape[2]
    for _ in range(reps):
        F._mm(F._strided(ws.hidden[0]), flat[flat.size - c * v :].reshape((c, v)), ws.probs[0], False)  # fmt: skip


@njit(error_model="numpy")
def _norm(g: Any, lanes: Any, reps: int) -> float:
    s = 0.0
    for _ in range(reps):
        s += F.grad_sq_norm(g, lanes)
    return s


@njit(error_model="numpy")
def _adam(w: Any, g: Any, m: Any, v: Any, hyper: Any, state: Any, reps: int) -> None:
    for _ in range(reps):
        F.optimizer_step(w, g, m, v, hyper, state, 1.0, 0.5, 0, w.size)


def main() -> None:
    model = F.FastGPT(ModelConfig())
    idx = np.random.default_rng(0).integers(0, 256, size=(1, 32))
    acts = model.forward(idx)
    grads = model.params.like()
    model.backward(acts, idx, np.ones((1, 32)), grads)
    flat, ws = model.params.flat, model.ws
    w, g = flat.copy(), grads.flat * 1e-3
    m, v = np.zeros_like(w), np.zeros_like(w)
    rows = [
        ("forward (whole)", _best(_forward, flat, model.offsets, model.dims, ws)),
        ("  lm_head matmul", _best(_head, ws, flat)),
        ("  softmax over 257", _best(_softmax, ws)),
        ("  attention", _best(_attention, ws)),
        ("backward (whole)", _best(_backward, flat, model.offsets, model.dims, ws, grads.flat)),
        ("  attention", _best(_attention_back, ws)),
        ("gradient norm", _best(_norm, grads.flat, ws.lanes)),
        (
            "Adam",
            _best(_adam, w, g, m, v, F.optimizer_hyper(OptimConfig()), np.zeros(3, np.int64)),
        ),
    ]
    print("| kernel (seed config, one window of 32) | µs |")
    print("|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
