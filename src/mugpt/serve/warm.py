"""Imported once by the fork server that starts the lab's run workers.

In that process (the server sets ``MUGPT_SERVE_WARM=1`` before starting it), importing this
module loads the engine and compiles its kernels, or loads them from numba's cache, so every
worker forked afterwards starts learning at once instead of compiling for itself. Anywhere
else the import does nothing. A failure here only means that workers compile on their own.
"""

import os

from mugpt.serve.worker import warm_up

if os.environ.get("MUGPT_SERVE_WARM") == "1":
    warm_up()
