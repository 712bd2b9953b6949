"""The lab server's settings and limits.

Every limit is a field of :class:`ServeSettings`, settable from the command line
(``mugpt serve --max-runs 2``) or from the environment (``MUGPT_SERVE_MAX_RUNS=2``). A request
that goes past a limit gets an HTTP 4xx answer whose JSON ``detail`` names the limit and the
flag that raises it; the server itself is never affected.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mugpt.errors import ConfigError

ENV_PREFIX = "MUGPT_SERVE_"


class ServeSettings(BaseModel):
    """Limits and knobs of one lab server.

    Example:
        >>> s = ServeSettings(max_runs=2)
        >>> s.max_runs, s.publish_hz <= 20
        (2, True)
        >>> ServeSettings.from_env({"MUGPT_SERVE_MAX_PARAMS": "50000"}).max_params
        50000
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_runs: int = Field(
        default=4, ge=1, le=64, description="runs with a live worker process at once"
    )
    max_params: int = Field(
        default=2_000_000, ge=1_000, le=500_000_000, description="trainable parameters of one model"
    )
    max_context: int = Field(
        default=1024,
        ge=8,
        le=8192,
        description="context (symbols) of one model; attention grows as T²",
    )
    max_upload_bytes: int = Field(
        default=20_000_000, ge=1, le=2_000_000_000, description="size of one uploaded text"
    )
    max_sample_bytes: int = Field(
        default=4_000, ge=1, le=1_000_000, description="bytes one sampling request may generate"
    )
    max_stream_bytes: int = Field(
        default=200_000_000, ge=1, le=10_000_000_000, description="bytes of one run's stream"
    )
    publish_hz: float = Field(
        default=10.0,
        gt=0,
        le=20,
        description="messages per second a run sends to each page (<= 20)",
    )
    slice_seconds: float = Field(
        default=0.05, gt=0, le=1.0, description="time a worker learns between looks at its commands"
    )
    runs_dir: Path | None = Field(
        default=None,
        description="where run directories and uploads go (default: a temporary folder)",
    )
    default_stream: str = Field(
        default="",
        description="stream spec of a run started with no stream ('' = the built-in one)",
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> ServeSettings:
        """Reads ``MUGPT_SERVE_<FIELD>`` variables, then applies ``overrides`` (None ignored)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in cls.model_fields:
            key = ENV_PREFIX + name.upper()
            if key in env:
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**values)
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"])
            raise ConfigError(f"serve setting {field}: {first['msg']}") from None


class LimitError(Exception):
    """A request went past a limit or asked for something impossible; maps to an HTTP 4xx."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def check_params(n_params: int, settings: ServeSettings) -> None:
    """Raises :class:`LimitError` (422) when a model is bigger than the server allows."""
    if n_params > settings.max_params:
        raise LimitError(
            422,
            f"the model has {n_params:,} parameters; this server allows at most "
            f"{settings.max_params:,} (start it with --max-params to raise the limit)",
        )


def check_sample_length(length: int, settings: ServeSettings) -> None:
    """Raises :class:`LimitError` (422) when a sample asks for too many bytes."""
    if length > settings.max_sample_bytes:
        raise LimitError(
            422,
            f"a sample of {length} bytes is over this server's limit of "
            f"{settings.max_sample_bytes} (start it with --max-sample-bytes to raise it)",
        )
