"""The tuning set and the held-out set, side by side: every preset against the compressors.

The HELD-OUT texts are files a fresh Debian machine with Python 3.11 has (no download), of
kinds the presets were never tuned on, each pinned by the SHA-256 of the bytes used, so a
changed file is reported rather than silently measured. No tuning decision may look at
them (DESIGN §8); docs/results/heldout.md says how they were chosen.

- ``licences``   English legal prose: Debian's /usr/share/common-licenses (package
                 base-files), GPL-3, LGPL-2.1, Apache-2.0, MPL-2.0, Artistic, GFDL-1.3;
- ``german``     German prose: the translated messages (msgstr) of the German gettext
                 catalogues in /usr/share/locale/de/LC_MESSAGES, catalogue by catalogue;
- ``reference``  the Python language and library reference (pydoc_data.topics: the text
                 ``help()`` shows), topic by topic;
- ``c-headers``  C: the interpreter's own headers (include/python3.11, *.h, sorted);
- ``perl``       Perl code with its POD documentation: Debian's perl-base modules.

The TUNING set is what the presets were chosen on: the built-in default stream (300 kB:
stdlib docstrings, stdlib code, synthetic stories) and TinyStories (its first bytes, from
/work/shared/data when present; otherwise the synthetic ``stories`` source stands in).

For every text: its bytes, gzip -9, xz -9e, zstd -19 and PPMd order 6 (mugpt.engine.baselines),
``strong`` with its bpb and bytes/s (process CPU time, kernels compiled before timing), the
same run with the network frozen (``freeze_network``: the network share is bpb(frozen) −
bpb(strong)), the experts' attribution of strong's mixture, and the seed presets on the first
``--seed-bytes`` (they learn at a few kB/s). One process, one run at a time, threads pinned
to one.

    python benchmarks/heldout.py                     # writes docs/results/heldout.md + .csv
    python benchmarks/heldout.py --bytes 50k --seed-bytes 5k --out /tmp/heldout
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import csv  # noqa: E402
import hashlib  # noqa: E402
import shlex  # noqa: E402
import statistics  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import sysconfig  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from mugpt.bench.measure import cpu_model  # noqa: E402
from mugpt.corpus import Phase, Stream, build_stream, default_stream  # noqa: E402
from mugpt.engine.baselines import baseline_bpb  # noqa: E402
from mugpt.engine.config import RunConfig  # noqa: E402
from mugpt.engine.summary import expert_rows, track_experts  # noqa: E402

TINYSTORIES = Path("/work/shared/data/tinystories-2mb.txt")
LICENCES = ("GPL-3", "LGPL-2.1", "Apache-2.0", "MPL-2.0", "Artistic", "GFDL-1.3")

#: SHA-256 of the first 200,000 bytes of each held-out text as this machine built it
#: (Debian 12, Python 3.11.7); a text shorter than that is pinned whole.
PIN_BYTES = 200_000
PINNED: dict[str, str] = {
    "licences": "8fdd2264a50bcd82d93a9b80e1dfff2dcb488644f32686ffa3d47062054bb45a",
    "german": "9334ae64e2e88a1424c5014bd5f4792ac3f8fe144b17d7677fd142db97b27455",
    "reference": "9b0fd827b55c7f37a6d81741eb1492059e5527c671d001f1edd7c29cad6b1a24",
    "c-headers": "0a700a2c7f403444f14b90a8f8a2051d14da787ef063ed94a55dc0471635237b",
    "perl": "d98636598c2229fb5d4f2597ebc8b3de8fe2b279f786eca3421b6911845b0663",
}


# ----------------------------------------------------------------------------- the texts


def _licences() -> bytes:
    root = Path("/usr/share/common-licenses")
    return b"".join((root / name).read_bytes() for name in LICENCES)


def _mo_strings(path: Path) -> list[bytes]:
    """The translated strings (msgstr) of a GNU gettext catalogue, in its order (the format:
    the GNU gettext manual, "The Format of GNU MO Files")."""
    blob = path.read_bytes()
    magic = struct.unpack("<I", blob[:4])[0]
    order = "<" if magic == 0x950412DE else ">"
    count, _orig, trans = struct.unpack(order + "III", blob[8:20])
    out = []
    for i in range(count):
        length, offset = struct.unpack(order + "II", blob[trans + 8 * i : trans + 8 * i + 8])
        text = blob[offset : offset + length]
        if (i == 0 and text.startswith(b"Project-Id-Version")) or not text.strip():
            continue  # the catalogue's header entry
        out.extend(part for part in text.split(b"\x00") if part.strip())
    return out


def _german() -> bytes:
    root = Path("/usr/share/locale/de/LC_MESSAGES")
    strings: list[bytes] = []
    for path in sorted(root.glob("*.mo")):
        strings.extend(_mo_strings(path))
    return b"\n".join(strings) + b"\n"


def _reference() -> bytes:
    from pydoc_data.topics import topics

    return "".join(f"{name}\n{'=' * len(name)}\n\n{topics[name]}\n" for name in sorted(topics)).encode()  # fmt: skip


def _c_headers() -> bytes:
    root = Path(sysconfig.get_paths()["include"])
    return b"".join(p.read_bytes() for p in sorted(root.rglob("*.h")))


def _perl() -> bytes:
    root = Path("/usr/lib/x86_64-linux-gnu/perl-base")
    files = sorted(p for p in root.rglob("*") if p.suffix in (".pm", ".pl") and p.is_file())
    return b"".join(p.read_bytes() for p in files)


HELD_OUT: dict[str, tuple[str, Callable[[], bytes]]] = {
    "licences": ("English legal prose (Debian common-licenses)", _licences),
    "german": ("German prose (gettext catalogues, de)", _german),
    "reference": ("Python reference (pydoc topics)", _reference),
    "c-headers": ("C (CPython headers)", _c_headers),
    "perl": ("Perl code and POD (perl-base)", _perl),
}


def _default_stream(n: int) -> tuple[bytes, list[int]]:
    stream = default_stream()
    return stream.data[:n], [int(s) for s in stream.doc_starts if s < n]


def _tinystories(n: int) -> tuple[bytes, list[int]]:
    if TINYSTORIES.is_file():
        with TINYSTORIES.open("rb") as f:
            return f.read(n), [0]
    stream = build_stream(f"stories=stories:{n}")
    return stream.data[:n], [int(s) for s in stream.doc_starts if s < n]


TUNING: dict[str, tuple[str, Callable[[int], tuple[bytes, list[int]]]]] = {
    "default": ("the built-in default stream", _default_stream),
    "tinystories": ("TinyStories (first bytes of tinystories-2mb.txt)"
                    if TINYSTORIES.is_file() else "synthetic stories (TinyStories absent)",
                    _tinystories),
}  # fmt: skip


HEAD = """# Tuning set and held-out set

Written by `benchmarks/heldout.py`; do not edit by hand (change the script and run it again).

**The rule** (DESIGN §8). The presets were tuned on the **tuning set**: the built-in default
stream (stdlib docstrings, stdlib code, synthetic stories, docstrings again) and TinyStories.
The **held-out set** is for reporting only: no choice of a preset, a mechanism's default, a
learning rate or a table size may look at it. A preset "beats X" only where it does so on
held-out text. A new held-out text may be added (with its pin); a text is never removed
because a preset does badly on it.

**The held-out texts** are of kinds the tuning set lacks and are on a fresh Debian 12 machine
with Python 3.11 without any download (the machine description: Debian's base-files, perl-base
and translation catalogues, the interpreter's own headers and pydoc topics):

| name | kind | source | why |
|---|---|---|---|
| licences | English legal prose | /usr/share/common-licenses: GPL-3, LGPL-2.1, Apache-2.0, MPL-2.0, Artistic, GFDL-1.3 (base-files) | long formal sentences, a vocabulary of its own |
| german | German prose | the msgstr strings of /usr/share/locale/de/LC_MESSAGES/*.mo, catalogue by catalogue in name order (GNU MO format) | a second language: umlauts in UTF-8, other n-gram statistics; short UI messages with printf formats |
| reference | technical reference | pydoc_data.topics (the text of `help()`), topics in name order | reST-like reference prose with code samples |
| c-headers | C code | the interpreter's include/python3.11/**/*.h in path order | another programming language (the tuning set has Python) |
| perl | Perl code and POD | /usr/lib/x86_64-linux-gnu/perl-base/**/*.pm, *.pl in path order | a third language, code and documentation interleaved |

Each is used from its start, 200,000 bytes (licences has 118,829 in all) and pinned by the
SHA-256 of its first 200,000 bytes in the script: a machine whose files differ reports the text
as "changed" (its figures are then not comparable with these). There is no fiction: a fresh
machine holds none that is not in the tuning set (TinyStories, the synthetic stories).
"""


# ----------------------------------------------------------------------------- runs


@dataclass
class Row:
    set: str  # "tuning" | "held-out"
    name: str
    kind: str
    bytes: int
    sha256: str
    pinned: str  # "ok" | "changed" | "new"
    baselines: dict[str, float]
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)


def _stream(data: bytes, starts: list[int]) -> Stream:
    return Stream(data, [Phase("text", "text", 0, len(data))], np.asarray(starts or [0]))


def learn(config: dict[str, Any], data: bytes, starts: list[int], experts: bool = False) -> dict[str, Any]:  # fmt: skip
    """One run from scratch: bpb, bytes/s by process CPU time, and (``experts``) the
    attribution of its mixture."""
    cfg = RunConfig.from_dict(config)
    warm = cfg.build_learner()  # loads (or compiles) the kernels before the clock starts
    warm.run(Stream.from_bytes(data[:256]))
    learner = cfg.build_learner()
    if experts:
        track_experts(learner.mechanisms)
    cpu = time.process_time()
    result = learner.run(_stream(data, starts))
    cpu = time.process_time() - cpu
    out: dict[str, Any] = {"bpb": float(result.bpb), "cpu_s": cpu, "bytes_per_s_cpu": len(data) / cpu}  # fmt: skip
    if experts:
        out["experts"] = expert_rows(result.mechanisms)
    return out


def measure(set_name: str, name: str, kind: str, data: bytes, starts: list[int], args: argparse.Namespace, say: Callable[[str], None], pin: str = "") -> Row:  # fmt: skip
    """``pin``: the SHA-256 of the text's first PIN_BYTES (held-out texts)."""
    digest = hashlib.sha256(data).hexdigest()
    pinned = "tuning, not pinned" if name not in PINNED else ("ok" if PINNED[name] == pin else "changed")  # fmt: skip
    if set_name == "held-out" and pinned == "changed":
        say(f"WARNING: {name} differs from its pinned SHA-256; its figures are not comparable")
    row = Row(set_name, name, kind, len(data), digest, pinned, baseline_bpb(data))
    say(f"{name}: strong")
    row.runs["strong"] = learn({"preset": "strong"}, data, starts)
    say(f"{name}: strong, network frozen")
    row.runs["strong-frozen"] = learn({"preset": "strong", "learner": {"freeze_network": True}}, data, starts)  # fmt: skip
    say(f"{name}: strong, experts")
    traced = learn({"preset": "strong"}, data, starts, experts=True)
    assert traced["bpb"] == row.runs["strong"]["bpb"], "the attribution changed the bits"
    row.runs["strong"]["experts"] = traced["experts"]
    head = data[: args.seed_bytes]
    head_starts = [s for s in starts if s < len(head)]
    row.runs["ppmd-head"] = {"bpb": baseline_bpb(head)["ppmd"]}
    for preset in args.seed_presets:
        say(f"{name}: {preset} on {len(head):,} bytes, and frozen")
        row.runs[preset] = learn({"preset": preset}, head, head_starts)
        row.runs[f"{preset}-frozen"] = learn({"preset": preset, "learner": {"freeze_network": True}}, head, head_starts)  # fmt: skip
    return row


# ----------------------------------------------------------------------------- report


def _f(x: float | None, spec: str = ".3f") -> str:
    return "—" if x is None else format(x, spec)


def table(rows: list[Row], seed_presets: list[str], seed_bytes: int) -> list[str]:
    heads = ["text", "kind", "bytes", "gzip", "xz", "zstd", "PPMd 6", "strong", "B/s cpu",
             "frozen", "network share", "strong − PPMd"]  # fmt: skip
    heads += [f"{p} ({seed_bytes:,} B)" for p in seed_presets] + [f"PPMd 6 ({seed_bytes:,} B)", "seed B/s cpu"]  # fmt: skip
    heads += [f"{p} network share" for p in seed_presets]
    out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for r in rows:
        strong, frozen = r.runs["strong"]["bpb"], r.runs["strong-frozen"]["bpb"]
        b = r.baselines
        cells = [r.name + ("" if r.pinned != "changed" else " (changed!)"), r.kind, f"{r.bytes:,}",
                 _f(b["gzip"]), _f(b["xz"]), _f(b["zstd"]), _f(b["ppmd"]), f"**{strong:.3f}**",
                 f"{r.runs['strong']['bytes_per_s_cpu']:,.0f}", _f(frozen), f"{frozen - strong:+.3f}",
                 f"{strong - b['ppmd']:+.3f}"]  # fmt: skip
        cells += [_f(r.runs[p]["bpb"]) for p in seed_presets] + [_f(r.runs["ppmd-head"]["bpb"])]
        cells.append(f"{r.runs['seed']['bytes_per_s_cpu']:,.0f}" if "seed" in r.runs else "—")
        cells += [f"{r.runs[p + '-frozen']['bpb'] - r.runs[p]['bpb']:+.3f}" for p in seed_presets]
        out.append("| " + " | ".join(cells) + " |")
    return out


def experts_table(rows: list[Row]) -> list[str]:
    names = [e["expert"] for e in rows[0].runs["strong"]["experts"]]
    out = ["| text | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for r in rows:
        cells = [f"{e['bpb_saved']:+.3f} ({e['mean_weight']:.2f})" for e in r.runs["strong"]["experts"]]  # fmt: skip
        out.append(f"| {r.name} | " + " | ".join(cells) + " |")
    return out


def reading(tuning: list[Row], held: list[Row]) -> list[str]:
    """The figures' headline, computed from them."""

    def wins(rows: list[Row], key: str) -> str:
        won = [r.name for r in rows if r.runs["strong"]["bpb"] < r.baselines[key]]
        return f"{len(won)} of {len(rows)}" + (f" ({', '.join(won)})" if won else "")

    def shares(rows: list[Row]) -> str:
        values = [r.runs["strong-frozen"]["bpb"] - r.runs["strong"]["bpb"] for r in rows]
        return f"{min(values):+.3f} to {max(values):+.3f} bpb" if values else "—"

    def saved(rows: list[Row]) -> str:
        values = [r.runs["strong"]["experts"][0]["bpb_saved"] for r in rows]
        return f"{min(values):.2f}-{max(values):.2f} bpb" if values else "—"

    return [
        f"**Reading.** strong beats PPMd order 6 on {wins(tuning, 'ppmd')} tuning texts and "
        f"on {wins(held, 'ppmd')} held-out texts; it beats xz -9e on {wins(tuning, 'xz')} "
        f"tuning and {wins(held, 'xz')} held-out texts. The network's share (frozen − "
        f"strong) is {shares(tuning)} on the tuning set and {shares(held)} on the held-out "
        "set: the count models do nearly all the work. The experts' table says the same "
        "from the other side: leaving the network's factor out of the mixture at the run's "
        f"weights would cost {saved(tuning + held)}, but a run whose network never learns re-weights its "
        "count models and loses only the share above, so the learned network adds little "
        "beyond what the mixer gets from an untrained one."
    ]


def write(rows: list[Row], args: argparse.Namespace, peak: float, seconds: float) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.with_suffix(".csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["set", "text", "kind", "bytes", "sha256", "pinned", "gzip", "bzip2", "xz",
                    "zstd", "ppmd", "run", "run_bytes", "bpb", "bytes_per_s_cpu"])  # fmt: skip
        for r in rows:
            b = r.baselines
            for run, v in r.runs.items():
                n = r.bytes if run.startswith("strong") else min(r.bytes, args.seed_bytes)
                w.writerow([r.set, r.name, r.kind, r.bytes, r.sha256, r.pinned, b["gzip"], b["bzip2"],
                            b["xz"], b["zstd"], b["ppmd"], run, n, v["bpb"], v.get("bytes_per_s_cpu", "")])  # fmt: skip
    tuning = [r for r in rows if r.set == "tuning"]
    held = [r for r in rows if r.set == "held-out"]
    speeds = [r.runs["strong"]["bytes_per_s_cpu"] for r in rows]
    lines = [HEAD.rstrip(), "", "## Figures", "",
             f"Machine: {cpu_model()}, {os.cpu_count()} cores "
             f"shared with other work, 1 thread; measured float32 matmul peak {peak:.1f} GFLOP/s "
             f"(process CPU time, mugpt.bench.measure.measure_peak as `mugpt bench` measures it). k = 24 for strong "
             f"(its preset), 1 for the seed presets; window loss over the full causal block. "
             f"Every run learns its text from scratch, once (bytes/s: process CPU time, kernels "
             f"compiled before the clock; median over the {len(rows)} texts "
             f"{statistics.median(speeds):,.0f} B/s). Made by `{args.command}` in "
             f"{seconds / 60:.0f} min.", "",
             "bpb: prequential bits per byte (lower is better); frozen: strong with "
             "`--freeze-network`; network share = frozen − strong (what the network's learning "
             "saves); strong − PPMd < 0 means strong wins. The seed presets learn at a few kB/s, "
             f"so they read only the first {args.seed_bytes:,} bytes of each text, beside PPMd "
             "on the same bytes; their network share is the same difference on those bytes (the "
             "network is their only predictor, so a frozen one stays near its initial ~8 bpb).", "",
             *reading(tuning, held), "",
             "### Tuning set (the presets were chosen on these)", "",
             *table(tuning, args.seed_presets, args.seed_bytes), "",
             "### Held-out set (no tuning decision looks at these)", "",
             *table(held, args.seed_presets, args.seed_bytes), "",
             "### strong's experts: bpb saved (mean weight)", "",
             "Per expert of strong's mixture, the bits per byte the mixture would lose without it "
             "(the same mixture with that one factor left out, every other weight as it was, "
             "computed alongside: `NgramMix.track_experts`), and its mean mixer weight.", "",
             *experts_table(rows), "",
             "SHA-256 of the bytes measured (held-out texts: their first 200,000 bytes are "
             "checked against the pins in benchmarks/heldout.py; ok = unchanged):", "",
             *[f"- {r.name}: `{r.sha256}` ({r.pinned})" for r in rows], ""]  # fmt: skip
    out.with_suffix(".md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    from mugpt.bench.measure import measure_peak
    from mugpt.cli.run import parse_size

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--bytes", default="200k", help="bytes of each text (default 200k)")
    p.add_argument("--tuning-bytes", default="300k", help="bytes of each tuning text (300k)")
    p.add_argument("--seed-bytes", default="20k", help="bytes the seed presets learn (20k)")
    p.add_argument("--seed-presets", default="seed,seed-adam")
    p.add_argument("--only", default="", help="comma list of text names (default: all)")
    p.add_argument("--out", default="docs/results/heldout", help="writes OUT.md and OUT.csv")
    args = p.parse_args(argv)
    args.command = "python benchmarks/heldout.py" + "".join(" " + shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))  # fmt: skip
    n, n_tuning = parse_size(args.bytes), parse_size(args.tuning_bytes)
    args.seed_bytes = parse_size(args.seed_bytes)
    args.seed_presets = [s for s in args.seed_presets.split(",") if s]
    only = {s for s in args.only.split(",") if s}

    def say(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    peak = measure_peak()["gflops_cpu"]
    rows: list[Row] = []
    for name, (kind, load_tuning) in TUNING.items():
        if not only or name in only:
            data, starts = load_tuning(n_tuning)
            rows.append(measure("tuning", name, kind, data, starts, args, say))
    for name, (kind, load) in HELD_OUT.items():
        if only and name not in only:
            continue
        try:
            text = load()
        except OSError as exc:
            say(f"{name}: not on this machine ({exc}); left out")
            continue
        pin = hashlib.sha256(text[:PIN_BYTES]).hexdigest()
        rows.append(measure("held-out", name, kind, text[:n], [0], args, say, pin))
    write(rows, args, peak, time.perf_counter() - t0)
    say(f"wrote {args.out}.md and {args.out}.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
