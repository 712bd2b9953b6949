"""Runs seen from the server: one worker process each, its history, and the pages watching it.

Each live run has a worker process (see :mod:`mugpt.serve.worker`) and two one-way pipes. A
reader thread turns the worker's messages into calls on the event loop; a writer thread sends
commands, so the event loop never blocks on a pipe. A worker that dies marks its run
``failed`` with its error; the server and the other runs carry on.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import multiprocessing
import multiprocessing.forkserver as forkserver
import os
import queue
import secrets
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mugpt.engine.config import RunConfig
from mugpt.errors import MugptError
from mugpt.serve.history import RunHistory, history_from_run_dir, lite_update
from mugpt.serve.limits import LimitError, ServeSettings, check_params
from mugpt.serve.protocol import RunInfo, clean, dumps
from mugpt.serve.roots import DataRoots
from mugpt.serve.worker import (
    TYPICAL_COMPILE_S,
    WARM_OWNER_ENV,
    WARM_STAGES,
    WARM_STATUS_ENV,
    read_warm_report,
    worker_main,
    write_warm_report,
)

CLIENT_QUEUE = 256
"""Messages a page may fall behind by before it is sent the whole picture again."""
COMMAND_TIMEOUT = 300.0
STOP_TIMEOUT = 60.0
LIVE_STATES = ("starting", "running", "paused", "finished")


class Client:
    """One WebSocket watching a run: a bounded queue of JSON texts to send."""

    def __init__(self, lite: bool = False) -> None:
        self.lite = lite
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=CLIENT_QUEUE)
        self.resyncs = 0

    def offer(self, text: str, resync: Callable[[], str]) -> None:
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            # the page fell behind: drop what it has not read and send it the whole picture
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait(resync())
            self.resyncs += 1


class Run:
    """A run: its configuration, state, history and (if live) worker process."""

    def __init__(
        self,
        run_id: str,
        config: RunConfig,
        label: str,
        run_dir: Path,
        loop: asyncio.AbstractEventLoop,
        raw_config: dict[str, Any] | None = None,
        readonly: bool = False,
    ) -> None:
        self.id = run_id
        self.config = config
        self.raw_config = raw_config
        self.label = label
        self.run_dir = run_dir
        self.loop = loop
        self.readonly = readonly
        self.created = time.time()
        self.state = "finished" if readonly else "starting"
        self.error: str | None = None
        self.traceback: str | None = None
        self.history = RunHistory()
        self.stream: dict[str, Any] = {"spec": config.stream}
        self.total: int | None = None
        self.mechanisms: list[dict[str, Any]] = [
            {"name": m["name"], "enabled": m.get("enabled", True), "config": {}}
            for m in config.mechanisms
        ]
        self.clients: set[Client] = set()
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.rids = itertools.count(1)
        self.process: Any = None
        self.outbox: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stopping = False
        self.files: dict[str, str] = {}
        self._hello: dict[bool, str] = {}
        self._arch: dict[str, Any] | None = None
        self._live_views: dict[str, Any] = {}  # the last model_view and experts of updates
        self.engine: dict[str, Any] | None = None  # which engine the worker learns on

    # ------------------------------------------------------------------ views

    @property
    def live(self) -> bool:
        return self.process is not None and self.state in LIVE_STATES

    def info(self) -> RunInfo:
        latest = self.history.latest
        config = self.raw_config if self.raw_config is not None else self.config.to_dict()
        return RunInfo(
            id=self.id,
            label=self.label,
            state=self.state,  # type: ignore[arg-type]
            error=self.error,
            readonly=self.readonly,
            created=self.created,
            config=config,
            cli=cli_command(self.config),
            params=self.config.model.n_params,
            pos=int(latest.get("pos") or 0),
            total=self.total,
            bpb=latest.get("bpb"),
            bytes_per_s=latest.get("bytes_per_s"),
            max_bytes_per_s=latest.get("max_bytes_per_s"),
            stream=self.stream,
            mechanisms=self.mechanisms,
            run_dir=str(self.run_dir),
            engine=self.engine,  # type: ignore[arg-type]
            architecture=self._architecture(),
        )

    def _architecture(self) -> Any:
        from mugpt.serve.diagram import architecture

        if self._arch is None:
            try:
                self._arch = architecture(self.config.model)
            except (AttributeError, KeyError, TypeError, ValueError):
                return None
        return self._arch

    def hello(self, lite: bool = False) -> str:
        """The ``hello`` message: the run and its history (built once per change, since
        many pages may connect at the same moment)."""
        cached = self._hello.get(lite)
        if cached is None:
            cached = dumps(
                clean(
                    {
                        "type": "hello",
                        "run": self.info().model_dump(),
                        "history": self._snapshot(lite),
                        "traceback": None if lite else self.traceback,
                    }
                )
            )
            self._hello[lite] = cached
        return cached

    def _snapshot(self, lite: bool) -> dict[str, Any]:
        """The history, with the last diagram numbers and experts in ``latest`` so that a
        page that connects draws them at once."""
        snap = self.history.snapshot(lite=lite)
        if not lite and self._live_views:
            snap["latest"] = {**snap.get("latest", {}), **self._live_views}
        return snap

    # ------------------------------------------------------------------ pages

    def subscribe(self, lite: bool = False) -> Client:
        client = Client(lite)
        client.queue.put_nowait(self.hello(lite))
        self.clients.add(client)
        return client

    def unsubscribe(self, client: Client) -> None:
        self.clients.discard(client)

    def broadcast(self, message: dict[str, Any]) -> None:
        if not self.clients:
            return
        full = dumps(message)
        lite = dumps(lite_update(message)) if message.get("type") == "update" else full
        for client in list(self.clients):
            client.offer(lite if client.lite else full, self._resync(client))

    def broadcast_hello(self) -> None:
        for client in list(self.clients):
            client.offer(self.hello(client.lite), self._resync(client))

    def _resync(self, client: Client) -> Callable[[], str]:
        def whole_picture() -> str:
            return self.hello(client.lite)

        return whole_picture

    # ------------------------------------------------------------------ worker messages

    def on_message(self, message: dict[str, Any]) -> None:
        self._hello.clear()
        kind = message.get("type")
        if kind == "update":
            self.history.apply(message)
            for key in ("model_view", "experts"):
                if key in message:
                    self._live_views[key] = message[key]
            if self.state in LIVE_STATES and message.get("state"):
                self.state = message["state"]
            if "mechanisms" in message:
                self.mechanisms = message["mechanisms"]
            if message.get("engine"):
                self.engine = message["engine"]
            if "config" in message:
                with contextlib.suppress(MugptError, TypeError, ValueError):
                    self.config = RunConfig.from_dict(message["config"])
                    self._arch = None
            self.broadcast(message)
        elif kind == "reply":
            future = self.pending.pop(message.get("rid", -1), None)
            if future is not None and not future.done():
                future.set_result(message)
        elif kind == "ready":
            self.stream = message.get("stream", self.stream)
            self.total = message.get("total")
            self.mechanisms = message.get("mechanisms", self.mechanisms)
            self.engine = message.get("engine") or self.engine
            if self.state == "starting":
                self.state = message.get("state", "running")
            self.broadcast_hello()
        elif kind == "reset":
            self.history.clear()
            self._live_views.clear()
            self.state = message.get("state", self.state)
            self.broadcast_hello()
        elif kind == "failed":
            self.fail(str(message.get("error") or "the worker failed"), message.get("traceback"))

    def on_exit(self, exitcode: int | None) -> None:
        self._hello.clear()
        if self.stopping or self.state in ("failed", "stopped"):
            if self.state != "failed":
                self.state = "stopped"
            self._fail_pending(f"run {self.id} has stopped")
            self.broadcast({"type": "state", "state": self.state, "error": self.error})
            return
        if exitcode is not None and exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:
                name = str(-exitcode)
            why = f"the worker process was killed by signal {name}"
        else:
            why = f"the worker process exited unexpectedly (exit code {exitcode})"
        self.fail(why + "; the server and other runs are fine — start a new run", None)

    def fail(self, error: str, trace: str | None) -> None:
        self._hello.clear()
        self.state = "failed"
        self.error = error
        self.traceback = trace
        self._fail_pending(f"run {self.id} failed: {error}")
        self.broadcast({"type": "state", "state": "failed", "error": error, "traceback": trace})

    def _fail_pending(self, why: str) -> None:
        for future in self.pending.values():
            if not future.done():
                future.set_exception(LimitError(409, why))
        self.pending.clear()

    # ------------------------------------------------------------------ commands

    async def command(
        self, cmd: dict[str, Any], timeout: float = COMMAND_TIMEOUT
    ) -> dict[str, Any]:
        """Sends a command to the worker and waits for its reply (a dict with ``ok``)."""
        if self.readonly:
            raise LimitError(
                409, f"run {self.id} was opened from a folder for viewing; start a new run to learn"
            )
        if not self.live:
            why = f": {self.error}" if self.error else ""
            raise LimitError(409, f"run {self.id} is {self.state}{why}; start a new run")
        rid = next(self.rids)
        future: asyncio.Future[dict[str, Any]] = self.loop.create_future()
        self.pending[rid] = future
        self.outbox.put({"rid": rid, "cmd": cmd})
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            self.pending.pop(rid, None)
            raise LimitError(
                409, f"run {self.id} did not answer within {timeout:.0f} s; it may be busy"
            ) from None

    async def stop(self, write: bool = True, timeout: float = STOP_TIMEOUT) -> None:
        """Asks the worker to write its run directory (unless ``write`` is False) and exit;
        ends it by force if it has not within ``timeout`` seconds."""
        if self.process is None or self.state in ("failed", "stopped"):
            return
        self.stopping = True
        try:
            reply = await self.command({"type": "stop", "write": write}, timeout=timeout)
            self.files.update(reply.get("result", {}).get("paths", {}))
        except LimitError:
            pass
        if self.state != "failed":
            self.state = "stopped"
        self._hello.clear()
        await asyncio.to_thread(self.process.join, 5.0)
        if self.process.is_alive():
            self.process.terminate()
            await asyncio.to_thread(self.process.join, 5.0)
        self.outbox.put(None)
        self.broadcast({"type": "state", "state": self.state, "error": self.error})


class RunManager:
    """All runs of one server."""

    def __init__(
        self, settings: ServeSettings, runs_dir: Path, roots: DataRoots | None = None
    ) -> None:
        self.settings = settings
        self.runs_dir = runs_dir
        self.roots = roots or DataRoots([Path.cwd()], internal=[runs_dir / "uploads"])
        # run directories this server wrote may be opened again as well
        self.open_roots = DataRoots(self.roots.folders, internal=[*self.roots.internal, runs_dir])
        self.runs: dict[str, Run] = {}
        self.ids = itertools.count(1)
        self.lock = asyncio.Lock()
        self.context = worker_context()

    def get(self, run_id: str) -> Run:
        run = self.runs.get(run_id)
        if run is None:
            raise LimitError(404, f"no run {run_id!r}; GET /api/runs lists the runs")
        return run

    def live_count(self) -> int:
        return sum(1 for r in self.runs.values() if r.live)

    def validate(self, values: dict[str, Any]) -> RunConfig:
        """Checks a run configuration the way the worker will use it; LimitError if not."""
        try:
            cfg = RunConfig.from_dict(values)
        except MugptError as exc:
            raise LimitError(422, str(exc)) from None
        except (TypeError, ValueError, KeyError, AttributeError) as exc:
            raise LimitError(422, f"invalid run configuration: {exc}") from None
        check_params(cfg.model.n_params, self.settings)
        if cfg.learner.batch_streams > 1 and cfg.learner.substream_bytes == 0:
            raise LimitError(
                422,
                f"learner.batch_streams={cfg.learner.batch_streams} needs "
                "learner.substream_bytes > 0 in the lab: it learns in time slices, and "
                "sub-streams must be laid out in fixed blocks of B·S bytes for a slice to end "
                "where a straight run would (e.g. substream_bytes=1024)",
            )
        if cfg.model.context > self.settings.max_context:
            raise LimitError(
                422,
                f"context={cfg.model.context} is over this server's limit of "
                f"{self.settings.max_context} (start it with --max-context to raise it)",
            )
        requested = cfg.stream
        if not cfg.stream and self.settings.default_stream:
            # the user's own --stream: trusted like the command line it came from
            cfg = cfg.replace(stream=self.settings.default_stream)
        try:
            cfg.build_learner()  # model, optimiser, protocol and mechanism parameters
            if cfg.stream:
                # the user's own --stream is trusted also when a page sends it back
                trusted = not requested or requested == self.settings.default_stream
                self._check_stream(cfg.stream, check_paths=not trusted)
        except MugptError as exc:
            raise LimitError(422, str(exc)) from None
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError, OSError) as exc:
            raise LimitError(422, f"invalid run configuration: {exc}") from None
        return cfg

    def _check_stream(self, spec: str, check_paths: bool = True) -> None:
        from mugpt.corpus import parse_spec

        if check_paths:  # first: nothing is told about a path outside the folders
            self.roots.check_spec(spec)
        total = 0
        for phase in parse_spec(spec):
            if phase.kind == "stdin":
                raise LimitError(422, "the lab cannot read stdin; upload the text instead")
            if phase.kind == "tinystories":
                self._check_cached(phase.source)
            # a file or folder read whole counts its size: refused now, not after reading
            total += phase.budget if phase.budget is not None else _source_bytes(phase.source)
        if total > self.settings.max_stream_bytes:
            raise LimitError(
                422,
                f"the stream asks for {total:,} bytes; this server allows at most "
                f"{self.settings.max_stream_bytes:,} (start it with --max-stream-mb, or give "
                "the phases budgets such as file:PATH:10M)",
            )

    @staticmethod
    def _check_cached(source: str) -> None:
        """A page may use TinyStories only from the local cache: a request must not make the
        server download gigabytes."""
        from mugpt.corpus import tinystories_cached

        split = source.partition(":")[2] or "valid"
        if not tinystories_cached(split):
            raise LimitError(
                422,
                f"{source} is not in the local cache and the lab does not download it; fetch "
                f"it once with `mugpt run --stream 'tinystories:{split}:1k' --max-bytes 1k` "
                "(online), then start the run again",
            )

    async def create(
        self,
        values: dict[str, Any],
        label: str | None = None,
        paused: bool = False,
        max_bytes_per_s: float | None = None,
    ) -> Run:
        """Validates a configuration and starts a worker learning it."""
        # off the event loop: building the model and walking a dir: folder take a while
        cfg = await asyncio.to_thread(self.validate, values)
        async with self.lock:
            if self.live_count() >= self.settings.max_runs:
                finished = [r for r in self.runs.values() if r.live and r.state == "finished"]
                if not finished:
                    raise LimitError(
                        429,
                        f"this server runs at most {self.settings.max_runs} runs at once "
                        "(--max-runs); stop one first (its Stop button, or "
                        "POST /api/runs/ID/stop)",
                    )
                await min(finished, key=lambda r: r.created).stop()
            number = next(self.ids)
            run_id = new_run_id()
            run = Run(
                run_id,
                cfg,
                label or default_label(number, cfg),
                self.runs_dir / run_id,
                asyncio.get_running_loop(),
            )
            self.runs[run_id] = run
            try:
                await self._start_worker(run, paused, max_bytes_per_s)
            except BaseException:
                del self.runs[run_id]
                raise
        return run

    async def _start_worker(self, run: Run, paused: bool, max_bytes_per_s: float | None) -> None:
        ctx = self.context
        cmd_recv, cmd_send = ctx.Pipe(duplex=False)
        out_recv, out_send = ctx.Pipe(duplex=False)
        spec = {
            "config": run.config.to_dict(),
            "run_dir": str(run.run_dir),
            "publish_hz": self.settings.publish_hz,
            "slice_seconds": self.settings.slice_seconds,
            "max_stream_bytes": self.settings.max_stream_bytes,
            "paused": paused,
            "max_bytes_per_s": max_bytes_per_s,
            "check_messages": os.environ.get("MUGPT_SERVE_CHECK_MESSAGES") == "1",
        }
        process = ctx.Process(
            target=worker_main,
            args=(cmd_recv, out_send, spec),
            name=f"mugpt-run-{run.id}",
            daemon=True,
        )
        await asyncio.to_thread(process.start)
        cmd_recv.close()  # the worker holds these ends; closing ours makes EOF visible
        out_send.close()
        run.process = process
        loop = run.loop

        def read() -> None:
            try:
                while True:
                    message = out_recv.recv()
                    loop.call_soon_threadsafe(run.on_message, message)
            except (EOFError, OSError):
                pass
            process.join(timeout=10)
            with contextlib.suppress(RuntimeError):  # the loop is closed at shutdown
                loop.call_soon_threadsafe(run.on_exit, process.exitcode)
            out_recv.close()

        def write() -> None:
            while True:
                item = run.outbox.get()
                if item is None:
                    break
                try:
                    cmd_send.send(item)
                except (OSError, EOFError):
                    break
            cmd_send.close()

        threading.Thread(target=read, name=f"mugpt-read-{run.id}", daemon=True).start()
        threading.Thread(target=write, name=f"mugpt-write-{run.id}", daemon=True).start()

    def open_dir(self, path: str | Path, trusted: bool = False) -> Run:
        """Adds a finished run directory as a read-only run. Unless ``trusted`` (named on the
        command line), it must lie inside the data folders or the server's runs folder."""
        if not trusted:
            path = self.open_roots.check_run_dir(path)
        try:
            raw, stream, history = history_from_run_dir(path)
        except MugptError as exc:
            raise LimitError(404 if "does not exist" in str(exc) else 422, str(exc)) from None
        except (OSError, ValueError) as exc:
            raise LimitError(422, f"cannot read run directory {str(path)!r}: {exc}") from None
        try:
            cfg = RunConfig.from_dict({k: v for k, v in raw.items() if k != "stream"})
            cfg = cfg.replace(stream=str(raw.get("stream", "")))
        except (MugptError, TypeError, ValueError, KeyError, AttributeError):
            cfg = RunConfig()
        run_id = new_run_id()
        run = Run(
            run_id,
            cfg,
            f"{Path(path).name} (opened)",
            Path(path).resolve(),
            asyncio.get_running_loop(),
            raw_config=raw,
            readonly=True,
        )
        run.history = history
        run.stream = stream
        run.total = stream.get("bytes")
        run.mechanisms = history.latest.get("mechanisms", [])
        self.runs[run_id] = run
        return run

    async def remove(self, run_id: str) -> None:
        run = self.get(run_id)
        await run.stop(write=False)
        self.runs.pop(run_id, None)

    async def shutdown(self) -> None:
        """Stops every live run, each writing its run directory (briefly: the server is
        going away)."""
        await asyncio.gather(*(r.stop(timeout=15.0) for r in self.runs.values() if r.live))


PRELOAD = ["mugpt.serve.warm", "mugpt.engine.summary", "mugpt.engine.rundir"]
"""Modules the fork server imports once (``warm`` also loads the reference path's kernels,
and the compiled engine's once it is ready), so that a new run starts in a fraction of a
second."""


def warm_status_path() -> Path:
    """The file where the compile process reports its progress: one per server process,
    named in the environment that the compile process, the fork server and the workers
    inherit (only the server calls this; a name inherited from another server is replaced)."""
    path = os.environ.get(WARM_STATUS_ENV)
    if not path or os.environ.get(WARM_OWNER_ENV) != str(os.getpid()):
        # none yet, or inherited from another server (a lab started from a process that
        # runs one, as the tests do): this server's compile reports go to a file of its own
        import tempfile

        path = os.path.join(
            tempfile.gettempdir(), f"mugpt-warm-{os.getpid()}-{secrets.token_hex(4)}.json"
        )
        os.environ[WARM_STATUS_ENV] = path
        os.environ[WARM_OWNER_ENV] = str(os.getpid())
        atexit.register(_remove_quietly, path)
    return Path(path)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


_COMPILER: subprocess.Popen[bytes] | None = None
"""The compile process of this server (see :func:`start_compiler`)."""
_COMPILER_LOG: Path | None = None


def start_compiler() -> None:
    """Starts the compile process (:func:`mugpt.serve.worker.compile_main`) unless one runs
    or has made the engine ready: it compiles the engine's kernels into numba's on-disk cache
    (same environment, so the same ``NUMBA_CACHE_DIR``) while the runs learn on the reference
    path, and reports to :func:`warm_status_path`. :func:`stop_compiler` ends it."""
    global _COMPILER, _COMPILER_LOG
    path = warm_status_path()
    if _COMPILER is not None and _COMPILER.poll() is None:
        return
    report = read_warm_report() or {}
    if report.get("state") == "ready":
        return
    _remove_quietly(str(path))  # an earlier, stopped compile's report
    _COMPILER_LOG = path.with_suffix(".log")
    with open(_COMPILER_LOG, "wb") as log:
        _COMPILER = subprocess.Popen(
            [sys.executable, "-c", "from mugpt.serve.worker import compile_main; compile_main()"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    atexit.register(stop_compiler)
    atexit.register(_remove_quietly, str(_COMPILER_LOG))


def stop_compiler() -> None:
    """Ends the compile process if it still runs (the server is stopping)."""
    proc = _COMPILER
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=3)


def _compiler_died() -> None:
    """A compile process that ended without a final report: says so in the report, so that
    the page, the terminal and the runs (which stay on the reference path) all know why."""
    proc = _COMPILER
    if proc is None or proc.poll() is None:
        return
    report = read_warm_report() or {}
    if report.get("state") in ("ready", "failed"):
        return
    tail = ""
    with contextlib.suppress(OSError, AttributeError):
        lines = _COMPILER_LOG.read_text(errors="replace").strip().splitlines()  # type: ignore[union-attr]
        tail = lines[-1][:300] if lines else ""
    why = f"the compile process ended with exit code {proc.returncode}"
    write_warm_report(
        {
            "state": "failed",
            "stage": "failed",
            "step": int(report.get("step", 0)),
            "steps": len(WARM_STAGES),
            "error": f"{why}: {tail}" if tail else why,
            "started": report.get("started") or _FORKSERVER_STARTED or time.time(),
            "updated": time.time(),
        }
    )


def engine_status() -> dict[str, Any]:
    """What the compile process is doing (an :class:`EngineStatus` dict): ``starting``
    before it reports, ``compiling`` while it compiles the kernels (or loads them from the
    cache), ``ready``, ``failed`` (runs then stay on the reference path), or ``unknown``
    before the server has started it."""
    steps = len(WARM_STAGES)
    if not _FORKSERVER_STARTED:
        return {"state": "unknown", "stage": "each run compiles what it needs on first use",
                "step": 0, "steps": steps, "elapsed_s": None}  # fmt: skip
    _compiler_died()
    report = read_warm_report()
    if report is None:
        since = time.time() - _FORKSERVER_STARTED
        return {"state": "starting", "stage": "starting the compile process", "step": 0,
                "steps": steps, "elapsed_s": round(since, 1)}  # fmt: skip
    started = float(report.get("started") or _FORKSERVER_STARTED)
    state = str(report.get("state", "compiling"))
    now = time.time()
    out: dict[str, Any] = {
        "state": state if state in ("compiling", "ready", "failed") else "compiling",
        "stage": str(report.get("stage", "")),
        "step": int(report.get("step", 0)),
        "steps": int(report.get("steps", steps)),
        "elapsed_s": round(now - started, 1),
        "kernels": int(report.get("kernels", 0)),
        "current": report.get("current") or None,
        "error": report.get("error"),
    }
    if out["state"] == "compiling":
        eta = float(report.get("eta") or started + TYPICAL_COMPILE_S)
        out["remaining_s"] = round(max(eta - now, 3.0), 0)  # at least "a few seconds"
    if state in ("ready", "failed"):
        out["seconds"] = round(float(report.get("seconds") or report.get("updated", started) - started), 1)  # fmt: skip
    return out


_FORKSERVER_STARTED = 0.0


def worker_context() -> Any:
    """The multiprocessing context for workers: ``forkserver`` where it exists (a clean,
    single-threaded parent with the engine already imported; forking it is fast and safe),
    else ``spawn``. Never plain ``fork`` of the server, which holds threads and sockets."""
    warm_status_path()  # named before any child starts, so that every child inherits it
    if "forkserver" in multiprocessing.get_all_start_methods():
        os.environ["MUGPT_SERVE_WARM"] = "1"  # read by mugpt.serve.warm in the fork server
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def start_worker_server() -> None:
    """Starts the compile process and the fork server now (the latter imports the engine
    and the reference path's kernels), so that the first run does not wait for them."""
    global _FORKSERVER_STARTED
    worker_context()
    if not _FORKSERVER_STARTED:
        _FORKSERVER_STARTED = time.time()
    start_compiler()
    if "forkserver" in multiprocessing.get_all_start_methods():
        forkserver.ensure_running()


def _source_bytes(source: str) -> int:
    """Bytes a ``file:``/``dir:`` source holds (read whole); 0 for other sources, whose
    budget is required or whose size is their own."""
    from mugpt.corpus.sources import walk_files

    kind, _, arg = source.partition(":")
    try:
        if kind == "file":
            return os.stat(arg).st_size
        if kind == "dir":
            return sum(p.stat().st_size for p in walk_files(Path(arg)))
    except (OSError, ValueError):
        return 0  # the worker's own check names the problem
    return 0


def new_run_id() -> str:
    """An unguessable run id: 16 hex digits from the operating system's random source.

    >>> len(new_run_id()), new_run_id() != new_run_id()
    (16, True)
    """
    return secrets.token_hex(8)


def default_label(number: int, cfg: RunConfig) -> str:
    """A short name: the run number and what sets it apart (mechanisms, size)."""
    mechs = [m["name"] for m in cfg.mechanisms if m.get("enabled", True)]
    model = cfg.model
    size = f"L{model.n_layers}·d{model.d_model}"
    return f"run {number} · {size}" + (f" · {'+'.join(mechs)}" if mechs else "")


def cli_command(cfg: RunConfig) -> str:
    """The ``mugpt run`` command line that repeats ``cfg``: its preset (unless ``seed``) and
    the flags whose values differ from the preset's.

    >>> cli_command(RunConfig.from_dict({"model": {"d_model": 32}, "seed": 3}))
    'mugpt run --d-model 32 --seed 3'
    """
    from mugpt.cli.common import _LEARNER_FLAGS, _MODEL_FLAGS, _OPTIM_FLAGS

    parts = ["mugpt", "run"]
    preset = getattr(cfg, "preset", "seed") or "seed"
    try:
        base = RunConfig.from_dict({"preset": preset})
    except MugptError:
        preset, base = "seed", RunConfig()
    if preset != "seed":
        parts += ["--preset", preset]
    if cfg.stream:
        parts += ["--stream", cfg.stream]
    sections = (
        (_MODEL_FLAGS, cfg.model, base.model),
        (_OPTIM_FLAGS, cfg.optim, base.optim),
        (_LEARNER_FLAGS, cfg.learner, base.learner),
    )
    for flags, values, defaults in sections:
        for flag, key, _typ, _help in flags:
            value = getattr(values, key)
            if key == "seed":
                continue  # --seed sets it, below
            if value != getattr(defaults, key):
                parts += [flag, _text(value)]
    if cfg.model.tied_head and not base.model.tied_head:
        parts.append("--tied-head")
    if cfg.learner.freeze_network and not base.learner.freeze_network:
        parts.append("--freeze-network")
    for entry in cfg.mechanisms:
        if not entry.get("enabled", True):
            continue
        params = {k: v for k, v in entry.items() if k not in ("name", "enabled")}
        params = {k: v for k, v in params.items() if v != _mechanism_default(entry["name"], k)}
        spec = entry["name"]
        if params:
            spec += ":" + ",".join(f"{k}={_text(v)}" for k, v in params.items())
        parts += ["--mech", spec]
    parts += ["--seed", str(cfg.seed)]
    return shlex.join(parts)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _mechanism_default(name: str, key: str) -> Any:
    from mugpt.mechanisms import REGISTRY, available

    available()
    cls = REGISTRY.get(name)
    try:
        return getattr(cls.Config(), key) if cls is not None else object()
    except (TypeError, ValueError):
        return object()  # no defaults: always show the value
