"""Imported once by the fork server that starts the lab's run workers.

In that process (the server sets ``MUGPT_SERVE_WARM=1`` before starting it), importing this
module loads the engine and the few small kernels of the NumPy reference path, so that a
worker forked from it starts learning at once, on the reference path. Compiling the engine
itself is the separate compile process's job (:func:`mugpt.serve.worker.compile_main`); once
it reports ready, a thread here loads the compiled kernels from numba's cache into this
process, so that every worker forked afterwards starts on the compiled engine at once. A fork
waits while that load runs (a lock taken around ``fork``): a child never inherits half-loaded
kernels. Anywhere else the import does nothing; a failure here only means that workers load
the kernels on their own.
"""

import contextlib
import os
import threading
import time

from mugpt.serve.worker import WATCH_EVERY, read_warm_report, warm_reference, warm_up

_LOADING = threading.Lock()
"""Held while compiled kernels load into this process; ``fork`` takes it too."""


def _load_when_ready() -> None:
    owner = os.environ.get("MUGPT_SERVE_WARM_OWNER", "")
    while True:
        report = read_warm_report() or {}
        if report.get("state") == "ready":
            break
        if report.get("state") == "failed":
            return
        if owner.isdigit():
            try:
                os.kill(int(owner), 0)
            except ProcessLookupError:
                return  # the server has gone
            except OSError:
                pass
        time.sleep(WATCH_EVERY)
    with _LOADING, contextlib.suppress(Exception):
        warm_up(report=False, step=False)


if os.environ.get("MUGPT_SERVE_WARM") == "1":
    with contextlib.suppress(Exception):
        warm_reference()
    os.register_at_fork(
        before=_LOADING.acquire,
        after_in_parent=_LOADING.release,
        after_in_child=_LOADING.release,
    )
    threading.Thread(target=_load_when_ready, name="mugpt-load-engine", daemon=True).start()
