"""The compiled backend (mugpt.model.fast) against the NumPy reference, and its determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mugpt.corpus import Phase, Stream
from mugpt.engine import Learner, LearnerConfig, load_checkpoint, save_checkpoint
from mugpt.engine.learner import resolve_backend
from mugpt.errors import ConfigError
from mugpt.model import BOS, GPT, ModelConfig, OptimConfig, Optimizer, fast

TEXT = b"the cat sat on the mat. the dog sat on the log. " * 5

CONFIGS = {
    "seed-f64": ModelConfig(dtype="float64"),
    "two-layer-gelu-tied": ModelConfig(n_layers=2, d_model=8, n_heads=4, d_ff=16, context=8,
                                        activation="gelu", tied_head=True, dtype="float64",
                                        init_std=0.3),
    "silu-odd-dims": ModelConfig(n_layers=1, d_model=6, n_heads=3, d_ff=10, context=9,
                                 activation="silu", dtype="float64", init_std=0.3),
}  # fmt: skip


def _case(cfg: ModelConfig, b: int, n: int, seed: int = 1):
    rng = np.random.default_rng(seed)
    ref = GPT(cfg)
    for name in ref.params:  # move the gains off 1 so their gradients are exercised
        if name.endswith(("ln1", "ln2", "ln_f")):
            ref.params[name][...] += rng.normal(0, 0.1, size=ref.params[name].shape)
    idx = rng.integers(0, 257, size=(b, n))
    idx[:, 0] = 256
    targets = rng.integers(0, 256, size=(b, n))
    weights = (rng.random((b, n)) > 0.3).astype(np.float64)
    weights[0, -1] = 1.0
    return ref, fast.FastGPT(cfg, ref.params), idx, targets, weights


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("shape", [(1, 0), (2, 5), (3, 1)])  # (windows, length; 0 = context)
def test_float64_forward_and_backward_match_the_reference(name: str, shape) -> None:  # type: ignore[no-untyped-def]
    cfg = CONFIGS[name]
    b, n = shape[0], shape[1] or cfg.context
    ref, fst, idx, targets, weights = _case(cfg, b, n)
    a_ref, a_fast = ref.forward(idx), fst.forward(idx)
    np.testing.assert_allclose(a_fast.probs, a_ref.probs, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a_fast.hidden, a_ref.hidden, rtol=1e-12, atol=1e-13)
    for layer in range(cfg.n_layers):
        np.testing.assert_allclose(a_fast.attention(layer), a_ref.attention(layer), atol=1e-13)
    g_ref, g_fast = ref.params.like(), ref.params.like()
    loss_ref = ref.backward(a_ref, targets, weights, g_ref)
    loss_fast = fst.backward(a_fast, targets, weights, g_fast)
    assert loss_fast == pytest.approx(loss_ref, rel=1e-12)
    scale = np.abs(g_ref.flat).max()
    assert np.abs(g_fast.flat - g_ref.flat).max() <= 1e-12 * scale


def test_float32_seed_config_is_close_to_the_reference() -> None:
    cfg = ModelConfig()
    ref, fst, idx, targets, weights = _case(cfg, 2, cfg.context)
    a_ref, a_fast = ref.forward(idx), fst.forward(idx)
    assert a_fast.probs.dtype == np.float32
    np.testing.assert_allclose(a_fast.probs, a_ref.probs, rtol=2e-5, atol=1e-8)
    g_ref, g_fast = ref.params.like(), ref.params.like()
    ref.backward(a_ref, targets, weights, g_ref)
    fst.backward(a_fast, targets, weights, g_fast)
    np.testing.assert_allclose(g_fast.flat, g_ref.flat, atol=2e-6 * np.abs(g_ref.flat).max())


@pytest.mark.parametrize(
    "optim",
    [
        OptimConfig(lr=0.01, grad_clip=0.5),
        OptimConfig(lr=0.003, beta1=0.0, beta2=0.9999, grad_clip=0, weight_decay=0.01),
        OptimConfig(name="sgd", lr=0.1, momentum=0.9, grad_clip=2.0, weight_decay=0.001),
    ],
)
def test_compiled_optimizer_matches_the_reference(optim: OptimConfig) -> None:
    rng = np.random.default_rng(0)
    n = 1003  # not a multiple of the kernel's lanes
    w_ref = rng.normal(size=n)
    w_fast = w_ref.copy()
    ref, fst = Optimizer(optim, n, np.float64), Optimizer(optim, n, np.float64)
    for step in range(6):
        g = rng.normal(size=n) * (0.02 if step % 2 else 0.3)
        info_ref = ref.step(w_ref, g.copy())
        info_fast = fast.step_optimizer(fst, w_fast, g.copy())
        assert (info_fast.applied, info_fast.clipped) == (info_ref.applied, info_ref.clipped)
        assert info_fast.grad_norm == pytest.approx(info_ref.grad_norm, rel=1e-12)
    np.testing.assert_allclose(w_fast, w_ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fst.m, ref.m, rtol=1e-12, atol=1e-15)
    assert (fst.t, fst.clipped_steps) == (ref.t, ref.clipped_steps)
    bad = np.full(n, np.nan)
    assert not fast.step_optimizer(fst, w_fast, bad).applied and fst.nonfinite_steps == 1


@pytest.mark.parametrize(
    "optim",
    [
        OptimConfig(lr=0.01, grad_clip=0.5, weight_decay=0.01),
        OptimConfig(name="sgd", lr=0.1, momentum=0.9, grad_clip=2.0, weight_decay=0.001),
        OptimConfig(name="sgd", lr=0.05, grad_clip=1.0),
    ],
)
def test_an_lr_scale_limited_to_a_span_scales_those_weights_only(optim: OptimConfig) -> None:
    """The definition: inside the span the weights move as under lr_scale everywhere, outside
    as under lr_scale = 1 (the moments never see the lr), bit for bit in the reference; the
    compiled optimiser gives the same numbers."""
    rng = np.random.default_rng(1)
    n, span, scale = 1003, (200, 701), 3.0
    w0 = rng.normal(size=n)
    runs = {name: (w0.copy(), Optimizer(optim, n, np.float64)) for name in ("span", "one", "all")}
    w_fast, fst = w0.copy(), Optimizer(optim, n, np.float64)
    for step in range(6):
        g = rng.normal(size=n) * (0.02 if step % 2 else 0.3)
        runs["span"][1].step(runs["span"][0], g.copy(), scale, span)
        runs["one"][1].step(runs["one"][0], g.copy(), 1.0)
        runs["all"][1].step(runs["all"][0], g.copy(), scale)
        info = fast.step_optimizer(fst, w_fast, g.copy(), scale, span)
        assert info.lr == pytest.approx(optim.lr * scale)
    w_span, w_one, w_all = (runs[name][0] for name in ("span", "one", "all"))
    lo, hi = span
    assert np.array_equal(w_span[lo:hi], w_all[lo:hi])
    assert np.array_equal(w_span[:lo], w_one[:lo]) and np.array_equal(w_span[hi:], w_one[hi:])
    assert not np.allclose(w_all[lo:hi], w_one[lo:hi])  # the scale did something
    np.testing.assert_allclose(w_fast, w_span, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(fst.m, runs["span"][1].m, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("k, window_loss", [(1, "all"), (3, "new")])
def test_backends_agree_over_a_stream_in_float64(k: int, window_loss: str) -> None:
    stream = Stream(TEXT, [Phase("x", "t", 0, len(TEXT))], np.array([0, 60]))
    runs = {}
    for backend in ("numba", "numpy"):
        cfg = LearnerConfig(update_every=k, window_loss=window_loss, backend=backend)
        learner = Learner(ModelConfig(context=16, dtype="float64"), learner_cfg=cfg)
        runs[backend] = (learner.run(stream).losses, learner.model.params.flat)
    np.testing.assert_allclose(runs["numba"][0], runs["numpy"][0], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(runs["numba"][1], runs["numpy"][1], rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("k", [1, 5])
def test_compiled_run_is_bit_for_bit_the_step_loop(k: int) -> None:
    stream = Stream(TEXT, [Phase("x", "t", 0, len(TEXT))], np.array([0, 40, 41]))
    cfg = LearnerConfig(update_every=k)
    a = Learner(ModelConfig(context=12), learner_cfg=cfg)
    a.run(stream)  # the compiled loop (no mechanisms)
    b = Learner(ModelConfig(context=12), learner_cfg=cfg)
    pos = 0
    while pos < len(TEXT):  # the per-step API, as the lab and the coder use it
        stop = min(pos + k, len(TEXT))
        flags = np.isin(np.arange(pos, stop), stream.doc_starts)
        if stop - pos > 1 and (stop - pos) + flags.sum() + (pos == 0 and not flags[0]) > 12:
            stop -= 1
            flags = flags[:-1]
        b.step(TEXT[pos:stop], flags)
        pos = stop
    assert np.array_equal(a.losses, b.losses)
    assert np.array_equal(a.model.params.flat, b.model.params.flat)
    assert np.array_equal(a.optimizer.v, b.optimizer.v) and a.optimizer.t == b.optimizer.t
    assert a.counters == b.counters and a.history.tolist() == b.history.tolist()
    assert a.last is not None and b.last is not None
    assert np.array_equal(a.last.probs, b.last.probs)
    assert a.last.window_loss_bits == b.last.window_loss_bits
    assert a.last.grad_norm == b.last.grad_norm


def test_same_config_and_bytes_give_the_same_losses_and_resume_bit_for_bit(
    tmp_path: Path,
) -> None:
    stream = Stream.from_bytes(TEXT)
    straight = Learner(learner_cfg=LearnerConfig(update_every=2))
    straight.run(stream)
    again = Learner(learner_cfg=LearnerConfig(update_every=2))
    assert np.array_equal(again.run(stream).losses, straight.losses)
    half = Learner(learner_cfg=LearnerConfig(update_every=2))
    half.run(stream, max_bytes=100)  # a step boundary of the straight run
    save_checkpoint(half, tmp_path / "ckpt.npz")
    resumed = load_checkpoint(tmp_path / "ckpt.npz")
    assert resumed.backend == "numba"
    resumed.run(stream)
    assert np.array_equal(resumed.losses, straight.losses)
    assert np.array_equal(resumed.model.params.flat, straight.model.params.flat)


def test_last_step_exposes_attention_hidden_and_probs() -> None:
    learner = Learner(ModelConfig(context=8))
    learner.run(Stream.from_bytes(b"abcabcabcabc"))
    acts = learner.last_acts
    att = acts.attention(0)
    assert att.shape == (1, 4, 8, 8) and acts.hidden.shape == (1, 8, 16)
    np.testing.assert_allclose(att.sum(-1), 1.0, rtol=1e-5)
    assert np.all(np.triu(att[0, 0], k=1) == 0)  # causal: nothing from the future
    ref = GPT(learner.model_cfg, learner.model.params)
    # the parameters changed after that forward pass; recompute it with an equal forward
    again = learner.model.forward(acts.idx)
    np.testing.assert_allclose(again.attention(0), ref.forward(acts.idx).attention(0), atol=1e-6)
    # later forward passes (sampling, previews) do not overwrite the last step's view
    learner.predict_next()
    assert np.array_equal(learner.last_acts.attention(0), att)


def test_backend_is_chosen_recorded_and_validated() -> None:
    assert resolve_backend("auto") == "numba"
    learner = Learner(learner_cfg=LearnerConfig(backend="numpy"))
    assert learner.backend == "numpy" and isinstance(learner.model, GPT)
    assert learner.config_dict()["learner"]["backend"] == "numpy"
    assert Learner().config_dict()["learner"]["backend"] == "auto"
    with pytest.raises(ConfigError, match="backend='tpu' is unknown"):
        LearnerConfig(backend="tpu")


def test_fold_reduces_any_length_exactly_for_max() -> None:
    tmp = np.zeros(200)  # needs n // 2 elements
    for n in (1, 2, 3, 7, 64, 257):
        x = np.random.default_rng(n).normal(size=n) - 5
        assert fast._fold(x, tmp, True) == x.max()
        assert fast._fold(x, tmp, False) == pytest.approx(float(np.sum(x)), rel=1e-13)


def test_the_last_step_of_the_per_step_path_survives_previews_until_the_next_step() -> None:
    """The per-step path keeps its activations in the workspace (no copy per step); a
    forward pass made between steps (a preview, sampling) copies them out first, and the
    compiled loop does the same before it overwrites the workspace."""
    learner = Learner(ModelConfig(context=8))
    for ch in b"abcabcab":
        learner.step(bytes([ch]))
    acts = learner.last_acts
    att, probs, hidden = acts.attention(0), acts.probs.copy(), acts.hidden.copy()
    assert acts.workspace is learner.model.ws  # not copied by the step
    learner.predict_next()
    learner.model.forward(np.array([[BOS, 120, 121]]))
    assert acts.workspace is None  # copied out by the first of those
    assert np.array_equal(learner.last_acts.attention(0), att)
    assert np.array_equal(learner.last_acts.probs, probs)
    assert np.array_equal(learner.last_acts.hidden, hidden)
    learner.step(b"c")
    second = learner.last_acts
    att2 = second.attention(0)
    learner.run(Stream.from_bytes(b"abcabcabc" * 3), max_bytes=learner.position)  # no bytes
    learner.run(Stream.from_bytes(b"abcabcabc" * 3))  # compiled loop over the rest
    assert np.array_equal(second.attention(0), att2)
