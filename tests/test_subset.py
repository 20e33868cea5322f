"""Best subsets: the alpha = 1 DP and the exact search against brute force."""

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeadapt.errors import InputError
from edgeadapt.oracle import subset
from edgeadapt.oracle.equations import bound_alpha1, exact_oracle
from edgeadapt.oracle.subset import (
    best_subset_alpha1,
    best_subset_exact,
    subset_curve_alpha1,
    subset_curve_exact,
)


def brute_alpha1(r, a, k):
    top = r.size - 1
    return min(
        bound_alpha1(r[[*rest, top]], a[[*rest, top]]).r_oracle
        for rest in itertools.combinations(range(top), k - 1)
    )


def brute_exact(correct, r, k):
    """(highest A_oracle, least R_oracle among those) over all k-subsets."""
    best = None
    for t in itertools.combinations(range(r.size), k):
        res = exact_oracle(correct[:, list(t)], r[list(t)])
        key = (round(res.a_oracle * correct.shape[0]), -res.r_oracle)
        if best is None or key[0] > best[0] or (key[0] == best[0] and key[1] > best[1] + 1e-12):
            best = key
    return best[0] / correct.shape[0], -best[1]


@st.composite
def spaces(draw, max_states=10):
    n = draw(st.integers(1, max_states))
    r = np.sort(draw(st.lists(st.floats(0, 100), min_size=n, max_size=n)))
    a = np.sort(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)))
    return np.array(r), np.array(a)


@given(spaces())
def test_alpha1_dp_equals_brute_force(space):
    r, a = space
    curve = subset_curve_alpha1(r, a)
    for k, choice in enumerate(curve, start=1):
        assert choice.k == k
        assert choice.states[-1] == r.size - 1  # keeps the top state
        assert choice.r_oracle == pytest.approx(brute_alpha1(r, a, k), rel=1e-9, abs=1e-9)
        chosen = list(choice.states)
        assert bound_alpha1(r[chosen], a[chosen]).r_oracle == pytest.approx(choice.r_oracle)
    # more states never cost more (eq. 12)
    values = [c.r_oracle for c in curve]
    assert all(x >= y - 1e-9 for x, y in itertools.pairwise(values))


@st.composite
def matrices(draw, max_states=10):
    s = draw(st.integers(1, max_states))
    n = draw(st.integers(1, 60))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    correct = rng.random((n, s)) < rng.random(s)
    # small integer costs make ties (equal costs, equal R_oracle) likely
    r = np.sort(rng.integers(0, 5, s).astype(float))
    return correct, r


@given(matrices())
def test_exact_search_equals_brute_force(m):
    correct, r = m
    for choice in subset_curve_exact(correct, r):
        a_want, r_want = brute_exact(correct, r, choice.k)
        assert choice.method == "exact"
        assert choice.a_oracle == pytest.approx(a_want)
        assert choice.r_oracle == pytest.approx(r_want, abs=1e-9)
        res = exact_oracle(correct[:, list(choice.states)], r[list(choice.states)])
        assert (res.a_oracle, res.r_oracle) == pytest.approx((choice.a_oracle, choice.r_oracle))


@given(matrices(max_states=7))
def test_enumeration_path_equals_table_path(m):
    correct, r = m
    table = subset_curve_exact(correct, r)
    old = subset.MAX_TABLE_STATES
    subset.MAX_TABLE_STATES = 0
    try:
        listed = subset_curve_exact(correct, r)
    finally:
        subset.MAX_TABLE_STATES = old
    for x, y in zip(table, listed, strict=True):
        assert y.method == "exact"
        assert (x.a_oracle, x.r_oracle) == pytest.approx((y.a_oracle, y.r_oracle))


def test_heuristic_is_labelled_and_never_beats_exact(monkeypatch):
    rng = np.random.default_rng(3)
    correct = rng.random((400, 9)) < rng.random(9)
    r = np.sort(rng.random(9) * 10)
    exact = best_subset_exact(correct, r, 4)
    monkeypatch.setattr(subset, "MAX_TABLE_STATES", 0)
    monkeypatch.setattr(subset, "MAX_ENUMERATED", 0)
    guess = best_subset_exact(correct, r, 4)
    assert guess.method == "heuristic"
    assert guess.a_oracle <= exact.a_oracle
    res = exact_oracle(correct[:, list(guess.states)], r[list(guess.states)])
    assert (res.a_oracle, res.r_oracle) == pytest.approx((guess.a_oracle, guess.r_oracle))


def test_r_ratio_baseline():
    r = np.array([1.0, 2.0, 8.0])
    a = np.array([0.5, 0.6, 0.9])
    choice = best_subset_alpha1(r, a, 2)
    assert choice.r_ratio == pytest.approx(8.0 / choice.r_oracle)
    assert best_subset_alpha1(r, a, 2, r_n=4.0).r_ratio == pytest.approx(4.0 / choice.r_oracle)


@pytest.mark.parametrize("k", [0, 4, 2.5])
def test_k_out_of_range(k):
    with pytest.raises(InputError, match="k must be"):
        best_subset_alpha1([1, 2, 3], [0.1, 0.2, 0.3], k)
    with pytest.raises(InputError, match="k must be"):
        best_subset_exact(np.ones((2, 3), bool), [1, 2, 3], k)


def test_rejects_bad_inputs():
    with pytest.raises(InputError, match="decrease"):
        subset_curve_alpha1([1, 2], [0.5, 0.4])
    with pytest.raises(InputError, match="non-decreasing order"):
        subset_curve_exact(np.ones((2, 2), bool), [2, 1])
    with pytest.raises(InputError, match="bool"):
        subset_curve_exact(np.ones((2, 2)), [1, 2])


def test_subset_analysis_json_names_states_and_the_baseline():
    from edgeadapt.oracle.subset import subset_analysis

    names, costs, accs = ["big", "small", "mid"], [8.0, 1.0, 2.0], [0.9, 0.5, 0.7]
    curve = subset_analysis(names, costs, accs)
    assert curve.names == ("small", "mid", "big")
    assert [c.k for c in curve.choices] == [1, 2, 3]
    doc = curve.to_json()
    assert doc["baseline"] == "big"
    assert doc["r_n"] == 8.0
    assert [e["states"][-1] for e in doc["curve"]] == ["big", "big", "big"]
    assert doc == {**doc["curve"][-1], "baseline": "big", "r_n": 8.0, "curve": doc["curve"]}
    one = subset_analysis(names, costs, accs, k=2)
    assert "curve" not in one.to_json()
    assert one.best == curve.choices[1]


def test_subset_analysis_refuses_a_bad_k_naming_it():
    from edgeadapt.oracle.subset import subset_analysis

    with pytest.raises(InputError) as err:
        subset_analysis(["a", "b"], [1.0, 2.0], [0.5, 0.6], k=3)
    assert err.value.source == "k"


def test_table_subsets_use_the_evaluation_by_name(tmp_path):
    from edgeadapt.formats.evaluation import Evaluation, save_evaluation
    from edgeadapt.oracle.subset import table_subsets

    table = tmp_path / "t.csv"
    table.write_text("name,cost,accuracy\nbig,8,0.9\nsmall,1,0.5\nextra,3,0.7\n")
    labels = np.arange(12) % 3
    pred = np.stack([np.where(labels == 0, labels, 9), labels], axis=1)
    ev = tmp_path / "e.npz"
    save_evaluation(ev, Evaluation(labels, pred, np.array(["small", "big"])))
    result = table_subsets(table, ev)
    assert result.ignored == ("extra",)
    assert {c.method for c in result.choices} == {"exact"}
    assert result.best.a_oracle == 1.0
