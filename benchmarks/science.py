"""Regenerates the measured results on the mechanisms: one command, every table.

Four experiments, each over ``--seeds`` seeds (a seed changes the initial weights and the
mechanisms' draws, never the bytes), each arm on the same bytes, run one after the other in
this process (``ablate(..., jobs=1)``):

1. **ablation** — the baseline, each mechanism alone at its defaults, and all together, on the
   default stream's four phases and on TinyStories (``ablation-default.md``,
   ``ablation-tinystories.md``);
2. **replay control** — replay against ``source = "current"``: the same number of extra
   updates on the same schedule, on the step's own window instead of stored ones
   (Rolnick et al. 2019, "Experience Replay for Continual Learning"; ``replay-control.md``);
3. **selective backprop** — the saved share of updates against bpb over the threshold τ and
   the percentile β of Jiang et al. (2019), "Accelerating Deep Learning by Focusing on the
   Biggest Losers", each beside random skipping at the rate it reached
   (``selective-backprop.md``, ``selective-backprop.png``).

Every arm uses the baseline's tuned optimiser: the seed model trained by SGD with global-norm
clipping at the lr ``benchmarks/lr_scan.py`` measured best for the k used
(``mugpt.engine.config.SEED_LR_BY_K``), never the k = 1 rate of the preset. Intervals are
95% Student-t intervals over seeds (``mugpt.sweep.stats.mean_ci``); a difference is called a
gain or a loss only where its paired interval excludes zero.

    python benchmarks/science.py                 # default size (about 8 CPU-minutes)
    python benchmarks/science.py --full          # 1 MB streams, 5 seeds
    python benchmarks/science.py --only replay --out /tmp/science
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mugpt.bench.measure import cpu_model
from mugpt.corpus import Stream, build_stream
from mugpt.engine.ablate import AblationResult, Arm, ablate, with_scanned_lr
from mugpt.engine.checkpoint import atomic_write_bytes
from mugpt.engine.config import RunConfig
from mugpt.sweep.stats import MeanCI, mean_ci

TINYSTORIES = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories-2mb.txt"
EXPERIMENTS = ("ablation", "replay", "selective_backprop")
TAUS = (2.0, 2.5, 3.0, 3.5)
BETAS = (1.0, 2.0, 4.0)
REPLAY_SETTINGS = {"replay": {}, "replay-k4": {"k": 4}}  # k extra updates every 4 steps


def commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parent)  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def streams(size: int, tinystories: Path) -> dict[str, tuple[Stream, str]]:
    """The two data sets: the default stream's phases and TinyStories (its offline stand-in,
    the built-in ``stories`` source, when the file is missing), with a description each."""
    q = size // 4
    spec = f"prose=stdlib-prose:{q},code=stdlib-code:{q},stories=stories:{q},prose=stdlib-prose:{q}"
    out = {"default": (build_stream(spec), f"the default stream's four phases, {q:,} bytes each")}
    if tinystories.is_file():
        ts = build_stream(f"tinystories=file:{tinystories}:{size}")
        out["tinystories"] = (ts, f"TinyStories (`{tinystories.name}`, first {size:,} bytes)")
    else:  # the hub download is not cached here: the built-in synthetic stories instead
        ts = build_stream(f"stories=stories:{size}")
        out["tinystories"] = (ts, f"built-in `stories` source ({size:,} bytes), a stand-in: "
                                  f"{tinystories} was not found")  # fmt: skip
    return out


def base_config(k: int) -> RunConfig:
    return with_scanned_lr(RunConfig.from_dict({"preset": "seed", "learner": {"update_every": k}}))  # fmt: skip


def run(cfg: RunConfig, stream: Stream, seeds: int, arms: Sequence[Arm] | None = None,
        mechanisms: list[dict[str, Any]] | None = None) -> AblationResult:  # fmt: skip
    t0 = time.process_time()

    def progress(done: int, total: int, label: str) -> None:
        print(f"  [{done}/{total}] {label}  ({time.process_time() - t0:.0f} s CPU)", flush=True)

    return ablate(cfg, stream, seeds=seeds, mechanisms=mechanisms, arms=arms, jobs=1,
                  progress=progress)  # fmt: skip


# ---------------------------------------------------------------------- statistics


def per_seed(res: AblationResult, arm: str, key: str) -> dict[int, float]:
    out = {}
    for seed, fig in res.runs.get(arm, {}).items():
        value = AblationResult._value(fig, key)
        if value is not None:
            out[seed] = value
    return out


def paired(res_a: AblationResult, arm_a: str, res_b: AblationResult, arm_b: str,
           key: str = "bpb") -> MeanCI:  # fmt: skip
    """Mean and 95% interval of arm_a − arm_b, seed by seed."""
    a, b = per_seed(res_a, arm_a, key), per_seed(res_b, arm_b, key)
    return mean_ci([a[s] - b[s] for s in sorted(a) if s in b])


def of(res: AblationResult, arm: str, key: str) -> MeanCI:
    return mean_ci(per_seed(res, arm, key).values())


def verdict(d: MeanCI, better: str = "lower bpb", worse: str = "higher bpb") -> str:
    """What a paired difference shows: a gain, a loss, or no measurable difference."""
    if d.mean is None or d.ci95 is None:
        return "too few seeds to tell"
    if d.mean + d.ci95 < 0:
        return better
    if d.mean - d.ci95 > 0:
        return worse
    return "no measurable difference"


def skip_share(res: AblationResult, arm: str) -> MeanCI:
    """The share of main updates skipped (skipped / steps) per seed."""
    shares = []
    for fig in res.runs.get(arm, {}).values():
        steps = fig["skipped"] + fig["main_updates"]
        shares.append(fig["skipped"] / steps if steps else None)
    return mean_ci(shares)


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# ---------------------------------------------------------------------- experiments


def setup_lines(args: argparse.Namespace, cfg: RunConfig, sets: dict[str, tuple[Stream, str]], cpu_s: float) -> list[str]:  # fmt: skip
    return [
        f"- command: `{args.command}` (code at commit `{commit()}`)",
        f"- machine: {cpu_model()} ({platform.machine()}, {platform.system()}), Python "
        f"{platform.python_version()}; one run at a time in one process; CPU time "
        f"{cpu_s / 60:.1f} min for this file's runs",
        f"- model: the seed model ({cfg.model.n_params:,} parameters, {cfg.model.dtype}), "
        f"k = {cfg.learner.update_every} bytes per update, window loss over the full causal block",
        f"- optimiser: {cfg.optim.name.upper()}, lr {cfg.optim.lr} (the best of "
        f"docs/results/lr-scan.md for this k; tuned on the first 100 kB of the default "
        f"stream, so TinyStories is held out from that choice), momentum "
        f"{cfg.optim.momentum}, global-norm clipping at {cfg.optim.grad_clip}",
        *(f"- data `{name}`: {desc}" for name, (_s, desc) in sets.items()),
        f"- seeds {list(range(args.seeds))}; ± is the half-width of a 95% Student-t interval "
        "over seeds; Δ is paired by seed (arm − reference on the same seed)",
    ]


def ablation(args: argparse.Namespace, cfg: RunConfig, sets: dict[str, tuple[Stream, str]]) -> None:  # fmt: skip
    for name, (stream, desc) in sets.items():
        print(f"ablation on {name}", flush=True)
        t0 = time.process_time()
        res = run(cfg, stream, args.seeds)
        cpu_s = time.process_time() - t0
        rows = []
        for arm in res.arms[1:]:
            d = paired(res, arm.name, res, "baseline")
            rows.append([arm.name, "yes" if arm.strict_online else "no", of(res, arm.name, "bpb").format(".4f"),
                         d.format("+.4f"), verdict(d), of(res, arm.name, "updates").format(",.0f")])  # fmt: skip
        base = of(res, "baseline", "bpb").format(".4f")
        text = "\n".join([
            f"# Ablation on {name}: each mechanism against the tuned baseline",
            "",
            *setup_lines(args, cfg, {name: (stream, desc)}, cpu_s),
            "- every mechanism at its defaults (docs/mechanisms.md); `all` = all of them",
            "",
            f"Baseline bpb {base}. A mechanism is said to help or hurt only where the paired "
            "interval excludes zero.",
            "",
            md_table(["arm", "strict online", "bpb", "Δ bpb vs baseline", "reading", "updates"], rows),
            "",
            "The full tables follow (generated by `mugpt.engine.ablate`).",
            "",
            res.to_markdown().replace("# Ablation\n", "## All figures\n", 1),
        ])  # fmt: skip
        write(args.out / f"ablation-{name}.md", text)
        write(args.out / f"ablation-{name}.csv", res.to_csv())
        res.plot(args.out / f"ablation-{name}.png")


def replay_control(args: argparse.Namespace, cfg: RunConfig, sets: dict[str, tuple[Stream, str]]) -> None:  # fmt: skip
    arms = [Arm("baseline", [], True)]
    for name, extra in REPLAY_SETTINGS.items():
        arms.append(Arm(name, [{"name": "replay", **extra}], False))
        arms.append(Arm(f"{name} control", [{"name": "replay", **extra, "source": "current"}], False))  # fmt: skip
    sections, cpu_s = [], 0.0
    for name, (stream, _desc) in sets.items():
        print(f"replay control on {name}", flush=True)
        t0 = time.process_time()
        res = run(cfg, stream, args.seeds, arms=arms)
        cpu_s += time.process_time() - t0
        rows = []
        for arm in arms[1:]:
            d = paired(res, arm.name, res, "baseline")
            f = paired(res, arm.name, res, "baseline", "forgetting_bpb")
            rows.append([arm.name, of(res, arm.name, "replay_updates").format(",.0f"),
                         of(res, arm.name, "bpb").format(".4f"), d.format("+.4f"),
                         f.format("+.4f") if f.mean is not None else "—"])  # fmt: skip
        comp = []
        for setting in REPLAY_SETTINGS:
            d = paired(res, setting, res, f"{setting} control")
            f = paired(res, setting, res, f"{setting} control", "forgetting_bpb")
            comp.append([setting, d.format("+.4f"), verdict(d, "stored windows help beyond the extra updates",
                                                             "the extra updates on the current window do better"),
                         f.format("+.4f") if f.mean is not None else "—"])  # fmt: skip
        sections += [
            f"## {name}",
            "",
            f"Baseline bpb {of(res, 'baseline', 'bpb').format('.4f')}, forgetting "
            f"{of(res, 'baseline', 'forgetting_bpb').format('+.4f')} bpb.",
            "",
            md_table(
                ["arm", "extra updates", "bpb", "Δ bpb vs baseline", "Δ forgetting vs baseline"],
                rows,
            ),
            "",
            "Replay minus its control, seed by seed (negative: revisiting stored windows "
            "beats the same number of extra updates on the current window):",
            "",
            md_table(["setting", "Δ bpb (replay − control)", "reading", "Δ forgetting"], comp),
            "",
        ]
        write(args.out / f"replay-control-{name}.csv", res.to_csv())
    text = "\n".join([
        "# Replay against its control: revisiting the past, or only more updates?",
        "",
        "Replay (Rolnick et al. 2019; reservoir of past windows, priority ∝ loss^0.5) makes "
        "extra optimiser updates. Its control (`replay:source=current`) makes the same number "
        "on the same schedule, on the step's own window. `replay` is the default (1 extra "
        "update every 4 steps, reservoir of 1024 windows); `replay-k4` makes 4 every 4 steps. "
        "Forgetting is defined in DESIGN §5 (bpb on the first W bytes of a revisited label "
        "minus bpb on the last W bytes where it was left) and exists only on streams that "
        "revisit a label (the default stream's second prose phase).",
        "",
        *setup_lines(args, cfg, sets, cpu_s),
        "",
        *sections,
    ])  # fmt: skip
    write(args.out / "replay-control.md", text)


def selective_backprop(args: argparse.Namespace, cfg: RunConfig, sets: dict[str, tuple[Stream, str]]) -> None:  # fmt: skip
    sb = "selective_backprop"
    chosen = [Arm("baseline", [], True)]
    chosen += [Arm(f"threshold τ={t}", [{"name": sb, "mode": "threshold", "tau": t}]) for t in TAUS]
    chosen += [
        Arm(f"percentile β={b}", [{"name": sb, "mode": "percentile", "beta": b}]) for b in BETAS
    ]
    sections, cpu_s, curves = [], 0.0, {}
    for name, (stream, _desc) in sets.items():
        print(f"selective backprop on {name}", flush=True)
        t0 = time.process_time()
        res = run(cfg, stream, args.seeds, arms=chosen)
        rates = {a.name: round(skip_share(res, a.name).mean or 0.0, 3) for a in chosen[1:]}
        random_arms = [Arm("baseline", [], True)]
        for rate in sorted(set(rates.values())):
            random_arms.append(Arm(f"random {rate}", [{"name": sb, "mode": "random", "skip_rate": rate}]))  # fmt: skip
        rnd = run(cfg, stream, args.seeds, arms=random_arms)
        cpu_s += time.process_time() - t0
        rows, points = [], []
        for arm in chosen[1:]:
            rate = rates[arm.name]
            d = paired(res, arm.name, res, "baseline")
            vs = paired(res, arm.name, rnd, f"random {rate}")
            dr = paired(rnd, f"random {rate}", rnd, "baseline")
            rows.append([arm.name, skip_share(res, arm.name).format(".3f"), of(res, arm.name, "bpb").format(".4f"),
                         d.format("+.4f"), dr.format("+.4f"), vs.format("+.4f"),
                         verdict(vs, "better than random", "worse than random")])  # fmt: skip
            points.append((arm.name.split()[0], rate, d, dr))
        curves[name] = points
        sections += [
            f"## {name}",
            "",
            f"Baseline bpb {of(res, 'baseline', 'bpb').format('.4f')} (no update skipped).",
            "",
            md_table(
                [
                    "setting",
                    "skipped share",
                    "bpb",
                    "Δ bpb vs baseline",
                    "Δ bpb, random at that share",
                    "selective − random",
                    "reading",
                ],
                rows,
            ),
            "",
        ]
        write(args.out / f"selective-backprop-{name}.csv", res.to_csv() + rnd.to_csv())
    text = "\n".join([
        "# Selective backprop: updates saved against bits, beside random skipping",
        "",
        "Each setting skips some main updates (a skipped update saves one backward pass and "
        "one optimiser step; the forward pass is needed for the prediction anyway). "
        "`threshold τ` skips a step when its window loss is below τ bits (the original μGPT "
        "rule); `percentile β` keeps a step with probability pct(L)^β over the last 1024 "
        "window losses (Jiang et al. 2019). Each is set beside `random` skipping "
        "(`selective_backprop:mode=random`) at the share it skipped (mean over seeds, "
        "rounded to 0.001): `selective − random` is paired by seed and tells whether choosing "
        "*which* updates to skip is worth anything beyond skipping that many.",
        "",
        *setup_lines(args, cfg, sets, cpu_s),
        "",
        "![saved share against Δ bpb](selective-backprop.png)",
        "",
        *sections,
    ])  # fmt: skip
    write(args.out / "selective-backprop.md", text)
    pareto_plot(args.out / "selective-backprop.png", curves, cfg)


def pareto_plot(path: Path, curves: dict[str, list[tuple[str, float, MeanCI, MeanCI]]], cfg: RunConfig) -> None:  # fmt: skip
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (the tables have the figures)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5.5 * len(curves), 4.2), squeeze=False)
    for ax, (name, points) in zip(axes[0], curves.items(), strict=True):
        for mode, marker in (("threshold", "o"), ("percentile", "s")):
            pts = sorted(((r, d) for m, r, d, _ in points if m == mode), key=lambda p: p[0])
            ax.errorbar([r for r, _ in pts], [d.mean for _, d in pts],
                        yerr=[d.ci95 or 0.0 for _, d in pts], marker=marker, capsize=3, label=mode)  # fmt: skip
        rnd = sorted({(r, dr.mean, dr.ci95 or 0.0) for _, r, _, dr in points})
        ax.errorbar([r for r, _, _ in rnd], [m for _, m, _ in rnd], yerr=[h for _, _, h in rnd],
                    marker="x", linestyle="--", color="gray", capsize=3, label="random")  # fmt: skip
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel("share of updates skipped (saved)")
        ax.set_ylabel("Δ bpb vs baseline (paired, 95% CI)")
        ax.set_title(name)
        ax.legend(fontsize=8)
    fig.suptitle(f"seed model, k = {cfg.learner.update_every}, SGD lr {cfg.optim.lr}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def write(path: Path, text: str) -> None:
    atomic_write_bytes(path, (text.rstrip("\n") + "\n").encode())
    print(f"wrote {path}", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--full", action="store_true", help="1 MB streams and 5 seeds")
    p.add_argument("--bytes", type=int, default=None, help="bytes per stream (default 100,000)")
    p.add_argument("--seeds", type=int, default=None, help="seeds per arm (default 3, --full 5)")
    p.add_argument("--k", type=int, default=16, help="bytes per update (a k of the lr scan)")
    p.add_argument("--only", default=",".join(EXPERIMENTS), help=f"some of {','.join(EXPERIMENTS)}")
    p.add_argument("--tinystories", type=Path, default=TINYSTORIES, help="the TinyStories text")
    p.add_argument(
        "--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "results"
    )
    args = p.parse_args(argv)
    args.bytes = args.bytes or (1_000_000 if args.full else 100_000)
    args.seeds = args.seeds or (5 if args.full else 3)
    args.command = "python benchmarks/science.py " + shlex.join(
        sys.argv[1:] if argv is None else argv
    )
    args.command = args.command.strip()
    only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = sorted(set(only) - set(EXPERIMENTS))
    if unknown:
        p.error(f"unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
    cfg = base_config(args.k)
    sets = streams(args.bytes, args.tinystories)
    t0 = time.process_time()
    if "ablation" in only:
        ablation(args, cfg, sets)
    if "replay" in only:
        replay_control(args, cfg, sets)
    if "selective_backprop" in only:
        selective_backprop(args, cfg, sets)
    summary = {"command": args.command, "cpu_s": time.process_time() - t0, "commit": commit()}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
