"""Binomial tails and Clopper-Pearson bounds (numpy only) against scipy's."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeadapt.planning.stats import (
    binom_cdf,
    binom_sf,
    clopper_pearson_lower,
    clopper_pearson_upper,
    drop_upper_bound,
)

scipy_stats = pytest.importorskip("scipy.stats")

counts = st.integers(1, 3000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))
deltas = st.sampled_from([0.01, 0.05, 0.1, 0.3])


@given(counts, deltas)
def test_clopper_pearson_matches_beta_ppf(kn, delta):
    k, n = kn
    upper = 1.0 if k == n else scipy_stats.beta.ppf(1 - delta, k + 1, n - k)
    lower = 0.0 if k == 0 else scipy_stats.beta.ppf(delta, k, n - k + 1)
    assert clopper_pearson_upper(k, n, delta) == pytest.approx(upper, rel=1e-9, abs=1e-12)
    assert clopper_pearson_lower(k, n, delta) == pytest.approx(lower, rel=1e-9, abs=1e-12)


@given(counts, st.floats(0.0, 1.0))
def test_tails_match_scipy(kn, p):
    k, n = kn
    assert binom_cdf(k, n, p) == pytest.approx(scipy_stats.binom.cdf(k, n, p), rel=1e-9, abs=1e-250)
    assert binom_sf(k, n, p) == pytest.approx(
        scipy_stats.binom.sf(k - 1, n, p), rel=1e-9, abs=1e-250
    )


def test_large_n_is_accurate():
    k, n = 480, 100_000
    want = scipy_stats.beta.ppf(0.95, k + 1, n - k)
    assert clopper_pearson_upper(k, n, 0.05) == pytest.approx(want, rel=1e-9)


def test_drop_bound_counts_only_losses():
    ref = np.array([1, 1, 1, 0, 0, 1] * 50, dtype=bool)
    pol = np.array([1, 0, 1, 1, 0, 1] * 50, dtype=bool)  # 50 losses, 50 gains
    assert drop_upper_bound(ref, pol, 0.05) == pytest.approx(
        scipy_stats.beta.ppf(0.95, 51, 300 - 50), rel=1e-9
    )


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: clopper_pearson_upper(5, 4, 0.05), "0 <= k <= n"),
        (lambda: clopper_pearson_upper(-1, 4, 0.05), "0 <= k <= n"),
        (lambda: clopper_pearson_lower(1, 4, 0.0), "delta"),
        (lambda: clopper_pearson_upper(1, 4, 1.0), "delta"),
        (lambda: drop_upper_bound(np.ones(3, bool), np.ones(4, bool), 0.05), "equal"),
        (lambda: drop_upper_bound(np.ones(0, bool), np.ones(0, bool), 0.05), "non-empty"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()
