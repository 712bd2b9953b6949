"""Sweep files: a base run config, a grid and/or a seeded random search, times seeds.

A sweep file is TOML::

    name = "small"                 # optional; default: the file's name without .toml
    seeds = 3                      # 0, 1, 2 — or a list such as [0, 7, 42]
    budget = "20k"                 # bytes each run reads (max_bytes); default: the whole stream
    checkpoint_seconds = 30        # how often a run saves its checkpoint

    [base]                         # a run config (like `mugpt run --config`), shared by all runs
    stream = "prose=stdlib-prose:10k,code=stdlib-code:10k"
    learner.update_every = 16

    [grid]                         # every combination of these values
    mechanisms = [[], [{ name = "replay" }]]
    "optim.lr" = [0.003, 0.01]

    [grid.stream]                  # a table names each value (the name is what tables show)
    prose-code = "prose=stdlib-prose:10k,code=stdlib-code:10k"

    [random]                       # seeded random search, crossed with the grid
    samples = 4
    seed = 0
    "model.d_model" = { choice = [16, 32] }
    "optim.beta1" = { uniform = [0.8, 0.95] }
    "optim.lr" = { log_uniform = [1e-3, 3e-2] }
    "model.n_layers" = { int = [1, 3] }       # inclusive

Keys are the dotted keys of :meth:`RunConfig.with_overrides`: ``model.*``, ``optim.*``,
``learner.*``, ``mechanisms`` (a list of ``{name = ..., params...}`` tables), ``stream`` and
``preset``. Every run is identified by :func:`run_key` — the hash of its full config and its
budget — so the same run is never computed twice.

Every mistake is a :class:`ConfigError` that names the offending key, e.g.
``sweep.toml: grid.optim.lr[1] = 'fast': [optim] lr must be a number``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mugpt.engine.config import RunConfig
from mugpt.errors import ConfigError, MugptError

TOP_KEYS = (
    "name",
    "description",
    "seeds",
    "budget",
    "checkpoint_seconds",
    "base",
    "grid",
    "random",
)
NESTED_SECTIONS = ("model", "optim", "learner")
LEAF_KEYS = ("mechanisms", "stream", "preset")
DISTRIBUTIONS = ("choice", "uniform", "log_uniform", "int")
MAX_RUNS = 100_000


@dataclass(frozen=True)
class Axis:
    """One swept key with its values and the names tables show for them."""

    key: str  # dotted config key, e.g. "optim.lr"
    values: tuple[Any, ...]
    labels: tuple[str, ...]


@dataclass(frozen=True)
class Distribution:
    """A random-search dimension: ``kind`` is choice, uniform, log_uniform or int."""

    key: str
    kind: str
    args: tuple[Any, ...]

    def draw(self, rng: np.random.Generator) -> Any:
        if self.kind == "choice":
            return self.args[int(rng.integers(len(self.args)))]
        lo, hi = self.args
        if self.kind == "int":
            return int(rng.integers(int(lo), int(hi) + 1))
        if self.kind == "uniform":
            x = float(rng.uniform(lo, hi))
        else:
            x = float(math.exp(rng.uniform(math.log(lo), math.log(hi))))
        return float(f"{x:.4g}")  # readable in tables; the drawn value is the one run


@dataclass(frozen=True)
class PlannedRun:
    """One run of a sweep: a config point, a seed and a budget."""

    run_id: str  # run_key(config, max_bytes)
    point_id: str  # the same for every seed of one config point
    seed: int
    config: dict[str, Any]  # RunConfig.to_dict()
    max_bytes: int | None
    values: dict[str, Any]  # swept key -> value
    labels: dict[str, str]  # swept key -> name shown in tables

    @property
    def label(self) -> str:
        return point_label(self.labels)


@dataclass
class SweepSpec:
    """A parsed sweep file. :meth:`plan` expands it into runs.

    Example:
        >>> spec = SweepSpec.from_dict({"seeds": 2, "budget": "2k",
        ...     "grid": {"optim.lr": [0.003, 0.01]}}, source="demo")
        >>> [(r.labels["optim.lr"], r.seed, r.max_bytes) for r in spec.plan()]
        [('0.003', 0, 2000), ('0.003', 1, 2000), ('0.01', 0, 2000), ('0.01', 1, 2000)]
        >>> SweepSpec.from_dict({"grid": {"optim.lrr": [0.01]}}, source="demo")
        Traceback (most recent call last):
        ...
        mugpt.errors.ConfigError: demo: grid.optim.lrr[0] = 0.01: unknown optim key(s) ['lrr']; allowed keys are ['name', 'lr', 'beta1', 'beta2', 'eps', 'weight_decay', 'momentum', 'grad_clip']
    """

    name: str
    base: dict[str, Any] = field(default_factory=dict)
    seeds: tuple[int, ...] = (0,)
    budget: int | None = None
    checkpoint_seconds: float = 30.0
    axes: tuple[Axis, ...] = ()
    random: tuple[Distribution, ...] = ()
    samples: int = 0
    random_seed: int = 0
    description: str = ""
    source: str = "sweep"
    raw: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ parsing

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        """Reads and checks a TOML sweep file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"sweep file {str(path)!r} does not exist or is not a file")
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read sweep file {str(path)!r}: {exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"sweep file {str(path)!r} is not valid TOML: {exc}") from None
        raw.setdefault("name", path.stem)
        return cls.from_dict(raw, source=path.name)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "sweep") -> SweepSpec:
        """Checks a parsed sweep file; errors name ``source`` and the key path."""

        def fail(key: str, message: str) -> ConfigError:
            return ConfigError(f"{source}: {key}: {message}")

        if not isinstance(raw, dict):
            raise ConfigError(f"{source}: a sweep file must be a table of keys")
        unknown = [k for k in raw if k not in TOP_KEYS]
        if unknown:
            raise fail(unknown[0], f"unknown key; allowed top-level keys: {list(TOP_KEYS)}")
        name = raw.get("name", "sweep")
        if not isinstance(name, str) or not name.strip() or "/" in name:
            raise fail("name", f"{name!r} must be a non-empty string without '/'")
        description = raw.get("description", "")
        if not isinstance(description, str):
            raise fail("description", "must be a string")
        seeds = _parse_seeds(raw.get("seeds", 1), fail)
        budget = _parse_budget(raw.get("budget"), fail)
        every = raw.get("checkpoint_seconds", 30.0)
        if isinstance(every, bool) or not isinstance(every, int | float) or not every > 0:
            raise fail("checkpoint_seconds", f"{every!r} must be a positive number of seconds")

        base = raw.get("base", {})
        if not isinstance(base, dict):
            raise fail("base", "must be a table holding a run config ([base], [base.model], ...)")
        if "seed" in base:
            raise fail("base.seed", "set the seeds with the top-level key seeds = N or [..]")
        try:
            base_cfg = RunConfig.from_dict(base)
        except MugptError as exc:
            raise fail("base", str(exc)) from None
        _check_run_config(base_cfg, lambda msg: fail("base", msg))

        axes = _parse_grid(raw.get("grid", {}), base_cfg, fail)
        samples, random_seed, dists = _parse_random(raw.get("random", {}), base_cfg, fail)
        both = {a.key for a in axes} & {d.key for d in dists}
        if both:
            key = sorted(both)[0]
            raise fail(f"random.{key}", "is also in [grid]; sweep each key in one place only")
        spec = cls(
            name=name.strip(),
            base=base,
            seeds=seeds,
            budget=budget,
            checkpoint_seconds=float(every),
            axes=tuple(axes),
            random=tuple(dists),
            samples=samples,
            random_seed=random_seed,
            description=description,
            source=source,
            raw=raw,
        )
        spec.plan()  # checks every combination now, before any work starts
        return spec

    # ------------------------------------------------------------------ expansion

    def points(self) -> list[tuple[dict[str, Any], dict[str, str]]]:
        """Config points (values, labels) in order: the grid crossed with random samples."""
        grid: list[tuple[dict[str, Any], dict[str, str]]] = [({}, {})]
        if self.axes:
            grid = []
            for combo in itertools.product(*(range(len(a.values)) for a in self.axes)):
                values = {a.key: a.values[i] for a, i in zip(self.axes, combo)}
                labels = {a.key: a.labels[i] for a, i in zip(self.axes, combo)}
                grid.append((values, labels))
        if not self.random:
            return grid
        rng = np.random.default_rng(self.random_seed)
        draws = []
        for _ in range(self.samples):
            values = {d.key: d.draw(rng) for d in self.random}
            draws.append((values, {k: value_label(k, v) for k, v in values.items()}))
        return [({**gv, **rv}, {**gl, **rl}) for gv, gl in grid for rv, rl in draws]

    def plan(self) -> list[PlannedRun]:
        """Every run of the sweep: points × seeds, duplicates (same run key) removed."""
        base = RunConfig.from_dict(self.base)
        points = self.points()
        if len(points) * len(self.seeds) > MAX_RUNS:
            raise ConfigError(
                f"{self.source}: the sweep has {len(points) * len(self.seeds):,} runs; "
                f"at most {MAX_RUNS:,} are allowed — shrink the grid or the samples"
            )
        runs: list[PlannedRun] = []
        seen: set[str] = set()
        for values, labels in points:
            where = f"grid point [{point_label(labels) or 'base'}]"
            try:
                cfg0 = base.with_overrides({**values, "seed": 0})
            except MugptError as exc:
                raise ConfigError(f"{self.source}: {where}: {exc}") from None
            _check_run_config(cfg0, lambda msg, w=where: ConfigError(f"{self.source}: {w}: {msg}"))
            cfg0 = cfg0.replace(mechanisms=full_mechanisms(cfg0))
            point_id = run_key(cfg0, self.budget)
            for seed in self.seeds:
                cfg = cfg0.with_overrides({"seed": seed})
                rid = run_key(cfg, self.budget)
                if rid in seen:
                    continue
                seen.add(rid)
                runs.append(
                    PlannedRun(
                        rid, point_id, seed, cfg.to_dict(), self.budget, dict(values), dict(labels)
                    )
                )
        return runs

    def to_json(self) -> str:
        """The sweep file's content as JSON (kept in the results store)."""
        return json.dumps(self.raw, sort_keys=True, default=str)


# ---------------------------------------------------------------------- helpers


def run_key(cfg: RunConfig, max_bytes: int | None) -> str:
    """The identity of a run: ``RunConfig.digest()``, combined with its byte budget if any.

    Example:
        >>> cfg = RunConfig()
        >>> run_key(cfg, None) == cfg.digest(), run_key(cfg, 1000) == run_key(cfg, 2000)
        (True, False)
    """
    digest = cfg.digest()
    if max_bytes is None:
        return digest
    return hashlib.sha256(f"{digest}|max_bytes={max_bytes}".encode()).hexdigest()[:16]


def full_mechanisms(cfg: RunConfig) -> list[dict[str, Any]]:
    """The mechanisms of ``cfg`` with every parameter written out, defaults included, so a
    run's key and its config.json change when a mechanism's defaults do.

    >>> full_mechanisms(RunConfig.from_dict({"mechanisms": [{"name": "replay"}]}))[0]["name"]
    'replay'
    """
    out = []
    for entry, mech in zip(cfg.mechanisms, cfg.build_mechanisms()):
        full = {"name": mech.name, **mech.config.model_dump()}
        if "enabled" in entry:
            full["enabled"] = entry["enabled"]
        out.append(full)
    return out


def point_label(labels: dict[str, str]) -> str:
    """``key=label`` pairs of a point, e.g. ``mechanisms=replay, optim.lr=0.01``."""
    return ", ".join(f"{k}={v}" for k, v in labels.items())


def mechanisms_label(mechs: list[dict[str, Any]]) -> str:
    """``baseline`` for none, else names joined by ``+`` with parameters in brackets.

    >>> mechanisms_label([]), mechanisms_label([{"name": "replay", "capacity": 64}, {"name": "cache"}])
    ('baseline', 'replay(capacity=64)+cache')
    """
    if not mechs:
        return "baseline"
    parts = []
    for m in mechs:
        params = {k: v for k, v in m.items() if k != "name"}
        inner = ",".join(f"{k}={_short(v)}" for k, v in params.items())
        parts.append(f"{m.get('name')}({inner})" if inner else str(m.get("name")))
    return "+".join(parts)


def stream_label(spec: str) -> str:
    """A short name for a stream spec: ``default``, or its phase labels joined by ``+``."""
    if not spec:
        return "default"
    try:
        from mugpt.corpus import parse_spec

        labels = [p.label for p in parse_spec(spec)]
    except MugptError:
        return spec
    text = "+".join(labels)
    return text if len(text) <= 48 else text[:45] + "..."


def value_label(key: str, value: Any) -> str:
    """How a swept value is shown in tables and plots."""
    if key == "mechanisms" and isinstance(value, list):
        return mechanisms_label(value)
    if key == "stream" and isinstance(value, str):
        return stream_label(value)
    return _short(value)


def _short(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, int | str):
        return str(value)
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _literal(value: Any) -> str:
    """A value as the sweep file spells it (strings quoted, numbers bare)."""
    return json.dumps(value, separators=(", ", " = "), default=str)


def _parse_seeds(value: Any, fail: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise fail("seeds", f"{value} must be at least 1 (the number of seeds 0..N-1)")
        return tuple(range(value))
    if isinstance(value, list) and value:
        for i, s in enumerate(value):
            if isinstance(s, bool) or not isinstance(s, int) or s < 0:
                raise fail(f"seeds[{i}]", f"{s!r} must be a non-negative integer")
        if len(set(value)) != len(value):
            raise fail("seeds", f"{value} lists a seed twice")
        return tuple(value)
    raise fail("seeds", f"{value!r} must be a count (seeds = 3) or a list (seeds = [0, 7])")


def _parse_budget(value: Any, fail: Any) -> int | None:
    if value is None:
        return None
    from mugpt.corpus import parse_size

    if isinstance(value, int) and not isinstance(value, bool):
        size: int | None = value
    elif isinstance(value, str):
        size = parse_size(value)
    else:
        size = None
    if size is None or size < 1:
        raise fail("budget", f'{value!r} is not a number of bytes; write e.g. 20000 or "20k"')
    return size


def _flatten_grid(grid: dict[str, Any], fail: Any) -> list[tuple[str, Any]]:
    """``[grid.optim] lr = [...]`` and ``optim.lr = [...]`` both become ``("optim.lr", [...])``."""
    out: list[tuple[str, Any]] = []
    for key, value in grid.items():
        if key in NESTED_SECTIONS and isinstance(value, dict):
            for sub, sub_value in value.items():
                out.append((f"{key}.{sub}", sub_value))
        else:
            out.append((key, value))
    return out


def _check_key(path: str, key: str, fail: Any) -> None:
    section, dot, sub = key.partition(".")
    if section == "seed":
        raise fail(path, "seeds are swept with the top-level key seeds = N or [..]")
    if section in NESTED_SECTIONS:
        if not dot or not sub:
            raise fail(path, f"name a key inside [{section}], e.g. {section}.<key>")
        return
    if section in LEAF_KEYS and not dot:
        return
    raise fail(
        path,
        "unknown config key; sweep model.<key>, optim.<key>, learner.<key>, mechanisms, "
        "stream or preset",
    )


def _check_value(base: RunConfig, key: str, value: Any, fail: Any, path: str) -> None:
    try:
        cfg = base.with_overrides({key: value})
    except MugptError as exc:
        raise fail(path, str(exc)) from None
    _check_run_config(cfg, lambda msg: fail(path, msg))


def _check_run_config(cfg: RunConfig, fail: Any) -> None:
    """What RunConfig.from_dict cannot see alone: mechanisms, the stream spec, k ≤ context."""
    try:
        cfg.build_mechanisms()
    except MugptError as exc:
        raise fail(str(exc)) from None
    names = [m["name"] for m in cfg.mechanisms]
    if len(set(names)) != len(names):
        raise fail(f"each mechanism may appear once; got {names}")
    if cfg.stream:
        from mugpt.corpus import parse_spec

        try:
            phases = parse_spec(cfg.stream)
        except MugptError as exc:
            raise fail(str(exc)) from None
        for ph in phases:
            kind, _, arg = ph.source.partition(":")
            if kind in ("file", "dir") and not Path(arg).exists():
                raise fail(f"stream source {ph.source!r} does not exist; check the path")
    if cfg.learner.update_every > cfg.model.context:
        raise fail(
            f"learner.update_every={cfg.learner.update_every} must not exceed model.context="
            f"{cfg.model.context}"
        )


def _parse_grid(grid: Any, base: RunConfig, fail: Any) -> list[Axis]:
    if not isinstance(grid, dict):
        raise fail("grid", "must be a table of key = [values]")
    axes = []
    for key, spec in _flatten_grid(grid, fail):
        path = f"grid.{key}"
        _check_key(path, key, fail)
        if isinstance(spec, dict):
            if not spec:
                raise fail(path, "give at least one name = value")
            labels, values = list(spec), list(spec.values())
        elif isinstance(spec, list):
            if not spec:
                raise fail(path, "give at least one value")
            values = spec
            labels = [value_label(key, v) for v in values]
        else:
            raise fail(path, f"{spec!r} must be a list of values (or a table of name = value)")
        for i, v in enumerate(values):
            where = f"{path}.{labels[i]}" if isinstance(spec, dict) else f"{path}[{i}]"
            shown = where if isinstance(spec, dict) else f"{where} = {_literal(v)}"
            _check_value(base, key, v, fail, shown)
        if len(set(labels)) != len(labels):
            raise fail(path, f"two values show as the same name {labels}; name them in a table")
        axes.append(Axis(key, tuple(values), tuple(labels)))
    return axes


def _parse_random(random: Any, base: RunConfig, fail: Any) -> tuple[int, int, list[Distribution]]:
    if not isinstance(random, dict):
        raise fail("random", "must be a table: samples = N, seed = S, key = {kind = [...]}")
    if not random:
        return 0, 0, []
    samples = random.get("samples")
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise fail("random.samples", f"{samples!r} must be a positive number of samples")
    seed = random.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise fail("random.seed", f"{seed!r} must be a non-negative integer")
    dists = []
    entries = {k: v for k, v in random.items() if k not in ("samples", "seed")}
    flat: list[tuple[str, Any]] = []
    for key, value in entries.items():
        if key in NESTED_SECTIONS and isinstance(value, dict) and not (set(value) & set(DISTRIBUTIONS)):  # fmt: skip
            flat.extend((f"{key}.{sub}", v) for sub, v in value.items())
        else:
            flat.append((key, value))
    if not flat:
        raise fail("random", "name at least one key to draw, e.g. \"optim.lr\" = { log_uniform = [1e-3, 3e-2] }")  # fmt: skip
    for key, value in flat:
        path = f"random.{key}"
        _check_key(path, key, fail)
        if not isinstance(value, dict) or len(value) != 1:
            raise fail(path, f"write one distribution: {{ kind = [...] }} with kind in {list(DISTRIBUTIONS)}")  # fmt: skip
        kind, args = next(iter(value.items()))
        if kind not in DISTRIBUTIONS:
            raise fail(path, f"unknown distribution {kind!r}; use one of {list(DISTRIBUTIONS)}")
        if not isinstance(args, list) or not args:
            raise fail(f"{path}.{kind}", "must be a non-empty list")
        if kind != "choice":
            if len(args) != 2 or not all(_is_number(a) for a in args):
                raise fail(f"{path}.{kind}", f"{args!r} must be two numbers [low, high]")
            lo, hi = args
            if not lo < hi:
                raise fail(f"{path}.{kind}", f"low {lo} must be below high {hi}")
            if kind == "log_uniform" and lo <= 0:
                raise fail(f"{path}.{kind}", f"low {lo} must be positive for a log scale")
            if kind == "int" and not all(isinstance(a, int) for a in args):
                raise fail(f"{path}.{kind}", f"{args!r} must be two integers")
            probes: Iterable[Any] = [int(lo), int(hi)] if kind == "int" else [float(lo), float(hi)]
        else:
            probes = args
        for v in probes:
            _check_value(base, key, v, fail, f"{path}.{kind} value {_literal(v)}")
        dists.append(Distribution(key, kind, tuple(args)))
    return samples, seed, dists


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
