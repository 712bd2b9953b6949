"""Starting and stopping ``mugpt serve`` in a subprocess, for the tests that talk to a real
lab (HTTP, WebSocket, browser)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

START_URL = re.compile(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)")


def start_lab(
    runs_dir: Path, token: str, env: dict[str, str] | None = None, args: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str, Path]:
    """``mugpt serve --no-browser --port 0`` with its runs in ``runs_dir`` and its output in
    ``runs_dir/server.log``; returns the process, its URL (without the token) once the start
    URL is printed, and the log's path. Fails with the log if the server does not start
    within 60 s or if the start URL does not carry ``token``."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    log_path = runs_dir / "server.log"
    command = [sys.executable, "-m", "mugpt", "serve", "--no-browser", "--port", "0"]
    command += ["--runs-dir", str(runs_dir), f"--token={token}", *args]  # may start with "-"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )  # fmt: skip
    deadline = time.monotonic() + 60
    while not (match := START_URL.search(log_path.read_text())):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_lab(proc)
            raise AssertionError(f"the server did not start: {log_path.read_text()}")
        time.sleep(0.1)
    assert match.group(2) == token, "the start URL must carry the token"
    return proc, match.group(1), log_path


def stop_lab(proc: subprocess.Popen[bytes]) -> None:
    """Ctrl-C, as a user stops it; killed if it has not ended within 60 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
