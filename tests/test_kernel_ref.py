"""The numpy reference (the kernel's specification) against float64 softmax math."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeadapt import kernel_ref


def _softmax64(x: np.ndarray) -> np.ndarray:
    z = x.astype(np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_exp_neg_within_two_ulp_of_exp():
    t = np.linspace(-80.0, 0.0, 200_001, dtype=np.float32)
    want = np.exp(t.astype(np.float64))
    got = kernel_ref.exp_neg(t).astype(np.float64)
    assert np.all(
        np.abs(got - want) <= 2.5 * np.spacing(want.astype(np.float32)).astype(np.float64)
    )
    assert kernel_ref.exp_neg(np.float32([0.0]))[0] == 1.0
    assert kernel_ref.exp_neg(np.float32([-80.5, -np.inf])).tolist() == [0.0, 0.0]


@given(
    st.integers(1, 64),
    st.integers(2, 300),
    st.sampled_from([1e-3, 1.0, 10.0, 60.0]),
    st.integers(0, 2**32 - 1),
)
def test_measures_match_float64_softmax(batch, classes, scale, seed):
    x = (np.random.default_rng(seed).standard_normal((batch, classes)) * scale).astype(np.float32)
    p = _softmax64(x)
    top = np.sort(p, axis=1)[:, ::-1]
    pred, conf = kernel_ref.predict_confidence(x, "maxprob")
    assert np.array_equal(pred, x.argmax(axis=1))
    np.testing.assert_allclose(conf, top[:, 0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(
        kernel_ref.confidence(x, "margin"), top[:, 0] - top[:, 1], rtol=0, atol=1e-6
    )
    with np.errstate(divide="ignore"):
        neg_h = np.where(p > 0, p * np.log(p), 0.0).sum(axis=1)
    np.testing.assert_allclose(kernel_ref.confidence(x, "entropy"), neg_h, rtol=1e-6, atol=1e-6)


def test_invalid_rows_and_ties():
    x = np.array(
        [[1, np.nan, 0], [np.inf, 0, 0], [-np.inf, 0, 0], [2, 2, 1], [5, 5, 5]], np.float32
    )
    pred, conf, mask, cont = kernel_ref.decide(x, 0.0, "margin")
    assert pred.tolist() == [-1, -1, -1, 0, 0]
    assert np.isnan(conf[:3]).all()
    assert conf[3:].tolist() == [0.0, 0.0]
    assert mask.tolist() == [False, False, False, True, True]
    assert cont.tolist() == [0, 1, 2]


def test_reference_policy_rules():
    p = kernel_ref.Policy([0.8, 0.9], [1.0, 2.0, 4.0], ewma=0.5, accuracies=[0.5, 0.9, 0.8])
    assert p.next(0, 0.85, 1.0, None) == kernel_ref.EXIT
    assert p.next(0, math.nan, 1.0, 2.9) == kernel_ref.EXIT_BUDGET
    assert p.next(0, 0.1, 1.0, 3.0) == kernel_ref.CONTINUE
    assert p.lookup(100.0) == 1
    assert p.lookup(0.5) is None
    p.observe(0, 3.0)
    assert p.costs_ms[0] == 2.0


@pytest.mark.parametrize(
    "bad", [np.zeros((2, 3)), np.zeros(3, np.float32), np.zeros((0, 3), np.float32)]
)
def test_reference_rejects_bad_logits(bad):
    with pytest.raises((TypeError, ValueError)):
        kernel_ref.confidence(bad)


def test_gate_score_is_the_logistic_of_its_features():
    rng = np.random.default_rng(0)
    f = [rng.random(100).astype(np.float32) for _ in range(3)]
    agree, prev = rng.integers(0, 4, 100) / 3.0, rng.random(100).astype(np.float32)
    w, b = [1.5, -2.0, 0.7, 3.0, -1.0], 0.25
    z = b + sum(
        wk * np.asarray(fk, np.float64) for wk, fk in zip(w, [*f, agree, prev], strict=True)
    )
    got = kernel_ref.gate_score(*f, agree, prev, w, b)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, 1.0 / (1.0 + np.exp(-z)), rtol=1e-7)
    # the clamp: no overflow (warnings are errors here), saturated scores
    huge = kernel_ref.gate_score(*f, agree, prev, [1e300, 0, 0, 0, 0], 0.0)
    assert np.all(huge == 1.0)
    tiny = kernel_ref.gate_score(*f, agree, prev, [-1e300, 0, 0, 0, 0], 0.0)
    assert np.all((tiny > 0) & (tiny < 1e-34))
    nan = kernel_ref.gate_score(*f, agree, np.full(100, np.nan, np.float32), w, b)
    assert np.isnan(nan).all()


def test_gate_agreement_and_decision():
    assert kernel_ref.agreement(np.array([1, 2]), np.zeros((2, 0), np.int64)).tolist() == [0, 0]
    hist = np.array([[1, 1, 3], [0, 2, 2]])
    assert kernel_ref.agreement(np.array([1, 2]), hist).tolist() == [2 / 3, 2 / 3]
    x = np.array([[0.0, 9.0, 0.0], [5.0, 0.0, 0.0], [np.nan, 0.0, 0.0]], np.float32)
    only_agreement = [0.0, 0.0, 0.0, 10.0, 0.0]
    pred, score, mask, keep, grown, prev = kernel_ref.gate_decide(
        x, only_agreement, -5.0, 0.5, np.array([[1], [1], [0]]), np.full(3, 0.5, np.float32)
    )
    assert pred.tolist() == [1, 0, -1]
    assert mask.tolist() == [True, False, False]
    assert keep.tolist() == [1, 2]
    assert grown.tolist() == [[1, 0], [0, -1]]
    assert np.isnan(score[2])
    assert prev[0] == score[1]


# A few values only, so that equal costs and equal accuracies (the tie rules) come up often.
_COSTS = st.sampled_from([0.0, 0.5, 1.0, 1.0, 2.5, 4.0])
_ACCS = st.sampled_from([0.0, 0.25, 0.5, 0.5, 0.9, 1.0])


@given(
    st.integers(1, 6).flatmap(
        lambda n: st.tuples(
            st.lists(_COSTS, min_size=n, max_size=n),
            st.none() | st.lists(_ACCS, min_size=n, max_size=n),
        )
    ),
    st.booleans(),
    st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.5, 7.0, math.inf]) | st.floats(0.0, 20.0),
)
def test_lookup_agrees_with_the_compiled_kernel(spec, cumulative, budget):
    from edgeadapt import kernel

    costs, accuracies = spec
    thresholds = [0.5] * (len(costs) - 1)
    compiled = kernel.Policy(thresholds, costs, accuracies=accuracies, cumulative=cumulative)
    state_ms = [compiled.state_ms(i) for i in range(len(costs))]
    expected = compiled.lookup(budget)
    assert kernel_ref.lookup(state_ms, accuracies, budget) == expected
    ref = kernel_ref.Policy(thresholds, costs, accuracies=accuracies, cumulative=cumulative)
    assert ref.lookup(budget) == expected


def test_lookup_prefers_accuracy_then_the_cheaper_state():
    assert kernel_ref.lookup([1.0, 2.0, 3.0], [0.5, 0.9, 0.9], 10.0) == 1  # tie: cheaper
    assert kernel_ref.lookup([1.0, 2.0, 3.0], [0.5, 0.9, 0.8], 10.0) == 1  # most accurate
    assert kernel_ref.lookup([1.0, 2.0, 3.0], None, 2.5) == 1  # later counts as better
    assert kernel_ref.lookup([1.0, 2.0], None, 0.5) is None
