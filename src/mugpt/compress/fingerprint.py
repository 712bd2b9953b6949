"""The numeric platform a compressed file was made on, and one-thread BLAS while coding.

Arithmetic decoding works only if the decoder computes *bit for bit* the probabilities the
encoder used. Floating-point results can change with the BLAS library and the CPU kernel it
picks, with the NumPy and numba versions, and with μGPT's own numeric code; so a compressed
file records those (:func:`platform_fingerprint`) and the decoder warns when its own differ.
Threads are pinned to one while coding (:func:`deterministic_threads`) so that no library
splits a reduction differently between two runs.
"""

from __future__ import annotations

import contextlib
import hashlib
import platform
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

import mugpt

# the sub-packages whose code computes the probabilities that get coded
_NUMERIC_PACKAGES = ("model", "engine", "mechanisms", "compress")


@cache
def code_digest() -> str:
    """A short hash of μGPT's numeric source (model, engine, mechanisms, compress).

    Any edit to that code may change the predictions, so files made before the edit may not
    decode after it; the digest lets the decoder say so up front.
    """
    root = Path(mugpt.__file__).parent
    digest = hashlib.sha256()
    for package in _NUMERIC_PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _blas_info() -> list[dict[str, Any]]:
    """The BLAS library NumPy computes with: implementation, version, CPU kernel.

    Only NumPy's own BLAS changes μGPT's arithmetic (every matrix product goes through NumPy
    or numba, which calls NumPy's BLAS); other libraries a process happens to load (scipy's
    copy of OpenBLAS, torch's MKL) are left out, so a compressor and a decompressor on one
    machine agree whatever else each imported. OpenMP runtimes are left out too."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # fall back to what NumPy was built with
        return [{"build": _numpy_build_blas()}]
    keys = ("internal_api", "version", "architecture")
    libs = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    numpy_dir = Path(np.__file__).resolve().parent
    own = [lib for lib in libs if _ships_with_numpy(str(lib.get("filepath") or ""), numpy_dir)]
    if own:
        libs = own
    elif len(libs) > 1:  # NumPy linked to a system BLAS: keep what NumPy was built with
        return [{"build": _numpy_build_blas()}]
    return [{k: lib.get(k) for k in keys} for lib in libs]


def _ships_with_numpy(filepath: str, numpy_dir: Path) -> bool:
    """True for a library inside NumPy's wheel (``numpy.libs/`` or ``numpy/.libs/``)."""
    if not filepath:
        return False
    parent = Path(filepath).resolve().parent
    return (
        parent == numpy_dir.parent / "numpy.libs"
        or numpy_dir in parent.parents
        or (parent == numpy_dir)
    )


def _numpy_build_blas() -> str:
    try:
        config = np.show_config(mode="dicts")  # type: ignore[func-returns-value]
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name')} {blas.get('version')}"
    except Exception:  # older NumPy without mode="dicts"
        return "unknown"


def platform_fingerprint() -> dict[str, Any]:
    """What the probabilities depend on besides the configuration and the bytes.

    Example:
        >>> fp = platform_fingerprint()
        >>> sorted(fp)
        ['blas', 'byteorder', 'code', 'machine', 'mugpt', 'numba', 'numpy']
    """
    numba_module = sys.modules.get("numba")
    return {
        "mugpt": mugpt.__version__,
        "code": code_digest(),
        "numpy": np.__version__,
        "numba": getattr(numba_module, "__version__", None),
        "blas": _blas_info(),
        "machine": platform.machine(),
        "byteorder": sys.byteorder,
    }


def fingerprint_differences(recorded: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Human-readable ``key: recorded → current`` lines for every key that differs.

    A library that only the recording side had loaded (numba imported lazily, say) counts
    as a difference only if both sides name a version.

    Example:
        >>> fingerprint_differences({"numpy": "1.26.4", "numba": None}, {"numpy": "2.1.0", "numba": "0.60.0"})
        ['numpy: 1.26.4 → 2.1.0']
    """
    lines = []
    for key in sorted(set(recorded) | set(current)):
        old, new = recorded.get(key), current.get(key)
        if key == "numba" and (old is None or new is None):
            continue
        if old != new:
            lines.append(f"{key}: {_short(old)} → {_short(new)}")
    return lines


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "; ".join(
            " ".join(str(v) for v in (d.values() if isinstance(d, dict) else [d]) if v)
            for d in value
        )
    return str(value)


@contextlib.contextmanager
def deterministic_threads() -> Iterator[None]:
    """Runs the block with BLAS/OpenMP (via threadpoolctl, if installed) and numba limited
    to one thread, then restores the previous limits.

    One thread means each matrix product and reduction is computed in one fixed order, the
    same in the encoder and the decoder whatever the machine's core count.
    """
    with contextlib.ExitStack() as stack:
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            pass
        else:
            stack.enter_context(threadpool_limits(limits=1))
        numba_module = sys.modules.get("numba")
        if numba_module is not None:
            previous = numba_module.get_num_threads()
            numba_module.set_num_threads(1)
            stack.callback(numba_module.set_num_threads, previous)
        yield
