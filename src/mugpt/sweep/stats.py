"""Means with 95% confidence intervals across seeds (Student's t, n - 1 degrees of freedom).

The t quantile is computed here rather than taken from SciPy: the two-sided probability
``A(t | ν) = P(|T| ≤ t)`` has a finite closed form for integer ν (Abramowitz & Stegun,
*Handbook of Mathematical Functions*, 26.7.3–26.7.4), and the quantile follows by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

NORMAL_975 = 1.959963984540054  # the limit ν → ∞


def t_two_sided_prob(t: float, df: int) -> float:
    """``P(|T| ≤ t)`` for Student's t with ``df`` (integer ≥ 1) degrees of freedom.

    >>> round(t_two_sided_prob(12.7062047, 1), 6), round(t_two_sided_prob(2.7764451, 4), 6)
    (0.95, 0.95)
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if t <= 0:
        return 0.0
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    if df % 2 == 1:
        # (2/π)[θ + sinθ·cosθ·(1 + (2/3)cos²θ + (2·4)/(3·5)cos⁴θ + ... up to cos^(ν-3))]
        total, term = 0.0, 1.0
        if df > 1:
            total = 1.0
            for j in range(1, (df - 3) // 2 + 1):
                term *= (2 * j) / (2 * j + 1) * c2
                total += term
        return (2 / math.pi) * (theta + math.sin(theta) * math.cos(theta) * total)
    # sinθ·(1 + (1/2)cos²θ + (1·3)/(2·4)cos⁴θ + ... up to cos^(ν-2))
    total, term = 1.0, 1.0
    for j in range(1, (df - 2) // 2 + 1):
        term *= (2 * j - 1) / (2 * j) * c2
        total += term
    return math.sin(theta) * total


def t_quantile_975(df: int) -> float:
    """The t value with ``P(|T| ≤ t) = 0.95``: the 95% two-sided critical value.

    >>> [round(t_quantile_975(d), 3) for d in (1, 2, 4, 9, 29)]
    [12.706, 4.303, 2.776, 2.262, 2.045]
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df > 10_000:
        return NORMAL_975
    lo, hi = NORMAL_975, 13.0
    while t_two_sided_prob(hi, df) < 0.95:
        hi *= 2
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if t_two_sided_prob(mid, df) < 0.95:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class MeanCI:
    """A mean over ``n`` values and the half-width of its 95% interval (None when n < 2)."""

    mean: float | None
    ci95: float | None
    n: int

    def format(self, spec: str = ".3f") -> str:
        """``3.141 ± 0.020``; ``—`` without values; no ± for a single value.

        >>> MeanCI(0.25, 0.125, 3).format("+.2f"), MeanCI(2.0, None, 1).format()
        ('+0.25 ± 0.12', '2.000')
        """
        if self.mean is None:
            return "—"
        if self.ci95 is None:
            return format(self.mean, spec)
        return f"{format(self.mean, spec)} ± {format(self.ci95, spec.replace('+', ''))}"


def mean_ci(values: Iterable[float | None]) -> MeanCI:
    """Mean and 95% CI half-width ``t_{0.975, n-1} · s / √n`` of the values that are numbers.

    >>> r = mean_ci([1.0, 2.0, 3.0])
    >>> r.mean, round(r.ci95, 4), r.n
    (2.0, 2.4841, 3)
    >>> mean_ci([5.0]).ci95 is None, mean_ci([None]).mean is None
    (True, True)
    """
    xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    n = len(xs)
    if n == 0:
        return MeanCI(None, None, 0)
    mean = math.fsum(xs) / n
    if n < 2:
        return MeanCI(mean, None, 1)
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return MeanCI(mean, t_quantile_975(n - 1) * math.sqrt(var / n), n)
