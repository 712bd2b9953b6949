"""Running a sweep: plan the runs, skip the finished ones, hand the rest to a backend, record
every outcome in the store, and write the report.

The same loop drives both backends. Interrupting it (Ctrl-C) asks every running run to save
a checkpoint, records them as ``interrupted`` and stops; running the sweep again resumes them.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mugpt.errors import ConfigError
from mugpt.sweep.backends import Backend, Outcome, make_backend
from mugpt.sweep.runner import execute_run
from mugpt.sweep.spec import PlannedRun, SweepSpec
from mugpt.sweep.store import SweepStore

RUNS_FOLDER = "runs"
INTERRUPT_GRACE_S = 30.0


@dataclass
class SweepOutcome:
    """What one call of :func:`run_sweep` did."""

    out_dir: Path
    planned: int
    already_done: int
    counts: dict[str, int]  # status -> runs of this sweep, after the call
    ran: int  # runs handed to the backend by this call
    seconds: float
    interrupted: bool = False
    report: dict[str, Path] = field(default_factory=dict)


def default_out_dir(spec: SweepSpec) -> Path:
    return Path("sweeps") / spec.name


def run_sweep(
    spec: SweepSpec | str | Path,
    out_dir: str | Path | None = None,
    *,
    backend: str = "local",
    workers: int | None = None,
    address: str | None = None,
    retry_failed: bool = False,
    runner: Callable[..., dict[str, Any]] = execute_run,
    report: bool = True,
    echo: Callable[[str], None] | None = None,
) -> SweepOutcome:
    """Runs every run of ``spec`` not finished yet in ``out_dir`` and writes the report.

    ``runner`` is the function each backend calls with ``run_config``, ``out_dir``,
    ``max_bytes`` and ``checkpoint_seconds`` (default :func:`execute_run`); it must be
    importable by the workers. ``echo`` receives one line per event (default: stderr).
    A KeyboardInterrupt is re-raised after the running runs saved their checkpoints.

    Example:
        >>> import tempfile
        >>> spec = SweepSpec.from_dict({"seeds": 2, "budget": 300,
        ...     "base": {"stream": "text:the cat sat on the mat. ", "learner": {"update_every": 4}}})
        >>> out = run_sweep(spec, tempfile.mkdtemp(), report=False, echo=lambda line: None)
        >>> out.counts, out.ran
        ({'done': 2}, 2)
    """
    say = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    source: Path | None = None
    if not isinstance(spec, SweepSpec):
        source = Path(spec)
        spec = SweepSpec.load(source)
    out = Path(out_dir) if out_dir is not None else default_out_dir(spec)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    with _exclusive(out):
        store = SweepStore(out)
        try:
            return _drive(spec, source, out, store, backend, workers, address, retry_failed,
                          runner, report, say, t_start)  # fmt: skip
        finally:
            store.close()


def _drive(
    spec: SweepSpec,
    source: Path | None,
    out: Path,
    store: SweepStore,
    backend_name: str,
    workers: int | None,
    address: str | None,
    retry_failed: bool,
    runner: Callable[..., dict[str, Any]],
    report: bool,
    say: Callable[[str], None],
    t_start: float,
) -> SweepOutcome:
    stale = store.recover_stale()
    plan = spec.plan()
    store.add_runs(plan)
    ids = [r.run_id for r in plan]
    store.set_meta("name", spec.name)
    store.set_meta("spec", spec.raw)
    store.set_meta("planned", ids)
    if source is not None and source.resolve() != (out / "sweep.toml").resolve():
        shutil.copyfile(source, out / "sweep.toml")

    status = {r.run_id: store.status(r.run_id) for r in plan}
    already = sum(s == "done" for s in status.values())
    failed_before = sum(s == "failed" for s in status.values())
    todo = deque(r for r in plan if status[r.run_id] != "done" and (retry_failed or status[r.run_id] != "failed"))  # fmt: skip
    points = len({r.point_id for r in plan})
    say(
        f"sweep {spec.name}: {len(plan)} runs ({points} points × {len(spec.seeds)} seeds) · "
        f"{already} done · {len(todo)} to run"
        + (f" · {stale} resumed after a lost driver" if stale else "")
    )
    if failed_before and not retry_failed:
        say(f"  {failed_before} failed before; skipped (--retry-failed runs them again)")
    result = SweepOutcome(out, len(plan), already, {}, 0, 0.0)
    if todo:
        be = make_backend(backend_name, workers, address)
        say(f"  backend {be.name} · {be.slots} at a time · output {out}")
        try:
            result.ran = _loop(be, todo, spec, out, store, runner, say, len(plan) - len(todo))
        except KeyboardInterrupt:
            result.interrupted = True
            say(f"stopping: {be.running()} running run(s) save their checkpoints…")
            try:
                for o in be.interrupt(grace=INTERRUPT_GRACE_S):
                    _record(store, o, None, say, 0, 0)
            finally:
                be.close()
            result.counts = store.counts(ids)
            result.seconds = time.perf_counter() - t_start
            say("interrupted; run the same command again to resume")
            raise
        be.close()
    result.counts = store.counts(ids)
    result.seconds = time.perf_counter() - t_start
    if report and result.counts.get("done"):
        from mugpt.sweep.report import write_report

        result.report = write_report(out)
    summary = ", ".join(f"{n} {s}" for s, n in result.counts.items())
    say(f"finished in {result.seconds:.1f} s: {summary}")
    if result.report:
        say(f"  report: {result.report.get('markdown')}")
    return result


def _loop(
    be: Backend,
    todo: deque[PlannedRun],
    spec: SweepSpec,
    out: Path,
    store: SweepStore,
    runner: Callable[..., dict[str, Any]],
    say: Callable[[str], None],
    finished: int,
) -> int:
    by_id = {r.run_id: r for r in todo}
    started: dict[str, float] = {}
    total = finished + len(todo)
    submitted = 0
    while todo or be.running():
        while todo and be.running() < be.slots:
            run = todo.popleft()
            store.mark_running(run.run_id, be.name)
            started[run.run_id] = time.perf_counter()
            kwargs = {
                "run_config": run.config,
                "out_dir": str((out / RUNS_FOLDER / run.run_id).resolve()),
                "max_bytes": run.max_bytes,
                "checkpoint_seconds": spec.checkpoint_seconds,
            }
            be.submit(run.run_id, runner, kwargs)
            submitted += 1
        for o in be.wait(timeout=1.0):
            finished += 1
            _record(store, o, by_id.get(o.key), say, finished, total,
                    time.perf_counter() - started.get(o.key, time.perf_counter()))  # fmt: skip
    return submitted


def _record(
    store: SweepStore,
    o: Outcome,
    run: PlannedRun | None,
    say: Callable[[str], None],
    n: int,
    total: int,
    wall_s: float | None = None,
) -> None:
    name = f"{o.key}  {run.label or 'base'} seed={run.seed}" if run else o.key
    prefix = f"[{n:>{len(str(total))}}/{total}] " if total else ""
    if o.status == "done" and o.result is not None:
        store.mark_done(o.key, o.result, wall_s or 0.0)
        r = o.result
        speed = r.get("bytes_per_s") or 0.0
        resumed = f"  (resumed at {r['resumed_from']:,})" if r.get("resumed_from") and r["resumed_from"] < r.get("bytes", 0) else ""  # fmt: skip
        say(f"{prefix}done    {name}  bpb {r.get('bpb', float('nan')):.3f}  {speed:,.0f} B/s  {wall_s or 0:.1f} s{resumed}")  # fmt: skip
    elif o.status == "failed":
        store.mark_failed(o.key, o.error or "unknown error", wall_s)
        say(f"{prefix}failed  {name}  {(o.error or '').splitlines()[0] if o.error else ''}")
    else:
        store.mark_interrupted(o.key, o.error)
        say(f"{prefix}stopped {name}  {o.error or ''}")


class _exclusive:
    """Holds an advisory lock on the sweep folder so two drivers never share a store."""

    def __init__(self, folder: Path) -> None:
        self.path = folder / ".lock"
        self.fd = -1

    def __enter__(self) -> _exclusive:
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise ConfigError(
                f"another `mugpt sweep` is running in {str(self.path.parent)!r}; wait for it "
                "or choose another --out"
            ) from None
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
