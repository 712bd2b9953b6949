"""The figures of a run, as ``summary.json`` holds them (DESIGN §6)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mugpt.engine.baselines import baseline_bpb
from mugpt.engine.learner import RunResult
from mugpt.engine.metrics import detection_table, phase_metrics


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become None, numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def track_experts(mechanisms: list[Any]) -> bool:
    """Turns on the attribution to experts of every mechanism that has one (``ngram_mix``);
    returns whether any has. The run's bits do not change; it costs time (``mugpt run
    --experts``)."""
    found = False
    for mech in mechanisms:
        if hasattr(mech, "track_experts"):
            mech.track_experts()
            found = True
    return found


def expert_rows(mechanisms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The mixture's attribution to its experts (``ngram_mix`` with
    :meth:`~mugpt.mechanisms.ngram_mix.NgramMix.track_experts` on), from the mechanisms'
    descriptions: per expert its ``mean_weight`` and the bits the mixture saved by it; empty
    when no mechanism tracked its experts.

    >>> expert_rows([{"name": "ngram_mix", "counters": {"mixed_bytes": 3}}])
    []
    """
    for mech in mechanisms:
        rows = (mech.get("counters") or {}).get("experts")
        if rows:
            return [dict(r, mechanism=mech["name"]) for r in rows]
    return []


def build_summary(
    result: RunResult,
    run_config: Any = None,
    *,
    baselines: bool = True,
    detection_tolerance: int | None = None,
) -> dict[str, Any]:
    """Overall and per-phase bpb, recovery, forgetting, compute counts, and the classic
    compressors' bpb on the same bytes.

    Example:
        >>> from mugpt.corpus import Stream
        >>> from mugpt.engine import Learner
        >>> result = Learner().run(Stream.from_bytes(b"hello world " * 10))
        >>> s = build_summary(result, baselines=False)
        >>> s["bytes"], s["updates"], [p["label"] for p in s["phases"]]
        (120, 120, ['input'])
    """
    stream = result.stream
    n = result.bytes
    counters = result.counters
    summary: dict[str, Any] = {
        "bytes": n,
        "bpb": result.bpb,
        "bytes_per_s": result.bytes_per_s,  # first-use compilation excluded
        "seconds": result.seconds,
        "compile_s": result.compile_seconds,  # of seconds: compiling or loading kernels
        "updates": counters["updates"],
        "skipped_updates": counters["skipped"],
        "nonfinite_updates": counters["nonfinite"],
        "replay_updates": counters["replay_updates"],
        "counters": counters,
    }
    if run_config is not None:
        model = run_config.model
        summary.update(
            params=model.n_params,
            preset=run_config.preset,
            seed=run_config.seed,
            update_every=run_config.learner.update_every,
            window_loss=run_config.learner.window_loss,
            batch_streams=run_config.learner.batch_streams,
            freeze_network=run_config.learner.freeze_network,
            substream_bytes=run_config.learner.substream_bytes,
            model={
                "n_layers": model.n_layers,
                "d_model": model.d_model,
                "n_heads": model.n_heads,
                "d_ff": model.d_ff,
                "context": model.context,
            },
        )
    summary["mechanisms"] = result.mechanisms
    experts = expert_rows(result.mechanisms)
    if experts:
        summary["experts"] = experts
    summary["strict_online"] = all(m.get("strict_online", True) for m in result.mechanisms)
    phases: list[dict[str, Any]] = []
    boundaries: list[int] = []
    if stream is not None:
        rows = phase_metrics(result.losses, stream)
        phases = [r for r in rows if r["bytes_seen"] > 0]
        boundaries = [b.index for b in stream.boundaries if b.index < n]
        summary["boundary_labels"] = [
            {"index": b.index, "from": b.from_label, "to": b.to_label}
            for b in stream.boundaries
            if b.index < n
        ]
        summary["stream"] = stream.spec
    summary["phases"] = phases
    summary["boundaries"] = boundaries
    alarms = [int(e.get("index", e["pos"])) for e in result.events if e.get("kind") == "alarm"]
    if alarms or any(m.get("name") == "adaptive_lr" for m in result.mechanisms):
        tolerance = detection_tolerance or 2000
        summary["detection"] = {
            "tolerance": tolerance,
            "rows": detection_table(alarms, boundaries, n, tolerance),
        }
    if baselines and stream is not None and n:
        summary["baselines"] = baseline_bpb(stream.data[:n])
    else:
        summary["baselines"] = None
    return _clean(summary)
