"""Test-session settings shared by every test module."""

from __future__ import annotations

import os

# One thread per process for BLAS and numba: the suite runs on 2 cores with worker processes
# of its own, and numba refuses a thread count that changes after its pool has started
# (code that sets these variables for a while and then restores them must find them set).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
