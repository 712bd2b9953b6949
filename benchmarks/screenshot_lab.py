"""Takes the lab's screenshot for the docs: ``mugpt serve`` on loopback, headless Chromium,
a picture of the whole page after some seconds of learning the default stream.

    python benchmarks/screenshot_lab.py --out docs/screenshot.png --seconds 20
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

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="docs/screenshot.png")
    parser.add_argument("--seconds", type=float, default=20.0, help="learning time before")
    parser.add_argument("--width", type=int, default=1600)
    parser.add_argument("--height", type=int, default=1000)
    parser.add_argument("--full-page", action="store_true", help="the whole page, not one screen")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--mech", action="append", default=[],
                        help="switch this mechanism on in the page first (repeatable)")  # fmt: skip
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory(prefix="mugpt-shot-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("w") as log:
            command = [sys.executable, "-m", "mugpt", "serve", "--no-browser", "--port", "0"]
            server = subprocess.Popen(
                [*command, "--runs-dir", tmp],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
            try:
                url = ""
                deadline = time.monotonic() + 60
                while not url and time.monotonic() < deadline:
                    # the start URL, token included (the page keeps it as a cookie)
                    found = re.search(
                        r"(http://127\.0\.0\.1:\d+/\?token=\S+)", log_path.read_text()
                    )
                    url = found.group(1) if found else ""
                    time.sleep(0.1)
                if not url:
                    raise SystemExit(f"the server did not start:\n{log_path.read_text()}")
                with sync_playwright() as p:
                    browser = p.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
                    page = browser.new_page(viewport={"width": args.width, "height": args.height})
                    page.goto(url)
                    page.wait_for_function(
                        "() => Number(document.querySelector('[data-testid=bytes-seen]')"
                        ".textContent) > 0",
                        timeout=300_000,
                    )
                    for name in args.mech:
                        page.get_by_test_id(f"mech-toggle-{name}").check()
                    page.evaluate("window.scrollTo(0, 0)")
                    page.mouse.move(args.width - 5, 5)  # no hover effects in the picture
                    time.sleep(args.seconds)
                    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=args.out, full_page=args.full_page)
                    learned = page.get_by_test_id("bytes-seen").inner_text()
                    bpb = page.get_by_test_id("bpb").inner_text()
                    browser.close()
                print(f"{args.out}: {learned} bytes learned, {bpb} bpb")
            finally:
                server.send_signal(signal.SIGINT)
                try:
                    server.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    server.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
