"""Seconds from starting ``mugpt serve`` to the page's first learning update.

Starts the server (``--cold``: with an empty numba cache in a new temporary folder), opens
the start URL in headless Chromium and waits until the top bar shows bytes read.

    python benchmarks/first_update.py --cold
    python benchmarks/first_update.py
"""

from __future__ import annotations

import argparse
import os
import re
import signal
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
    opts = parser.parse_args()
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if opts.cold:
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
                browser.close()
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
    kind = "cold (empty numba cache)" if opts.cold else "warm"
    print(f"{kind}: start URL printed after {t_url:.1f} s, first learning update {t_first:.1f} s")


if __name__ == "__main__":
    main()
