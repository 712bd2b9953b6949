"""Argument groups shared by the commands that build a run (run, ablate, compress, bench)."""

from __future__ import annotations

import argparse
from typing import Any

from mugpt.engine.config import PRESETS, RunConfig, read_config_file
from mugpt.errors import ConfigError

# flag → (section, key, type)
_MODEL_FLAGS: list[tuple[str, str, type, str]] = [
    ("--layers", "n_layers", int, "transformer blocks (seed: 1)"),
    ("--d-model", "d_model", int, "width of the residual stream (seed: 16)"),
    ("--heads", "n_heads", int, "attention heads; must divide d_model (seed: 4)"),
    ("--d-ff", "d_ff", int, "MLP hidden width (seed: 64)"),
    ("--context", "context", int, "symbols the model sees, T (seed: 32)"),
    ("--activation", "activation", str, "relu | gelu | silu (seed: relu)"),
    ("--init-std", "init_std", float, "std of the initial weights (seed: 0.08)"),
    ("--dtype", "dtype", str, "float32 | float64 (seed: float32)"),
]
_OPTIM_FLAGS: list[tuple[str, str, type, str]] = [
    ("--optimizer", "name", str, "adam | sgd (seed: sgd, seed-adam: adam)"),
    ("--lr", "lr", float, "learning rate (seed: 0.02, seed-adam: 0.0003)"),
    ("--beta1", "beta1", float, "Adam β1 (seed-adam: 0.9)"),
    ("--beta2", "beta2", float, "Adam β2 (seed-adam: 0.999)"),
    ("--weight-decay", "weight_decay", float, "decoupled weight decay (seed: 0)"),
    ("--momentum", "momentum", float, "SGD momentum (seed: 0)"),
    ("--grad-clip", "grad_clip", float, "global-norm clip, 0 = off (seed: 1.0)"),
]
_LEARNER_FLAGS: list[tuple[str, str, type, str]] = [
    ("--update-every", "update_every", int, "k: bytes per step before one update (seed: 1)"),
    (
        "--window-loss",
        "window_loss",
        str,
        "all | new: train on every window position or only the k newest (seed: all)",
    ),
    (
        "--batch-streams",
        "batch_streams",
        int,
        "B: learn B contiguous sub-streams as one batch, each strictly prequential (seed: 1)",
    ),
    (
        "--substream-bytes",
        "substream_bytes",
        int,
        "S: with B > 1, read the stream in blocks of B·S bytes, each split into B sub-streams "
        "(0 = split the whole run once; seed: 0)",
    ),
    ("--backend", "backend", str, "auto | numba | numpy: compiled kernels or the NumPy "
     "reference (seed: auto = numba when installed)"),
]  # fmt: skip


#: Each configuration section with the flags that set its keys.
_SECTION_FLAGS = (("model", _MODEL_FLAGS), ("optim", _OPTIM_FLAGS), ("learner", _LEARNER_FLAGS))


def _metavar(typ: type) -> str:
    return {int: "N", float: "X"}.get(typ, "NAME")


def _dest(flag: str) -> str:
    return "cfg_" + flag.lstrip("-").replace("-", "_")


def add_run_config_args(
    parser: argparse.ArgumentParser, mechanisms: bool = True, default_preset: str = "seed"
) -> None:
    """Adds --preset, --config, --seed and the model/optimiser/learner/mechanism flags
    (``default_preset``: the preset the command takes without one, for the help text)."""
    g = parser.add_argument_group(
        "configuration (flags override --config, which overrides --preset)"
    )
    g.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default=None,
        help=f"a named starting configuration (default: {default_preset}"
        + (", the original μGPT)" if default_preset == "seed" else ")"),
    )
    g.add_argument(
        "--config",
        metavar="FILE",
        help="TOML or JSON file with [model], [optim], [learner], [[mechanisms]], stream and seed",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seeds init, mechanisms and generated streams (default 0)",
    )
    m = parser.add_argument_group("model")
    for flag, _key, typ, text in _MODEL_FLAGS:
        m.add_argument(
            flag, dest=_dest(flag), type=typ, default=None, help=text, metavar=_metavar(typ)
        )
    m.add_argument(
        "--tied-head",
        dest="cfg_tied_head",
        action="store_true",
        default=None,
        help="share the embedding and output matrices",
    )
    o = parser.add_argument_group("optimiser")
    for flag, _key, typ, text in _OPTIM_FLAGS:
        o.add_argument(
            flag, dest=_dest(flag), type=typ, default=None, help=text, metavar=_metavar(typ)
        )
    lg = parser.add_argument_group("protocol")
    for flag, _key, typ, text in _LEARNER_FLAGS:
        lg.add_argument(
            flag, dest=_dest(flag), type=typ, default=None, help=text, metavar=_metavar(typ)
        )
    lg.add_argument(
        "--freeze-network",
        dest="cfg_freeze_network",
        action="store_true",
        default=None,
        help="the network's weights never change (no backward pass, no optimiser step, no "
        "replay); mechanisms such as ngram_mix still learn. bpb(frozen) - bpb(normal) is "
        "what the network's learning is worth",
    )
    if mechanisms:
        from mugpt.mechanisms import available

        parser.add_argument(
            "--mech",
            action="append",
            default=[],
            metavar="NAME[:k=v,...]",
            help="switch a mechanism on, e.g. --mech replay:capacity=512 (repeatable); names: "
            + ", ".join(available()),
        )


def run_config_from_args(args: argparse.Namespace, default_preset: str = "seed") -> RunConfig:
    """Preset, then --config file, then flags, validated into a RunConfig; without --preset
    (on the command line or in the --config file) the preset is ``default_preset``."""
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values = read_config_file(args.config)
    if getattr(args, "preset", None):
        values["preset"] = args.preset
    values.setdefault("preset", default_preset)
    if getattr(args, "seed", None) is not None:
        values["seed"] = args.seed
    for section, flags in _SECTION_FLAGS:
        for flag, key, _typ, _text in flags:
            value = getattr(args, _dest(flag), None)
            if value is not None:
                values.setdefault(section, {})[key] = value
    if getattr(args, "cfg_tied_head", None):
        values.setdefault("model", {})["tied_head"] = True
    if getattr(args, "cfg_freeze_network", None):
        values.setdefault("learner", {})["freeze_network"] = True
    mechs = getattr(args, "mech", None) or []
    if mechs:
        from mugpt.mechanisms import available, parse_mech_spec

        entries = list(values.get("mechanisms", []))
        names = available()
        for spec in mechs:
            name, params = parse_mech_spec(spec)
            if name not in names:
                raise ConfigError(f"unknown mechanism {name!r}; choose one of {names}")
            entries = [e for e in entries if e.get("name") != name] + [{"name": name, **params}]
        values["mechanisms"] = entries
    cfg = RunConfig.from_dict(values)
    cfg.build_mechanisms()  # validate mechanism parameters now, before any work starts
    return cfg


def resume_conflicts(args: argparse.Namespace, saved: dict[str, Any]) -> list[str]:
    """The configuration flags given with ``--resume`` that disagree with the checkpoint.

    ``saved`` is the checkpoint's ``RunConfig.to_dict()``. A flag equal to the saved value is
    no conflict; ``--preset``, ``--config`` and ``--mech`` always are (a resumed run keeps
    its configuration).

    >>> ns = argparse.Namespace(cfg_d_model=32, cfg_lr=None, seed=0)
    >>> resume_conflicts(ns, RunConfig().to_dict())
    ['--d-model 32 (the checkpoint has 16)']
    """
    conflicts: list[str] = []
    for flag in ("preset", "config"):
        if getattr(args, flag, None):
            conflicts.append(f"--{flag} {getattr(args, flag)}")
    for spec in getattr(args, "mech", None) or []:
        conflicts.append(f"--mech {spec}")
    seed = getattr(args, "seed", None)
    if seed is not None and seed != saved.get("seed"):
        conflicts.append(f"--seed {seed} (the checkpoint has {saved.get('seed')})")
    for section, flags in _SECTION_FLAGS:
        for flag, key, _typ, _text in flags:
            value = getattr(args, _dest(flag), None)
            old = saved.get(section, {}).get(key)
            if value is not None and value != old:
                conflicts.append(f"{flag} {value} (the checkpoint has {old})")
    if getattr(args, "cfg_tied_head", None) and not saved.get("model", {}).get("tied_head"):
        conflicts.append("--tied-head (the checkpoint has an untied head)")
    if getattr(args, "cfg_freeze_network", None) and not saved.get("learner", {}).get(
        "freeze_network"
    ):
        conflicts.append("--freeze-network (the checkpoint's network learns)")
    return conflicts
