"""Metric estimators with their standard errors: means, the unbiased pass@k, ratios."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) with the sample standard deviation (n - 1), as
    lm-evaluation-harness reports it; the error is 0 for fewer than two values."""
    x_N = np.asarray(values, np.float64)
    if x_N.size == 0:
        raise ValueError("no values to average")
    if x_N.size < 2:
        return float(x_N.mean()), 0.0
    return float(x_N.mean()), float(x_N.std(ddof=1) / math.sqrt(x_N.size))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `c` correct among `n` samples (Chen et al. 2021):
    1 - C(n - c, k) / C(n, k), computed as a stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=np.float64)))


def ratio_stderr(numerators: Sequence[float], denominators: Sequence[float]
                 ) -> tuple[float, float]:
    """(Σx / Σy, its standard error by the delta method over the items): e.g. bits per byte
    pooled over documents of different lengths."""
    x_N = np.asarray(numerators, np.float64)
    y_N = np.asarray(denominators, np.float64)
    if x_N.size == 0 or y_N.sum() <= 0:
        raise ValueError("a ratio needs at least one item with a positive denominator")
    ratio = float(x_N.sum() / y_N.sum())
    n = x_N.size
    if n < 2:
        return ratio, 0.0
    residual_N = x_N - ratio * y_N
    se = math.sqrt(float(np.sum(residual_N**2)) / (n * (n - 1))) / float(y_N.mean())
    return ratio, se


def bits_per_byte(nll_nats: float, n_bytes: int) -> float:
    """Negative log-likelihood in nats over a text's UTF-8 bytes, in bits per byte."""
    return nll_nats / (math.log(2.0) * n_bytes)
