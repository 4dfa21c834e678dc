"""Small, pure statistics for honest deltas: no scipy, seeded, typed.

- `wilson(k, n, z)`: the Wilson score interval of a proportion k / n (never outside [0, 1],
  sensible at k = 0 and k = n where the normal "Wald" interval collapses to a point).
- `bootstrap_ci(rows, statistic, n_boot, seed, alpha)`: the percentile bootstrap interval of
  any statistic of the rows (rows resampled with replacement, a seeded numpy Generator).
- `mcnemar(b, c)`: the exact two-sided McNemar test on the discordant pairs of a paired
  binary outcome (b: 1 -> 0, c: 0 -> 1): under "no change" each discordant pair goes either way
  with probability 1/2, so p = min(1, 2 * P[Binomial(b + c, 1/2) <= min(b, c)]).
- `paired_bootstrap(rows_a, rows_b, statistic, n_boot, seed, alpha)`: the difference
  statistic(b) - statistic(a) over paired rows (row i of a and of b are the same task), its
  percentile interval, and a two-sided bootstrap p-value; each resample draws the SAME indices
  for both sides, so task difficulty cancels out of the difference.

`rows` is a numpy array (resampled along its first axis, fast) or any sequence (resampled into a
list). A statistic that is undefined on a resample returns None or nan; such resamples are left
out of the interval (an interval with no defined resample is (nan, nan)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Rows = np.ndarray | Sequence[Any]
Statistic = Callable[[Any], float | None]

EXACT_MCNEMAR_MAX = 10_000  # above this many discordant pairs the tail is summed in log space


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of k successes in n trials (z = 1.96: 95%)."""
    if n <= 0 or not 0 <= k <= n:
        raise ValueError(f"wilson needs 0 <= k <= n and n > 0, got k={k}, n={n}")
    p = k / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z / (1 + z2 / n) * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)  # exact ends: no float residue at 0 and 1
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts b and c (b + c = 0: 1.0)."""
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts must be >= 0, got b={b}, c={c}")
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    if n <= EXACT_MCNEMAR_MAX:
        tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n  # exact integers, one rounding
    else:
        logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(k + 1)]
        top = max(logs)
        tail = math.exp(top + math.log(sum(math.exp(v - top) for v in logs)) - n * math.log(2))
    return min(1.0, 2 * tail)


def _take(rows: Rows, idx: np.ndarray) -> Any:
    if isinstance(rows, np.ndarray):
        return rows[idx]
    return [rows[i] for i in idx]


def _value(statistic: Statistic, rows: Any) -> float:
    v = statistic(rows)
    return math.nan if v is None else float(v)


def _interval(values: np.ndarray, alpha: float) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _check(n: int, n_boot: int, alpha: float) -> None:
    if n <= 0:
        raise ValueError("no rows to resample")
    if n_boot <= 0:
        raise ValueError(f"n_boot must be > 0, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def bootstrap_ci(rows: Rows, statistic: Statistic, n_boot: int, seed: int, alpha: float = 0.05) -> tuple[float, float]:
    """The (alpha/2, 1 - alpha/2) percentile interval of `statistic` over `n_boot` resamples."""
    n = len(rows)
    _check(n, n_boot, alpha)
    rng = np.random.default_rng(seed)
    values = np.array([_value(statistic, _take(rows, rng.integers(0, n, size=n))) for _ in range(n_boot)])
    return _interval(values, alpha)


def paired_bootstrap(
    rows_a: Rows, rows_b: Rows, statistic: Statistic, n_boot: int, seed: int, alpha: float = 0.05
) -> tuple[float, float, float, float]:
    """(diff, lo, hi, p) for diff = statistic(rows_b) - statistic(rows_a) over paired rows.

    p is two-sided: twice the share of resampled differences on the other side of 0 from the
    observed one (0 included, so ties count against significance), capped at 1; an observed
    difference of exactly 0 has p = 1, an undefined one p = nan.
    """
    n = len(rows_a)
    if len(rows_b) != n:
        raise ValueError(f"paired rows differ in length: {n} vs {len(rows_b)}")
    _check(n, n_boot, alpha)
    diff = _value(statistic, rows_b) - _value(statistic, rows_a)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for i in range(n_boot):
        idx = rng.integers(0, n, size=n)  # the same tasks on both sides
        diffs[i] = _value(statistic, _take(rows_b, idx)) - _value(statistic, _take(rows_a, idx))
    lo, hi = _interval(diffs, alpha)
    defined = diffs[np.isfinite(diffs)]
    if not math.isfinite(diff) or defined.size == 0:
        return diff, lo, hi, math.nan
    if diff == 0:
        return diff, lo, hi, 1.0
    other_side = defined <= 0 if diff > 0 else defined >= 0
    return diff, lo, hi, min(1.0, 2 * float(other_side.mean()))
