"""mugpt bench: FLOP counts against their definition, configuration specs, the PyTorch
reference against μGPT, and the command end to end (speeds are reported, never asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mugpt.bench import flops_per_byte, parse_config_spec, step_flops
from mugpt.bench.measure import measure_compressor
from mugpt.cli import main
from mugpt.corpus import Stream
from mugpt.engine import Learner
from mugpt.engine.baselines import baseline_bpb
from mugpt.errors import ConfigError
from mugpt.model import ModelConfig


def test_flops_follow_the_documented_formula() -> None:
    cfg = ModelConfig(n_layers=2, d_model=8, n_heads=2, d_ff=12, context=4)
    t, c, f, v = 4, 8, 12, 257
    forward = 2 * (t * (6 * c * c + 2 * c * c + 4 * c * f) + 4 * c * (t * (t + 1) // 2))
    forward += t * 2 * c * v
    counts = step_flops(cfg)
    assert counts == {"forward": forward, "backward": 2 * forward, "optimizer": 14 * cfg.n_params}
    per_step = 3 * forward + 14 * cfg.n_params
    assert flops_per_byte(cfg) == per_step
    assert flops_per_byte(cfg, update_every=4, batch_streams=2) == (2 * 3 * forward + 14 * cfg.n_params) / 8  # fmt: skip


def test_config_specs_take_overrides_and_reject_unknown_names() -> None:
    cfg = parse_config_spec("seed-k32:learner.batch_streams=4,optim.lr=0.003")
    assert (cfg.learner.update_every, cfg.learner.batch_streams, cfg.optim.lr) == (32, 4, 0.003)
    with pytest.raises(ConfigError, match="unknown benchmark configuration 'sed'"):
        parse_config_spec("sed")
    with pytest.raises(ConfigError, match=r"write section\.key=value"):
        parse_config_spec("seed:lr=3")


@pytest.mark.parametrize("preset", ["seed", "seed-adam"])
@pytest.mark.parametrize("k", [1, 5])
def test_torch_reference_computes_the_same_losses(k: int, preset: str) -> None:
    pytest.importorskip("torch", reason="the PyTorch reference needs torch")
    from mugpt.bench.torch_ref import TorchLearner

    data = b"the cat sat on the mat. the dog sat on the log. " * 3
    cfg = parse_config_spec(f"{preset}:learner.update_every={k},model.dtype=float64,model.context=16")  # fmt: skip
    assert cfg.optim.name == {"seed": "sgd", "seed-adam": "adam"}[preset]
    torch_losses = TorchLearner(cfg).run(data, np.array([0, 40]))
    learner = Learner(cfg.model, cfg.optim, [], cfg.learner)
    stream = Stream(data, Stream.from_bytes(data).phases, np.array([0, 40]))
    np.testing.assert_allclose(torch_losses, learner.run(stream).losses, rtol=1e-9, atol=1e-9)


def test_compressor_rows_match_the_baselines() -> None:
    data = b"abracadabra, a magic word. " * 40
    row = measure_compressor("xz", data, repeats=1)
    assert row["bpb"] == pytest.approx(baseline_bpb(data)["xz"])
    assert row["bytes_per_s"] > 0 and row["peak_rss_mb"] > 0


def test_bench_command_prints_a_table_and_writes_json(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data.txt"
    data.write_bytes(b"hello world, hello bench. " * 20)
    out = tmp_path / "bench.json"
    code = main(["bench", str(data), "--bytes", "300", "--configs", "seed-k32", "--repeats",
                 "1", "--no-torch", "--no-baselines", "--json", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    assert "seed-k32" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["bytes"] == 300 and report["peak_gflops"] > 0
    (row,) = report["rows"]
    assert row["name"] == "seed-k32" and row["update_every"] == 32
    assert row["flops_per_byte"] == pytest.approx(flops_per_byte(ModelConfig(), 32))
    assert row["peak_fraction"] > 0 and np.isfinite(row["bpb"])
    frozen_out = tmp_path / "frozen.json"
    code = main(["bench", str(data), "--bytes", "300", "--configs", "seed-k32", "--repeats",
                 "1", "--no-torch", "--no-baselines", "--json", str(frozen_out), "--quiet",
                 "--freeze-network"])  # fmt: skip
    assert code == 0
    (frozen,) = json.loads(frozen_out.read_text())["rows"]
    assert frozen["name"] == "seed-k32 (frozen)"
    assert frozen["config"]["learner"]["freeze_network"] is True
    assert frozen["bpb"] != row["bpb"]


def test_mechanisms_are_timed_beside_the_same_configuration(tmp_path: Path) -> None:
    cfg = parse_config_spec("seed-k32+replay+cache:learner.update_every=8")
    assert [m["name"] for m in cfg.mechanisms] == ["replay", "cache"]
    assert cfg.learner.update_every == 8
    # a preset's own mechanisms stay; the added ones come after them
    strong = parse_config_spec("strong+knn")
    assert [m["name"] for m in strong.mechanisms] == ["ngram_mix", "knn"]
    assert strong.model == parse_config_spec("strong").model
    with pytest.raises(ConfigError, match="unknown mechanism 'kmn' in 'seed\\+kmn'; choose from"):
        parse_config_spec("seed+kmn")
    data = tmp_path / "data.txt"
    data.write_bytes(b"hello world, hello bench. " * 20)
    out = tmp_path / "bench.json"
    code = main(["bench", str(data), "--bytes", "400", "--configs", "seed-k32;seed-k32+cache",
                 "--repeats", "1", "--no-torch", "--no-baselines", "--json", str(out), "--quiet"])  # fmt: skip
    assert code == 0
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"seed-k32", "seed-k32+cache"}
    from mugpt.corpus import Stream

    with_cache = parse_config_spec("seed-k32+cache").build_learner()
    expected = with_cache.run(Stream.from_bytes(data.read_bytes()[:400])).losses.mean()
    assert rows["seed-k32+cache"]["bpb"] == pytest.approx(expected, abs=1e-9)
    assert rows["seed-k32+cache"]["bpb"] != rows["seed-k32"]["bpb"]


def test_bench_rejects_bad_arguments(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["bench", "--configs", "nope", "--no-torch", "--no-baselines"]) == 2
    assert "unknown benchmark configuration 'nope'" in capsys.readouterr().err


def test_a_mixture_is_attributed_to_its_experts_in_an_untimed_run() -> None:
    from mugpt.bench.measure import measure_mugpt
    from mugpt.bench.run import BenchReport, BenchRow, render_experts

    cfg = parse_config_spec("seed:learner.update_every=4")
    values = cfg.to_dict()
    values["mechanisms"] = [{"name": "ngram_mix", "max_order": 4, "table_bits": 12}]
    data = b"the cat sat on the mat. the dog sat on the log. " * 8
    plain = measure_mugpt(values, data, np.array([0]), 1)
    traced = measure_mugpt(values, data, np.array([0]), 1, experts=True)
    assert "experts" not in plain and traced["bpb"] == plain["bpb"]
    experts = traced["experts"]
    assert [e["expert"] for e in experts] == ["network"] + [f"order {o}" for o in range(5)]
    assert all(e["bytes"] == len(data) for e in experts)
    row = BenchRow("seed+mix", "mugpt", "numba", 1.0, 1.0, plain["bpb"], 0.0, 0.0, [1.0], experts=experts)  # fmt: skip
    report = BenchReport("test", len(data), 1, None, None, {}, [row])
    (experts_shown,) = render_experts(report)
    assert experts_shown.row_count == len(experts)
    assert render_experts(BenchReport("test", len(data), 1, None, None, {}, [row.__class__("x", "mugpt", "numba", 1.0, 1.0, 1.0, 0.0, 0.0, [1.0])])) == []  # fmt: skip
