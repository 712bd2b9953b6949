"""Where sweep runs execute: local worker processes (default) or a Ray cluster.

Both backends take the same thing — a function and its keyword arguments, normally
:func:`mugpt.sweep.runner.execute_run` — and give back the same :class:`Outcome`, so the sweep
driver has one code path. A run that raises is reported ``failed`` with its error; a worker
process that dies (killed, out of memory, a crash) is reported ``failed`` too, and the other
runs go on.

The local backend starts one process per run from a fork server (numpy and the engine are
imported once, then each run gets a clean process), at most ``workers`` at a time. On Ctrl-C
each worker saves a checkpoint at its next step and reports ``interrupted``.

The Ray backend submits the same function as a Ray task with ``num_cpus=1`` and no automatic
retry. Without ``address`` it starts a private single-machine Ray instance that listens on the
loopback interface only; with ``address`` (``auto`` or ``HOST:PORT``) it joins a cluster.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import time
from dataclasses import dataclass
from typing import Any, Protocol

from mugpt.errors import ConfigError
from mugpt.sweep.runner import THREAD_VARS, call_run, limit_threads, request_stop

BACKENDS = ("local", "ray")


@dataclass
class Outcome:
    """What became of one submitted run."""

    key: str
    status: str  # done | failed | interrupted
    result: dict[str, Any] | None = None
    error: str | None = None


class Backend(Protocol):
    name: str
    slots: int

    def submit(self, key: str, fn: Any, kwargs: dict[str, Any]) -> None: ...
    def running(self) -> int: ...
    def wait(self, timeout: float) -> list[Outcome]: ...
    def interrupt(self, grace: float) -> list[Outcome]: ...
    def close(self) -> None: ...


def _envelope(key: str, status: str, payload: Any) -> Outcome:
    if status == "done":
        return Outcome(key, "done", result=payload)
    return Outcome(key, status, error=str(payload))


def make_backend(name: str, workers: int | None = None, address: str | None = None) -> Backend:
    """``local`` (default) or ``ray``; ``workers`` caps concurrent runs (default: the cores)."""
    if workers is not None and workers < 1:
        raise ConfigError(f"--workers {workers} must be at least 1")
    if name == "local":
        if address:
            raise ConfigError("--address is for --backend ray; the local backend needs none")
        return LocalBackend(workers or os.cpu_count() or 1)
    if name == "ray":
        return RayBackend(address=address, workers=workers)
    raise ConfigError(f"unknown backend {name!r}; choose one of {list(BACKENDS)}")


# ---------------------------------------------------------------------- local processes


def _worker_main(conn: Any, fn: Any, kwargs: dict[str, Any]) -> None:
    """Entry point of a local worker: a stop signal becomes a checkpoint-and-stop request."""
    signal.signal(signal.SIGINT, lambda *_: request_stop())
    signal.signal(signal.SIGTERM, lambda *_: request_stop())
    status, payload = call_run(fn, kwargs)
    try:
        conn.send((status, payload))
    finally:
        conn.close()


class LocalBackend:
    """Runs each submitted call in its own process, at most ``workers`` at a time."""

    name = "local"

    def __init__(self, workers: int) -> None:
        self.slots = workers
        limit_threads()  # inherited by the fork server, hence by every worker
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(
            ["mugpt.sweep.runner", "mugpt.engine.rundir", "mugpt.engine.summary",
             "matplotlib.figure", "matplotlib.backends.backend_agg", "mugpt.sweep.warmup"]
        )  # fmt: skip
        self.procs: dict[str, tuple[Any, Any]] = {}

    def submit(self, key: str, fn: Any, kwargs: dict[str, Any]) -> None:
        assert key not in self.procs, key
        receiver, sender = self.ctx.Pipe(duplex=False)
        proc = self.ctx.Process(target=_worker_main, args=(sender, fn, kwargs), daemon=True,
                                name=f"mugpt-sweep-{key}")  # fmt: skip
        proc.start()
        sender.close()
        self.procs[key] = (proc, receiver)

    def running(self) -> int:
        return len(self.procs)

    def wait(self, timeout: float) -> list[Outcome]:
        if not self.procs:
            return []
        handles = [h for proc, conn in self.procs.values() for h in (conn, proc.sentinel)]
        multiprocessing.connection.wait(handles, timeout=timeout)
        return self._collect()

    def _collect(self) -> list[Outcome]:
        done = []
        for key, (proc, conn) in list(self.procs.items()):
            message = None
            try:
                if conn.poll():
                    message = conn.recv()
            except (EOFError, OSError):
                message = None
            if message is None and proc.is_alive():
                continue
            proc.join(timeout=5)
            conn.close()
            del self.procs[key]
            if message is None:
                done.append(Outcome(key, "failed", error=_death_note(proc.exitcode)))
            else:
                done.append(_envelope(key, *message))
        return done

    def interrupt(self, grace: float) -> list[Outcome]:
        """Asks every worker to checkpoint and stop; ends those still running after ``grace``."""
        for proc, _conn in self.procs.values():
            if proc.is_alive() and proc.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGINT)
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + grace
        while self.procs and time.monotonic() < deadline:
            outcomes += self.wait(timeout=0.2)
        for key, (proc, conn) in list(self.procs.items()):
            proc.kill()
            proc.join(timeout=5)
            conn.close()
            del self.procs[key]
            outcomes.append(Outcome(key, "interrupted", error="stopped before its next checkpoint"))
        return outcomes

    def close(self) -> None:
        if self.procs:
            self.interrupt(grace=0.0)


def _death_note(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        cause = " (out of memory?)" if name == "SIGKILL" else ""
        return f"WorkerDied: the worker process was killed by {name}{cause}"
    return f"WorkerDied: the worker process exited with code {exitcode} before reporting"


# ---------------------------------------------------------------------- Ray


def _ray_call(fn: Any, kwargs: dict[str, Any]) -> tuple[str, Any]:
    return call_run(fn, kwargs)


class RayBackend:
    """Submits each call as a Ray task (``num_cpus=1``, never retried)."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        if address is None:
            # A private instance needs no network: have Ray bind to 127.0.0.1. This must be
            # set before ray is first imported; it does not affect joining a cluster.
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--backend ray needs Ray; install it with: pip install 'mugpt[ray]'"
            ) from None
        self.ray = ray
        self.owns = False
        if not ray.is_initialized():
            threads = {var: os.environ.get(var, "1") for var in THREAD_VARS}
            kwargs: dict[str, Any] = {
                "log_to_driver": False,
                "logging_level": "warning",
                "runtime_env": {"env_vars": threads},  # one BLAS/numba thread per task
            }
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:
                    ray.init(num_cpus=workers or os.cpu_count() or 1, include_dashboard=False,
                             **kwargs)  # fmt: skip
            except (ConnectionError, RuntimeError, ValueError) as exc:
                if address:
                    # Ray's own message asks for the --address just given; say what is missing
                    raise ConfigError(
                        f"no Ray cluster answers at --address {address}: start one first "
                        "(`ray start --head` on this machine, or on the head node), or drop "
                        "--address to run on a private local Ray instance"
                    ) from None
                raise ConfigError(f"cannot start a local Ray instance: {exc}") from None
            self.owns = True
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.slots = max(1, min(cpus, workers) if workers else cpus)
        self.task = ray.remote(num_cpus=1, max_retries=0)(_ray_call)
        self.refs: dict[Any, str] = {}

    def submit(self, key: str, fn: Any, kwargs: dict[str, Any]) -> None:
        self.refs[self.task.remote(fn, kwargs)] = key

    def running(self) -> int:
        return len(self.refs)

    def wait(self, timeout: float) -> list[Outcome]:
        if not self.refs:
            return []
        ready, rest = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        if ready and rest:  # collect whatever else finished meanwhile
            ready += self.ray.wait(rest, num_returns=len(rest), timeout=0)[0]
        return [self._outcome(ref) for ref in ready]

    def _outcome(self, ref: Any) -> Outcome:
        from ray import exceptions as rex

        key = self.refs.pop(ref)
        try:
            status, payload = self.ray.get(ref)
        except rex.TaskCancelledError:
            return Outcome(key, "interrupted", error="cancelled before its next checkpoint")
        except (rex.WorkerCrashedError, rex.NodeDiedError, rex.ActorDiedError) as exc:
            return Outcome(key, "failed", error=f"WorkerDied: {type(exc).__name__}: {exc}")
        except rex.RayError as exc:
            text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # Ray colours its messages
            return Outcome(key, "failed", error=f"{type(exc).__name__}: {text}")
        return _envelope(key, status, payload)

    def interrupt(self, grace: float) -> list[Outcome]:
        """Cancels the running tasks (a run keeps its last periodic checkpoint)."""
        for ref in list(self.refs):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=False)
        outcomes: list[Outcome] = []
        deadline = time.monotonic() + grace
        while self.refs and time.monotonic() < deadline:
            outcomes += self.wait(timeout=0.2)
        for ref in list(self.refs):
            with contextlib.suppress(Exception):
                self.ray.cancel(ref, force=True)
            outcomes.append(Outcome(self.refs.pop(ref), "interrupted", error="cancelled"))
        return outcomes

    def close(self) -> None:
        if self.refs:
            self.interrupt(grace=0.0)
        if self.owns:
            self.ray.shutdown()
