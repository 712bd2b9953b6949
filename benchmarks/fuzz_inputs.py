"""Replays mutated compressed files and bad command lines through the real CLI and counts
what must never happen: tracebacks, hangs, files left behind, corrupt inputs accepted.

Each case runs ``python -m mugpt ...`` in its own process with a time limit, in a fresh
temporary folder, so a hang or a crash of one case cannot hide another's. The compressed
cases start from one real file (``mugpt compress`` of a short text) and change it three
ways: flipped bits anywhere, truncation, and header fields edited with the header's CRC32
recomputed (so only the decoder's own checks stand between the edit and the output).

Usage::

    python benchmarks/fuzz_inputs.py                       # 200 files, 100 command lines
    python benchmarks/fuzz_inputs.py --files 40 --cli 30   # a quick look

Prints one line per failure and the four counts; exits 1 if any count is not 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mugpt.compress.container import HEADER_ZDICT, MAGIC, Header, pack, unpack

TEXT = b"The quick brown fox jumps over the lazy dog. " * 20 + b"def f(x):\n    return x * x\n" * 10


@dataclass
class Case:
    name: str
    argv: list[str]
    blob: bytes | None = None  # written to IN before the run
    original: bytes | None = None  # what a decode may give when it succeeds


@dataclass
class Outcome:
    case: Case
    code: int | None  # None: timed out
    stderr: str
    left: list[str]
    accepted_corrupt: bool
    seconds: float


def mugpt(*args: str) -> list[str]:
    return [sys.executable, "-m", "mugpt", *args]


def repack(blob: bytes, edit: dict[str, object]) -> bytes:
    """The file with header fields replaced, its header CRC32 valid again."""
    header, payload = unpack(blob)
    fields = json.loads(header.to_json())
    for key, value in edit.items():
        target = fields
        *path, last = key.split(".")
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    body = json.dumps(fields).encode()
    packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY, HEADER_ZDICT)
    z = packer.compress(body) + packer.flush()
    try:
        return struct.pack("<8sHII", MAGIC, 1, len(z), zlib.crc32(z)) + z + payload
    except struct.error:
        return pack(Header.from_json(body), payload)


def file_cases(blob: bytes, n: int, rng: random.Random) -> list[Case]:
    edits: list[dict[str, object]] = [
        {"length": 10**12}, {"length": 10**6}, {"length": len(TEXT) * 3}, {"length": -1},
        {"length": "many"}, {"length": len(TEXT) + 1}, {"crc32": 0}, {"payload_bytes": 10**9},
        {"payload_crc32": 1}, {"config.model.d_model": 4096}, {"config.model.n_layers": 10**4},
        {"config.model.context": 10**7}, {"config.model.n_heads": 3}, {"config.model.dtype": "int8"},
        {"config.learner.update_every": 0}, {"config.learner.update_every": 10**9},
        {"config.optim.lr": "nan"}, {"config.mechanisms": [{"name": "nope"}]},
        {"config.model.vocab_size": 2}, {"config": []}, {"coder.word_bits": 64},
        {"prequential_bits": "x"}, {"platform": 7}, {"config.seed": 2**70},
    ]  # fmt: skip
    cases: list[Case] = []
    for i in range(n):
        kind = i % 3
        data = bytearray(blob)
        if kind == 0:  # bit flips anywhere
            for _ in range(rng.randint(1, 4)):
                pos = rng.randrange(len(data))
                data[pos] ^= 1 << rng.randrange(8)
            name = "bitflip"
        elif kind == 1:  # truncated, or grown by junk
            cut = rng.randrange(len(data))
            data = data[:cut] if rng.random() < 0.8 else data + os.urandom(rng.randint(1, 64))
            name = "truncate"
        else:  # a header field edited, the header's CRC recomputed
            edit = edits[(i // 3) % len(edits)]
            data = bytearray(repack(blob, edit))
            name = f"header {edit}"
        if bytes(data) == blob:  # a flip that undid itself: flip one more bit
            data[rng.randrange(len(data))] ^= 1
        cases.append(Case(name, mugpt("decompress", "-q", "IN", "OUT"), bytes(data), TEXT))
    return cases


def cli_cases(n: int) -> list[Case]:
    bad_specs = [
        "", "a=", "=text:x", "a=file:/dev/zero", "a=file:/etc/shadow:1k", "a=random:999999999999M",
        "a=random:1.5", "a=random:１２k", "a=nope:1k", "a=text:x:1k:2", "a=dir:/proc", "a=file:",
        ",".join(f"p{i}=counting:1" for i in range(5_000)), "a=counting:-1", "a=counting:0x10",
        "a=tinystories:1k", "a=text:" + "x" * 100_000, "a=counting:1k,,b=counting:1k",
    ]  # fmt: skip
    bad_flags = [
        ["run", "--update-every", "0"], ["run", "--update-every", "x"], ["run", "--lr", "nan"],
        ["run", "--lr", "-1"], ["run", "--d-model", "5", "--heads", "2"],
        ["run", "--context", "0"], ["run", "--max-bytes", "1.5"], ["run", "--max-bytes", "-3"],
        ["run", "--d-model", "100000", "--d-ff", "100000"], ["run", "--export", "xml"],
        ["run", "--out", "/proc/mugpt-out"], ["run", "--out", "/etc/hostname/x"],
        ["run", "--mech", "nope"], ["run", "--mech", "replay:size=-1"], ["run", "--dtype", "int8"],
        ["run", "--resume"], ["run", "/no/such/input"], ["run", "/dev/zero"],
        ["run", "--preset", "nope"], ["run", "--batch-streams", "0"],
        ["compress", "/no/such", "OUT"], ["compress", "/dev/zero", "OUT"], ["compress"],
        ["decompress", "/no/such", "OUT"], ["decompress", "/etc/hostname", "OUT"],
        ["serve", "--port", "99999"], ["serve", "--runs-dir", "/etc/hostname"],
        ["serve", "--host", "0.0.0.0", "--no-token"], ["serve", "--token", ""],
        ["sample", "--checkpoint", "/no/such"], ["sample", "--checkpoint", "/etc/hostname"],
        ["sample", "--checkpoint", "x", "--temperature", "0"], ["bench", "--bytes", "x"],
        ["bench", "--configs", "nope"], ["ablate", "--mechanisms", "nope"],
        ["sweep", "run", "/no/such.toml"], ["sweep", "report", "/no/such"], ["nope"],
    ]  # fmt: skip
    cases = [Case(f"stream {s[:40]!r}", mugpt("run", "--stream", s, "--max-bytes", "1k",
                                              "--out", "RUN", "--no-baselines"))
             for s in bad_specs]  # fmt: skip
    cases += [Case(f"argv {a}", mugpt(*a)) for a in bad_flags]
    i = 0
    while len(cases) < n:  # more of the same, with other sizes and suffixes
        i += 1
        size = ["-1", "1e3", "1kk", "k", "1 k", "٣k", "1.0001k", "99999999999999999999G"][i % 8]
        cases.append(Case(f"budget {size!r} #{i}", mugpt("run", "--stream", f"a=counting:{size}",
                                                         "--out", "RUN", "--no-baselines")))  # fmt: skip
    return cases[:n]


def run_case(case: Case, timeout: float) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="mugpt-fuzz-") as tmp:
        folder = Path(tmp)
        argv = [
            str(folder / a) if a in ("IN", "OUT", "RUN") else a for a in case.argv
        ]  # fmt: skip
        if case.blob is not None:
            (folder / "IN").write_bytes(case.blob)
        before = set(os.listdir(folder))
        t0 = time.perf_counter()
        try:
            done = subprocess.run(argv, cwd=folder, capture_output=True, timeout=timeout,
                                  stdin=subprocess.DEVNULL)  # fmt: skip
            code: int | None = done.returncode
            stderr = done.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired as exc:
            code, stderr = None, (exc.stderr or b"").decode(errors="replace")
        seconds = time.perf_counter() - t0
        left = sorted(set(os.listdir(folder)) - before) if code not in (0, None) else []
        accepted = False
        if case.blob is not None and code == 0:
            out = folder / "OUT"
            accepted = not out.exists() or out.read_bytes() != case.original
        return Outcome(case, code, stderr, left, accepted, seconds)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=200, help="mutated compressed files (200)")
    ap.add_argument("--cli", type=int, default=100, help="bad command lines (100)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a hang (10)")
    ap.add_argument("--jobs", type=int, default=2, help="cases at a time (2)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.txt", Path(tmp) / "in.mgz"
        src.write_bytes(TEXT)
        subprocess.run(mugpt("compress", "-q", str(src), str(dst)), check=True)
        blob = dst.read_bytes()
    cases = file_cases(blob, args.files, rng) + cli_cases(args.cli)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(args.jobs) as pool:
        outcomes = list(pool.map(lambda c: run_case(c, args.timeout), cases))
    counts = {"tracebacks": 0, "hangs": 0, "files left behind": 0, "corrupt accepted": 0}
    for o in outcomes:
        problems = []
        if "Traceback (most recent call last)" in o.stderr:
            problems.append("tracebacks")
        if o.code is None:
            problems.append("hangs")
        if o.left:
            problems.append("files left behind")
        if o.accepted_corrupt:
            problems.append("corrupt accepted")
        for p in problems:
            counts[p] += 1
        if problems:
            last = (o.stderr.strip().splitlines() or ["(no message)"])[-1][:160]
            print(f"{', '.join(problems)}: {o.case.name[:70]} -> {last} {o.left or ''}")
    clean = sum(1 for o in outcomes if o.code not in (0, None))
    print(f"{len(outcomes)} cases ({args.files} compressed files, {args.cli} command lines) in "
          f"{time.perf_counter() - t0:.0f} s; {clean} refused with a message, "
          f"{sum(1 for o in outcomes if o.code == 0)} succeeded")  # fmt: skip
    print(", ".join(f"{k}: {v}" for k, v in counts.items()))
    return 1 if any(counts.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
