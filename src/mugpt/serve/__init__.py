"""The browser lab: a web server that runs learners in worker processes and a static page.

>>> from mugpt.serve import ServeSettings
>>> ServeSettings().max_runs
4

``mugpt serve`` starts it; :func:`create_app` builds the FastAPI app for tests, scripts and
notebooks. See ``docs/serve.md`` for the HTTP and WebSocket API.
"""

from mugpt.serve.app import create_app
from mugpt.serve.limits import LimitError, ServeSettings

__all__ = ["LimitError", "ServeSettings", "create_app"]
