"""Stream metrics (DESIGN §5): per-phase bpb, recovery, forgetting, shift detection, EMA.

Pure functions on NumPy arrays of per-byte losses in bits (``-log2 p(x_t)``); nothing here
runs a model. Every function accepts a *partial* run — losses shorter than the stream — and
then describes the bytes seen so far.

Definitions, with ``W`` the window:

- **bpb** of a segment: mean loss in bits over its bytes.
- **recovery** after a boundary: let ``F`` be the segment's *final level*, the mean loss of its
  last 25% (at least one byte). Recovery is the number of bytes read since the boundary when
  the trailing mean over the last ``W`` bytes first satisfies ``mean <= 1.1 * F`` (within 10%
  above the final level; being below it also counts). Only full windows are considered, so the
  smallest possible value is ``W``. "Not recovered" (``None``) if no window qualifies.
- **forgetting** on a revisit of label A: bpb of the first ``W`` bytes of the new A segment
  minus bpb of the last ``W`` bytes of the previous A segment (positive = worse than where it
  left off). If either segment is shorter than ``W`` both sides use the shorter length.
- **shift detection**: each true boundary ``b`` is matched to the first alarm ``a`` with
  ``b <= a < b + tolerance`` (and before the next boundary); its delay is ``a - b``. Every
  alarm not matched to a boundary is a false alarm; false alarms per MB use MB = 10^6 bytes.
  An alarm at index ``a`` means "raised after seeing the loss of byte ``a``".

The default window is ``W = min(1000, max(1, L // 4))`` for a segment of ``L`` bytes (for
forgetting, ``L`` is the shorter of the two segments).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from mugpt.corpus import Stream

#: Upper bound of the default window, in bytes.
MAX_DEFAULT_WINDOW = 1000
#: Recovery threshold: the trailing mean must come within this fraction above the final level.
RECOVERY_TOLERANCE = 0.10
#: The final level of a segment is the mean loss over this last fraction of it.
FINAL_FRACTION = 0.25


def default_window(segment_len: int) -> int:
    """The default window ``W`` for a segment of ``segment_len`` bytes.

    >>> default_window(100_000), default_window(200), default_window(2)
    (1000, 50, 1)
    """
    return min(MAX_DEFAULT_WINDOW, max(1, segment_len // 4))


def bpb(losses_bits: np.ndarray) -> float | None:
    """Mean loss in bits per byte, or None for no bytes.

    >>> bpb(np.array([1.0, 2.0, 3.0]))
    2.0
    """
    x = np.asarray(losses_bits, dtype=np.float64)
    return float(x.mean()) if x.size else None


def trailing_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Means of every full window: entry ``j`` is ``mean(x[j : j + window])``.

    >>> trailing_mean(np.array([1.0, 2.0, 3.0, 4.0]), 2).tolist()
    [1.5, 2.5, 3.5]
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    x = np.asarray(x, dtype=np.float64)
    if x.size < window:
        return np.empty(0, dtype=np.float64)
    csum = np.concatenate(([0.0], np.cumsum(x)))
    return (csum[window:] - csum[:-window]) / window


def final_level(segment_losses: np.ndarray) -> float | None:
    """Mean loss over the last 25% of a segment (at least its last byte), or None if empty.

    >>> final_level(np.array([9.0, 9.0, 9.0, 1.0]))
    1.0
    """
    x = np.asarray(segment_losses, dtype=np.float64)
    if x.size == 0:
        return None
    tail = max(1, int(x.size * FINAL_FRACTION))
    return float(x[-tail:].mean())


def recovery_bytes(segment_losses: np.ndarray, window: int) -> int | None:
    """Bytes after a boundary until the trailing ``window``-mean is within 10% of the final level.

    ``segment_losses`` are the losses of one phase segment, starting at its boundary. A window
    longer than the segment is shortened to the segment. Returns None if the level is never
    reached (or the segment is empty).

    >>> seg = np.array([8.0, 8.0, 4.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    >>> recovery_bytes(seg, 2)  # final level 2.0; the window ending at byte 4 has mean 2.0
    5
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    x = np.asarray(segment_losses, dtype=np.float64)
    level = final_level(x)
    if level is None:
        return None
    w = min(window, x.size)
    means = trailing_mean(x, w)
    threshold = (1.0 + RECOVERY_TOLERANCE) * level
    # A hair of slack so that float round-off in the running sums never flips an exact tie.
    hits = np.flatnonzero(means <= threshold + 1e-12 * max(1.0, abs(threshold)))
    if hits.size == 0:
        return None
    return int(hits[0]) + w


def forgetting_bpb(prev_segment: np.ndarray, new_segment: np.ndarray, window: int) -> float | None:
    """bpb of the first ``window`` bytes of a revisit minus bpb of the last ``window`` before.

    Both sides use ``min(window, len(prev), len(new))`` bytes; None if that is 0.

    >>> forgetting_bpb(np.array([5.0, 1.0, 1.0]), np.array([3.0, 2.0, 0.0]), 2)
    1.5
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    prev = np.asarray(prev_segment, dtype=np.float64)
    new = np.asarray(new_segment, dtype=np.float64)
    w = min(window, prev.size, new.size)
    if w == 0:
        return None
    return float(new[:w].mean() - prev[-w:].mean())


def phase_metrics(
    losses_bits: np.ndarray, stream: Stream, window: int | None = None
) -> list[dict[str, Any]]:
    """One dict per phase segment of ``stream``, over the bytes seen so far.

    Keys: ``label``, ``start``, ``end``, ``bytes_seen``, ``complete`` (all its bytes seen),
    ``bpb``, ``window`` (the ``W`` used for this row), ``recovery_bytes``, ``recovered``,
    ``forgetting_bpb``, ``revisit_of`` (index of the previous phase with the same label).

    Every phase gets a row, also those not reached yet (``bytes_seen`` 0, metrics None).
    ``recovery_bytes`` is None when undefined *or* not recovered; ``recovered`` tells which:
    None = undefined (first phase, nothing seen), False = not recovered, True = recovered.
    For a phase still running the values are provisional (its final level is that of the bytes
    seen so far). ``forgetting_bpb`` is None unless the label was seen in an earlier phase.
    ``window=None`` uses :func:`default_window` per segment.

    >>> from mugpt.corpus import Stream, Phase
    >>> s = Stream(b"x" * 8, [Phase("a", "t", 0, 4), Phase("b", "t", 4, 8)], np.array([0, 4]))
    >>> rows = phase_metrics(np.array([4.0, 2, 2, 2, 6, 1, 1, 1]), s, window=1)
    >>> [(r["label"], r["bpb"], r["recovery_bytes"]) for r in rows]
    [('a', 2.5, None), ('b', 2.25, 2)]
    """
    losses = np.asarray(losses_bits, dtype=np.float64).ravel()
    if losses.size > len(stream):
        raise ValueError(f"{losses.size} losses for a stream of {len(stream)} bytes")
    if window is not None and window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    rows: list[dict[str, Any]] = []
    last_with_label: dict[str, int] = {}
    for i, phase in enumerate(stream.phases):
        seen = max(0, min(phase.end, losses.size) - phase.start)
        segment = losses[phase.start : phase.start + seen]
        w = window if window is not None else default_window(phase.end - phase.start)
        row: dict[str, Any] = {
            "label": phase.label,
            "start": phase.start,
            "end": phase.end,
            "bytes_seen": seen,
            "complete": seen == phase.end - phase.start,
            "bpb": bpb(segment),
            "window": w,
            "recovery_bytes": None,
            "recovered": None,
            "forgetting_bpb": None,
            "revisit_of": last_with_label.get(phase.label),
        }
        if i > 0 and seen > 0:
            rec = recovery_bytes(segment, w)
            row["recovery_bytes"] = rec
            row["recovered"] = rec is not None
        prev_index = last_with_label.get(phase.label)
        if prev_index is not None and seen > 0:
            prev = stream.phases[prev_index]
            wf = window
            if wf is None:
                wf = default_window(min(prev.end - prev.start, phase.end - phase.start))
            row["forgetting_bpb"] = forgetting_bpb(losses[prev.start : prev.end], segment, wf)
        last_with_label[phase.label] = i
        rows.append(row)
    return rows


def _sorted_ints(values: Sequence[int] | np.ndarray, what: str, n_bytes: int) -> np.ndarray:
    arr = np.unique(np.asarray(values, dtype=np.int64).ravel())
    if arr.size and (arr[0] < 0 or arr[-1] >= max(n_bytes, 0)):
        raise ValueError(f"{what} must lie in [0, {n_bytes}); got {arr[0]}..{arr[-1]}")
    return arr


def _scores(delays: list[int | None], n_alarms: int, n_bytes: int) -> dict[str, Any]:
    found = [d for d in delays if d is not None]
    false_alarms = n_alarms - len(found)
    return {
        "detected": len(found),
        "missed": len(delays) - len(found),
        "mean_delay": float(np.mean(found)) if found else None,
        "delays": delays,
        "alarms": n_alarms,
        "false_alarms": false_alarms,
        "false_alarms_per_mb": false_alarms / (n_bytes / 1e6) if n_bytes > 0 else None,
    }


def _boundary_limits(bounds: np.ndarray, n_bytes: int, tolerance: int) -> np.ndarray:
    """Exclusive end of each boundary's matching window: tolerance, next boundary, stream end."""
    nxt = np.append(bounds[1:], n_bytes)
    return np.minimum(np.minimum(bounds + tolerance, nxt), n_bytes)


def detection_scores(
    alarms: Sequence[int] | np.ndarray,
    boundaries: Sequence[int] | np.ndarray,
    n_bytes: int,
    tolerance: int,
) -> dict[str, Any]:
    """Score a shift detector's alarms against the true boundaries of the bytes seen.

    ``n_bytes`` is the number of bytes seen; boundaries at or beyond it are not scored.
    Returns ``detected``, ``missed``, ``mean_delay`` (None if nothing detected), ``delays``
    (one per scored boundary, None if missed), ``alarms``, ``false_alarms`` and
    ``false_alarms_per_mb``. Repeated alarms at one index count once.

    >>> r = detection_scores([5, 120, 130, 260], [100, 250], n_bytes=1_000_000, tolerance=50)
    >>> r["delays"], r["mean_delay"], r["false_alarms"], r["false_alarms_per_mb"]
    ([20, 10], 15.0, 2, 2.0)
    """
    if tolerance < 1:
        raise ValueError(f"tolerance must be >= 1, got {tolerance}")
    bounds = np.unique(np.asarray(boundaries, dtype=np.int64).ravel())
    bounds = bounds[(bounds >= 0) & (bounds < n_bytes)]
    alarm_idx = _sorted_ints(alarms, "alarms", n_bytes)
    limits = _boundary_limits(bounds, n_bytes, tolerance)
    first = np.searchsorted(alarm_idx, bounds, side="left")
    delays: list[int | None] = []
    for b, j, limit in zip(bounds.tolist(), first.tolist(), limits.tolist()):
        if j < alarm_idx.size and alarm_idx[j] < limit:
            delays.append(int(alarm_idx[j]) - b)
        else:
            delays.append(None)
    return _scores(delays, int(alarm_idx.size), n_bytes)


def periodic_scores(
    period: int, boundaries: Sequence[int] | np.ndarray, n_bytes: int, tolerance: int
) -> dict[str, Any]:
    """:func:`detection_scores` of a detector that fires at bytes 0, period, 2·period, ...

    Computed in closed form, so "fire at every byte" (``period=1``) costs nothing on a
    100 MB stream.

    >>> periodic_scores(1, [10, 20], n_bytes=30, tolerance=5)["false_alarms"]
    28
    """
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    if tolerance < 1:
        raise ValueError(f"tolerance must be >= 1, got {tolerance}")
    bounds = np.unique(np.asarray(boundaries, dtype=np.int64).ravel())
    bounds = bounds[(bounds >= 0) & (bounds < n_bytes)]
    limits = _boundary_limits(bounds, n_bytes, tolerance)
    first_alarm = -(-bounds // period) * period  # the first multiple of period >= b
    delays = [
        int(a - b) if a < limit else None
        for a, b, limit in zip(first_alarm.tolist(), bounds.tolist(), limits.tolist())
    ]
    n_alarms = -(-max(n_bytes, 0) // period)
    return _scores(delays, n_alarms, n_bytes)


def detection_table(
    alarms: Sequence[int] | np.ndarray,
    boundaries: Sequence[int] | np.ndarray,
    n_bytes: int,
    tolerance: int,
    name: str = "detector",
) -> list[dict[str, Any]]:
    """The detector's scores beside three baselines, one dict per row (key ``detector``).

    Baselines: ``always-fire`` (an alarm at every byte: every boundary found with delay 0, at
    the price of ~10^6 false alarms per MB), ``periodic`` (an alarm every ``tolerance`` bytes:
    the cheapest detector that never misses) and ``never-fire`` (no alarm: misses everything,
    no false alarm). A useful detector beats ``periodic`` on false alarms at a similar miss rate.

    >>> rows = detection_table([103], [100], n_bytes=1000, tolerance=50)
    >>> [(r["detector"], r["detected"], r["false_alarms"]) for r in rows]
    [('detector', 1, 0), ('periodic', 1, 19), ('always-fire', 1, 999), ('never-fire', 0, 0)]
    """
    rows = [
        (name, detection_scores(alarms, boundaries, n_bytes, tolerance)),
        ("periodic", periodic_scores(tolerance, boundaries, n_bytes, tolerance)),
        ("always-fire", periodic_scores(1, boundaries, n_bytes, tolerance)),
        ("never-fire", detection_scores([], boundaries, n_bytes, tolerance)),
    ]
    return [{"detector": label, **scores} for label, scores in rows]


def ema(x: np.ndarray, alpha: float) -> np.ndarray:
    """Exponential moving average ``y[0] = x[0]``, ``y[t] = alpha·x[t] + (1-alpha)·y[t-1]``.

    Vectorised in blocks (a scaled cumulative sum per block), so a million losses take a few
    milliseconds instead of a Python loop.

    >>> ema(np.array([0.0, 1.0, 1.0]), 0.5).tolist()
    [0.0, 0.5, 0.75]
    """
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    values = np.asarray(x, dtype=np.float64).ravel()
    out = np.empty_like(values)
    if values.size == 0:
        return out
    decay = 1.0 - alpha
    if decay == 0.0:
        out[:] = values
        return out
    # Inside a block y[s+j] = decay^(j+1)·y[s-1] + alpha·Σ_k≤j decay^(j-k)·x[s+k]. The block
    # length keeps decay^-len below 1e12 so the scaled running sum stays well conditioned.
    block = max(1, min(values.size, int(math.log(1e12) / -math.log(decay))))
    powers = decay ** np.arange(block, dtype=np.float64)  # decay^j
    inverse = 1.0 / powers
    prev = values[0]  # y[-1] := x[0] makes y[0] = x[0]
    for s in range(0, values.size, block):
        chunk = values[s : s + block]
        m = chunk.size
        acc = np.cumsum(chunk * inverse[:m]) * powers[:m]
        out[s : s + m] = decay * powers[:m] * prev + alpha * acc
        prev = out[s + m - 1]
    return out
