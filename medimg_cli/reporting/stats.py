"""Statistics of a comparison: paired t-tests across seeds with Holm's correction, and bootstrap
confidence intervals over test cases when there is one seed.

Why these: runs that share a seed share the data split, the batch order and the initial
random state, so the pairs are matched and a paired test across seeds uses that; with one
seed there is no spread between runs, and resampling the test cases estimates how much the
metric would move on another test set of the same size. Both are standard and both state n.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as scipy_stats


@dataclass(frozen=True)
class PairedTest:
    """A paired t-test of ``a - b`` over matched seeds.

    Attributes:
        n: number of pairs. mean: mean difference. low, high: its 95% confidence interval
        (t distribution, n - 1 degrees of freedom). p: two-sided p-value.
        not_applicable: why the test does not apply (``"n < 2"``, ``"no variance"``), with NaN
            interval and p; ``None`` when it does.
    """

    n: int
    mean: float
    low: float
    high: float
    p: float
    not_applicable: str | None = None


def paired_t_test(a: Sequence[float], b: Sequence[float]) -> PairedTest:
    """Two-sided paired t-test of equal means for matched samples ``a`` and ``b``.

    With fewer than 2 pairs, or differences that do not vary (the same every seed, or all 0), the
    t statistic is undefined: the interval and p are NaN and ``not_applicable`` says why, rather
    than a p-value of 0 or 1 that no test produced.
    """
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    n = len(diff)
    mean = float(diff.mean()) if n else math.nan
    if n < 2:
        return PairedTest(n, mean, math.nan, math.nan, math.nan, "n < 2")
    sd = float(diff.std(ddof=1))
    if sd == 0:
        return PairedTest(n, mean, math.nan, math.nan, math.nan, "no variance")
    error = sd / math.sqrt(n)
    p = float(2 * scipy_stats.t.sf(abs(mean / error), n - 1))
    half = float(scipy_stats.t.ppf(0.975, n - 1)) * error
    return PairedTest(n, mean, mean - half, mean + half, p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error control), in the input order.

    The i-th smallest of m p-values becomes ``max_{j <= i} (m - j + 1) p_(j)``, capped at 1; NaN
    p-values (tests that did not apply) are left out of m and stay NaN.
    """
    tested = [i for i, p in enumerate(p_values) if not math.isnan(p)]  # NaN: no test, stays NaN
    m = len(tested)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, index in enumerate(sorted(tested, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


def resample_indices(cases: int, resamples: int = 2000, seed: int = 0) -> np.ndarray:
    """``(resamples, cases)`` case indices drawn with replacement, the same for a given seed."""
    return np.random.default_rng(seed).integers(0, cases, (resamples, cases))


def percentile_interval(values: np.ndarray) -> tuple[float, float, int]:
    """Percentile 95% interval of ``(R,)`` resampled values, leaving NaNs out.

    Returns:
        (low, high, values used); NaN bounds when no value is defined.
    """
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if not len(values):
        return math.nan, math.nan, 0
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high), len(values)


def bootstrap_ci(
    statistic: Callable[[np.ndarray], float], cases: int, resamples: int = 2000, seed: int = 0
) -> tuple[float, float, int]:
    """Percentile 95% interval of ``statistic(indices)`` over resamples of ``cases`` case indices.

    Returns:
        (low, high, resamples used): resamples where the statistic is undefined (NaN, e.g. an
        AUC of a resample with one class) are left out.
    """
    return percentile_interval(np.array([statistic(i) for i in resample_indices(cases, resamples, seed)]))


def mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (``None`` for one value) of the non-missing values."""
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return math.nan, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None
