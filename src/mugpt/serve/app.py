"""The lab's web server: a FastAPI app with an HTTP JSON API, a WebSocket per run, and the page.

Example (in a notebook or script; ``mugpt serve`` does the same behind a browser):

    >>> from fastapi.testclient import TestClient
    >>> from mugpt.serve import create_app, ServeSettings
    >>> with TestClient(create_app(ServeSettings(max_runs=1))) as client:  # doctest: +SKIP
    ...     run = client.post("/api/runs", json={"config": {"stream": "text:hello world"}}).json()
    ...     client.post(f"/api/runs/{run['id']}/commands", json={"type": "pause"}).json()["ok"]
    True

The WebSocket ``/ws/runs/{id}`` sends ``hello`` (the run and its history), then ``update``
messages (at most ``publish_hz`` per second) and answers commands with ``reply`` or ``error``.
``?lite=1`` subscribes to the loss curves only (for overlaying runs).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import resource
import statistics
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import (
    FastAPI,
    File,
    Form,
    Query,
    Request,
    UploadFile,
    WebSocket,
    WebSocketDisconnect,
)
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from mugpt import __version__
from mugpt.errors import ConfigError, MugptError
from mugpt.serve.guard import Access, AccessGuard, cookie_name
from mugpt.serve.limits import LimitError, ServeSettings, check_sample_length
from mugpt.serve.protocol import (
    Command,
    CommandError,
    CommandReply,
    OpenRunDir,
    RunCreate,
    RunInfo,
    ServerStatus,
    UploadInfo,
    clean,
    dumps,
    error_responses,
    parse_command,
    protocol_schema,
)
from mugpt.serve.roots import DataRoots
from mugpt.serve.runs import RunManager, engine_status, start_worker_server, stop_compiler

STATIC_DIR = Path(__file__).parent / "static"
UPLOAD_CHUNK = 1 << 20


def plotly_js_path() -> Path:
    """The plotly.js bundle shipped inside the installed ``plotly`` Python package."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


class LoopLag:
    """Measures how late the event loop wakes a sleeping task (a direct measure of how
    responsive the server is), keeping the last ten minutes of samples."""

    def __init__(self, period: float = 0.05) -> None:
        self.period = period
        self.samples: deque[tuple[float, float]] = deque(maxlen=int(600 / period))

    async def watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            t0 = loop.time()
            await asyncio.sleep(self.period)
            now = loop.time()
            self.samples.append((now, max(0.0, now - t0 - self.period)))

    def stats(self, window: float = 60.0) -> dict[str, Any]:
        """p50, p99 and max lag in ms over the last ``window`` seconds."""
        since = asyncio.get_running_loop().time() - window
        values = sorted(lag for t, lag in self.samples if t >= since)
        if not values:
            return {
                "samples": 0,
                "window_s": window,
                "p50_ms": None,
                "p99_ms": None,
                "max_ms": None,
            }
        q = statistics.quantiles(values, n=100) if len(values) > 1 else values * 99
        return {
            "samples": len(values),
            "window_s": window,
            "p50_ms": round(q[49] * 1e3, 3),
            "p99_ms": round(q[98] * 1e3, 3),
            "max_ms": round(values[-1] * 1e3, 3),
        }


def rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process in MB (Linux /proc; elsewhere the peak of this one)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    if pid == "self":
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return None


class UploadSizeGuard:
    """Refuses an upload whose declared size is over the limit before reading its body."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/api/uploads":
            headers = dict(scope.get("headers") or [])
            declared = headers.get(b"content-length", b"")
            if declared.isdigit() and int(declared) > self.limit + 64 * 1024:
                response = JSONResponse(
                    status_code=413, content={"detail": _too_big(int(declared), self.limit)}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _progress_text(status: dict[str, Any]) -> str:
    """``stage 2 of 3, 41 kernels, about 20 s left`` (what the compile has done, its estimate)."""
    parts = [f"stage {min(status['step'] + 1, status['steps'])} of {status['steps']}"]
    if status.get("kernels"):
        parts.append(f"{status['kernels']} kernels compiled")
    if status.get("remaining_s") is not None:
        parts.append(f"about {status['remaining_s']:.0f} s left")
    return ", ".join(parts)


async def announce_engine(say: Any = print, period: float = 0.5) -> None:
    """Prints to the terminal what the compile process is doing: a line when it starts
    compiling, one every 15 s with its progress and estimate while it goes on, and one when
    the engine is ready (runs then switch to it) or has failed (runs stay on the reference
    path)."""
    told = 0.0
    began = False
    while True:
        status = engine_status()
        state = status["state"]
        if state == "unknown":
            return
        if state in ("compiling", "starting") and not began and (status["elapsed_s"] or 0) >= 3:
            began = True
            told = time.monotonic()
            say(
                "mugpt serve: loading the engine and compiling its kernels in the background "
                "(the first time on this machine takes about a minute; cached afterwards); runs "
                "learn on the NumPy reference path meanwhile and switch over when it is ready",
                flush=True,
            )
        elif began and state in ("compiling", "starting") and time.monotonic() - told >= 15:
            told = time.monotonic()
            say(
                f"mugpt serve: still compiling ({status['stage']}: {_progress_text(status)}), "
                f"{status['elapsed_s']:.0f} s so far",
                flush=True,
            )
        elif state == "ready":
            if began:
                say(
                    f"mugpt serve: compiled engine ready after {status.get('seconds', 0):.1f} s; "
                    "runs switch to it at their next step",
                    flush=True,
                )
            return
        elif state == "failed":
            say(
                f"mugpt serve: compiling the engine failed ({status.get('error') or '?'}); "
                "runs stay on the NumPy reference path (slower, same protocol)",
                flush=True,
            )
            return
        await asyncio.sleep(period)


def status_message(engine: dict[str, Any], runs: dict[str, int]) -> str:
    """One line for the page's notice and for people reading ``GET /api/status``."""
    state = engine["state"]
    if state in ("starting", "compiling"):
        return (
            f"Compiling the engine in the background: {engine['stage']} ("
            f"{_progress_text(engine)}, {engine['elapsed_s'] or 0:.0f} s so far). Runs learn "
            "on the NumPy reference path meanwhile (slower) and switch to the compiled engine "
            "when it is ready; the kernels are cached for the next start."
        )
    if state == "failed":
        return (
            f"Compiling the engine failed ({engine.get('error') or 'no reason given'}); runs "
            "learn on the NumPy reference path (slower, same protocol)."
        )
    if runs.get("starting"):
        return "Starting a run: building its stream and model."
    return "Ready."


def _safe_name(name: str) -> str:
    stem = Path(name or "upload").stem
    stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", stem).strip("._-")[:40]
    return stem or "upload"


def create_app(
    settings: ServeSettings | None = None,
    open_dirs: list[str] | None = None,
    *,
    access: Access | None = None,
    data_dirs: Sequence[str | Path] | None = None,
) -> FastAPI:
    """Builds the lab's FastAPI app.

    ``settings`` holds the limits (see :class:`ServeSettings`); ``open_dirs`` are finished run
    directories to show read-only from the start. ``access`` says who may talk to it (default:
    loopback host names and a fresh token, ``app.state.access.token``); ``data_dirs`` are the
    folders its streams may read (default: the working directory).
    """
    settings = settings or ServeSettings()
    access = access or Access.local()
    if settings.runs_dir is not None:
        runs_dir = Path(settings.runs_dir).expanduser().resolve()
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"--runs-dir {settings.runs_dir}: cannot use it as a folder "
                f"({exc.strerror or exc}); give a folder the server may write"
            ) from None
    else:
        runs_dir = Path(tempfile.mkdtemp(prefix="mugpt-serve-"))
    roots = DataRoots(
        [Path.cwd()] if data_dirs is None else data_dirs, internal=[runs_dir / "uploads"]
    )
    manager = RunManager(settings, runs_dir, roots)
    lag = LoopLag()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        watcher = asyncio.create_task(lag.watch())
        await asyncio.to_thread(start_worker_server)
        announcer = asyncio.create_task(announce_engine())
        for path in open_dirs or []:
            try:
                manager.open_dir(path, trusted=True)
            except LimitError as exc:
                print(f"mugpt serve: cannot open {path}: {exc.message}")
        try:
            yield
        finally:
            watcher.cancel()
            announcer.cancel()
            stop_compiler()
            await manager.shutdown()

    app = FastAPI(
        title="μGPT lab",
        version=__version__,
        description="Watch and steer a tiny GPT learning online, byte by byte. Every action of "
        "the page is an HTTP call or a WebSocket message documented here.",
        lifespan=lifespan,
        docs_url=None,  # Swagger UI and ReDoc load from a CDN: /docs is our own page instead
        redoc_url=None,
    )
    app.add_middleware(UploadSizeGuard, limit=settings.max_upload_bytes)
    app.add_middleware(AccessGuard, access=access)  # outermost: runs before everything else
    app.state.manager = manager
    app.state.access = access
    app.state.settings = settings
    app.state.lag = lag

    @app.exception_handler(LimitError)
    async def limit_error(request: Request, exc: LimitError) -> JSONResponse:
        return JSONResponse(status_code=exc.status, content={"detail": exc.message})

    @app.exception_handler(MugptError)
    async def user_error(request: Request, exc: MugptError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": str(exc)})

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # FastAPI routes each method of a path separately, so Allow listed only one
            path = request.url.path
            routes = [r for r in app.router.routes if isinstance(r, APIRoute)]
            first = next((r for r in routes if r.path_regex.match(path)), None)
            allowed = {
                method
                for route in routes
                if first is not None and route.path == first.path
                for method in route.methods or ()
            }
            headers["Allow"] = ", ".join(sorted(allowed))
        return JSONResponse(
            status_code=exc.status_code, content={"detail": exc.detail}, headers=headers
        )

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, exc: RecursionError) -> JSONResponse:
        return JSONResponse(
            status_code=422,
            content={"detail": "the request body is nested too deeply; send a flatter JSON"},
        )

    # ------------------------------------------------------------------ the page

    @app.get("/", include_in_schema=False)
    async def index(request: Request) -> FileResponse:
        response = FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})
        token = request.query_params.get("token")
        if token is not None and access.token is not None:
            # the guard has checked it; the page's later calls carry it as this cookie
            response.set_cookie(
                cookie_name(request.headers.get("host", "")),
                token,
                httponly=True,
                samesite="strict",
            )
        return response

    @app.get("/docs", include_in_schema=False)
    async def api_docs() -> FileResponse:
        """The API page, drawn from /openapi.json with no outside asset (works offline)."""
        return FileResponse(STATIC_DIR / "api.html", headers={"Cache-Control": "no-cache"})

    @app.get("/redoc", include_in_schema=False)
    async def api_redoc() -> RedirectResponse:
        return RedirectResponse("/docs")

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    async def plotly_js() -> FileResponse:
        return FileResponse(
            plotly_js_path(),
            media_type="text/javascript",
            headers={"Cache-Control": "public, max-age=86400"},
        )

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(status_code=204)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    # ------------------------------------------------------------------ information

    @app.get("/api/health", tags=["server"], responses=error_responses(422))
    async def health(
        lag_window: Annotated[
            float, Query(gt=0, le=600, description="seconds of lag samples")
        ] = 60,
    ) -> dict[str, Any]:
        """Liveness, event-loop lag (how late the server wakes up) and memory."""
        workers = {
            r.id: rss_mb(r.process.pid)
            for r in manager.runs.values()
            if r.live and r.process is not None and r.process.pid
        }
        return {
            "ok": True,
            "version": __version__,
            "runs": len(manager.runs),
            "live_runs": manager.live_count(),
            "clients": sum(len(r.clients) for r in manager.runs.values()),
            "loop_lag": lag.stats(lag_window),
            "rss_mb": rss_mb(),
            "cpu_seconds": round(time.process_time(), 3),
            "workers_rss_mb": workers,
        }

    @app.get("/api/status", tags=["server"], responses=error_responses())
    async def status() -> ServerStatus:
        """What the server is doing now, readable as soon as the page loads: whether the
        engine's kernels are still compiling (stage, elapsed seconds), and runs by state."""
        engine = engine_status()
        runs: dict[str, int] = {}
        for run in manager.runs.values():
            runs[run.state] = runs.get(run.state, 0) + 1
        return ServerStatus.model_validate(
            {"engine": engine, "runs": runs, "message": status_message(engine, runs)}
        )

    @app.get("/api/protocol.json", tags=["server"], responses=error_responses())
    async def protocol() -> dict[str, Any]:
        """JSON schema of the WebSocket protocol: the commands a page sends, the messages
        the server sends (hello, update, reply, error, state) and, for reference, what a
        run's worker sends the server."""
        return protocol_schema()

    @app.get("/api/presets", tags=["runs"], responses=error_responses())
    async def presets() -> list[dict[str, Any]]:
        """The named configurations (``config.preset`` of ``POST /api/runs``) and what each
        sets: the lab's race button starts one of them on the same stream."""
        from mugpt.engine.config import PRESETS, RunConfig

        out = []
        for name in sorted(PRESETS):
            cfg = RunConfig.from_dict({"preset": name})
            mechs = [m["name"] for m in cfg.mechanisms]
            out.append(
                {
                    "name": name,
                    "settings": clean(PRESETS[name]),
                    "params": cfg.model.n_params,
                    "update_every": cfg.learner.update_every,
                    "mechanisms": mechs,
                }
            )
        return out

    @app.get("/api/settings", tags=["server"], responses=error_responses())
    async def get_settings() -> dict[str, Any]:
        """The server's limits."""
        values = settings.model_dump(mode="json")
        values["runs_dir"] = str(runs_dir)
        values["data_dirs"] = [str(p) for p in roots.folders]
        return values

    @app.get("/api/streams", tags=["streams"], responses=error_responses())
    async def streams() -> dict[str, Any]:
        """The sources a stream phase can use, the default stream, and whether TinyStories is
        in the local cache (it is offered only then)."""
        from mugpt.corpus import DEFAULT_SPEC, describe_sources, list_sources, tinystories_cached

        described = describe_sources()
        cached = {split: bool(tinystories_cached(split)) for split in ("valid", "train")}
        sources = []
        for usage in list_sources():
            if usage.startswith("tinystories") and not cached.get(usage.partition(":")[2], False):
                continue
            if usage == "stdin":
                continue  # a page cannot give the server its stdin
            sources.append({"usage": usage, "help": described.get(usage, "")})
        return {
            "default_spec": settings.default_stream or DEFAULT_SPEC,
            "sources": sources,
            "tinystories_cached": cached,
            "examples": [
                "prose=stdlib-prose:20k,code=stdlib-code:20k,prose=stdlib-prose:20k",
                "a=repeat:10k,b=random:5k,a=repeat:10k",
                "stories=stories:50k",
            ],
        }

    @app.get("/api/mechanisms", tags=["mechanisms"], responses=error_responses())
    async def mechanisms() -> list[dict[str, Any]]:
        """Every mechanism with its config JSON schema, defaults and strict-online flag."""
        from mugpt.mechanisms import REGISTRY, available

        out = []
        for name in available():
            cls = REGISTRY[name]
            try:
                defaults = cls.Config().model_dump()
            except (TypeError, ValueError):
                defaults = {}
            doc = (cls.__doc__ or "").strip()
            out.append(
                {
                    "name": name,
                    "strict_online": bool(getattr(cls, "strict_online", True)),
                    "doc": doc.split("\n\n")[0].replace("\n", " ").replace("``", "").strip(),
                    "schema": cls.Config.model_json_schema(),
                    "defaults": clean(defaults),
                }
            )
        return out

    # ------------------------------------------------------------------ runs

    @app.get("/api/runs", tags=["runs"], responses=error_responses())
    async def list_runs() -> list[RunInfo]:
        """Every run this server knows, oldest first."""
        return [r.info() for r in manager.runs.values()]

    @app.post("/api/runs", status_code=201, tags=["runs"], responses=error_responses(422, 429))
    async def create_run(body: RunCreate) -> RunInfo:
        """Starts a run (a worker process learning the stream). 422: a bad configuration or
        a model over the limits; 429: too many runs at once."""
        run = await manager.create(
            body.config.values(), body.label, body.paused, body.max_bytes_per_s
        )
        return run.info()

    @app.post("/api/runs/open", status_code=201, tags=["runs"], responses=error_responses(404, 422))
    async def open_run(body: OpenRunDir) -> RunInfo:
        """Shows a finished run directory (config.json, summary.json, log.csv), read-only."""
        return manager.open_dir(body.path).info()

    @app.get("/api/runs/{run_id}", tags=["runs"], responses=error_responses(404))
    async def get_run(run_id: str) -> RunInfo:
        return manager.get(run_id).info()

    @app.get("/api/runs/{run_id}/history", tags=["runs"], responses=error_responses(404))
    async def get_history(run_id: str) -> dict[str, Any]:
        """The run's history at bounded resolution (what the page draws on connect)."""
        return clean(manager.get(run_id).history.snapshot())

    @app.post(
        "/api/runs/{run_id}/commands", tags=["runs"], responses=error_responses(404, 409, 422)
    )
    async def run_command(run_id: str, command: Command) -> CommandReply:
        """Applies one command (the same ones the WebSocket takes) and returns its result.
        422: a command the run cannot apply; 409: the run is not live."""
        run = manager.get(run_id)
        reply = await apply_command(run, command)
        if not reply["ok"]:
            raise LimitError(422, reply["error"])
        return CommandReply(
            ok=True,
            command=reply["command"],
            request_id=command.request_id,
            result=reply.get("result") or {},
        )

    async def apply_command(run: Any, command: Any) -> dict[str, Any]:
        if command.type == "sample":
            check_sample_length(command.length, settings)
        return await run.command(command.model_dump(exclude={"request_id"}))

    @app.post("/api/runs/{run_id}/stop", tags=["runs"], responses=error_responses(404))
    async def stop_run(run_id: str) -> RunInfo:
        """Stops the worker after it writes its run directory; the run stays viewable."""
        run = manager.get(run_id)
        await run.stop()
        return run.info()

    @app.delete("/api/runs/{run_id}", tags=["runs"], responses=error_responses(404))
    async def delete_run(run_id: str) -> dict[str, Any]:
        """Stops the run (if live) and forgets it."""
        await manager.remove(run_id)
        return {"ok": True, "id": run_id}

    @app.get(
        "/api/runs/{run_id}/export/{what}",
        tags=["runs"],
        response_class=FileResponse,
        responses={
            200: {
                "description": "the file: log CSV, summary/config JSON, checkpoint npz",
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "object"}},
                    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **error_responses(404, 409, 422),
        },
    )
    async def export(
        run_id: str, what: Literal["log", "summary", "checkpoint", "config"]
    ) -> FileResponse:
        """Downloads the run's per-byte log (CSV), summary (JSON), checkpoint (.npz) or config."""
        run = manager.get(run_id)
        names = {
            "log": "log.csv",
            "summary": "summary.json",
            "checkpoint": "checkpoint.npz",
            "config": "config.json",
        }
        path = run.run_dir / names[what]
        if run.live and not run.readonly:
            reply = await run.command({"type": "export", "what": what})
            if not reply["ok"]:
                raise LimitError(422, reply["error"])
            path = Path(reply["result"]["paths"][what])
        if not path.is_file():
            raise LimitError(404, f"run {run_id} has no {names[what]} to export")
        media = {
            "log": "text/csv",
            "summary": "application/json",
            "config": "application/json",
            "checkpoint": "application/octet-stream",
        }[what]
        return FileResponse(path, media_type=media, filename=f"{run_id}-{names[what]}")

    # ------------------------------------------------------------------ uploads

    @app.post(
        "/api/uploads", status_code=201, tags=["streams"], responses=error_responses(413, 422)
    )
    async def upload(
        file: Annotated[UploadFile, File(description="a text file to learn as a phase")],
        label: Annotated[str | None, Form(max_length=40)] = None,
    ) -> UploadInfo:
        """Stores an uploaded (or pasted) text; the answer's ``spec`` is a phase to add to a
        stream spec. 413: larger than the server allows."""
        limit = settings.max_upload_bytes
        digest = hashlib.sha256()
        chunks = []
        size = 0
        while chunk := await file.read(UPLOAD_CHUNK):
            size += len(chunk)
            if size > limit:
                raise LimitError(413, _too_big(size, limit))
            digest.update(chunk)
            chunks.append(chunk)
        if size == 0:
            raise LimitError(422, "the uploaded file is empty; give it some text")
        name = _safe_name(label or file.filename or "upload")
        folder = runs_dir / "uploads"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{name}-{digest.hexdigest()[:10]}.txt"
        if not path.exists():
            from mugpt.engine.checkpoint import atomic_write_bytes

            await asyncio.to_thread(atomic_write_bytes, path, b"".join(chunks))
        source = f"file:{path}".replace(",", "\\,")
        return UploadInfo(label=name, source=source, bytes=size, spec=f"{name}={source}")

    # ------------------------------------------------------------------ the schema

    generate_schema = app.openapi

    def openapi_with_token() -> dict[str, Any]:
        """The schema says what the guard requires: the token, as a header or the cookie."""
        if app.openapi_schema is None:
            schema = generate_schema()
            schema.setdefault("components", {})["securitySchemes"] = {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "'token TOKEN', TOKEN as printed in the start URL",
                },
                "cookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "mugpt-token-PORT",
                    "description": "set by the page's start URL (/?token=TOKEN)",
                },
            }
            upload = schema["components"]["schemas"].get("Body_upload_api_uploads_post", {})
            if "file" in upload.get("properties", {}):
                upload["properties"]["file"]["minLength"] = 1  # an empty upload is refused
            if access.token is not None:
                for operations in schema["paths"].values():
                    for operation in operations.values():
                        operation["security"] = [{"token": []}, {"cookie": []}]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi_with_token  # type: ignore[method-assign]

    # ------------------------------------------------------------------ live socket

    @app.websocket("/ws/runs/{run_id}")
    async def run_socket(websocket: WebSocket, run_id: str, lite: bool = False) -> None:
        await websocket.accept()
        run = manager.runs.get(run_id)
        if run is None:
            await websocket.send_text(
                dumps({"type": "error", "message": f"no run {run_id!r}; GET /api/runs lists them"})
            )
            await websocket.close(code=4404)
            return
        client = run.subscribe(lite)

        async def pump() -> None:
            while True:
                text = await client.queue.get()
                await websocket.send_text(text)

        sender = asyncio.create_task(pump())
        tasks: set[asyncio.Task[None]] = set()

        def say(message: dict[str, Any]) -> None:
            client.offer(dumps(clean(message)), lambda: run.hello(client.lite))

        async def handle(command: Any) -> None:
            request_id = command.request_id
            try:
                reply = await apply_command(run, command)
            except LimitError as exc:
                say({"type": "error", "command": command.type, "request_id": request_id,
                     "message": exc.message})  # fmt: skip
                return
            if reply["ok"]:
                say({"type": "reply", "ok": True, "command": reply["command"],
                     "request_id": request_id, "result": reply.get("result") or {}})  # fmt: skip
            else:
                say({"type": "error", "command": reply["command"], "request_id": request_id,
                     "message": reply["error"]})  # fmt: skip

        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                text = message.get("text")
                if text is None:
                    say({"type": "error", "message": "commands are JSON text frames; this was "
                         "a binary frame: send the JSON as text"})  # fmt: skip
                    continue
                try:
                    command = parse_command(text)
                except CommandError as exc:
                    say({"type": "error", "message": str(exc)})
                    continue
                task = asyncio.create_task(handle(command))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except WebSocketDisconnect:
            pass
        except RuntimeError:
            pass  # the socket was closed under us (e.g. at shutdown)
        finally:
            run.unsubscribe(client)
            sender.cancel()
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sender

    return app


def _too_big(size: int, limit: int) -> str:
    return (
        f"the upload is {size:,} bytes or more; this server accepts at most {limit:,} "
        "(start it with --max-upload-mb to raise the limit)"
    )


def _env_settings() -> ServeSettings:
    return ServeSettings.from_env()


def app_from_env() -> FastAPI:
    """An app configured from ``MUGPT_SERVE_*`` variables (``uvicorn --factory`` entry):
    ``MUGPT_SERVE_OPEN`` and ``MUGPT_SERVE_DATA`` (folders, ``os.pathsep``-separated),
    ``MUGPT_SERVE_TOKEN`` (default: a fresh one, printed) and ``MUGPT_SERVE_ALLOW_HOSTS``
    (comma-separated). Loopback host names only, plus those."""
    from mugpt.serve.guard import new_token

    folders = os.environ.get("MUGPT_SERVE_OPEN", "").split(os.pathsep)
    data = [p for p in os.environ.get("MUGPT_SERVE_DATA", "").split(os.pathsep) if p]
    token = os.environ.get("MUGPT_SERVE_TOKEN") or new_token()
    if "MUGPT_SERVE_TOKEN" not in os.environ:
        print(f"mugpt serve: the lab's token is {token} (open /?token={token})", flush=True)
    hosts = tuple(h for h in os.environ.get("MUGPT_SERVE_ALLOW_HOSTS", "").split(",") if h)
    return create_app(
        _env_settings(),
        open_dirs=[p for p in folders if p],
        access=Access.local(token=token, extra_hosts=hosts),
        data_dirs=data or None,
    )
