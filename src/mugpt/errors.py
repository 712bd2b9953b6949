"""Errors a user can cause.

Every error raised for bad input derives from :class:`MugptError`. The command line prints its
message on one line and exits with status 2, without a traceback; the Python API lets it
propagate so callers can catch it.
"""


class MugptError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class ConfigError(MugptError, ValueError):
    """An invalid configuration value, unknown key or inconsistent combination."""


class StreamError(MugptError, ValueError):
    """A stream specification or source that cannot be read."""


class CheckpointError(MugptError):
    """A checkpoint that is missing, corrupt, truncated or does not match the run."""
