"""Imported once by the local backend's fork server (never by user code): a few bytes through
the engine load its compiled kernels there, so every run process forked from the server starts
with them ready instead of loading them again."""

from __future__ import annotations


def warm_up() -> None:
    """Learns 120 bytes with the default model; any failure only means a slower first run."""
    try:
        from mugpt.corpus import Stream
        from mugpt.engine.config import RunConfig

        learner = RunConfig.from_dict({"learner": {"update_every": 4}}).build_learner()
        learner.run(
            Stream.from_bytes(b"the kernels warm up on these bytes. " * 3 + b"abcdefghijkl")
        )
    except Exception:  # pragma: no cover - the workers then load the kernels themselves
        pass


warm_up()
