"""The named presets: ``seed`` is the original μGPT (SGD with global-norm clipping, k = 1),
``seed-adam`` the same model under Adam, both at the learning rates the published scan chose
(docs/results/lr-scan.csv); ``strong`` keeps its own optimiser."""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from mugpt.corpus import Stream
from mugpt.engine.config import PRESETS, SEED_LR_BY_K, RunConfig
from mugpt.model import ModelConfig

SCAN = Path(__file__).resolve().parents[1] / "docs" / "results" / "lr-scan.csv"


def test_the_seed_preset_is_plain_sgd_with_global_norm_clipping_at_k_1() -> None:
    cfg = RunConfig.from_dict({"preset": "seed"})
    assert cfg.model == ModelConfig()
    assert (cfg.optim.name, cfg.optim.momentum, cfg.optim.weight_decay) == ("sgd", 0.0, 0.0)
    assert cfg.optim.grad_clip == 1.0
    assert cfg.optim.lr == SEED_LR_BY_K["sgd"][1]
    assert (cfg.learner.update_every, cfg.learner.window_loss, cfg.learner.batch_streams) == (1, "all", 1)  # fmt: skip
    assert cfg.mechanisms == []


def test_no_preset_and_a_bare_run_config_are_the_seed_preset() -> None:
    seed = RunConfig.from_dict({"preset": "seed"})
    assert RunConfig.from_dict({}) == seed
    assert RunConfig() == seed
    assert RunConfig().digest() == seed.digest()


def test_seed_adam_differs_from_seed_only_in_its_optimiser() -> None:
    seed = RunConfig.from_dict({"preset": "seed"})
    adam = RunConfig.from_dict({"preset": "seed-adam"})
    assert (adam.optim.name, adam.optim.beta1, adam.optim.beta2) == ("adam", 0.9, 0.999)
    assert adam.optim.lr == SEED_LR_BY_K["adam"][1]
    assert adam.optim.grad_clip == 1.0
    assert (adam.model, adam.learner, adam.mechanisms) == (seed.model, seed.learner, seed.mechanisms)  # fmt: skip


def test_strong_keeps_its_nncp_style_adam() -> None:
    opt = RunConfig.from_dict({"preset": "strong"}).optim
    assert (opt.name, opt.lr, opt.beta1, opt.beta2, opt.grad_clip) == ("adam", 0.003, 0.0, 0.9999, 1.0)  # fmt: skip


def test_the_tuned_learning_rates_are_the_best_of_the_published_scan() -> None:
    cells: dict[tuple[str, int, float], list[float]] = defaultdict(list)
    with SCAN.open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["data"] == "tuning":
                cells[row["optimiser"], int(row["k"]), float(row["lr"])].append(float(row["bpb"]))
    assert cells, f"{SCAN} holds no tuning runs"
    best: dict[tuple[str, int], tuple[float, float]] = {}
    for (optimiser, k, lr), values in cells.items():
        assert len(values) >= 3, f"{optimiser} k={k} lr={lr}: fewer than 3 seeds"
        mean = statistics.fmean(values)
        if (optimiser, k) not in best or mean < best[optimiser, k][0]:
            best[optimiser, k] = (mean, lr)
    table = {o: {k: lr for (o2, k), (_, lr) in best.items() if o2 == o} for o in ("sgd", "adam")}
    assert table == SEED_LR_BY_K


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_learns_a_repeated_text(name: str) -> None:
    data = b"the cat sat on the mat. " * 60
    learner = RunConfig.from_dict({"preset": name}).build_learner()
    losses = learner.run(Stream.from_bytes(data)).losses
    assert np.all(np.isfinite(losses))
    # the first sentence costs about 8 bits a byte (nothing is known yet); the last ten, once
    # the repetition is learned, far less
    assert losses[:24].mean() > 6.0
    assert losses[-240:].mean() < 1.5


def test_the_seed_preset_clips_its_updates() -> None:
    # with clipping at 1.0 a fresh model's gradient norms are above the clip: the steps are
    # normalised, so a smaller lr is a shorter step, not a weaker gradient
    learner = RunConfig.from_dict({"preset": "seed"}).build_learner()
    learner.run(Stream.from_bytes(b"hello, world. " * 20))
    assert learner.optimizer.clipped_steps > 0
    assert learner.optimizer.v.size == 0  # SGD keeps no second moment


def test_compress_defaults_to_the_strong_preset_and_run_to_the_seed(tmp_path: Path) -> None:
    from mugpt.cli import build_parser
    from mugpt.cli.codec import DEFAULT_PRESET
    from mugpt.cli.common import run_config_from_args

    parser = build_parser()
    compress = parser.parse_args(["compress", "in.txt", "out.mgz"])
    assert DEFAULT_PRESET == "strong"
    assert run_config_from_args(compress, DEFAULT_PRESET) == RunConfig.from_dict({"preset": "strong"})  # fmt: skip
    seed = parser.parse_args(["compress", "in.txt", "out.mgz", "--preset", "seed"])
    assert run_config_from_args(seed, DEFAULT_PRESET) == RunConfig()
    # a --config file's own preset wins over the command's default
    config = tmp_path / "c.toml"
    config.write_text('preset = "seed-adam"\n')
    from_file = parser.parse_args(["compress", "in.txt", "out.mgz", "--config", str(config)])
    assert run_config_from_args(from_file, DEFAULT_PRESET).preset == "seed-adam"
    run = parser.parse_args(["run", "in.txt"])
    assert run_config_from_args(run) == RunConfig()
