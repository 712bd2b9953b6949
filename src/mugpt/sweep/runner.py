"""One sweep run, executed the same way in a local worker process or a Ray task.

:func:`execute_run` builds the run from its config dict, continues from the checkpoint in its
folder if one is there, saves a checkpoint every ``checkpoint_seconds`` (and when asked to
stop), and at the end writes the full run directory (``mugpt.engine.rundir``) and returns a
JSON-able result: the run's ``summary.json`` plus what a sweep report needs (a binned loss
curve, the wall time, where it resumed from).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.engine.config import RunConfig
from mugpt.errors import CheckpointError, MugptError
from mugpt.sweep.spec import run_key

CURVE_POINTS = 400
"""Bins of the loss curve kept in a result (the per-byte log stays in the run directory)."""

SEGMENT_BYTES = 4096
"""Bytes per ``Learner.run`` call: the granularity of checkpoints and of stopping."""

_STOP = threading.Event()


class RunInterrupted(Exception):
    """Raised inside a run that was asked to stop; its checkpoint has been saved."""

    def __init__(self, position: int) -> None:
        super().__init__(f"stopped at byte {position:,}; the checkpoint was saved")
        self.position = position


def request_stop() -> None:
    """Asks the run executing in this process to save a checkpoint and stop at its next step."""
    _STOP.set()


def loss_curve(losses: np.ndarray, points: int = CURVE_POINTS) -> dict[str, list[float]]:
    """Mean loss over equal bins of bytes: ``x`` is each bin's end, ``bpb`` its mean.

    >>> loss_curve(np.array([1.0, 3.0, 2.0, 2.0]), points=2)
    {'x': [2, 4], 'bpb': [2.0, 2.0]}
    """
    n = int(losses.size)
    if n == 0:
        return {"x": [], "bpb": []}
    size = -(-n // points)
    ends = np.minimum(np.arange(size, n + size, size), n)
    sums = np.add.reduceat(losses.astype(np.float64), np.arange(0, n, size))
    counts = np.diff(np.concatenate(([0], ends)))
    return {"x": ends.tolist(), "bpb": (sums / counts).round(5).tolist()}


def segment_length(segment_bytes: int, cfg: RunConfig, end: int) -> int:
    """Bytes per ``Learner.run`` call: ``segment_bytes`` rounded up to a multiple of
    ``update_every`` (so, unless a document start shortens a step, segment ends fall on the
    step boundaries of an uninterrupted run). With sub-streams (``batch_streams`` > 1) a call
    ends on a block boundary (``substream_bytes`` > 0), or, if the run is split once, the run
    is read in one call.

    >>> segment_length(4096, RunConfig.from_dict({"learner": {"update_every": 24}}), 10**6)
    4104
    >>> learner = {"batch_streams": 4, "substream_bytes": 3000}
    >>> segment_length(4096, RunConfig.from_dict({"learner": learner}), 10**6)
    12000
    """
    if int(getattr(cfg.learner, "batch_streams", 1) or 1) > 1:
        block = int(getattr(cfg.learner, "block_bytes", 0) or 0)
        return -(-segment_bytes // block) * block if block else max(1, end)
    k = cfg.learner.update_every
    return max(k, -(-segment_bytes // k) * k)


def execute_run(
    run_config: dict[str, Any],
    out_dir: str | Path,
    max_bytes: int | None = None,
    *,
    checkpoint_seconds: float = 30.0,
    baselines: bool = True,
    segment_bytes: int = SEGMENT_BYTES,
) -> dict[str, Any]:
    """Runs (or resumes, or just reads back) one configuration; returns its result dict.

    ``run_config`` is a ``RunConfig.to_dict()``; ``out_dir`` becomes the run directory.
    Calling it again on a finished directory returns the stored result without work; on a
    directory holding a checkpoint of the same run, it continues from there (the losses are
    the same, bit for bit, as those of a run that was never stopped).

    The stream is read with ``Learner.run`` in segments that end at multiples of
    :func:`segment_length` bytes; between segments the run saves its checkpoint (at most every
    ``checkpoint_seconds``) and honours a stop request (:func:`request_stop`).

    Example:
        >>> import tempfile
        >>> cfg = RunConfig.from_dict({"stream": "text:abcabcabcabc", "seed": 1})
        >>> out = tempfile.mkdtemp()
        >>> r = execute_run(cfg.to_dict(), out, baselines=False)
        >>> r["bytes"], r["resumed_from"], execute_run(cfg.to_dict(), out)["bpb"] == r["bpb"]
        (12, 0, True)
    """
    cfg = RunConfig.from_dict(run_config)
    rid = run_key(cfg, max_bytes)
    out = Path(out_dir)
    finished = _finished_result(out, rid)
    if finished is not None:
        return finished

    from mugpt.engine import load_checkpoint, save_checkpoint
    from mugpt.engine.rundir import write_run_dir
    from mugpt.engine.summary import build_summary

    ckpt = out / "checkpoint.npz"
    learner = None
    seconds_before = 0.0
    if ckpt.is_file():
        try:
            learner = load_checkpoint(ckpt)
            extra = getattr(learner, "checkpoint_extra", {})
            if extra.get("run_id") != rid:
                learner = None  # a checkpoint of some other run: start afresh
            else:
                seconds_before = float(extra.get("seconds", 0.0))
        except CheckpointError:
            learner = None  # a torn or foreign file: start afresh
    resumed_from = 0 if learner is None else int(learner.position)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        stream = cfg.build_stream()
    notes = [str(w.message) for w in caught]
    if learner is None:
        learner = cfg.build_learner()
    end = len(stream) if max_bytes is None else min(len(stream), max_bytes)
    if learner.position > end:
        raise CheckpointError(
            f"the checkpoint in {str(out)!r} is at byte {learner.position:,}, past this run's "
            f"end ({end:,}); remove the folder to start the run again"
        )
    extra_base = {"run_config": cfg.to_dict(), "stream_spec": cfg.stream, "run_id": rid,
                  "max_bytes": max_bytes}  # fmt: skip
    seconds = seconds_before
    last_save = time.perf_counter()
    seg = segment_length(segment_bytes, cfg, end)
    _STOP.clear()
    while True:
        # Segments end at fixed multiples of `seg`: a resumed run makes exactly the calls
        # an uninterrupted one makes, and between calls the Learner is a consistent whole.
        target = min(end, (learner.position // seg + 1) * seg)
        t_call = time.perf_counter()
        result = learner.run(stream, max_bytes=target)
        seconds += time.perf_counter() - t_call
        if learner.position >= end:
            break
        if _STOP.is_set() or time.perf_counter() - last_save >= checkpoint_seconds:
            save_checkpoint(learner, ckpt, extra={**extra_base, "seconds": seconds})
            last_save = time.perf_counter()
            if _STOP.is_set():
                raise RunInterrupted(learner.position)

    summary = build_summary(result, cfg, baselines=baselines)
    summary["seconds"] = seconds
    summary["bytes_per_s"] = result.bytes / seconds if seconds > 0 else None
    summary["notes"] = notes
    summary["run_id"] = rid
    summary["max_bytes"] = max_bytes
    write_run_dir(out, learner, result, cfg, summary, force=True, extra_config={"stream_spec": cfg.stream, "run_id": rid, "max_bytes": max_bytes})  # fmt: skip
    return _result(summary, result.losses, out, resumed_from)


def _result(
    summary: dict[str, Any], losses: np.ndarray, out: Path, resumed_from: int
) -> dict[str, Any]:
    return {
        **summary,
        "curve": loss_curve(losses),
        "resumed_from": resumed_from,
        "run_dir": str(out.resolve()),
        "host": socket.gethostname(),
    }


def _finished_result(out: Path, rid: str) -> dict[str, Any] | None:
    """The result of a run whose directory is already complete, else None."""
    summary_path = out / "summary.json"
    log_path = out / "log.csv"
    if not (summary_path.is_file() and log_path.is_file()):
        return None
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    if summary.get("run_id") != rid:
        return None
    from mugpt.engine import read_checkpoint

    try:
        _, arrays = read_checkpoint(out / "checkpoint.npz")  # exact losses (the CSV rounds)
    except CheckpointError:
        return None
    return _result(summary, arrays["losses"], out, resumed_from=int(summary.get("bytes", 0)))


# ---------------------------------------------------------------------- worker side


def call_run(fn: Any, kwargs: dict[str, Any]) -> tuple[str, Any]:
    """Calls ``fn(**kwargs)`` and reports ``("done", result)``, ``("interrupted", message)`` or
    ``("failed", error text)`` — the envelope both backends send back to the sweep."""
    try:
        return "done", fn(**kwargs)
    except RunInterrupted as exc:
        return "interrupted", str(exc)
    except KeyboardInterrupt:
        return "interrupted", "stopped before its next checkpoint"
    except Exception as exc:  # every fault of one run is reported; the sweep goes on
        return "failed", describe_error(exc)


def describe_error(exc: BaseException) -> str:
    """``Type: message`` on the first line; for an unexpected error, the traceback after it."""
    head = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MugptError):
        return head
    trace = "".join(traceback.format_exception(exc))
    return head + "\n" + trace[-4000:]


THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def limit_threads() -> None:
    """One BLAS/numba thread per worker: the workers themselves use the cores. Takes effect
    in processes started afterwards (it must be set before numpy and numba load)."""
    for var in THREAD_VARS:
        os.environ.setdefault(var, "1")
