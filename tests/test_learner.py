"""The prequential protocol of DESIGN §2, checked against its definitions."""

from __future__ import annotations

import numpy as np
import pytest

from mugpt.corpus import Phase, Stream
from mugpt.engine import Learner, LearnerConfig
from mugpt.errors import ConfigError
from mugpt.mechanisms import Mechanism
from mugpt.model import BOS, GPT, ModelConfig, OptimConfig

TEXT = b"the cat sat on the mat. the dog sat on the log. " * 6


def _bits(model: GPT, window: list[int], target: int) -> float:
    probs = model.forward(np.array([window])).probs
    return float(-np.log2(probs[0, -1, target]))


def test_each_loss_is_recorded_with_the_parameters_before_the_update() -> None:
    learner = Learner(ModelConfig(context=8), OptimConfig(lr=0.05))
    for i in range(20):  # warm up so parameters are not at init
        learner.step(TEXT[i : i + 1])
    before = GPT(learner.model_cfg, learner.model.params.copy())
    window = [int(s) for s in learner.history[-8:]]
    out = learner.step(TEXT[20:21])
    assert out.loss_bits[0] == pytest.approx(_bits(before, window, TEXT[20]), abs=1e-5)
    assert out.updated
    assert not np.array_equal(before.params.flat, learner.model.params.flat)  # it then learned


def test_update_every_k_scores_k_bytes_with_one_forward_before_one_update() -> None:
    cfg = ModelConfig(context=16)
    learner = Learner(cfg, OptimConfig(lr=0.05), learner_cfg=LearnerConfig(update_every=4))
    learner.run(Stream.from_bytes(TEXT[:40]))
    before = GPT(cfg, learner.model.params.copy())
    hist = [int(s) for s in learner.history]
    updates = learner.counters.updates
    new = TEXT[40:44]
    out = learner.step(new)
    window = (hist + list(new))[-17:]  # T + 1 symbols; inputs are the first T
    probs = before.forward(np.array([window[:-1]])).probs[0]
    expected = [-np.log2(probs[16 - 4 + j, new[j]]) for j in range(4)]
    np.testing.assert_allclose(out.loss_bits, expected, atol=1e-5)
    assert learner.counters.updates == updates + 1
    assert learner.position == 44


def test_bos_starts_the_stream_and_every_document() -> None:
    stream = Stream(b"abcdef", [Phase("x", "t", 0, 6)], np.array([0, 3]))
    learner = Learner(ModelConfig(context=16))
    result = learner.run(stream)
    assert learner.history.tolist() == [BOS, 97, 98, 99, BOS, 100, 101, 102]
    assert result.bytes == 6  # BOS is never predicted


def test_run_with_k_respects_context_even_with_many_document_starts() -> None:
    stream = Stream(b"ab" * 8, [Phase("x", "t", 0, 16)], np.arange(0, 16, 1))
    learner = Learner(ModelConfig(context=4), learner_cfg=LearnerConfig(update_every=4))
    result = learner.run(stream)
    assert result.bytes == 16 and np.isfinite(result.losses).all()


def test_same_seed_same_bytes_give_identical_losses() -> None:
    stream = Stream.from_bytes(TEXT)
    a = Learner(ModelConfig(seed=3)).run(stream).losses
    b = Learner(ModelConfig(seed=3)).run(stream).losses
    c = Learner(ModelConfig(seed=4)).run(stream).losses
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_it_learns_a_repetitive_stream() -> None:
    result = Learner(ModelConfig(), OptimConfig(lr=0.01)).run(Stream.from_bytes(TEXT))
    assert result.losses[:8].mean() > 6.5  # starts near log2(257) ≈ 8
    assert result.losses[-40:].mean() < 3.0


def test_window_loss_new_trains_only_on_the_newest_positions() -> None:
    cfg = ModelConfig(context=8, dtype="float64")
    a = Learner(cfg, learner_cfg=LearnerConfig(update_every=2, window_loss="all"))
    b = Learner(cfg, learner_cfg=LearnerConfig(update_every=2, window_loss="new"))
    sa, sb = a.run(Stream.from_bytes(TEXT[:30])), b.run(Stream.from_bytes(TEXT[:30]))
    assert sa.losses[0] == sb.losses[0]  # identical before the first update
    assert not np.array_equal(a.model.params.flat, b.model.params.flat)


class _PoisonGrads(Mechanism):
    name = "poison"

    def transform_grads(self, ctx, grads):  # type: ignore[no-untyped-def]
        grads[0] = np.nan


def test_nonfinite_gradient_never_reaches_the_weights_and_is_counted() -> None:
    learner = Learner(ModelConfig(), mechanisms=[_PoisonGrads()])
    before = learner.model.params.flat.copy()
    learner.run(Stream.from_bytes(b"hello"))
    assert np.array_equal(before, learner.model.params.flat)
    assert learner.counters.nonfinite == 5 and learner.counters.updates == 0


def test_invalid_learner_settings_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="update_every=40 must not exceed the context"):
        Learner(ModelConfig(context=32), learner_cfg=LearnerConfig(update_every=40))
    with pytest.raises(ConfigError, match="window_loss"):
        LearnerConfig(window_loss="last")
    with pytest.raises(ConfigError, match="must divide d_model"):
        ModelConfig(d_model=16, n_heads=3)
    with pytest.raises(ConfigError, match="positive integer"):
        ModelConfig(d_model=-4)


def test_seed_config_has_the_documented_exact_parameter_count() -> None:
    learner = Learner()
    assert learner.model.params.flat.size == ModelConfig().n_params == 11856
    tied = ModelConfig(tied_head=True)
    assert tied.n_params == 11856 - 16 * 257


def test_speed_excludes_first_use_compilation() -> None:
    # a fresh process compiles (or loads from numba's cache) the kernels during its first
    # run: that time is reported as compile_s and kept out of bytes/s; the next run has none
    import json
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import json
        from mugpt.corpus import Stream
        from mugpt.engine import Learner
        from mugpt.engine.summary import build_summary
        stream = Stream.from_bytes(b"hello world, " * 30)
        rows = []
        for _ in range(2):
            s = build_summary(Learner().run(stream), baselines=False)
            rows.append([s["bytes"], s["seconds"], s["compile_s"], s["bytes_per_s"]])
        print(json.dumps(rows))
    """)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    (n1, sec1, comp1, speed1), (n2, sec2, comp2, speed2) = json.loads(out.stdout)
    assert 0 < comp1 < sec1
    assert speed1 == pytest.approx(n1 / (sec1 - comp1))
    assert comp2 == 0.0
    assert speed2 == pytest.approx(n2 / sec2)
