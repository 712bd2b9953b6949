"""Variants of ``--preset strong`` on the TUNING set only: the scan behind its settings.

Each variant is the strong preset with some settings changed; it learns each tuning text from
scratch once (the built-in default stream and TinyStories, their first ``--bytes``, as
benchmarks/heldout.py reads them) and prints a Markdown row: its bpb on each and its bytes/s
by process CPU time (kernels compiled before the clock). No held-out text is read: the
held-out set is for reporting only (DESIGN §8; docs/results/heldout.md).

    python benchmarks/tune_strong.py                                  # the preset itself
    python benchmarks/tune_strong.py --mix 'lr 1e-3={"lr": 0.001}' --mix 'no classes={"class_bytes": 0}'
    python benchmarks/tune_strong.py --config 'k 16={"learner": {"update_every": 16}}' --jobs 2

``--mix LABEL=JSON`` changes settings of the preset's ``ngram_mix`` (docs: the mechanism's
keys); ``--config LABEL=JSON`` changes run-config sections (``model``, ``optim``,
``learner``). The table of docs/bench.md ("The mixer re-tuned") was made this way, with the
preset of its day as the base. With ``--jobs`` > 1 variants run side by side, one process
each: their bytes/s then share the machine.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

from heldout import TUNING, learn  # noqa: E402

from mugpt.engine.config import PRESETS  # noqa: E402


def variant(mix: dict[str, Any] | None = None, config: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """The strong preset as a run config with ``mix`` over its ngram_mix settings and each
    section of ``config`` over the preset's.

    >>> v = variant({"lr": 0.001}, {"learner": {"update_every": 16}})
    >>> v["mechanisms"][0]["lr"], v["learner"]["update_every"], v["model"]["d_model"]
    (0.001, 16, 32)
    """
    out: dict[str, Any] = copy.deepcopy(PRESETS["strong"])
    for section, values in (config or {}).items():
        if section == "mechanisms":
            out["mechanisms"] = copy.deepcopy(values)
        else:
            out[section] = {**out.get(section, {}), **values}
    if mix:
        mechs = [dict(m) for m in out["mechanisms"]]
        (i,) = [j for j, m in enumerate(mechs) if m["name"] == "ngram_mix"]
        mechs[i].update(mix)
        out["mechanisms"] = mechs
    return out


def _label_json(text: str) -> tuple[str, dict[str, Any]]:
    label, sep, body = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"{text!r}: give LABEL=JSON, e.g. 'lr 1e-3={{\"lr\": 0.001}}'")  # fmt: skip
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"{label}: not JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"{label}: give a JSON object")
    return label.strip(), value


def run(label: str, cfg: dict[str, Any], n: int) -> str:
    """One variant on every tuning text: a Markdown row."""
    cells = [label]
    speeds = []
    for _name, (_kind, load) in TUNING.items():
        data, starts = load(n)
        got = learn(cfg, data, starts)
        cells.append(f"{got['bpb']:.4f}")
        speeds.append(f"{got['bytes_per_s_cpu']:,.0f}")
    return "| " + " | ".join(cells + [" / ".join(speeds)]) + " |"


def main(argv: list[str] | None = None) -> int:
    from mugpt.cli.run import parse_size

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--mix", type=_label_json, action="append", default=[], metavar="LABEL=JSON",
                   help="a variant: ngram_mix settings over the preset's")  # fmt: skip
    p.add_argument("--config", type=_label_json, action="append", default=[], metavar="LABEL=JSON",
                   help="a variant: run-config sections over the preset's")  # fmt: skip
    p.add_argument("--bytes", default="300k", help="bytes of each tuning text (default 300k)")
    p.add_argument("--jobs", type=int, default=1, help="variants run side by side (default 1)")
    args = p.parse_args(argv)
    n = parse_size(args.bytes)
    variants = [("strong (the preset)", variant())]
    variants += [(label, variant(mix=value)) for label, value in args.mix]
    variants += [(label, variant(config=value)) for label, value in args.config]
    names = " | ".join(TUNING)
    print(f"| variant | {names} | bytes/s CPU ({' / '.join(TUNING)}) |")
    print("|---|" + "--:|" * (len(TUNING) + 1))
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        for row in pool.map(run, *zip(*[(label, cfg, n) for label, cfg in variants], strict=True)):
            print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
