"""Load test of the lab server: many pages watching a few runs over WebSockets.

Starts ``mugpt serve`` on a free loopback port (or uses ``--url``, which must be loopback),
starts ``--runs`` runs on the default stream, connects ``--clients`` WebSocket clients spread
over them, and watches for ``--seconds``; then stops everything by itself and reports:

- the server's event-loop lag (how late it wakes a sleeping task; p50/p99/max), measured by the
  server itself over the test window (``GET /api/health?lag_window=...``);
- the server's resident memory (RSS) at the start, the end and its maximum, and the workers';
- per client: updates received per second (the server promises at most ``publish_hz``, 20 at
  most), the largest burst, and bytes received; per run: bytes learned per second.

    python benchmarks/load_ws.py                       # 20 clients, 2 runs, 2 minutes
    python benchmarks/load_ws.py --seconds 30 --json load.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

TOKEN = {"value": ""}  # the lab's token, from its start URL


def http(method: str, url: str, body: dict[str, Any] | None = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"token {TOKEN['value']}")
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def start_server(runs_dir: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    log_path = Path(runs_dir) / "server.log"
    log = log_path.open("w")
    command = [sys.executable, "-m", "mugpt", "serve", "--no-browser", "--port", "0"]
    proc = subprocess.Popen(
        [*command, "--runs-dir", runs_dir],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(r"(http://127\.0\.0\.1:\d+/)\?token=(\S+)", log_path.read_text())
        if found:
            TOKEN["value"] = found.group(2)
            return proc, found.group(1), log_path
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise SystemExit(f"the server did not start:\n{log_path.read_text()}")


class Watcher:
    """One WebSocket client: counts what it receives."""

    def __init__(self, base: str, run_id: str) -> None:
        self.url = base.replace("http://", "ws://") + f"ws/runs/{run_id}?token={TOKEN['value']}"
        self.updates = 0
        self.messages = 0
        self.bytes = 0
        self.stamps: list[float] = []
        self.errors = 0

    async def watch(self, stop: asyncio.Event) -> None:
        import websockets

        try:
            async with websockets.connect(self.url, max_size=None) as ws:
                while not stop.is_set():
                    try:
                        text = await asyncio.wait_for(ws.recv(), timeout=0.5)
                    except TimeoutError:
                        continue
                    self.messages += 1
                    self.bytes += len(text)
                    if '"type":"update"' in text[:40]:
                        self.updates += 1
                        self.stamps.append(time.monotonic())
        except (OSError, websockets.WebSocketException):
            self.errors += 1

    def max_in_one_second(self) -> int:
        best, lo = 0, 0
        for hi, t in enumerate(self.stamps):
            while t - self.stamps[lo] >= 1.0:
                lo += 1
            best = max(best, hi - lo + 1)
        return best


async def watch_all(base: str, run_ids: list[str], clients: int, seconds: float) -> dict[str, Any]:
    watchers = [Watcher(base, run_ids[i % len(run_ids)]) for i in range(clients)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(w.watch(stop)) for w in watchers]
    rss: list[float] = []
    workers: dict[str, list[float]] = {}
    t0 = time.monotonic()
    pos0 = {r: http("GET", f"{base}api/runs/{r}")["pos"] for r in run_ids}
    cpu0 = http("GET", f"{base}api/health")["cpu_seconds"]
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(min(5.0, max(0.0, seconds - (time.monotonic() - t0))))
        health = await asyncio.to_thread(http, "GET", f"{base}api/health")
        if health.get("rss_mb") is not None:
            rss.append(health["rss_mb"])
        for run_id, mb in (health.get("workers_rss_mb") or {}).items():
            if mb is not None:
                workers.setdefault(run_id, []).append(mb)
    elapsed = time.monotonic() - t0
    health = http("GET", f"{base}api/health?lag_window={seconds:.0f}")
    runs = {r: http("GET", f"{base}api/runs/{r}") for r in run_ids}
    stop.set()
    await asyncio.gather(*tasks)
    rates = [w.updates / elapsed for w in watchers]
    return {
        "clients": clients,
        "runs": len(run_ids),
        "seconds": round(elapsed, 1),
        "loop_lag_ms": health["loop_lag"],
        "server_cpu_percent": round(100 * (health["cpu_seconds"] - cpu0) / elapsed, 1),
        "server_rss_mb": {
            "start": rss[0] if rss else None,
            "end": health.get("rss_mb"),
            "max": max(rss + [health.get("rss_mb") or 0]),
        },
        "workers_rss_mb_max": {r: max(v) for r, v in workers.items()},
        "updates_per_s_per_client": {
            "mean": round(statistics.mean(rates), 2),
            "min": round(min(rates), 2),
            "max": round(max(rates), 2),
        },
        "largest_burst_in_1s": max(w.max_in_one_second() for w in watchers),
        "kB_per_s_per_client": round(statistics.mean(w.bytes for w in watchers) / elapsed / 1e3, 1),
        "client_errors": sum(w.errors for w in watchers),
        "bytes_learned_per_s": {r: round((runs[r]["pos"] - pos0[r]) / elapsed, 1) for r in run_ids},
        "run_states": {r: runs[r]["state"] for r in run_ids},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--url",
        help="an already running lab on loopback, its start URL with ?token= (default: start one)",
    )
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    if not 1 <= args.seconds <= 1800:
        parser.error("--seconds must be in [1, 1800]")

    with tempfile.TemporaryDirectory(prefix="mugpt-load-") as tmp:
        proc = None
        if args.url:
            host = urlparse(args.url).hostname
            if host not in ("127.0.0.1", "localhost", "::1"):
                parser.error("--url must be a loopback address (127.0.0.1)")
            TOKEN["value"] = parse_qs(urlparse(args.url).query).get("token", [""])[0]
            base = args.url.split("?")[0].rstrip("/") + "/"
        else:
            proc, base, _log = start_server(tmp)
        created: list[str] = []
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    http("GET", f"{base}api/health")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            for i in range(args.runs):
                run = http("POST", f"{base}api/runs", {"config": {}, "label": f"load {i + 1}"})
                created.append(run["id"])
            deadline = time.monotonic() + 300  # the first start may compile the engine
            while any(http("GET", f"{base}api/runs/{r}")["pos"] == 0 for r in created):
                if time.monotonic() > deadline:
                    raise SystemExit("the runs did not start learning within 5 minutes")
                time.sleep(0.5)
            report = asyncio.run(watch_all(base, created, args.clients, args.seconds))
        finally:
            for run_id in created:
                with contextlib.suppress(OSError):
                    http("DELETE", f"{base}api/runs/{run_id}")
            if proc is not None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
    print(json.dumps(report, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
