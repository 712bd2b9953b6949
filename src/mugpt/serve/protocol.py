"""The lab's wire protocol: commands a page or script sends, and the shape of what comes back.

Commands travel as JSON objects with a ``type`` field (a discriminated union), over the run's
WebSocket (``/ws/runs/{id}``) or ``POST /api/runs/{id}/commands``. Each may carry a
``request_id``; the reply repeats it.

Example:
    >>> cmd = parse_command('{"type": "step", "bytes": 10}')
    >>> cmd.type, cmd.bytes
    ('step', 10)
    >>> parse_command('{"type": "jump"}')
    Traceback (most recent call last):
    ...
    mugpt.serve.protocol.CommandError: unknown command type 'jump'; valid types: pause, resume, step, throttle, reset, mechanism, set_lr, sample

Messages from the server to the page (all JSON objects with a ``type``; their pydantic
models are below and their JSON schema is served at ``GET /api/protocol.json``):

- ``hello`` (:class:`HelloMessage`): the run's description and its history so far (sent on
  connect and after a reset);
- ``update`` (:class:`UpdateMessage`): what happened since the previous update, at most
  ``publish_hz`` per second;
- ``reply`` (:class:`ReplyMessage`): the answer to a command (``ok``, ``command``, ``result``);
- ``error`` (:class:`ErrorMessage`): a command that could not be applied (``message``); the
  socket stays open;
- ``state`` (:class:`StateMessage`): the run's state changed (e.g. ``failed`` with its
  ``error``).

A run's worker process sends the server ``ready``, ``update``, ``reset``, ``reply`` and
``failed`` (:data:`WorkerMessage`); the server turns them into the messages above.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

RequestId = Annotated[
    str | None, Field(default=None, max_length=64, description="echoed in the reply")
]


def _mechanism_names(schema: dict[str, Any]) -> None:
    """The schema lists the installed mechanisms (read when the schema is built)."""
    from mugpt.mechanisms import available

    schema["enum"] = list(available())


def _preset_names(schema: dict[str, Any]) -> None:
    from mugpt.engine.config import PRESETS

    for option in schema.get("anyOf", [schema]):
        if option.get("type") == "string":
            option["enum"] = sorted(PRESETS)


MAX_COMMAND_CHARS = 1_000_000
"""Longest command text accepted (a sample prompt of 10,000 characters fits many times)."""


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    request_id: RequestId = None


class Pause(_Command):
    """Stop learning after the current step; the run keeps its state."""

    type: Literal["pause"]


class Resume(_Command):
    """Continue learning."""

    type: Literal["resume"]


class Step(_Command):
    """Learn exactly ``bytes`` more bytes, then stay paused."""

    type: Literal["step"]
    bytes: int = Field(default=1, ge=1, le=10_000_000, description="bytes to learn before pausing")


class Throttle(_Command):
    """Cap the learning speed; ``max_bytes_per_s`` null removes the cap."""

    type: Literal["throttle"]
    max_bytes_per_s: float | None = Field(
        default=None,
        gt=0,
        le=1e9,
        description="bytes per second at most; null = as fast as possible",
    )


class Reset(_Command):
    """Start the run again from byte 0 with fresh weights and the current settings."""

    type: Literal["reset"]


class SetMechanism(_Command):
    """Turn a mechanism on or off and/or change its parameters (adds it if absent)."""

    type: Literal["mechanism"]
    name: str = Field(
        min_length=1,
        max_length=64,
        description="a name from /api/mechanisms",
        json_schema_extra=_mechanism_names,
    )
    enabled: bool | None = Field(default=None, description="null keeps the current on/off state")
    params: dict[str, bool | int | float | str | None] = Field(
        default_factory=dict, description="fields of the mechanism's config schema"
    )


class SetLR(_Command):
    """Change the base learning rate from the next step on."""

    type: Literal["set_lr"]
    lr: float = Field(gt=0, le=10, description="the new base learning rate")


class Sample(_Command):
    """Generate text from the current model, continuing the stream read so far."""

    type: Literal["sample"]
    prompt: str = Field(default="", max_length=10_000, description="text to continue (UTF-8)")
    length: int = Field(default=200, ge=1, le=10_000_000, description="bytes to generate")
    temperature: float = Field(default=1.0, gt=0, le=100)
    top_k: int = Field(default=0, ge=0, le=256, description="keep the k likeliest bytes; 0 = all")
    top_p: float = Field(default=1.0, gt=0, le=1, description="nucleus sampling mass; 1 = off")
    seed: int | None = Field(
        default=0, ge=0, le=2**53 - 1, description="null = a fresh random seed"
    )


Command = Annotated[
    Pause | Resume | Step | Throttle | Reset | SetMechanism | SetLR | Sample,
    Field(discriminator="type"),
]
COMMAND_TYPES = ("pause", "resume", "step", "throttle", "reset", "mechanism", "set_lr", "sample")
_ADAPTER: TypeAdapter[Any] = TypeAdapter(Command)


class Export(_Command):
    """Server → worker (internal): write one file of the run directory now."""

    type: Literal["export"]
    what: Literal["log", "summary", "checkpoint", "config", "all"]


class StopWorker(_Command):
    """Server → worker (internal): write the run directory (unless ``write`` is false) and
    end."""

    type: Literal["stop"]
    write: bool = True


WorkerCommand = Annotated[
    Pause | Resume | Step | Throttle | Reset | SetMechanism | SetLR | Sample | Export | StopWorker,
    Field(discriminator="type"),
]
"""What the server sends a run's worker: a page's command, or export / stop."""
_WORKER_ADAPTER: TypeAdapter[Any] = TypeAdapter(WorkerCommand)


def parse_worker_command(data: dict[str, Any]) -> Any:
    """A worker's command as its model (:class:`CommandError` naming what is wrong).

    >>> type(parse_worker_command({"type": "export", "what": "log"})).__name__
    'Export'
    """
    try:
        return _WORKER_ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise CommandError(
            f"bad {data.get('type', '?')!r} command: {explain_validation(exc)}"
        ) from None


class CommandError(ValueError):
    """A command that is not valid JSON or does not match any command's schema."""


def explain_validation(exc: ValidationError) -> str:
    """One readable line per problem: ``field: message``."""
    parts = []
    for err in exc.errors()[:5]:
        loc = [str(p) for p in err["loc"] if str(p) not in COMMAND_TYPES]
        where = ".".join(loc) or "command"
        if err["type"] == "finite_number":
            parts.append(f"{where} must be a finite number (not NaN or infinity)")
            continue
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


def parse_command(data: str | bytes | dict[str, Any]) -> Any:
    """Validates a command (JSON text or an already decoded object) into its model.

    Raises :class:`CommandError` with a message a person can act on.
    """
    if isinstance(data, str | bytes):
        if len(data) > MAX_COMMAND_CHARS:
            raise CommandError(
                f"the command is {len(data):,} characters long; at most "
                f"{MAX_COMMAND_CHARS:,} are accepted"
            )
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CommandError(
                f"a command must be a JSON object; could not parse it: {exc}"
            ) from None
        except RecursionError:
            raise CommandError(
                "the command is nested too deeply; a command is a flat JSON object such as "
                '{"type": "pause"}'
            ) from None
    if not isinstance(data, dict):
        raise CommandError('a command must be a JSON object such as {"type": "pause"}')
    kind = data.get("type")
    if kind is None:
        raise CommandError(f'the command has no "type"; valid types: {", ".join(COMMAND_TYPES)}')
    if kind not in COMMAND_TYPES:
        raise CommandError(
            f"unknown command type {kind!r}; valid types: {', '.join(COMMAND_TYPES)}"
        )
    try:
        return _ADAPTER.validate_python(data)
    except ValidationError as exc:
        raise CommandError(f"bad {kind!r} command: {explain_validation(exc)}") from None


# ---------------------------------------------------------------------------- HTTP models


class MechanismEntry(BaseModel):
    """One mechanism of a run: its name (from /api/mechanisms) and its config's fields."""

    model_config = ConfigDict(extra="allow", strict=True)
    name: str = Field(min_length=1, max_length=64, json_schema_extra=_mechanism_names)
    enabled: bool = True


class RunConfigBody(BaseModel):
    """A (partial) run configuration, as in config.json; missing keys take the defaults of
    the preset (``seed`` unless named). The fields of model, optim and learner are those of
    ``mugpt run --help``; the lab checks them and answers 422 naming a bad one."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)
    preset: str | None = Field(
        default=None, max_length=64, description="a named preset", json_schema_extra=_preset_names
    )
    model: dict[str, Any] = Field(default_factory=dict, description='e.g. {"d_model": 32}')
    optim: dict[str, Any] = Field(default_factory=dict, description='e.g. {"lr": 0.003}')
    learner: dict[str, Any] = Field(default_factory=dict, description='e.g. {"update_every": 4}')
    mechanisms: list[MechanismEntry] = Field(default_factory=list, max_length=32)
    stream: str = Field(default="", max_length=100_000, description="a stream spec")
    seed: int = Field(default=0, ge=0, le=2**53 - 1)

    def values(self) -> dict[str, Any]:
        """The keys the request gave (the rest take the preset's defaults)."""
        values = self.model_dump(exclude_unset=True)
        if values.get("preset", "") is None:
            del values["preset"]
        return values


class RunCreate(BaseModel):
    """Body of ``POST /api/runs``: a (partial) run configuration and how to start."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=True)

    config: RunConfigBody = Field(default_factory=RunConfigBody)
    label: str | None = Field(default=None, max_length=80, description="a name shown in the page")
    paused: bool = Field(default=False, description="start paused instead of learning at once")
    max_bytes_per_s: float | None = Field(
        default=None, gt=0, le=1e9, description="initial throttle"
    )


class OpenRunDir(BaseModel):
    """Body of ``POST /api/runs/open``: a finished run directory to view."""

    model_config = ConfigDict(extra="forbid", strict=True)
    path: str = Field(min_length=1, max_length=4096)


class CommandReply(BaseModel):
    """What a command did."""

    ok: bool
    command: str
    request_id: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)


class RunEngine(BaseModel):
    """Which engine a run learns on: ``compiled`` (numba), or the NumPy reference while the
    compiled engine is ``waiting`` (compiling) or ``loading`` for this run; ``reference``
    when it stays there (``detail`` says why)."""

    model_config = ConfigDict(extra="forbid")

    backend: Literal["numpy", "numba"]
    state: Literal["compiled", "waiting", "loading", "reference"]
    detail: str = ""


class RunInfo(BaseModel):
    """One run as the API lists it."""

    id: str
    label: str
    state: Literal["starting", "running", "paused", "finished", "failed", "stopped"]
    error: str | None = None
    readonly: bool = False
    created: float
    config: dict[str, Any]
    cli: str
    params: int
    pos: int = 0
    total: int | None = None
    bpb: float | None = None
    bytes_per_s: float | None = None
    max_bytes_per_s: float | None = None
    stream: dict[str, Any] = Field(default_factory=dict)
    mechanisms: list[dict[str, Any]] = Field(default_factory=list)
    run_dir: str | None = None
    engine: RunEngine | None = None
    architecture: Architecture | None = Field(
        default=None, description="the model diagram's parts, shapes and parameter counts"
    )


class ArchitecturePart(BaseModel):
    """One part of the model diagram (see :mod:`mugpt.serve.diagram`)."""

    model_config = ConfigDict(extra="allow")
    id: str = Field(description="embed, block0 … blockN-1, ln_f or head")
    label: str
    params: int = Field(description="exact parameter count of the part")
    tensors: list[list[Any]] = Field(
        default_factory=list,
        description="[name, shape] of each weight tensor (a block lists them per sub-layer)",
    )
    out: list[int] = Field(description="shape of what the part hands on, (T, C) or (T, V)")


class Architecture(BaseModel):
    """The model's parts in the order data flows through them, with shapes and counts."""

    model_config = ConfigDict(extra="forbid")
    n_layers: int
    d_model: int
    n_heads: int
    head_dim: int
    d_ff: int
    context: int
    vocab: int
    params: int
    parts: list[ArchitecturePart]


class ErrorDetail(BaseModel):
    """Every 4xx answer of the API: one line naming the problem and the fix."""

    detail: str


class ValidationDetail(BaseModel):
    """A 422: one line from the lab's own checks, or the request's schema errors as a list."""

    detail: str | list[dict[str, Any]]


ERROR_DESCRIPTIONS = {
    400: "a host name this lab does not answer to, or a body that cannot be parsed",
    401: "no token: open the start URL, or send 'Authorization: token TOKEN'",
    403: "a wrong token, a foreign page's origin, or a path outside the data folders",
    404: "no such run (or run directory)",
    409: "the run is not live (stopped, failed, or opened from a folder)",
    413: "an upload over the server's limit",
    422: "a request the lab cannot apply (the detail says why and what to change)",
    429: "too many runs at once (--max-runs)",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for the given 4xx codes, plus 400/401/403 of every API route.

    >>> sorted(error_responses(404))
    [400, 401, 403, 404]
    """
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({400, 401, 403, *codes}):
        model = ValidationDetail if code == 422 else ErrorDetail
        out[code] = {"model": model, "description": ERROR_DESCRIPTIONS[code]}
    return out


class UploadInfo(BaseModel):
    """An uploaded text, ready to be a phase: ``spec`` is ``label=file:PATH``."""

    label: str
    source: str
    bytes: int
    spec: str


# ---------------------------------------------------------------------------- messages
#
# What the server sends a page over /ws/runs/{id}, and what a worker sends the server. The
# worker builds plain dicts on its hot path; these models are their contract, checked in the
# tests (and by a worker started with MUGPT_SERVE_CHECK_MESSAGES=1) and published as JSON
# schema at GET /api/protocol.json.

RunState = Literal["starting", "running", "paused", "finished", "failed", "stopped"]


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LossBins(_Message):
    """Per-byte losses in bins: bin i covers bytes [x[i], x[i] + n[i]), with its mean,
    lowest and highest loss (bits), the display EMA at its end, and the updates skipped and
    replay updates made while learning it."""

    x: list[int]
    n: list[int]
    mean: list[float | None]
    min: list[float | None] = Field(default_factory=list)
    max: list[float | None] = Field(default_factory=list)
    ema: list[float | None] = Field(default_factory=list)
    skips: list[int] = Field(default_factory=list)
    replays: list[int] = Field(default_factory=list)
    width: int | None = Field(default=None, description="bytes per bin (history only)")


class AttentionLayer(_Message):
    layer: int
    heads: list[list[list[int]]] = Field(description="(H, T, T) weights times ``scale``")


class AttentionMaps(_Message):
    """Attention of the last window: rows are the positions predicting, columns the
    positions they look at; ``tokens`` are the window's symbols."""

    layers: list[AttentionLayer]
    tokens: list[int]
    scale: int


class HeadLook(_Message):
    back: int = Field(description="how many positions back the head looks most (0 = itself)")
    weight: float = Field(description="the weight of that position")
    entropy_bits: float = Field(description="entropy of the head's attention (0 = one place)")


class LayerView(_Message):
    layer: int
    heads: list[HeadLook]
    attn_rms: float = Field(description="RMS of what attention adds to the residual stream")
    mlp_rms: float = Field(description="RMS of what the MLP adds to the residual stream")
    mlp_active: float = Field(description="share of the MLP's units above zero")


class StreamPoint(_Message):
    after: str
    rms: float


class HeadView(_Message):
    top: int
    p: float
    entropy_bits: float


class ModelView(_Message):
    """The live diagram's data at the last position of the current window."""

    positions: int
    tokens: list[int]
    stream: list[StreamPoint]
    layers: list[LayerView]
    head: HeadView


class ExpertsView(_Message):
    """A mixture's experts on the byte about to be read (see :mod:`mugpt.serve.experts`)."""

    pos: int
    byte: int | None
    names: list[str]
    seen: list[bool]
    weights: list[float]
    weight_set: int
    top: list[int]
    p: list[float] | None = Field(description="each expert's probability of the byte")
    mixed: float | None = Field(description="the mixer's probability of the byte")
    winner: int | None = Field(description="index of the expert that gave the byte most")
    bits: float | None = None
    step: list[tuple[int, int, int]] = Field(
        default_factory=list,
        description="[index, byte, winner] of each byte of the next step (the first is pos)",
    )


class Baselines(_Message):
    n: int = Field(description="bytes compressed")
    bpb: dict[str, float | None]


class UpdateMessage(_Message):
    """What happened since the previous update (optional fields come when they changed)."""

    type: Literal["update"]
    generation: int
    state: RunState
    pos: int
    total: int
    bpb: float | None
    bytes_per_s: float | None
    max_bytes_per_s: float | None
    loss: LossBins
    text: list[tuple[int, int, float | None]] = Field(description="[index, byte, bits]")
    lr: float | None
    base_lr: float | None
    grad_norm: float | None
    counters: dict[str, Any]
    events: list[dict[str, Any]]
    events_dropped: int
    mechanisms: list[dict[str, Any]] | None = None
    config: dict[str, Any] | None = None
    topk: list[tuple[int, float]] | None = Field(default=None, description="[byte, p] x 10")
    next_byte: int | None = None
    attention: AttentionMaps | None = None
    model_view: ModelView | None = None
    experts: ExpertsView | None = None
    phases: list[dict[str, Any]] | None = None
    baselines: Baselines | None = None
    engine: RunEngine | None = None


class HelloMessage(_Message):
    """The run and its history: a page draws everything from it, then follows updates."""

    type: Literal["hello"]
    run: RunInfo
    history: dict[str, Any] = Field(
        description="loss (LossBins with width), bpb, lr, baselines, alarms, events, text, "
        "latest (the last values of an update's fields)"
    )
    traceback: str | None = None


class ReplyMessage(_Message):
    type: Literal["reply"]
    ok: Literal[True]
    command: str
    request_id: str | None = None
    result: dict[str, Any] = Field(default_factory=dict)


class ErrorMessage(_Message):
    type: Literal["error"]
    message: str
    command: str | None = None
    request_id: str | None = None


class StateMessage(_Message):
    type: Literal["state"]
    state: RunState
    error: str | None = None
    traceback: str | None = None


ServerMessage = Annotated[
    HelloMessage | UpdateMessage | ReplyMessage | ErrorMessage | StateMessage,
    Field(discriminator="type"),
]
"""Every message a page receives on /ws/runs/{id}."""


class ReadyMessage(_Message):
    """Worker → server: the worker built its stream and model."""

    type: Literal["ready"]
    stream: dict[str, Any]
    total: int
    params: int
    config: dict[str, Any]
    mechanisms: list[dict[str, Any]]
    state: RunState
    engine: RunEngine | None = None


class ResetMessage(_Message):
    """Worker → server: the run started again from byte 0."""

    type: Literal["reset"]
    generation: int
    state: RunState


class WorkerReply(_Message):
    """Worker → server: the answer to the command numbered ``rid``."""

    type: Literal["reply"]
    rid: int | None
    ok: bool
    command: str
    result: dict[str, Any] | None = None
    error: str | None = None


class FailedMessage(_Message):
    """Worker → server: the run ended with an error."""

    type: Literal["failed"]
    error: str
    traceback: str | None = None


WorkerMessage = Annotated[
    ReadyMessage | UpdateMessage | ResetMessage | WorkerReply | FailedMessage,
    Field(discriminator="type"),
]
"""Every message a worker sends the server."""

SERVER_MESSAGES: TypeAdapter[Any] = TypeAdapter(ServerMessage)
WORKER_MESSAGES: TypeAdapter[Any] = TypeAdapter(WorkerMessage)


class EngineStatus(BaseModel):
    """Whether the engine the workers start from is ready (``GET /api/status``)."""

    state: Literal["starting", "compiling", "ready", "failed", "unknown"]
    stage: str = Field(description="what is happening now, in words")
    step: int = Field(description="stages done")
    steps: int = Field(description="stages in all")
    elapsed_s: float | None = Field(description="seconds since the engine began loading")
    seconds: float | None = Field(default=None, description="how long loading took, once ready")
    kernels: int = Field(default=0, description="kernels compiled so far (0: loaded from cache)")
    current: str | None = Field(default=None, description="the kernel compiled last")
    remaining_s: float | None = Field(
        default=None, description="estimated seconds until ready, while compiling"
    )
    error: str | None = Field(default=None, description="why compiling failed")


class ServerStatus(BaseModel):
    """Answer of ``GET /api/status``: what the server is doing, readable before any run."""

    engine: EngineStatus
    runs: dict[str, int] = Field(description="runs by state")
    message: str = Field(description="one line for people")


def protocol_schema() -> dict[str, Any]:
    """JSON schema of every message: page → server commands, server → page messages and
    worker → server messages (each a union discriminated by ``type``)."""
    return {
        "title": "μGPT lab wire protocol",
        "description": "Messages of /ws/runs/{id} (JSON text frames, each an object with a "
        "'type'). commands: page → server; server_messages: server → page; worker_messages: "
        "a run's worker process → the server (internal).",
        "commands": _ADAPTER.json_schema(),
        "server_messages": SERVER_MESSAGES.json_schema(),
        "worker_messages": WORKER_MESSAGES.json_schema(),
    }


def check_message(message: dict[str, Any], worker: bool = False) -> Any:
    """Validates a message against its model (raises pydantic's ValidationError)."""
    return (WORKER_MESSAGES if worker else SERVER_MESSAGES).validate_python(message)


# ---------------------------------------------------------------------------- JSON safety


def clean(value: Any) -> Any:
    """JSON-safe copy: numpy scalars/arrays become Python values, NaN and ±inf become None.

    >>> clean({"a": np.float32(1.5), "b": [float("nan"), np.int64(3)]})
    {'a': 1.5, 'b': [None, 3]}
    """
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.ndarray):
        return clean(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(message: dict[str, Any]) -> str:
    """Compact JSON text of an already clean message."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)
