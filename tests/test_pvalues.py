"""The drop promises' p-values: the trinomial tail against brute force, and the net
p-value's level checked over resamples drawn at the null's boundary (where the net drop
equals max_drop), where it must reject at most delta of the time whatever the gains."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeadapt.planning.pvalues import (
    GAMMA_SHARE,
    loss_p_value,
    net_p_value,
    trinomial_difference_cdf,
)
from edgeadapt.planning.stats import binom_cdf, binom_sf

RESAMPLES = 200


def _brute_force(t: int, n: int, loss: float, gain: float) -> float:
    total = 0.0
    for losses, gains in itertools.product(range(n + 1), repeat=2):
        if losses + gains > n or losses - gains > t:
            continue
        rest = n - losses - gains
        ways = math.factorial(n) / (
            math.factorial(losses) * math.factorial(gains) * math.factorial(rest)
        )
        total += ways * loss**losses * gain**gains * (1 - loss - gain) ** rest
    return total


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 30),
    t=st.integers(-30, 30),
    loss=st.floats(0.01, 0.5),
    gain=st.floats(0.0, 0.45),
)
def test_trinomial_difference_cdf_is_the_brute_force_sum(n, t, loss, gain):
    got = trinomial_difference_cdf(t, n, loss=loss, gain=gain)
    assert got == pytest.approx(_brute_force(t, n, loss, gain), abs=1e-12)


def test_net_p_value_without_gains_costs_little_against_the_losses_test():
    """With no gains the net test is the binomial test of the losses plus its
    nuisance's price: at least gamma, and rejecting a little later."""
    n, eps, delta = 5000, 0.005, 0.05
    for losses in (0, 5, 10, 14):
        p = net_p_value(losses, 0, n, eps, delta)
        assert p >= GAMMA_SHARE * delta
        assert p >= loss_p_value(losses, n, eps)
    assert net_p_value(10, 0, n, eps, delta) < delta  # 0.2% against a 0.5% promise


def test_gains_make_room_for_losses():
    """Losses past what the losses test allows are promised when gains offset them."""
    n, eps, delta = 25_000, 0.005, 0.05
    losses, gains = 520, 480  # net drop 0.16%, loss rate 2.1%
    assert loss_p_value(losses, n, eps) > 0.99
    assert net_p_value(losses, gains, n, eps, delta) < delta
    assert net_p_value(losses, gains - 100, n, eps, delta) > delta  # net drop 0.56%


@pytest.mark.slow
@pytest.mark.parametrize(
    ("n", "gain", "max_drop", "delta"),
    [(1500, 0.0, 0.02, 0.1), (1500, 0.04, 0.02, 0.1), (4000, 0.01, 0.01, 0.1)],
)
def test_net_p_value_rejects_a_true_null_at_most_delta_of_the_time(n, gain, max_drop, delta):
    """Samples drawn with net drop exactly max_drop (the null's worst case): the test
    rejects on at most delta of 200 resamples (up to binomial slack), and is not
    vacuous: at a net drop of a third of max_drop it rejects on most."""
    rng = np.random.default_rng(5)
    null = rng.multinomial(n, [gain + max_drop, gain, 1 - 2 * gain - max_drop], RESAMPLES)
    rejected = sum(net_p_value(int(lo), int(ga), n, max_drop, delta) <= delta for lo, ga, _ in null)
    limit = next(k for k in range(RESAMPLES) if binom_sf(k + 1, RESAMPLES, delta) <= 1e-3)
    assert rejected <= limit
    good = gain + max_drop / 3
    alt = rng.multinomial(n, [good, gain, 1 - gain - good], RESAMPLES)
    power = np.mean(
        [net_p_value(int(lo), int(ga), n, max_drop, delta) <= delta for lo, ga, _ in alt]
    )
    assert power > 0.5


def test_loss_p_value_is_the_binomial_tail():
    assert loss_p_value(3, 200, 0.02) == pytest.approx(binom_cdf(3, 200, 0.02))


def test_bad_counts_are_refused():
    with pytest.raises(ValueError, match="losses"):
        net_p_value(-1, 0, 10, 0.01, 0.05)
    with pytest.raises(ValueError, match="losses"):
        net_p_value(6, 6, 10, 0.01, 0.05)
    with pytest.raises(ValueError, match="rates"):
        trinomial_difference_cdf(0, 10, loss=0.6, gain=0.5)
