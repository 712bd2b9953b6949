"""``mugpt serve``: the browser lab."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
import threading
import time
import webbrowser
from pathlib import Path

from mugpt.errors import ConfigError

DESCRIPTION = """\
Open the browser lab: watch a tiny GPT learn a byte stream, live.

The page starts learning the built-in stream (prose → code → stories → prose) as soon as it
connects. It draws the loss of every byte with its moving average, phase boundaries, the
bits per byte of gzip, xz and PPMd on the same bytes, the learning rate and gradient norm,
the text as it is read (shaded by surprisal), the next-byte distribution and attention maps.
Pause, step, throttle, switch mechanisms on and off, change the learning rate, sample text,
build a new stream from phases (or an uploaded text), start more runs and overlay them.

Every run learns in its own process; the page and scripts talk to the server through an HTTP
JSON API and a WebSocket, described by the OpenAPI schema at /openapi.json.

Safe by default: the server listens on 127.0.0.1, answers only its own host names and page,
and requires the token printed in its start URL (http://127.0.0.1:PORT/?token=...; scripts
send 'Authorization: token TOKEN'). Streams read only the folders given with --data (default:
the working directory), uploads and the built-in sources. See docs/security.md.
"""

EPILOG = """\
examples:
  mugpt serve                              open the lab in your browser on port 8000
  mugpt serve --no-browser --port 8001     serve only; open http://127.0.0.1:8001/ yourself
  mugpt serve --open runs/first            view a finished run directory
  mugpt serve --data ~/texts --data ~/code   let streams read these two folders only
  mugpt serve --host 0.0.0.0 --allow-host lab.example.org   reachable from other machines
  mugpt serve --max-runs 2 --max-params 200000   tighter limits for a shared machine
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve",
        help="open the browser lab (live charts, controls, comparisons)",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")  # fmt: skip
    p.add_argument("--port", type=int, default=8000,
                   help="port to listen on (default 8000; 0 = any free port)")  # fmt: skip
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    p.add_argument("--data", metavar="DIR", action="append", default=[],
                   help="a folder whose files streams may read (file:, dir:) and whose run "
                   "directories may be opened; repeatable (default: the working directory)")  # fmt: skip
    p.add_argument("--allow-host", metavar="NAME", action="append", default=[],
                   help="a further host name to answer to (besides 127.0.0.1, localhost, ::1 "
                   "and --host); repeatable")  # fmt: skip
    p.add_argument("--token", metavar="VALUE", default=None,
                   help="the token the page and API require (default: a fresh random one); "
                   "write --token=VALUE if VALUE starts with -")  # fmt: skip
    p.add_argument("--no-token", action="store_true",
                   help="require no token (only with a loopback --host)")  # fmt: skip
    p.add_argument("--open", metavar="RUN_DIR", action="append", default=[],
                   help="show a finished run directory (config.json, summary.json, log.csv); "
                   "repeatable")  # fmt: skip
    p.add_argument("--stream", metavar="SPEC", default=None,
                   help="stream of a run started without one (default: the built-in stream)")  # fmt: skip
    p.add_argument("--runs-dir", metavar="DIR", default=None,
                   help="where run directories and uploads go (default: a temporary folder)")  # fmt: skip
    g = p.add_argument_group("limits (a request past one gets a clear error; the server goes on)")
    g.add_argument("--max-runs", type=int, default=None,
                   help="runs with a live worker process at once (default 4)")  # fmt: skip
    g.add_argument("--max-params", type=int, default=None,
                   help="trainable parameters of one model (default 2000000)")  # fmt: skip
    g.add_argument("--max-context", type=int, default=None,
                   help="context of one model, in symbols (default 1024)")  # fmt: skip
    g.add_argument("--max-upload-mb", type=float, default=None,
                   help="size of one uploaded text in MB (default 20)")  # fmt: skip
    g.add_argument("--max-sample-bytes", type=int, default=None,
                   help="bytes one sampling request may generate (default 4000)")  # fmt: skip
    g.add_argument("--max-stream-mb", type=float, default=None,
                   help="size of one run's stream in MB (default 200)")  # fmt: skip
    g.add_argument("--publish-hz", type=float, default=None,
                   help="updates per second sent to a page, at most 20 (default 10)")  # fmt: skip
    p.add_argument("--log-level", default="warning",
                   choices=["critical", "error", "warning", "info", "debug"],
                   help="server log level (default warning)")  # fmt: skip
    p.set_defaults(func=serve)


def bind_socket(host: str, port: int) -> socket.socket:
    """Binds a listening socket, or raises ConfigError saying how to pick another port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use (another mugpt serve?); choose "
                f"another with --port {port + 1}, or --port 0 for any free port"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def check_arguments(args: argparse.Namespace) -> None:
    """Refuses flags that cannot work, each with one line saying what to change."""
    from mugpt.serve.guard import is_loopback

    if not 0 <= args.port <= 65535:
        raise ConfigError(
            f"--port {args.port}: a port is a number from 0 to 65535 (0 = any free port)"
        )
    if args.runs_dir is not None:
        runs = Path(args.runs_dir).expanduser()
        if runs.exists() and not runs.is_dir():
            raise ConfigError(
                f"--runs-dir {args.runs_dir}: this is a file, not a folder; give a folder "
                "(it is created if missing)"
            )
    for folder in args.data:
        if not Path(folder).expanduser().is_dir():
            raise ConfigError(f"--data {folder}: no such folder; give a folder the lab may read")
    if args.no_token and args.token is not None:
        raise ConfigError("--no-token and --token contradict each other; give one of them")
    if args.token is not None and not args.token.strip():
        raise ConfigError("--token is empty; give a value, or leave it out for a random one")
    if args.no_token and not is_loopback(args.host):
        raise ConfigError(
            f"--no-token is allowed only on a loopback address, not with --host {args.host}: "
            "anyone who can reach the port could read the data folders; drop --no-token"
        )


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from mugpt.serve import ServeSettings, create_app
    from mugpt.serve.guard import Access, is_loopback, new_token

    check_arguments(args)

    def mb(value: float | None) -> int | None:
        return None if value is None else int(value * 1_000_000)

    settings = ServeSettings.from_env(
        max_runs=args.max_runs,
        max_params=args.max_params,
        max_context=args.max_context,
        max_upload_bytes=mb(args.max_upload_mb),
        max_sample_bytes=args.max_sample_bytes,
        max_stream_bytes=mb(args.max_stream_mb),
        publish_hz=args.publish_hz,
        runs_dir=args.runs_dir,
        default_stream=args.stream,
    )
    if args.stream:
        from mugpt.corpus import parse_spec

        parse_spec(args.stream)  # a bad spec fails now, not in the page
    for folder in args.open:
        if not Path(folder).is_dir():
            raise ConfigError(f"--open {folder}: no such run directory")
    sock = bind_socket(args.host, args.port)
    port = sock.getsockname()[1]
    shown_host = args.host if args.host not in ("0.0.0.0", "::") else "127.0.0.1"
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    token = None if args.no_token else (args.token or new_token())
    access = Access.for_host(args.host, token, tuple(args.allow_host))
    base = f"http://{shown_host}:{port}/"
    url = base if token is None else f"{base}?token={token}"
    data_dirs = [Path(d).expanduser() for d in args.data] or None
    app = create_app(settings, open_dirs=list(args.open), access=access, data_dirs=data_dirs)
    config = uvicorn.Config(app, log_level=args.log_level, timeout_graceful_shutdown=30)
    server = uvicorn.Server(config)
    print(f"μGPT lab on {url}   (Ctrl-C stops it; API schema at {base}openapi.json)", flush=True)
    folders = ", ".join(str(p) for p in app.state.manager.roots.folders)
    print(f"streams may read: {folders} (add folders with --data DIR)", flush=True)
    if not is_loopback(args.host):
        print(
            f"warning: listening on {args.host}: other machines can reach this port; whoever "
            f"gets the token can start runs on this machine and read every file under "
            f"{folders}",
            file=sys.stderr,
        )
    elif token is None:
        print(
            "warning: --no-token: any program on this machine (any local user) can start "
            f"runs and read every file under {folders}",
            file=sys.stderr,
        )
    if not args.no_browser:

        def open_when_ready() -> None:
            for _ in range(200):
                if server.started:
                    webbrowser.open(url)
                    return
                time.sleep(0.05)

        threading.Thread(target=open_when_ready, daemon=True).start()
    server.run(sockets=[sock])
    return 0
