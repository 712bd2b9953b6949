"""Sweeps on the local backend: sweep files, the results store, faults, resume, the report."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mugpt.cli import main as cli_main
from mugpt.engine import read_checkpoint
from mugpt.engine.config import RunConfig
from mugpt.errors import ConfigError
from mugpt.sweep import (
    SweepSpec,
    SweepStore,
    execute_run,
    load_sweep_results,
    mean_ci,
    run_key,
    run_sweep,
)
from mugpt.sweep.driver import _exclusive
from mugpt.sweep.stats import t_quantile_975

ROOT = Path(__file__).resolve().parents[1]
TEXT = "text:the quick brown fox jumps over the lazy dog. " * 1
STREAM = "a=counting:700,b=repeat:700"


def quiet(_line: str) -> None:
    return None


def small_spec(**over: Any) -> SweepSpec:
    raw: dict[str, Any] = {
        "name": "t",
        "seeds": 2,
        "budget": 800,
        "checkpoint_seconds": 0.2,
        "base": {"stream": STREAM, "learner": {"update_every": 4}},
        "grid": {"optim.lr": [0.003, 0.03]},
    }
    raw.update(over)
    return SweepSpec.from_dict(raw, source="test.toml")


# ---------------------------------------------------------------------- helpers run by workers


def dying_run(**kwargs: Any) -> dict[str, Any]:
    """A run function whose worker process dies for seed 1 (as if killed or crashed)."""
    if kwargs["run_config"]["seed"] == 1:
        os._exit(7)
    return execute_run(**kwargs)


def interrupting_run(**kwargs: Any) -> dict[str, Any]:
    """Sends Ctrl-C to the driver (its pid is in a file the test wrote) once this run has
    passed byte 400, and waits for the driver's stop request before learning on."""
    from mugpt.engine.learner import Learner
    from mugpt.sweep import runner

    trigger = Path(kwargs["out_dir"]).parents[1] / "interrupt-driver"
    taken = trigger.with_suffix(".taken")
    try:
        os.rename(trigger, taken)
    except FileNotFoundError:
        return execute_run(**kwargs)
    pid = int(taken.read_text())
    original = Learner.run
    sent = False

    def run(self: Any, *args: Any, **kw: Any) -> Any:
        nonlocal sent
        result = original(self, *args, **kw)
        if self.position >= 400 and not sent:
            sent = True
            os.kill(pid, signal.SIGINT)
            deadline = time.monotonic() + 30
            while not runner._STOP.is_set() and time.monotonic() < deadline:
                time.sleep(0.01)
        return result

    Learner.run = run  # type: ignore[method-assign]
    try:
        return execute_run(**kwargs, segment_bytes=200)
    finally:
        Learner.run = original  # type: ignore[method-assign]


# ---------------------------------------------------------------------- sweep files


def test_example_sweep_file_plans_mechanisms_times_seeds() -> None:
    spec = SweepSpec.load(ROOT / "examples" / "sweep-small.toml")
    plan = spec.plan()
    names = list(spec.axes[0].labels)
    assert spec.name == "small" and spec.axes[0].key == "mechanisms"
    assert len(plan) == len(names) * 3 == len({r.run_id for r in plan})
    for run in plan:
        cfg = RunConfig.from_dict(run.config)
        assert run.run_id == run_key(cfg, run.max_bytes)
        assert cfg.seed == run.seed and (cfg.learner.update_every, cfg.optim.lr) == (16, 0.3)


def test_grid_times_random_search_is_seeded_and_within_bounds() -> None:
    raw = {
        "seeds": [3, 5],
        "grid": {"learner": {"update_every": [2, 4]}},
        "random": {
            "samples": 3,
            "seed": 11,
            "optim.lr": {"log_uniform": [1e-3, 3e-2]},
            "model.n_layers": {"int": [1, 2]},
            "optim.beta1": {"uniform": [0.8, 0.9]},
            "model.activation": {"choice": ["relu", "gelu"]},
        },
    }
    plan = SweepSpec.from_dict(raw).plan()
    assert len(plan) == 2 * 3 * 2
    assert [r.seed for r in plan[:2]] == [3, 5]
    lrs = {r.values["optim.lr"] for r in plan}
    assert len(lrs) == 3 and all(1e-3 <= x <= 3e-2 for x in lrs)
    assert all(0.8 <= r.values["optim.beta1"] <= 0.9 for r in plan)
    assert {r.values["model.n_layers"] for r in plan} <= {1, 2}
    # the same random seed draws the same points; another seed draws others
    again = SweepSpec.from_dict(raw).plan()
    assert [r.run_id for r in again] == [r.run_id for r in plan]
    other = SweepSpec.from_dict({**raw, "random": {**raw["random"], "seed": 12}}).plan()
    assert {r.values["optim.lr"] for r in other} != lrs
    # each run's config carries its point's values
    for r in plan:
        cfg = RunConfig.from_dict(r.config)
        assert cfg.optim.lr == r.values["optim.lr"]
        assert cfg.learner.update_every == r.values["learner.update_every"]


def test_named_values_and_mechanism_lists() -> None:
    spec = SweepSpec.from_dict(
        {"grid": {"mechanisms": {"none": [], "sb": [{"name": "selective_backprop", "tau": 1.5}]}}}
    )
    plan = spec.plan()
    assert [r.labels["mechanisms"] for r in plan] == ["none", "sb"]
    # the run config holds every parameter, defaults included (they are part of the run's key)
    from mugpt.mechanisms import make_mechanism

    defaults = make_mechanism("selective_backprop").config.model_dump()
    assert plan[1].config["mechanisms"] == [{"name": "selective_backprop", **defaults, "tau": 1.5}]
    unnamed = SweepSpec.from_dict({"grid": {"mechanisms": [[], [{"name": "selective_backprop"}]]}})
    assert [r.labels["mechanisms"] for r in unnamed.plan()] == ["baseline", "selective_backprop"]


def test_run_key_is_the_config_digest_plus_the_budget() -> None:
    cfg = RunConfig.from_dict({"seed": 2})
    assert run_key(cfg, None) == cfg.digest()
    assert run_key(cfg, 1000) != run_key(cfg, 2000) != cfg.digest()
    plan = SweepSpec.from_dict({"seeds": 1, "budget": "1k"}).plan()
    assert plan[0].max_bytes == 1000 and plan[0].run_id == run_key(RunConfig(), 1000)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"grids": {}}, "test.toml: grids: unknown key"),
        ({"seeds": 0}, "test.toml: seeds: 0 must be at least 1"),
        ({"seeds": [1, 1]}, "test.toml: seeds: [1, 1] lists a seed twice"),
        ({"budget": "lots"}, "test.toml: budget: 'lots' is not a number of bytes"),
        ({"base": {"seed": 3}}, "test.toml: base.seed: set the seeds"),
        ({"base": {"model": {"d_modle": 8}}}, "test.toml: base: unknown model key(s) ['d_modle']"),
        ({"grid": {"optim.lrr": [0.1]}}, "test.toml: grid.optim.lrr[0] = 0.1: unknown optim key"),
        ({"grid": {"model": {"d_model": [16, "big"]}}}, 'grid.model.d_model[1] = "big"'),
        ({"grid": {"optim.lr": []}}, "test.toml: grid.optim.lr: give at least one value"),
        ({"grid": {"seed": [1, 2]}}, "test.toml: grid.seed: seeds are swept with"),
        ({"grid": {"colour": [1]}}, "test.toml: grid.colour: unknown config key"),
        (
            {"grid": {"mechanisms": [[], [{"name": "teleport"}]]}},
            'test.toml: grid.mechanisms[1] = [{"name" = "teleport"}]: unknown mechanism \'teleport\'',
        ),
        (
            {"grid": {"mechanisms": [[{"name": "selective_backprop", "tau": -1}]]}},
            "grid.mechanisms[0]",
        ),
        (
            {"grid": {"stream": ["nosuch:5k"]}},
            "test.toml: grid.stream[0] = \"nosuch:5k\": unknown source 'nosuch'",
        ),
        ({"grid": {"stream": ["file:/no/such/file.txt"]}}, "grid.stream[0]"),
        (
            {"grid": {"learner.update_every": [64]}},
            "grid.learner.update_every[0] = 64: learner.update_every=64 must not exceed model.context=32",
        ),
        (
            {"grid": {"model.d_model": [12, 16], "model.n_heads": [4, 8]}},
            "test.toml: grid point [model.d_model=12, model.n_heads=8]",
        ),
        ({"random": {"optim.lr": {"log_uniform": [0.001, 0.01]}}}, "random.samples"),
        (
            {"random": {"samples": 2, "optim.lr": {"loguniform": [1, 2]}}},
            "random.optim.lr: unknown distribution 'loguniform'",
        ),
        (
            {"random": {"samples": 2, "optim.lr": {"uniform": [0.1, 0.01]}}},
            "random.optim.lr.uniform: low 0.1 must be below high 0.01",
        ),
        (
            {"random": {"samples": 2, "optim.lr": {"log_uniform": [0, 0.01]}}},
            "must be positive for a log scale",
        ),
        (
            {
                "grid": {"optim.lr": [0.01]},
                "random": {"samples": 1, "optim.lr": {"uniform": [0.01, 0.02]}},
            },
            "random.optim.lr: is also in [grid]",
        ),
    ],
)
def test_malformed_sweep_names_the_offending_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        SweepSpec.from_dict(raw, source="test.toml")
    assert message in str(err.value)


def test_bad_toml_and_cli_error_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('seeds = 2\n[grid]\n"optim.lr" = [0.01, "fast"]\n')
    assert cli_main(["sweep", "run", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert 'bad.toml: grid.optim.lr[1] = "fast"' in err
    broken = tmp_path / "broken.toml"
    broken.write_text("seeds = [1,\n")
    with pytest.raises(ConfigError, match="is not valid TOML"):
        SweepSpec.load(broken)
    assert not (tmp_path / "o").exists()


def test_dry_run_lists_every_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "s.toml"
    f.write_text('seeds = 2\nbudget = "1k"\n[grid]\n"optim.lr" = [0.01, 0.02]\n')
    assert cli_main(["sweep", "run", str(f), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "4 runs" in out and out.count("optim.lr=0.02") == 2 and "1,000 B" in out
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------------- statistics


def test_t_quantiles_match_the_published_table() -> None:
    table = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 19: 2.093, 30: 2.042}
    for df, value in table.items():
        assert round(t_quantile_975(df), 3) == value


def test_mean_ci_is_t_times_standard_error() -> None:
    xs = [3.1, 2.9, 3.4, 3.0]
    m = mean_ci(xs)
    s = math.sqrt(sum((x - 3.1) ** 2 for x in xs) / 3)
    assert m.n == 4 and m.mean == pytest.approx(3.1)
    assert m.ci95 == pytest.approx(3.182446305 * s / 2)
    assert mean_ci([None, 2.0]).ci95 is None and mean_ci([]).mean is None


# ---------------------------------------------------------------------- running


def test_local_sweep_runs_records_skips_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    spec = small_spec()
    out = tmp_path / "sweep"
    first = run_sweep(spec, out, workers=2, echo=quiet)
    assert first.counts == {"done": 4} and first.ran == 4
    rows = load_sweep_results(out)
    assert [(r["labels"]["optim.lr"], r["seed"]) for r in rows] == [
        ("0.003", 0), ("0.003", 1), ("0.03", 0), ("0.03", 1),
    ]  # fmt: skip
    for row in rows:
        res = row["result"]
        assert row["status"] == "done" and row["bytes"] == 800 and row["backend"] == "local"
        log = np.loadtxt(Path(res["run_dir"]) / "log.csv", delimiter=",", skiprows=1, usecols=3)
        assert log.size == 800 and res["bpb"] == pytest.approx(log.mean(), abs=1e-6)
        assert [p["label"] for p in res["phases"]] == ["a", "b"] and res["boundaries"] == [700]
        assert set(res["baselines"]) == {"gzip", "bzip2", "xz", "zstd", "ppmd"}
        assert res["updates"] == 200 and res["bytes_per_s"] > 0
    # the worker's result is the one a plain in-process run gives, bit for bit
    direct = execute_run(rows[2]["config"], tmp_path / "direct", max_bytes=800, baselines=False)
    assert direct["bpb"] == rows[2]["bpb"]
    # running the sweep again does nothing: every run is finished
    again = run_sweep(spec, out, workers=2, echo=quiet)
    assert again.ran == 0 and again.already_done == 4
    assert [r["bpb"] for r in load_sweep_results(out)] == [r["bpb"] for r in rows]
    # the report: CSV means and CIs over seeds; markdown; plots
    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert [t["optim.lr"] for t in table] == ["0.003", "0.03"]
    for t, pair in zip(table, (rows[:2], rows[2:])):
        m = mean_ci(r["bpb"] for r in pair)
        assert float(t["bpb_mean"]) == pytest.approx(m.mean) and t["seeds"] == "2"
        assert float(t["bpb_ci95"]) == pytest.approx(m.ci95)
        assert float(t["phase1_b_bpb_mean"]) == pytest.approx(
            np.mean([r["result"]["phases"][1]["bpb"] for r in pair])
        )
    md = (out / "results.md").read_text()
    assert mean_ci(r["bpb"] for r in rows[:2]).format() in md and "## Stream: a+b" in md
    for name in ("pareto", "phases", "curves"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # `mugpt sweep report` regenerates; `status` counts
    (out / "results.md").unlink()
    capsys.readouterr()
    assert cli_main(["sweep", "report", str(out)]) == 0
    assert (out / "results.md").read_text() == md
    # ... and prints the table itself: each lr with its mean bpb ± CI over the two seeds
    printed = capsys.readouterr().out
    for t in table:
        line = next(x for x in printed.splitlines() if f" {t['optim.lr']} " in x)
        assert f"{float(t['bpb_mean']):.4f} ± {float(t['bpb_ci95']):.4f}" in line
        assert " 2 " in line  # seeds


def test_failing_and_dying_runs_are_recorded_and_the_sweep_goes_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    spec = small_spec(grid={"stream": {"good": STREAM, "empty": f"file:{empty}"}})
    out = tmp_path / "sweep"
    result = run_sweep(spec, out, workers=2, runner=dying_run, echo=quiet)
    assert result.counts == {"done": 1, "failed": 3}
    by = {(r["labels"]["stream"], r["seed"]): r for r in load_sweep_results(out)}
    assert by[("good", 0)]["status"] == "done"
    assert by[("good", 1)]["error"].startswith("WorkerDied: the worker process exited with code 7")
    assert by[("empty", 0)]["error"].startswith("StreamError: phase 'empty.txt'")
    assert "is empty" in by[("empty", 0)]["error"]
    # the report lists the failures; status shows them
    md = (out / "results.md").read_text()
    assert "## Failed runs" in md and "StreamError" in md and "WorkerDied" in md
    assert cli_main(["sweep", "status", str(out)]) == 0
    status = capsys.readouterr().out
    assert "4 runs · 1 done, 3 failed" in status and "code 7" in status
    # a re-run skips failed runs unless asked to retry them
    assert run_sweep(spec, out, workers=2, echo=quiet).ran == 0
    retry = run_sweep(spec, out, workers=2, retry_failed=True, echo=quiet)
    assert retry.ran == 3 and retry.counts == {"done": 2, "failed": 2}


def test_ctrl_c_stops_cleanly_and_a_rerun_resumes_bit_for_bit(tmp_path: Path) -> None:
    spec = small_spec(grid={}, budget=1000)
    out = tmp_path / "sweep"
    out.mkdir()
    (out / "interrupt-driver").write_text(str(os.getpid()))
    # Ctrl-C as in a terminal, even when the test process was started with SIGINT ignored
    # (as a shell does for a command run in the background)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            run_sweep(spec, out, workers=1, runner=interrupting_run, echo=quiet)
    finally:
        signal.signal(signal.SIGINT, previous)
    rows = load_sweep_results(out)
    assert [r["status"] for r in rows] == ["interrupted", "pending"]
    ckpt = Path(out / "runs" / rows[0]["run_id"] / "checkpoint.npz")
    header, _ = read_checkpoint(ckpt)
    stopped_at = header["position"]
    assert stopped_at == 400  # the end of the segment at which the stop was asked
    assert header["extra"]["run_id"] == rows[0]["run_id"]
    # the same command resumes the stopped run and runs the other one
    resumed = run_sweep(spec, out, workers=1, echo=quiet)
    assert resumed.ran == 2 and resumed.counts == {"done": 2}
    first = load_sweep_results(out)[0]
    assert first["result"]["resumed_from"] == stopped_at and first["bytes"] == 1000
    # a plain run in one Learner.run call, never stopped, gives the very same state
    cfg = RunConfig.from_dict(first["config"])
    learner = cfg.build_learner()
    learner.run(cfg.build_stream(), max_bytes=1000)
    _, resumed = read_checkpoint(Path(first["result"]["run_dir"]) / "checkpoint.npz")
    assert np.array_equal(resumed["losses"], learner.losses)
    assert np.array_equal(resumed["params"], learner.model.params.flat)


def test_execute_run_reads_back_a_finished_run_and_restarts_on_a_foreign_checkpoint(tmp_path: Path) -> None:  # fmt: skip
    cfg = RunConfig.from_dict({"stream": STREAM, "learner": {"update_every": 4}, "seed": 1})
    first = execute_run(cfg.to_dict(), tmp_path / "r", max_bytes=300, baselines=False)
    again = execute_run(cfg.to_dict(), tmp_path / "r", max_bytes=300, baselines=False)
    assert again["bpb"] == first["bpb"] and again["curve"] == first["curve"]
    # a checkpoint of another run in the folder is not continued
    other = cfg.with_overrides({"optim.lr": 2 * cfg.optim.lr})
    assert other.digest() != cfg.digest()
    fresh = execute_run(other.to_dict(), tmp_path / "r", max_bytes=300, baselines=False)
    assert fresh["resumed_from"] == 0 and fresh["run_id"] == run_key(other, 300)


def test_store_marks_runs_left_running_by_a_dead_driver_as_interrupted(tmp_path: Path) -> None:
    plan = small_spec().plan()
    store = SweepStore(tmp_path)
    assert store.add_runs(plan) == 4 and store.add_runs(plan) == 0
    store.mark_running(plan[0].run_id, "local")
    assert store.recover_stale() == 1
    assert store.status(plan[0].run_id) == "interrupted"
    store.close()


def test_two_drivers_never_share_a_sweep_folder(tmp_path: Path) -> None:
    with _exclusive(tmp_path), pytest.raises(ConfigError, match="another `mugpt sweep` is running"):
        run_sweep(small_spec(), tmp_path, echo=quiet)


def test_report_of_a_folder_without_results_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    assert cli_main(["sweep", "report", str(tmp_path)]) == 2
    assert "holds no sweep results" in capsys.readouterr().err


def test_status_json_lines(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = SweepStore(tmp_path)
    plan = small_spec().plan()
    store.add_runs(plan)
    store.set_meta("planned", [r.run_id for r in plan])
    store.mark_failed(plan[1].run_id, "ValueError: boom\ntraceback", 1.0)
    store.close()
    assert cli_main(["sweep", "status", str(tmp_path), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [x["status"] for x in lines] == ["pending", "failed", "pending", "pending"]
    assert lines[1]["error"].startswith("ValueError: boom")
