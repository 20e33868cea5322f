"""The compiled kernel equals the numpy reference, and refuses bad input cleanly."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeadapt import kernel, kernel_ref

F32_MAX = float(np.finfo(np.float32).max)


@st.composite
def logits_batches(draw):
    """Random [B, C] float32 logits with extreme scales, ties, NaN/Inf and huge rows."""
    batch, classes = draw(st.integers(1, 4096)), draw(st.integers(2, 1000))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-6, 1.0, 8.0, 100.0, 1e20, 3e38]))
    x = np.clip(rng.standard_normal((batch, classes)) * scale, -F32_MAX, F32_MAX).astype(np.float32)
    if draw(st.booleans()):
        x = np.round(x)  # many ties
    for kind in draw(
        st.lists(st.sampled_from(["nan", "inf", "-inf", "flat", "dup", "huge"]), max_size=6)
    ):
        r = int(rng.integers(batch))
        if kind in ("nan", "inf", "-inf"):
            x[r, int(rng.integers(classes))] = float(kind)
        elif kind == "flat":
            x[r] = np.float32(np.clip(rng.standard_normal() * scale, -F32_MAX, F32_MAX))
        elif kind == "dup":
            x[r, int(rng.integers(classes))] = x[r].max()
        else:
            x[r] = rng.choice(np.float32([-F32_MAX, F32_MAX, 0.0]), size=classes)
    return x


@settings(max_examples=40)
@given(logits_batches(), st.sampled_from(kernel.MEASURES), st.data())
def test_decide_equals_reference(x, measure, data):
    _ref_pred, ref_conf = kernel_ref.predict_confidence(x, measure)
    finite = ref_conf[~np.isnan(ref_conf)]
    threshold = data.draw(
        st.one_of(
            st.floats(-10.0, 1.5),
            st.sampled_from([0.0, 0.5, 1.0, -math.inf, math.inf]),
            st.sampled_from(finite.tolist() or [0.5]),  # exactly on a row's confidence
        )
    )
    pred, conf, mask, cont = kernel.decide(x, threshold, measure)
    r_pred, r_conf, r_mask, r_cont = kernel_ref.decide(x, threshold, measure)
    assert np.array_equal(pred, r_pred)
    np.testing.assert_allclose(conf, r_conf, rtol=0, atol=1e-6, equal_nan=True)
    assert np.array_equal(mask, r_mask)
    assert np.array_equal(cont, r_cont)
    assert np.array_equal(kernel.confidence(x, measure), conf, equal_nan=True)
    assert not mask[np.isnan(conf)].any()  # a NaN/Inf row never exits


def test_outputs_types_and_zero_copy_views():
    x = np.arange(12, dtype=np.float32).reshape(4, 3)[1:]  # C-contiguous view, not a copy
    pred, conf, mask, cont = kernel.decide(x, 0.99)
    assert (pred.dtype, conf.dtype, mask.dtype, cont.dtype) == (
        np.int64,
        np.float32,
        np.bool_,
        np.int64,
    )
    assert pred.tolist() == [2, 2, 2]
    assert cont.tolist() == [0, 1, 2]


def test_decide_into_reuses_buffers():
    rng = np.random.default_rng(1)
    bufs = kernel.decide_buffers(64)
    for batch in (64, 17, 1):
        x = (rng.standard_normal((batch, 10)) * 4).astype(np.float32)
        k = kernel.decide_into(x, 0.6, *bufs, measure="entropy" if batch == 17 else "maxprob")
        ref = kernel_ref.decide(x, 0.6, "entropy" if batch == 17 else "maxprob")
        assert np.array_equal(bufs[0][:batch], ref[0])
        assert np.array_equal(bufs[2][:batch], ref[2])
        assert k == len(ref[3])
        assert np.array_equal(bufs[3][:k], ref[3])


GOOD = np.zeros((2, 3), np.float32)


@pytest.mark.parametrize(
    ("logits", "threshold", "measure", "error", "match"),
    [
        (GOOD.astype(np.float64), 0.5, "maxprob", TypeError, "float32"),
        (GOOD.astype(np.float16), 0.5, "maxprob", TypeError, "float32"),
        (GOOD.astype(">f4"), 0.5, "maxprob", TypeError, "float32"),
        (GOOD.tolist(), 0.5, "maxprob", TypeError, "numpy.ndarray"),
        (np.zeros((3, 2), np.float32).T, 0.5, "maxprob", TypeError, "C-contiguous"),
        (np.zeros((2, 6), np.float32)[:, ::2], 0.5, "maxprob", TypeError, "C-contiguous"),
        (np.zeros(3, np.float32), 0.5, "maxprob", ValueError, "2-D"),
        (np.zeros((1, 2, 3), np.float32), 0.5, "maxprob", ValueError, "2-D"),
        (np.zeros((0, 3), np.float32), 0.5, "maxprob", ValueError, "empty batch"),
        (np.zeros((2, 1), np.float32), 0.5, "maxprob", ValueError, "at least 2 classes"),
        (GOOD, math.nan, "maxprob", ValueError, "NaN"),
        (GOOD, 0.5, "softmax", ValueError, "measure"),
    ],
)
def test_bad_input_is_a_clear_error(logits, threshold, measure, error, match):
    with pytest.raises(error, match=match):
        kernel.decide(logits, threshold, measure)
    if not (isinstance(threshold, float) and math.isnan(threshold)):
        with pytest.raises(error, match=match):
            kernel.confidence(logits, measure)


def test_decide_into_rejects_bad_buffers():
    pred, conf, mask, cont = kernel.decide_buffers(2)
    with pytest.raises(ValueError, match="at least 2"):
        kernel.decide_into(GOOD, 0.5, pred[:1], conf, mask, cont)
    with pytest.raises(TypeError, match="dtype bool"):
        kernel.decide_into(GOOD, 0.5, pred, conf, mask.astype(np.uint8), cont)
    ro = cont.copy()
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="writeable"):
        kernel.decide_into(GOOD, 0.5, pred, conf, mask, ro)
    with pytest.raises(ValueError, match="batch"):
        kernel.decide_buffers(0)


@given(
    st.lists(st.floats(0.0, 20.0), min_size=1, max_size=6).flatmap(
        lambda costs: st.tuples(
            st.just(costs),
            st.lists(st.floats(0.0, 1.0), min_size=len(costs) - 1, max_size=len(costs) - 1),
            st.lists(st.floats(0.0, 1.0), min_size=len(costs), max_size=len(costs)),
        )
    ),
    st.booleans(),
    st.lists(st.tuples(st.integers(0, 5), st.floats(0.0, 50.0)), max_size=8),
    st.floats(0.0, 80.0),
    st.floats(0.0, 1.0),
    st.floats(0.0, 30.0),
    st.sampled_from([None, 0.5, 0.9, 0.99]),
)
def test_policy_equals_reference(spec, cumulative, observed, budget, conf, elapsed, quantile):
    costs, thresholds, accuracies = spec
    acc = accuracies if cumulative else None
    kw = {"ewma": 0.3, "accuracies": acc, "cumulative": cumulative, "quantile": quantile}
    pol = kernel.Policy(thresholds, costs, **kw)
    ref = kernel_ref.Policy(thresholds, costs, **kw)
    assert pol.quantile == quantile
    for hop, ms in observed:
        if hop < len(costs):
            pol.observe(hop, ms)
            ref.observe(hop, ms)
            pol.decay(hop)
            ref.decay(hop)
    assert pol.costs_ms == ref.costs_ms
    assert pol.lookup(budget) == ref.lookup(budget)
    for s in range(len(costs)):
        assert pol.state_ms(s) == ref.state_ms(s)
        for b in (budget, None):
            assert int(pol.next(s, conf, elapsed, b)) == ref.next(s, conf, elapsed, b)
        if s + 1 < len(costs):
            assert pol.fits(s + 1, elapsed, budget) == (elapsed + ref.costs_ms[s + 1] <= budget)


@pytest.mark.parametrize("q", [0.5, 0.9, 0.99])
def test_a_quantile_policy_settles_at_that_quantile_of_what_it_measures(q):
    """Lognormal costs with 3% preempted calls 40x as long: the tracked cost ends near
    the q-quantile of the costs (the share of later costs at or below it is about q),
    where the mean is dragged far above the p50 and p90 by the outliers."""
    rng = np.random.default_rng(7)
    x = 0.1 * np.exp(0.2 * rng.standard_normal(40_000))
    x[rng.random(x.size) < 0.03] *= 40
    pol = kernel.Policy([], [0.1], ewma=0.05, quantile=q)
    mean = kernel.Policy([], [0.1], ewma=0.05)
    tracked, means = [], []
    for v in x:
        tracked.append(pol.predicted_ms(0))
        means.append(mean.predicted_ms(0))
        pol.observe(0, float(v))
        mean.observe(0, float(v))
    share = float(np.mean(x[10_000:] <= np.asarray(tracked[10_000:])))
    assert abs(share - q) < (0.02 if q < 0.99 else 0.005)
    if q < 0.99:  # the mean is no such quantile
        assert np.mean(means[10_000:]) > 1.3 * np.quantile(x, q)


@pytest.mark.parametrize("q", [0.0, 1.0, -0.5, 1.5, math.nan])
def test_a_quantile_outside_0_1_is_refused(q):
    with pytest.raises(ValueError, match="quantile"):
        kernel.Policy([], [1.0], quantile=q)


def test_policy_budget_and_ewma_story():
    pol = kernel.Policy([0.9, 0.9], [1.0, 2.0, 4.0], ewma=0.5, measure="margin")
    assert pol.num_states == 3
    assert pol.measure == "margin"
    assert pol.threshold(2) == -math.inf
    assert pol.next(0, 0.5, 1.0) is kernel.Action.CONTINUE  # deadline-free
    assert pol.next(0, math.nan, 1.0, 3.0) is kernel.Action.CONTINUE  # NaN never exits
    assert pol.next(0, 0.95, 1.0, 3.0) is kernel.Action.EXIT
    assert pol.next(2, 0.0, 99.0, 1.0) is kernel.Action.EXIT  # last state
    pol.observe(1, 6.0)  # contention: hop 1 now predicted at 4 ms
    assert pol.predicted_ms(1) == 4.0
    assert pol.next(0, 0.5, 1.0, 3.0) is kernel.Action.EXIT_BUDGET
    pol.decay(1)  # skipped for the budget: back toward the prior 2 ms
    assert pol.predicted_ms(1) == 3.0
    pol.decay(1)
    assert pol.next(0, 0.5, 1.0, 3.5) is kernel.Action.CONTINUE  # 1 + 2.5 ms fits again
    assert pol.lookup(5.0) == 1
    assert pol.lookup(0.5) is None
    assert pol.lookup(math.inf) == 2


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: kernel.Policy([0.5], [1.0, 2.0, 3.0]),
            ValueError,
            "one value per state but the last",
        ),
        (lambda: kernel.Policy([], []), ValueError, "one cost per hop"),
        (lambda: kernel.Policy([math.nan], [1.0, 2.0]), ValueError, r"thresholds\[0\] is NaN"),
        (lambda: kernel.Policy([0.5], [1.0, -2.0]), ValueError, r"hop_costs_ms\[1\]"),
        (lambda: kernel.Policy([0.5], [1.0, math.inf]), ValueError, r"hop_costs_ms\[1\]"),
        (lambda: kernel.Policy([0.5], [1.0, 2.0], ewma=0.0), ValueError, "ewma"),
        (lambda: kernel.Policy([0.5], [1.0, 2.0], measure="x"), ValueError, "measure"),
        (lambda: kernel.Policy([0.5], [1.0, 2.0], accuracies=[0.5]), ValueError, "accuracies"),
        (lambda: kernel.Policy([0.5], [1.0, 2.0], accuracies=[0.5, 1.5]), ValueError, "accuracies"),
    ],
)
def test_policy_rejects_bad_construction(call, error, match):
    with pytest.raises(error, match=match):
        call()


@pytest.mark.parametrize(
    ("method", "args", "error", "match"),
    [
        ("next", (0, 0.5, 1.0, -1.0), ValueError, "budget_ms"),
        ("next", (0, 0.5, 1.0, math.nan), ValueError, "budget_ms"),
        ("next", (0, 0.5, -1.0, 5.0), ValueError, "elapsed_ms"),
        ("next", (0, 0.5, math.nan, 5.0), ValueError, "elapsed_ms"),
        ("next", (2, 0.5, 1.0, 5.0), IndexError, "state 2"),
        ("fits", (1, 0.0, -0.5), ValueError, "budget_ms"),
        ("fits", (-1, 0.0, 1.0), IndexError, "next_hop"),
        ("lookup", (math.nan,), ValueError, "budget_ms"),
        ("lookup", (-3.0,), ValueError, "budget_ms"),
        ("observe", (0, math.nan), ValueError, "measured_ms"),
        ("observe", (0, -1.0), ValueError, "measured_ms"),
        ("observe", (5, 1.0), IndexError, "hop 5"),
        ("decay", (5,), IndexError, "hop 5"),
        ("predicted_ms", (2,), IndexError, "hop 2"),
        ("threshold", (2,), IndexError, "state 2"),
        ("state_ms", (-1,), IndexError, "state -1"),
    ],
)
def test_policy_rejects_bad_calls(method, args, error, match):
    pol = kernel.Policy([0.5], [1.0, 2.0])
    with pytest.raises(error, match=match):
        getattr(pol, method)(*args)


def test_policy_keywords_by_their_hop_names():
    pol = kernel.Policy([0.5], hop_costs_ms=[1.0, 2.0], ewma=0.5)
    pol.observe(hop=1, measured_ms=4.0)
    assert pol.predicted_ms(hop=1) == 3.0
    pol.decay(hop=1)
    assert pol.predicted_ms(1) == 2.5
    assert pol.fits(next_hop=1, elapsed_ms=0.5, budget_ms=3.0)
    assert not pol.fits(next_hop=1, elapsed_ms=1.0, budget_ms=3.0)


def test_policy_old_step_keywords_still_work_and_warn():
    """Callers that named the hop arguments by their former names keep working, each
    told once per call what to write instead; the answers are the new names' own."""
    new = kernel.Policy([0.5], [1.0, 2.0], ewma=0.5)
    with pytest.warns(
        DeprecationWarning, match="'step_costs_ms' is deprecated; use 'hop_costs_ms'"
    ):
        old = kernel.Policy([0.5], step_costs_ms=[1.0, 2.0], ewma=0.5)
    assert old.costs_ms == new.costs_ms
    assert old.ewma == new.ewma
    with pytest.warns(DeprecationWarning, match="'step' is deprecated; use 'hop'"):
        old.observe(step=1, measured_ms=4.0)
    new.observe(1, 4.0)
    with pytest.warns(DeprecationWarning, match="'step' is deprecated; use 'hop'"):
        assert old.predicted_ms(step=1) == new.predicted_ms(1) == 3.0
    with pytest.warns(DeprecationWarning, match="'step' is deprecated; use 'hop'"):
        old.decay(step=1)
    new.decay(1)
    assert old.costs_ms == new.costs_ms
    with pytest.warns(DeprecationWarning, match="'next_step' is deprecated; use 'next_hop'"):
        assert old.fits(next_step=1, elapsed_ms=0.5, budget_ms=3.0) == new.fits(1, 0.5, 3.0)
    with pytest.warns(DeprecationWarning, match="'step'"), pytest.raises(IndexError, match="hop 5"):
        old.observe(step=5, measured_ms=1.0)  # the same checks behind the old name
    bad = pytest.raises(ValueError, match=r"hop_costs_ms\[1\]")
    with bad, pytest.warns(DeprecationWarning, match="'step_costs_ms'"):
        kernel.Policy([0.5], step_costs_ms=[1.0, -2.0])


@st.composite
def gate_cases(draw):
    """A gate, logits (with NaN/Inf rows), a history of earlier argmax and scores."""
    x = draw(logits_batches())
    batch, classes = x.shape
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([0.1, 3.0, 1e4]))  # 1e4: saturated, clamped scores
    weights = [float(w) for w in rng.standard_normal(5) * scale]
    position = draw(st.integers(0, 5))
    history = rng.integers(-1, min(classes, 4), size=(batch, position)).astype(np.int64)
    previous = rng.random(batch).astype(np.float32)
    if batch > 1 and position:
        previous[0] = np.nan  # an earlier invalid row: its later gates never exit
    return x, kernel.Gate(weights, float(rng.standard_normal())), history, previous


# Parity tolerance: the score may differ from the reference by 1 float32 ulp (exp in
# float64 is the only libm call; the rest is bit-identical); everything else is exact.
@settings(max_examples=40)
@given(gate_cases(), st.floats(0.0, 1.0))
def test_gate_decide_equals_reference(case, threshold):
    x, gate, history, previous = case
    got = kernel.gate_decide(x, gate, threshold, history, previous)
    want = kernel_ref.gate_decide(x, gate.weights, gate.bias, threshold, history, previous)
    np.testing.assert_array_equal(got[0], want[0])  # pred
    valid = np.isfinite(want[1])
    np.testing.assert_array_equal(np.isfinite(got[1]), valid)
    np.testing.assert_array_max_ulp(got[1][valid], want[1][valid], maxulp=1)
    mismatch = got[2] != want[2]  # only where a 1-ulp score difference crosses the threshold
    assert np.all(np.abs(got[1][mismatch].astype(np.float64) - threshold) <= 1e-7)
    if not mismatch.any():
        for g, w in zip(got[3:], want[3:], strict=True):
            np.testing.assert_array_equal(g, w)


def test_gate_decide_into_compacts_the_running_features_in_place():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 10)) * 4).astype(np.float32)
    gate = kernel.Gate([3.0, 1.0, 0.5, 2.0, 1.0], -3.0)
    history = np.zeros((64, 3), dtype=np.int64)  # room for 3 kept exits
    history[:, 0] = rng.integers(0, 10, 64)
    history[:, 1:] = 99  # not read at position 1
    previous = rng.random(64).astype(np.float32)
    hist0, prev0 = history[:, :1].copy(), previous.copy()
    pred, score, mask, idx = kernel.decide_buffers(64)
    k = kernel.gate_decide_into(x, gate, 0.5, 1, history, previous, pred, score, mask, idx)
    want = kernel_ref.gate_decide(x, gate.weights, gate.bias, 0.5, hist0, prev0)
    assert k == want[3].size
    assert 0 < k < 64
    np.testing.assert_array_equal(idx[:k], want[3])
    np.testing.assert_array_equal(history[:k, :2], want[4])
    np.testing.assert_array_equal(previous[:k], want[5])
    np.testing.assert_array_equal(score, want[1])


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: kernel.Gate([1.0] * 4, 0.0), ValueError, "5 weights"),
        (lambda: kernel.Gate([1.0, math.inf, 0, 0, 0], 0.0), ValueError, r"weights\[1\]"),
        (lambda: kernel.Gate([1.0] * 5, math.nan), ValueError, "bias"),
        (
            lambda: kernel.gate_decide_into(
                np.zeros((2, 3), np.float32),
                kernel.Gate([0] * 5, 0),
                0.5,
                2,
                np.zeros((2, 2), np.int64),
                *(np.zeros(2, np.float32),),
                *kernel.decide_buffers(2),
            ),
            ValueError,
            "more than 2 columns",
        ),
        (
            lambda: kernel.gate_decide_into(
                np.zeros((2, 3), np.float32),
                kernel.Gate([0] * 5, 0),
                0.5,
                0,
                np.zeros((2, 2), np.int32),
                np.zeros(2, np.float32),
                *kernel.decide_buffers(2),
            ),
            TypeError,
            "history must have dtype int64",
        ),
        (
            lambda: kernel.gate_decide(
                np.zeros((2, 3), np.float32),
                kernel.Gate([0] * 5, 0),
                math.nan,
                np.zeros((2, 0), np.int64),
                np.zeros(2, np.float32),
            ),
            ValueError,
            "NaN",
        ),
    ],
)
def test_gate_rejects_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_gate_run_walks_the_kept_states():
    """GateRun over three kept states equals the reference decisions chained by hand."""
    rng = np.random.default_rng(5)
    logits = [(rng.standard_normal((50, 6)) * 3).astype(np.float32) for _ in range(3)]
    gates = [kernel.Gate([2.0, 1.0, 0.3, 1.5, 0.5], -2.5), kernel.Gate([1.0, 1, 1, 2, 2], -3.0)]
    run = kernel.GateRun(gates, measure="margin", batch=8)
    run.start(50)
    pred, conf, mask, idx = kernel.decide_buffers(50)
    rows = np.arange(50)
    hist, prev = np.zeros((50, 0), np.int64), np.zeros(50, np.float32)
    for pos in range(3):
        x = np.ascontiguousarray(logits[pos][rows])
        k = run.decide_into(x, 0.6, pred, conf, mask, idx)
        if pos < 2:
            want = kernel_ref.gate_decide(x, gates[pos].weights, gates[pos].bias, 0.6, hist, prev)
            np.testing.assert_array_equal(conf[: rows.size], want[1])
            np.testing.assert_array_equal(idx[:k], want[3])
            rows, hist, prev = rows[want[3]], want[4], want[5]
        else:
            np.testing.assert_array_equal(conf[: rows.size], kernel_ref.confidence(x, "margin"))
    assert run.position == 3
    with pytest.raises(ValueError, match="start"):
        run.decide_into(logits[0], 0.6, pred, conf, mask, idx)
