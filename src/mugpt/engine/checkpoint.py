"""Checkpoints: everything needed to continue a run bit for bit, written atomically.

A checkpoint is an uncompressed ``.npz`` (a zip whose members carry CRC-32s, so corruption is
caught on load) holding a JSON header and the arrays: parameters, optimiser moments, the
symbol history, the losses so far and each mechanism's arrays.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.errors import CheckpointError, MugptError
from mugpt.mechanisms import make_mechanism
from mugpt.model import ModelConfig, OptimConfig

FORMAT = "mugpt-checkpoint"
VERSION = 1


def _split_state(prefix: str, state: dict[str, Any], arrays: dict[str, np.ndarray]) -> dict:
    """Moves numpy arrays of a state dict into ``arrays``; returns the JSON-able rest."""
    rest: dict[str, Any] = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            arrays[f"{prefix}{key}"] = value
        elif isinstance(value, dict):
            rest[key] = {"__dict__": _split_state(f"{prefix}{key}/", value, arrays)}
        else:
            rest[key] = value
    return rest


def _join_state(prefix: str, rest: dict[str, Any], arrays: Any) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for key, value in rest.items():
        if isinstance(value, dict) and "__dict__" in value:
            state[key] = _join_state(f"{prefix}{key}/", value["__dict__"], arrays)
        else:
            state[key] = value
    for name in arrays.files:
        if name.startswith(prefix) and "/" not in name[len(prefix) :]:
            state[name[len(prefix) :]] = arrays[name]
    return state


def atomic_write_bytes(path: str | Path, payload: bytes) -> None:
    """Writes ``payload`` to a temporary file beside ``path`` and renames it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(learner: Any, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Saves ``learner`` (with ``extra`` JSON, e.g. the stream spec) atomically to ``path``."""
    arrays: dict[str, np.ndarray] = {
        "params": learner.model.params.flat,
        "history": learner.history.copy(),
        "losses": learner.losses,
    }
    opt_state = _split_state("optim/", learner.optimizer.state_dict(), arrays)
    mechs = []
    for i, mech in enumerate(learner.mechanisms):
        mechs.append(
            {
                "name": mech.name,
                "enabled": mech.enabled,
                "config": mech.config.model_dump(),
                "state": _split_state(f"mech{i}/", mech.state_dict(), arrays),
            }
        )
    header = {
        "format": FORMAT,
        "version": VERSION,
        "config": learner.config_dict(),
        "optimizer": opt_state,
        "mechanisms": mechs,
        "position": learner.position,
        "lr": learner.lr,
        "counters": learner.counters.to_dict(),
        "rng": learner.rng.bit_generator.state,
        "events": learner.events,
        "extra": extra or {},
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue())


def read_checkpoint(path: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Returns (header, arrays), or raises CheckpointError naming what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}  # reading checks each CRC
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt or truncated ({type(exc).__name__}: {exc}); "
            "use an intact copy or start the run again"
        ) from None
    if "header" not in arrays:
        raise CheckpointError(f"{str(path)!r} is not a μGPT checkpoint (no header)")
    try:
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"checkpoint {str(path)!r} has a corrupt header") from None
    if header.get("format") != FORMAT:
        raise CheckpointError(f"{str(path)!r} is not a μGPT checkpoint")
    if header.get("version") != VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {header.get('version')}; "
            f"this mugpt reads version {VERSION}"
        )
    return header, arrays


def load_checkpoint(path: str | Path) -> Any:
    """Rebuilds the Learner saved at ``path``; continuing it reproduces the straight run.

    Example:
        >>> import tempfile, os
        >>> from mugpt.engine import Learner
        >>> learner = Learner()
        >>> _ = learner.step(b"hello")
        >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
        >>> save_checkpoint(learner, path)
        >>> restored = load_checkpoint(path)
        >>> restored.position, bool((restored.losses == learner.losses).all())
        (5, True)
    """
    from mugpt.engine.learner import Learner, LearnerConfig

    header, arrays = read_checkpoint(path)
    try:
        cfg = header["config"]
        mechanisms: list[Any] = []
        for entry in header["mechanisms"]:
            mech = make_mechanism((entry["name"], entry["config"]))
            mech.enabled = entry["enabled"]
            mech.load_state_dict(
                _join_state(f"mech{len(mechanisms)}/", entry["state"], _Files(arrays))
            )
            mechanisms.append(mech)
        learner = Learner(
            ModelConfig.from_dict(cfg["model"]),
            OptimConfig.from_dict(cfg["optim"]),
            mechanisms,
            LearnerConfig.from_dict(cfg["learner"]),
        )
        params = arrays["params"]
        if params.shape != learner.model.params.flat.shape:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: parameter count {params.size} does not match its "
                f"config ({learner.model.params.flat.size})"
            )
        learner.model.params.flat[:] = params
        learner.optimizer.load_state_dict(
            _join_state("optim/", header["optimizer"], _Files(arrays))
        )
        history = arrays["history"]
        learner._hist[: history.size] = history
        learner._hist_len = int(history.size)
        learner._loss_log = [arrays["losses"]] if arrays["losses"].size else []
        learner.position = int(header["position"])
        learner.lr = float(header["lr"])
        for key, value in header["counters"].items():
            setattr(learner.counters, key, int(value))
        learner.rng.bit_generator.state = header["rng"]
        learner.events = list(header["events"])
        learner.checkpoint_extra = header.get("extra", {})
    except MugptError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is incomplete or from an incompatible version "
            f"({type(exc).__name__}: {exc})"
        ) from None
    return learner


class _Files:
    """Adapts a dict of arrays to the ``.files`` / ``[]`` interface of an npz."""

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        self._arrays = arrays
        self.files = list(arrays)

    def __getitem__(self, name: str) -> np.ndarray:
        return self._arrays[name]
