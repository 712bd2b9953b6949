"""float32 learning keeps its numbers out of the subnormal range (below 2^-126), where x86
arithmetic is many times slower, so a run's speed does not depend on how confident the model
has become. Two deterministic rules do it: the float32 exp is exactly 0 below
``EXP_FLUSH_BELOW``, and Adam's moments below the normal range are flushed to 0 (in the
compiled optimiser and in the NumPy reference alike)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mugpt.corpus.stream import Stream
from mugpt.engine.config import RunConfig
from mugpt.model import ModelConfig, OptimConfig
from mugpt.model.optim import Optimizer

fast = pytest.importorskip("mugpt.model.fast")

TINY32 = np.finfo(np.float32).tiny


def _subnormals(a: np.ndarray) -> int:
    a = np.asarray(a)
    return int(((a != 0) & (np.abs(a) < np.finfo(a.dtype).tiny)).sum())


def _run(data: bytes, lr: float) -> object:
    rc = RunConfig.from_dict({"preset": "seed-adam", "optim": {"lr": lr}})
    learner = rc.build_learner()
    learner.run(Stream.from_bytes(data))
    return learner


def test_float32_exp_is_exactly_zero_below_the_flush_bound_and_accurate_above() -> None:
    x = np.array([-1e30, -200.0, -64.5, -64.0, -63.9, -40.0, -1.0, 0.0], dtype=np.float32)
    y = x.copy()
    bits = np.zeros(x.size, dtype=np.int32)
    fast._exp_matrix(y.reshape(1, -1), bits)
    assert fast.EXP_FLUSH_BELOW == -64.0
    assert y[:3].tolist() == [0.0, 0.0, 0.0]
    for xi, yi in zip(x[3:], y[3:], strict=True):
        assert yi == pytest.approx(math.exp(float(xi)), rel=2e-7)
    assert _subnormals(y) == 0


def test_a_confident_seed_run_leaves_no_subnormal_activation_gradient_or_moment() -> None:
    # a repetitive text under Adam at lr 1e-2: attention saturates and most bytes are never
    # seen, whose embedding rows keep a zero gradient and (without the flush) a subnormal m
    data = b"the cat sat on the mat. " * 300
    learner = _run(data, 1e-2)
    assert learner.optimizer.cfg.name == "adam" and learner.optimizer.v.size > 0
    ws = learner.model.ws
    assert learner.model.dtype == np.float32
    counts = {name: _subnormals(getattr(ws, name)) for name in ws._fields
              if getattr(ws, name).dtype == np.float32}  # fmt: skip
    counts["adam.m"] = _subnormals(learner.optimizer.m)
    counts["adam.v"] = _subnormals(learner.optimizer.v)
    assert {k: c for k, c in counts.items() if c} == {}


def test_the_reference_optimiser_flushes_moments_as_the_compiled_one_does() -> None:
    cfg = OptimConfig(name="adam", lr=1e-2)
    n = 64
    rng = np.random.default_rng(0)
    g0 = rng.normal(size=n).astype(np.float32) * np.float32(1e-3)
    g0[:32] = np.float32(1e-20)  # gradients whose squares underflow, then zero gradients
    ref, w_ref = Optimizer(cfg, n, np.float32), np.ones(n, dtype=np.float32)
    w_fast = w_ref.copy()
    m, v = np.zeros(n, np.float32), np.zeros(n, np.float32)
    state = np.zeros(3)
    hyper = fast.optimizer_hyper(cfg)
    for step in range(1000):
        g = g0 if step < 5 else np.zeros(n, dtype=np.float32)
        ref.step(w_ref, g.copy())
        norm = float(np.sqrt(np.dot(g.astype(np.float64), g.astype(np.float64))))
        fast.optimizer_step(w_fast, g.copy(), m, v, hyper, state, 1.0, norm, 0, w_fast.size)
    # 995 steps of decay by 0.9 take every first moment below 2^-126: flushed, in both
    assert np.all(ref.m == 0) and np.all(m == 0)
    assert _subnormals(ref.v) == _subnormals(v) == 0
    np.testing.assert_allclose(w_fast, w_ref, rtol=1e-6)


def test_float64_is_not_flushed() -> None:
    cfg = ModelConfig(dtype="float64")
    assert cfg.dtype == "float64"
    x = np.array([[-100.0, -700.0]])
    bits = np.zeros(2, dtype=np.int32)
    fast._exp_matrix(x, bits)
    assert x[0].tolist() == [math.exp(-100.0), math.exp(-700.0)]
