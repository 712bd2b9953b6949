"""Seconds from starting ``mugpt serve`` to the page's first learning update, and to the
first run's hand-over from the NumPy reference path to the compiled engine.

Starts the server (``--cold``: with an empty numba cache in a new temporary folder), opens
the start URL in headless Chromium, waits until the top bar shows bytes read, then until the
page's Events list shows the ``engine`` event (with a warm cache the run usually starts on
the compiled engine, and there is no hand-over to wait for). Prints the load average too:
on a shared machine it says how far the figures are from an idle one's.

    python benchmarks/first_update.py --cold --repeat 3
    python benchmarks/first_update.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cold", action="store_true", help="empty numba cache")
    parser.add_argument("--repeat", type=int, default=1, help="runs (medians are printed)")
    opts = parser.parse_args()
    firsts, handovers = [], []
    for _ in range(opts.repeat):
        first, handover = measure(opts.cold)
        firsts.append(first)
        if handover is not None:
            handovers.append(handover)
    if opts.repeat > 1:
        med = statistics.median
        line = f"median of {opts.repeat}: first learning update {med(firsts):.1f} s"
        if handovers:
            line += f", hand-over {med(handovers):.1f} s ({len(handovers)} runs handed over)"
        print(line)


def measure(cold: bool) -> tuple[float, float | None]:
    """One start of the lab: (seconds to the first update, seconds to the hand-over or None)."""
    from playwright.sync_api import sync_playwright

    load_before = os.getloadavg()[0]
    t_handover: float | None = None
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if cold:
            env["NUMBA_CACHE_DIR"] = str(Path(tmp) / "numba")
        log = Path(tmp) / "log"
        command = [sys.executable, "-m", "mugpt", "serve", "--no-browser", "--port", "0"]
        command += ["--runs-dir", str(Path(tmp) / "runs")]
        t0 = time.monotonic()
        with log.open("w") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            url = None
            while url is None:
                match = re.search(r"http://127\.0\.0\.1:\d+/\?token=\S+", log.read_text())
                url = match.group(0) if match else None
                time.sleep(0.05)
            t_url = time.monotonic() - t0
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page()
                page.goto(url)
                page.wait_for_function(
                    "() => Number(document.querySelector('[data-testid=bytes-seen]')"
                    ".textContent) > 0",
                    timeout=300_000,
                )
                t_first = time.monotonic() - t0
                print(f"first learning update after {t_first:.1f} s", flush=True)
                events = page.get_by_test_id("event-log")
                started_compiled = page.evaluate(
                    "() => { const r = window.mugptLab.run;"
                    " return !!(r && r.engine && r.engine.state === 'compiled'); }"
                )
                if not started_compiled or events.get_by_text("to the compiled engine").count():
                    # the hand-over, or the run's word that it stays on the reference path
                    page.wait_for_function(
                        "() => { const r = window.mugptLab.run;"
                        " return !!(r && r.engine && ['compiled', 'reference']"
                        ".includes(r.engine.state)); }",
                        timeout=900_000,
                    )
                    engine = page.evaluate("() => window.mugptLab.run.engine")
                    if engine["state"] != "compiled":
                        raise SystemExit(f"no hand-over: {engine['detail']}")
                    t_handover = time.monotonic() - t0
                browser.close()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            for line in log.read_text().splitlines():  # what the terminal said, with its times
                if line.startswith("mugpt serve:"):
                    print("   ", line)
    kind = "cold (empty numba cache)" if cold else "warm"
    handover = "none (started compiled)" if t_handover is None else f"{t_handover:.1f} s"
    print(
        f"{kind}: start URL printed after {t_url:.1f} s, first learning update {t_first:.1f} s, "
        f"hand-over to the compiled engine {handover}; load average {load_before:.2f} before, "
        f"{os.getloadavg()[0]:.2f} after",
        flush=True,
    )
    return t_first, t_handover


if __name__ == "__main__":
    main()
