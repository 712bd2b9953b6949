"""Multi-stream batching (batch_streams = B): B contiguous sub-streams, one shared model."""

from __future__ import annotations

import numpy as np
import pytest

from mugpt.corpus import Phase, Stream
from mugpt.engine import Learner, LearnerConfig
from mugpt.errors import ConfigError
from mugpt.mechanisms import Mechanism
from mugpt.model import BOS, GPT, ModelConfig

TEXT = b"the cat sat on the mat. the dog sat on the log. " * 5
STREAM = Stream(TEXT, [Phase("x", "t", 0, len(TEXT))], np.array([0, 50, 51, 130]))


def _arrays(stream: Stream) -> tuple[np.ndarray, np.ndarray]:
    data = np.frombuffer(stream.data, dtype=np.uint8)
    starts = np.zeros(data.size + 1, dtype=bool)
    starts[stream.doc_starts] = True
    return data, starts


@pytest.mark.parametrize("k, b", [(1, 4), (3, 7)])
def test_compiled_batch_equals_the_python_batch_and_the_numpy_reference(k: int, b: int) -> None:
    cfg = LearnerConfig(update_every=k, batch_streams=b)
    compiled = Learner(ModelConfig(context=16), learner_cfg=cfg)
    compiled.run(STREAM)
    python = Learner(ModelConfig(context=16), learner_cfg=cfg)
    python._run_batched(*_arrays(STREAM), len(TEXT), None, 1.0)
    assert np.array_equal(compiled.losses, python.losses)
    assert np.array_equal(compiled.model.params.flat, python.model.params.flat)
    assert compiled.counters == python.counters
    f64 = ModelConfig(context=16, dtype="float64")
    numba64 = Learner(f64, learner_cfg=cfg).run(STREAM).losses
    numpy_cfg = LearnerConfig(update_every=k, batch_streams=b, backend="numpy")
    numpy64 = Learner(f64, learner_cfg=numpy_cfg).run(STREAM).losses
    np.testing.assert_allclose(numba64, numpy64, rtol=1e-9, atol=1e-9)


def test_losses_land_in_stream_order_and_each_substream_is_prequential() -> None:
    """Replays the protocol by hand for B = 2, k = 1: at step j both sub-streams predict
    their j-th byte with the same parameters, then one update on both windows."""
    cfg = ModelConfig(context=6, dtype="float64")
    data = b"abcdefghij"  # sub-streams "abcde" and "fghij"
    learner = Learner(cfg, learner_cfg=LearnerConfig(batch_streams=2, backend="numpy"))
    losses = learner.run(Stream.from_bytes(data)).losses
    assert losses.shape == (10,) and np.isfinite(losses).all()
    ref = GPT(cfg)  # same seed, same init
    from mugpt.engine.config import seed_optim
    from mugpt.model import Optimizer

    opt = Optimizer(seed_optim(), cfg.n_params, np.float64)  # the Learner's default
    halves = [[BOS, *data[:5]], [BOS, *data[5:]]]
    expected = np.zeros(10)
    for j in range(5):
        windows = [h[max(0, j + 1 - 6) : j + 1] for h in halves]
        targets = [h[max(0, j + 1 - 6) + 1 : j + 2] for h in halves]
        acts = ref.forward(np.array(windows))
        for s in range(2):
            expected[5 * s + j] = -np.log2(acts.probs[s, -1, targets[s][-1]])
        grads = ref.params.like()
        ref.backward(acts, np.array(targets), np.ones((2, len(windows[0]))), grads)
        opt.step(ref.params.flat, grads.flat)
    np.testing.assert_allclose(losses, expected, rtol=1e-10)


def test_batching_keeps_every_byte_and_continues_after_the_last_substream() -> None:
    learner = Learner(ModelConfig(context=8), learner_cfg=LearnerConfig(batch_streams=3))
    result = learner.run(STREAM, max_bytes=100)
    assert result.bytes == 100 and np.isfinite(result.losses).all()
    assert learner.position == 100
    assert learner.history[-1] == TEXT[99]  # the next byte continues the last sub-stream
    learner.run(STREAM)
    assert learner.losses.size == len(TEXT) and np.isfinite(learner.losses).all()


class _Counting(Mechanism):
    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.observed = 0
        self.updates = 0

    def observe(self, ctx, loss_bits):  # type: ignore[no-untyped-def]
        self.observed += loss_bits.size

    def lr_scale(self, ctx):  # type: ignore[no-untyped-def]
        self.updates += 1
        return 1.0


def test_mechanisms_see_every_substream_and_one_update_per_step() -> None:
    mech = _Counting()
    learner = Learner(ModelConfig(context=8), mechanisms=[mech],
                      learner_cfg=LearnerConfig(batch_streams=4))  # fmt: skip
    learner.run(Stream.from_bytes(TEXT[:40]))
    assert mech.observed == 40
    assert mech.updates == learner.counters.steps == 10


def test_batch_streams_is_validated() -> None:
    with pytest.raises(ConfigError, match="batch_streams=0 must be an integer"):
        LearnerConfig(batch_streams=0)


def test_blocks_of_substreams_make_calls_on_block_boundaries_equal_one_call() -> None:
    """substream_bytes S: blocks of B·S bytes aligned to 0, each split into B sub-streams;
    the last block takes what remains. Calls that end on block boundaries (as the lab's time
    slices and a sweep's checkpoints do) give the same bits as one call."""
    cfg = LearnerConfig(update_every=2, batch_streams=3, substream_bytes=20)  # blocks of 60
    one = Learner(ModelConfig(context=8), learner_cfg=cfg)
    one.run(STREAM)
    calls = Learner(ModelConfig(context=8), learner_cfg=cfg)
    for stop in (60, 180, 240, len(TEXT)):
        calls.run(STREAM, max_bytes=stop)
        assert calls.position == stop
    assert np.array_equal(one.losses, calls.losses)
    assert np.array_equal(one.model.params.flat, calls.model.params.flat)
    assert one.counters == calls.counters
    # the same as splitting each block once by hand (S = 0 splits each call once)
    whole = Learner(ModelConfig(context=8), learner_cfg=LearnerConfig(update_every=2, batch_streams=3))  # fmt: skip
    for stop in range(60, len(TEXT), 60):
        whole.run(STREAM, max_bytes=stop)
    whole.run(STREAM)
    assert np.array_equal(one.losses, whole.losses)
    # and not the same as one split of the whole stream: blocks really are blocks
    split_once = Learner(ModelConfig(context=8), learner_cfg=LearnerConfig(update_every=2, batch_streams=3))  # fmt: skip
    assert not np.array_equal(one.losses, split_once.run(STREAM).losses)


def test_progress_of_a_blocked_run_reports_the_calls_end() -> None:
    seen: list[tuple[int, int]] = []
    cfg = LearnerConfig(batch_streams=2, substream_bytes=25)
    Learner(ModelConfig(context=8), learner_cfg=cfg).run(
        STREAM, progress=lambda pos, end, bpb: seen.append((pos, end)), progress_every=0.0
    )
    assert seen and {end for _, end in seen} == {len(TEXT)}
    assert seen[-1][0] == len(TEXT)


def test_substream_bytes_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"substream_bytes=-1 must be an integer >= 0"):
        LearnerConfig(batch_streams=2, substream_bytes=-1)
    assert LearnerConfig(substream_bytes=64).block_bytes == 0  # one stream: no blocks
