"""p-values of the drop promises: exact, distribution-free, numpy only.

Per tested sample, the policy against the reference state is a **loss** (reference
right, policy wrong), a **gain** (reference wrong, policy right) or neither. With loss
and gain rates ``l`` and ``g`` on the distribution the samples are drawn from:

- the **net** drop is ``l - g``: the reference's accuracy minus the policy's, what
  "accuracy drop" means;
- the **loss** rate ``l`` bounds it from above, and is itself a promise: the policy is
  wrong on at most that share of the inputs the reference gets right.

Each function tests a null hypothesis "the drop exceeds `max_drop`" on `n` i.i.d.
samples and returns a p-value (small: the drop is at most `max_drop`).

`loss_p_value` is the binomial tail of the losses, ``P(Binomial(n, max_drop) <=
losses)``. It tests the net drop too (``l - g <= l``), and is the sharper test when gains
are rare.

`net_p_value` tests ``l - g > max_drop`` from ``T = losses - gains`` (Berger and Boos,
1994: a p-value maximised over a confidence set of the nuisance). The null's
worst case has ``l = g + max_drop`` (more losses only raise T), leaving the gain rate
``g`` unknown. Draw each sample as a pure loss with probability ``max_drop``, else as a
symmetric step (+1 or -1, each with rate ``r = g / (1 - max_drop)``, or 0); with
``A`` the pure losses (Binomial(n, max_drop), free of g),

    P_g(T <= t) = sum_a P(A = a) P_r(S_(n-a) <= t - a),

where ``S_m`` sums m symmetric steps. Their law is log-concave for ``r <= 1/3`` and
unimodal about 0. So ``P_r(S_m <= -k)`` rises with r for every ``k >= 1``: each
term with ``a > t`` rises with g, and the terms with ``a <= t`` sum to at most
``P(A <= t)``. With ``g_u``, the Clopper-Pearson upper bound on g at level `gamma`
(it fails with probability at most gamma),

    p = gamma + P(Binomial(n, max_drop) <= t) + P_(g_u)(T <= t)

is a valid p-value: for every level alpha, ``P(p <= alpha) <= alpha`` under the null.
The middle term is negligible unless gains are rare, and then `loss_p_value` is the
sharper test. The risk control picks one of the two on its learning split, never on
the samples it tests (`edgeadapt.planning.risk`).
"""

from __future__ import annotations

import functools
import math

import numpy as np

from edgeadapt.planning.stats import binom_cdf, clopper_pearson_upper

#: The share of the test's level that `net_p_value` spends on bounding the gain rate.
GAMMA_SHARE = 0.05
_WIDTH = 10.0  # standard deviations past which binomial terms sum to below 1e-20


def loss_p_value(losses: int, n: int, max_drop: float) -> float:
    """p-value of "drop > max_drop" after `losses` reference-right, policy-wrong samples
    of `n`: ``P(Binomial(n, max_drop) <= losses)``, exact."""
    return binom_cdf(losses, n, max_drop)


@functools.lru_cache(maxsize=65536)  # a path's points repeat counts
def net_p_value(losses: int, gains: int, n: int, max_drop: float, delta: float) -> float:
    """p-value of "net drop > max_drop" after `losses` and `gains` in `n` samples (the
    module docstring), for a test at level `delta` (``GAMMA_SHARE * delta`` of it
    bounds the gain rate)."""
    if losses < 0 or gains < 0 or losses + gains > n:
        raise ValueError(f"need 0 <= losses, gains and losses + gains <= n, got {losses}, {gains}")
    gamma = GAMMA_SHARE * delta
    g_u = clopper_pearson_upper(gains, n, gamma)
    if g_u > (1.0 - max_drop) / 3.0:
        return 1.0  # the steps' law is no longer log-concave: nothing is claimed
    t = losses - gains
    pure = binom_cdf(t, n, max_drop) if t >= 0 else 0.0
    return min(1.0, gamma + pure + trinomial_difference_cdf(t, n, loss=g_u + max_drop, gain=g_u))


@functools.lru_cache(maxsize=8)
def _log_factorials(n: int) -> np.ndarray:
    """log(k!) for k = 0..n."""
    return np.concatenate(([0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=np.float64)))))


def _window(n: int, p: float) -> tuple[int, int]:
    """The counts of Binomial(n, p) outside of which the probability is below 1e-20."""
    mean, sd = n * p, math.sqrt(n * p * (1.0 - p))
    return max(0, math.floor(mean - _WIDTH * sd - _WIDTH)), min(
        n, math.ceil(mean + _WIDTH * sd + _WIDTH)
    )


def trinomial_difference_cdf(t: int, n: int, *, loss: float, gain: float) -> float:
    """``P(L - G <= t)`` for ``(L, G, rest) ~ Multinomial(n; loss, gain, 1 - loss - gain)``.

    Summed over G: ``P(G = k) P(L <= t + k | G = k)`` with ``L | G = k`` binomial on
    ``n - k`` trials at rate ``loss / (1 - gain)``; terms are taken in log space.
    """
    if not (gain >= 0.0 and loss > 0.0 and loss + gain < 1.0):
        raise ValueError(f"need rates loss > 0, gain >= 0 with loss + gain < 1, got {loss}, {gain}")
    if gain == 0.0:
        return binom_cdf(min(t, n), n, loss) if t >= 0 else 0.0
    k_lo, k_hi = _window(n, gain)
    if t + k_hi < 0:
        return 0.0
    log_fact = _log_factorials(n)
    k = np.arange(k_lo, k_hi + 1)
    log_pg = (
        log_fact[n]
        - log_fact[k]
        - log_fact[n - k]
        + k * math.log(gain)
        + (n - k) * math.log1p(-gain)
    )
    q = loss / (1.0 - gain)
    j_lo = _window(n - k_hi, q)[0]
    j = np.arange(j_lo, max(j_lo, t + k_hi) + 1)
    m = (n - k)[:, None]
    jj = np.minimum(j[None, :], m)
    log_pl = (
        log_fact[m] - log_fact[jj] - log_fact[m - jj] + jj * math.log(q) + (m - jj) * math.log1p(-q)
    )
    keep = (j[None, :] <= m) & (j[None, :] <= t + k[:, None])
    logs = np.where(keep, log_pg[:, None] + log_pl, -np.inf)
    top = float(logs.max())
    if not math.isfinite(top):
        return 0.0
    return min(1.0, math.exp(top) * float(np.exp(logs - top).sum()))
