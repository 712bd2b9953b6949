"""mugpt ablate: arms, statistics (t intervals, paired differences) and the written tables."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest

from mugpt.cli import main
from mugpt.corpus import build_stream
from mugpt.engine.ablate import ablate, mean_ci, plan_arms, t_quantile
from mugpt.engine.config import RunConfig
from mugpt.engine.window import whole_steps_end
from mugpt.errors import ConfigError

STREAM = (
    "a=text:the cat sat on the mat and the dog sat on the log. ,b=counting:300,a=stdlib-prose:300"
)


def test_t_quantiles_match_the_tables() -> None:
    # two-sided 95% critical values of Student's t
    for df, value in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (29, 2.045), (1000, 1.962)]:
        assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)


def test_mean_ci_and_degenerate_cases() -> None:
    r = mean_ci([2.0, 4.0, 6.0, 8.0])
    sem = np.std([2, 4, 6, 8], ddof=1) / 2
    assert r["mean"] == 5.0 and r["half_width"] == pytest.approx(3.182446 * sem, rel=1e-5)
    assert mean_ci([3.0])["half_width"] is None and mean_ci([None])["mean"] is None


def test_arms_are_baseline_each_alone_and_all() -> None:
    arms = plan_arms()
    assert [a.name for a in arms] == ["baseline", "selective_backprop", "replay",
                                      "adaptive_lr", "grad_clip", "cache", "knn", "ngram_mix",
                                      "all"]  # fmt: skip
    strict = {a.name: a.strict_online for a in arms}
    assert strict["replay"] is False and strict["all"] is False and strict["cache"] is True
    with pytest.raises(ConfigError, match="unknown mechanism"):
        plan_arms([{"name": "dropout"}])


def test_paired_differences_use_the_same_seed() -> None:
    # the reference path: the statistics are the point here, not the compiled loop (each arm's
    # combination of mechanisms would be one more compile of it in a cold suite)
    learner = {"update_every": 8, "backend": "numpy"}
    cfg = RunConfig.from_dict({"learner": learner, "model": {"context": 16}})
    stream = build_stream(STREAM)
    res = ablate(cfg, stream, seeds=3, jobs=1, max_bytes=500,
                 mechanisms=[{"name": "cache", "lam": 0.3}, {"name": "grad_clip"}])  # fmt: skip
    assert [a.name for a in res.arms] == ["baseline", "cache", "grad_clip", "all"]
    assert res.seeds == [0, 1, 2]
    base, arm = res.runs["baseline"], res.runs["cache"]
    diffs = [arm[s]["bpb"] - base[s]["bpb"] for s in res.seeds]
    row = res.row("cache", "bpb")
    assert row["diff_mean"] == pytest.approx(np.mean(diffs))
    assert row["diff_half_width"] == pytest.approx(mean_ci(diffs)["half_width"])
    assert row["mean"] == pytest.approx(np.mean([arm[s]["bpb"] for s in res.seeds]))
    assert res.row("baseline", "bpb")["diff_mean"] == 0.0
    # a capped run stops at the last step boundary at or before the cap (so it can resume)
    starts = np.zeros(len(stream.data) + 1, dtype=bool)
    starts[np.asarray(stream.doc_starts, dtype=np.int64)] = True
    stop = whole_steps_end(starts, 0, 500, len(stream.data), 8, 16, True)
    assert 492 < stop <= 500
    assert all(r["bytes"] == stop for runs in res.runs.values() for r in runs.values())
    # phases reached within 500 bytes get their own bpb column
    assert res.phases == ["0:a", "1:b", "2:a"]
    assert res.runs["cache"][0]["mechanisms"][0]["config"]["lam"] == 0.3


def test_cli_writes_the_tables_and_the_plot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "abl"
    code = main(["ablate", "--stream", STREAM, "--seeds", "2", "--jobs", "2", "--max-bytes", "400",
                 "--update-every", "8", "--context", "16", "--backend", "numpy",
                 "--mech", "replay:k=2,start_after=8",
                 "--mech", "knn", "--out", str(out)])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "paired difference" in printed and "knn" in printed
    md = (out / "ablation.md").read_text()
    assert "| replay | no |" in md and "| knn | yes |" in md and "| all | no |" in md
    rows = list(csv.DictReader(io.StringIO((out / "ablation.csv").read_text())))
    arms = {r["arm"] for r in rows}
    assert arms == {"baseline", "replay", "knn", "all"}
    bpb = {r["arm"]: r for r in rows if r["metric"] == "bpb"}
    assert int(bpb["knn"]["n"]) == 2 and float(bpb["baseline"]["diff_mean"]) == 0.0
    runs = list(csv.DictReader(io.StringIO((out / "runs.csv").read_text())))
    assert len(runs) == 8
    assert (out / "ablation.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["runs"]["replay"]["0"]["replay_updates"] > 0


def test_cli_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ablate", "--stream", STREAM, "--mech", "dropout"]) == 2
    assert "unknown mechanism 'dropout'" in capsys.readouterr().err
    assert main(["ablate", "--stream", STREAM, "--seeds", "0"]) == 2
    assert "--seeds" in capsys.readouterr().err


@pytest.mark.parametrize(("given", "expected"), [([], 0.3), (["--lr", "0.05"], 0.05)])
def test_cli_baseline_learns_at_the_scanned_lr_unless_one_is_given(
    tmp_path: Path, given: list[str], expected: float
) -> None:
    """The seed model at k = 16 takes the lr scan's 0.3 (SEED_LR_BY_K), not the preset's k = 1
    rate; an --lr the user gives is kept."""
    out = tmp_path / "abl"
    code = main(["ablate", "--stream", STREAM, "--seeds", "1", "--jobs", "1", "--max-bytes", "300",
                 "--update-every", "16", "--backend", "numpy", "--mech", "grad_clip", "--quiet",
                 "--out", str(out), *given])  # fmt: skip
    assert code == 0
    saved = json.loads((out / "ablation.json").read_text())
    assert saved["config"]["optim"]["lr"] == expected
    setup = "the lr scan's best for this k" if not given else "not the lr scan's 0.3 for this k"
    assert setup in (out / "ablation.md").read_text()
