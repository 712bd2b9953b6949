"""Workers that time one workload each, in a fresh single-threaded child process.

Each measurement runs in its own spawned process so that its peak memory is its own and its
thread pools start pinned to one thread (``OMP``/``OpenBLAS``/``MKL``/``numba`` set to 1 and
``torch.set_num_threads(1)``). Memory: just before the timed work the child resets its
peak-RSS counter (Linux: ``5`` written to ``/proc/self/clear_refs`` resets ``VmHWM``); after it,
``peak_rss_mb`` is ``VmHWM`` from ``/proc/self/status`` — the peak resident set during the
work, interpreter and libraries included — and ``rss_delta_mb`` is that peak minus the resident
set at the start. Where /proc is unavailable, :func:`resource.getrusage` ``ru_maxrss`` (the
peak over the child's life) stands in.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import platform
import resource
import statistics
import time
from typing import Any

import numpy as np

THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


def _rss_mb() -> float:
    """Current resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _peak_rss_mb() -> float:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def _start() -> float:
    """Resets the peak counter and returns the resident set now (MB)."""
    _reset_peak()
    return _rss_mb()


def _timed(fn: Any, repeats: int) -> tuple[list[float], list[float], Any]:
    walls, cpus, out = [], [], None
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return walls, cpus, out


def _summary(n: int, walls: list[float], cpus: list[float], rss0: float) -> dict[str, Any]:
    return {
        "seconds": walls,
        "cpu_seconds": cpus,
        "bytes_per_s": n / statistics.median(walls),
        "bytes_per_s_cpu": n / statistics.median(cpus),
        "peak_rss_mb": _peak_rss_mb(),
        "rss_delta_mb": max(0.0, _peak_rss_mb() - rss0),
    }


def measure_mugpt(config: dict[str, Any], data: bytes, doc_starts: np.ndarray, repeats: int, experts: bool = False) -> dict[str, Any]:  # fmt: skip
    """Times ``repeats`` fresh Learners of ``config`` over ``data``. With ``experts``, one more
    run, not timed, attributes a mixture to its experts (``out["experts"]``, when the
    configuration has one)."""
    from mugpt.corpus import Phase, Stream
    from mugpt.engine.config import RunConfig

    run_config = RunConfig.from_dict(config)
    stream = Stream(data, [Phase("bench", "bench", 0, len(data))], np.asarray(doc_starts))
    warm = run_config.build_learner()  # loads (or compiles) the kernels before timing
    warm.run(Stream.from_bytes(data[:64]))
    rss0 = _start()
    walls, cpus, result = _timed(lambda: run_config.build_learner().run(stream), repeats)
    out = _summary(len(data), walls, cpus, rss0)
    out["bpb"] = float(result.bpb)
    out["backend"] = warm.backend
    if experts:
        from mugpt.engine.summary import expert_rows, track_experts

        learner = run_config.build_learner()
        if track_experts(learner.mechanisms):
            traced = learner.run(stream)
            assert traced.bpb == result.bpb, "attribution must not change the bits"
            out["experts"] = expert_rows(traced.mechanisms)
    return out


def measure_torch(config: dict[str, Any], data: bytes, doc_starts: np.ndarray, repeats: int) -> dict[str, Any]:  # fmt: skip
    """Times the PyTorch eager reference of ``config`` over ``data``."""
    import torch

    from mugpt.bench.torch_ref import TorchLearner
    from mugpt.engine.config import RunConfig

    run_config = RunConfig.from_dict(config)
    TorchLearner(run_config).run(data[:64])
    rss0 = _start()
    walls, cpus, losses = _timed(lambda: TorchLearner(run_config).run(data, doc_starts), repeats)
    out = _summary(len(data), walls, cpus, rss0)
    out["bpb"] = float(np.mean(losses))
    out["backend"] = f"torch {torch.__version__} eager"
    return out


def measure_compressor(name: str, data: bytes, repeats: int) -> dict[str, Any]:
    """Times one baseline compressor (mugpt.engine.baselines) over ``data``."""
    from mugpt.engine.baselines import compress_with

    compress_with(name, data[:1024])
    rss0 = _start()
    walls, cpus, packed = _timed(lambda: compress_with(name, data), repeats)
    out = _summary(len(data), walls, cpus, rss0)
    out["bpb"] = 8.0 * len(packed) / len(data)
    out["backend"] = "C library"
    return out


def measure_peak(size: int = 1024, repeats: int = 7) -> dict[str, Any]:
    """The machine's single-thread float32 matrix-product speed: best of ``repeats``
    ``size × size`` products through NumPy's BLAS, by wall clock and by process CPU time."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a = rng.random((size, size), dtype=np.float32)
    b = rng.random((size, size), dtype=np.float32)
    wall = cpu = float("inf")
    with threadpool_limits(limits=1):
        a @ b
        for _ in range(repeats):
            w, c = time.perf_counter(), time.process_time()
            a @ b
            cpu = min(cpu, time.process_time() - c)
            wall = min(wall, time.perf_counter() - w)
    flops = 2.0 * size**3
    return {"gflops": flops / wall / 1e9, "gflops_cpu": flops / cpu / 1e9, "size": size}


def in_child(fn: Any, *args: Any) -> Any:
    """Runs ``fn(*args)`` in a fresh spawned process with every thread pool pinned to one."""
    saved = {k: os.environ.get(k) for k in THREAD_VARIABLES}
    os.environ.update({k: "1" for k in THREAD_VARIABLES})
    try:
        ctx = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            return pool.submit(fn, *args).result()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def cpu_model() -> str:
    """The CPU's model name as ``/proc/cpuinfo`` gives it (Linux), else what the platform
    module knows: every speed figure is quoted with it.

    Example:
        >>> isinstance(cpu_model(), str)
        True
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
