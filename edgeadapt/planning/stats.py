"""Exact binomial tails and Clopper-Pearson bounds in numpy only (no scipy in the core).

The planner states how far a calibrated policy's accuracy drop can be from the one it
showed on a held-out split. The statement is distribution-free: held-out samples are
i.i.d. draws, so a count of losses is binomial, and the one-sided Clopper-Pearson bound
on its rate holds with probability at least ``1 - delta`` whatever the distribution.

Tails are sums of probabilities computed in log space (log-binomial coefficients from a
cumulative sum of logs, then log-sum-exp), so they stay accurate far into the tails; the
bounds invert them by bisection on ``p`` (each tail is monotone in ``p``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_BISECTIONS = 64  # halves [0, 1] down to below float64 resolution (2^-53)


def _check_counts(k: int, n: int) -> None:
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")


def _check_delta(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must be in (0, 1), got {delta}")


def _log_choose(n: int) -> np.ndarray:
    """log C(n, i) for i = 0..n."""
    i = np.arange(1, n + 1, dtype=np.float64)
    return np.concatenate(([0.0], np.cumsum(np.log(n - i + 1) - np.log(i))))


def _tail(log_choose: np.ndarray, n: int, p: float, lo: int, hi: int) -> float:
    """P(lo <= X <= hi) for X ~ Binomial(n, p)."""
    if lo > hi:
        return 0.0
    if p <= 0.0:
        return 1.0 if lo == 0 else 0.0
    if p >= 1.0:
        return 1.0 if hi == n else 0.0
    i = np.arange(lo, hi + 1, dtype=np.float64)
    logs = log_choose[lo : hi + 1] + i * math.log(p) + (n - i) * math.log1p(-p)
    top = float(logs.max())
    return min(1.0, math.exp(top) * float(np.exp(logs - top).sum()))


def binom_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    _check_counts(k, n)
    return _tail(_log_choose(n), n, p, 0, k)


def binom_sf(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p) (the upper tail, summed directly, not 1 - cdf)."""
    _check_counts(k, n)
    return _tail(_log_choose(n), n, p, k, n)


def _bisect_decreasing(f: Callable[[float], float], target: float) -> float:
    """The p in [0, 1] where the decreasing function f crosses target."""
    lo, hi = 0.0, 1.0
    for _ in range(_BISECTIONS):
        mid = 0.5 * (lo + hi)
        if f(mid) > target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def clopper_pearson_upper(k: int, n: int, delta: float) -> float:
    """One-sided upper bound on a binomial rate after k successes in n trials.

    With probability >= 1 - delta the true rate is <= the bound; equal to
    ``scipy.stats.beta.ppf(1 - delta, k + 1, n - k)`` (1 when k == n).
    """
    _check_counts(k, n)
    _check_delta(delta)
    if k == n:
        return 1.0
    log_choose = _log_choose(n)
    return _bisect_decreasing(lambda p: _tail(log_choose, n, p, 0, k), delta)


def clopper_pearson_lower(k: int, n: int, delta: float) -> float:
    """One-sided lower bound on a binomial rate after k successes in n trials.

    With probability >= 1 - delta the true rate is >= the bound; equal to
    ``scipy.stats.beta.ppf(delta, k, n - k + 1)`` (0 when k == 0).
    """
    _check_counts(k, n)
    _check_delta(delta)
    if k == 0:
        return 0.0
    log_choose = _log_choose(n)
    # P(X >= k; p) rises with p, so 1 - it falls: find where the upper tail reaches delta.
    return _bisect_decreasing(lambda p: -_tail(log_choose, n, p, k, n), -delta)


def drop_upper_bound(
    reference_correct: np.ndarray, policy_correct: np.ndarray, delta: float
) -> float:
    """Upper bound, at confidence 1 - delta, on the true accuracy drop of a policy.

    drop = P(reference right, policy wrong) - P(reference wrong, policy right)
    <= P(reference right, policy wrong), a binomial rate whose count on the held-out
    split gives a Clopper-Pearson bound. Valid when the policy and the reference state
    were chosen without looking at these samples.
    """
    ref = np.asarray(reference_correct, dtype=bool)
    pol = np.asarray(policy_correct, dtype=bool)
    if ref.shape != pol.shape or ref.ndim != 1 or ref.size == 0:
        raise ValueError("reference_correct and policy_correct must be equal non-empty [N] arrays")
    losses = int(np.count_nonzero(ref & ~pol))
    return clopper_pearson_upper(losses, ref.size, delta)
