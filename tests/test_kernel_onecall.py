"""`edgeadapt.kernel.OneCall`, the one native call behind a one-state plan's `predict`:
it accepts exactly the batches the quick input check would (anything else is None, for
the complete check to word), answers every row as `decide` does, records the hop's cost
in the policy, and hands back outputs it cannot read in place."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeadapt.cascade.model import Prediction
from edgeadapt.data.inputs import BatchCheck, _finite_test
from edgeadapt.formats.bundle import InputSpec
from edgeadapt.kernel import OneCall, Policy, all_finite, decide

CLASSES = 7


def _logits(n: int, seed: int = 0) -> np.ndarray:
    return (3 * np.random.default_rng(seed).standard_normal((n, CLASSES))).astype(np.float32)


def _one(run, dtype=np.float32, shape=(2, 5), measure="maxprob", state=3, policy=None):
    policy = policy if policy is not None else Policy([], [1.0])
    return OneCall(
        run, "x", np.dtype(dtype), list(shape), "logits", CLASSES, measure,
        policy=policy, hop=0, state=state, result=Prediction,
    )  # fmt: skip


def _echo(logits: np.ndarray):
    """A run that answers `logits` and records what it was fed."""
    fed: list[dict] = []

    def run(feeds):
        fed.append(feeds)
        return {"logits": logits, "other": np.zeros(1)}

    return run, fed


@pytest.mark.parametrize("measure", ["maxprob", "margin", "entropy"])
@pytest.mark.parametrize("batch", [1, 4, 33])
def test_answers_every_row_as_decide_does(measure, batch):
    logits = _logits(batch, seed=batch)
    run, fed = _echo(logits)
    x = np.zeros((batch, 2, 5), np.float32)
    got = _one(run, measure=measure)(x)
    assert type(got) is Prediction
    pred, conf, _, _ = decide(logits, -math.inf, measure)
    np.testing.assert_array_equal(got.pred, pred)
    np.testing.assert_array_equal(got.conf, conf)
    assert got.pred.dtype == np.int64
    assert got.conf.dtype == np.float32
    assert got.exit_state.tolist() == [3] * batch
    assert got.budget_exit.tolist() == [False] * batch
    assert list(got.latency_ms) == ["total", "steps", "rows"]
    assert got.latency_ms["rows"] == [batch]
    assert got.latency_ms["total"] >= got.latency_ms["steps"][0] >= 0
    assert len(fed) == 1
    assert list(fed[0]) == ["x"]
    assert fed[0]["x"] is x


def test_the_run_cost_moves_the_policys_prediction():
    policy = Policy([], [100.0], ewma=0.5)
    one = _one(_echo(_logits(1))[0], policy=policy)
    one(np.zeros((1, 2, 5), np.float32))
    measured = one(np.zeros((1, 2, 5), np.float32)).latency_ms["steps"][0]
    assert policy.predicted_ms(0) < 100.0 * 0.5 + measured  # two EWMA steps toward ~0 ms


def test_pred_and_conf_are_fresh_exit_state_shared_per_batch_size():
    one = _one(_echo(_logits(2))[0])
    x = np.zeros((2, 2, 5), np.float32)
    a, b = one(x), one(x)
    assert a.pred is not b.pred
    assert a.conf is not b.conf
    assert a.pred.flags.writeable
    assert a.conf.flags.writeable
    assert a.exit_state is b.exit_state
    assert a.budget_exit is b.budget_exit
    assert not a.exit_state.flags.writeable
    assert not a.budget_exit.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        a.exit_state[0] = 0


def _refused() -> dict[str, object]:
    x = np.zeros((2, 2, 5), np.float32)
    return {
        "float64": x.astype(np.float64),
        "big-endian": x.astype(">f4"),
        "view": np.zeros((2, 2, 10), np.float32)[:, :, ::2],
        "rank": x[0],
        "shape": np.zeros((2, 2, 4), np.float32),
        "empty": x[:0],
        "list": x.tolist(),
        "subclass": x.view(np.ma.MaskedArray),
        "scalar": np.float32(0),
        "dict": {"x": x},
    }


@pytest.mark.parametrize("case", list(_refused()))
def test_a_batch_the_quick_check_would_not_vouch_for_is_none_and_nothing_runs(case):
    run, fed = _echo(_logits(2))
    bad = _refused()[case]
    assert _one(run)(bad) is None
    assert fed == []
    assert BatchCheck([InputSpec("x", ("batch", 2, 5), "float32")]).array(bad) is None


@settings(max_examples=60, deadline=None)
@given(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    rows=st.integers(1, 40),
    bad=st.sampled_from([np.nan, np.inf, -np.inf, None]),
    where=st.integers(0, 10**6),
)
def test_finiteness_agrees_with_numpy(dtype, rows, bad, where):
    x = np.random.default_rng(where).standard_normal((rows, 2, 5)).astype(dtype)
    if bad is not None:
        x.reshape(-1)[where % x.size] = bad
    run, fed = _echo(_logits(rows))
    got = _one(run, dtype=dtype)(x)
    assert (got is not None) == bool(np.isfinite(x).all())
    assert len(fed) == (got is not None)


def test_a_large_batch_with_one_nan_deep_inside_is_refused():
    x = np.zeros((8000, 2, 5), np.float32)  # past the size where the scan drops the GIL
    x[7999, 1, 4] = np.nan
    assert _one(_echo(_logits(8000))[0])(x) is None
    x[7999, 1, 4] = 0
    assert type(_one(_echo(_logits(8000))[0])(x)) is Prediction


def test_integer_inputs_take_no_finiteness_test():
    run, _ = _echo(_logits(2))
    ids = np.full((2, 2, 5), 2**40, np.int64)
    assert type(_one(run, dtype=np.int64)(ids)) is Prediction


@pytest.mark.parametrize(
    "outputs",
    [
        {"logits": _logits(2).astype(np.float64)},
        {"logits": np.asfortranarray(_logits(2))},
        {"logits": _logits(3)},  # rows do not match the batch
        {"logits": np.zeros((2, CLASSES + 1), np.float32)},
        {"logits": np.zeros((2, 1, CLASSES), np.float32)},
        {"other": _logits(2)},
        [_logits(2)],
    ],
    ids=["float64", "fortran", "rows", "classes", "rank", "missing", "not-a-dict"],
)
def test_outputs_it_cannot_read_in_place_are_handed_back(outputs):
    got = _one(lambda feeds: outputs)(np.zeros((2, 2, 5), np.float32))
    assert type(got) is tuple
    out, run_ns, elapsed_ns = got
    assert out is outputs
    assert 0 <= run_ns <= elapsed_ns


def test_an_error_of_the_run_propagates_as_it_is():
    def run(feeds):
        raise KeyError("gone")

    with pytest.raises(KeyError, match="gone"):
        _one(run)(np.zeros((1, 2, 5), np.float32))


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"run": 3}, TypeError, "callable"),
        ({"classes": 1}, ValueError, "classes"),
        ({"measure": "odds"}, ValueError, "measure"),
        ({"hop": 1}, IndexError, "hop 1"),
        ({"result": Prediction(None, None, None, None, {})}, TypeError, "class"),
        ({"shape": [2, -1]}, ValueError, "negative"),
        ({"policy": object()}, TypeError, "must be a Policy"),
    ],
)
def test_construction_is_checked(change, error, match):
    kw = {
        "run": lambda feeds: {},
        "input": "x",
        "dtype": np.dtype(np.float32),
        "shape": [2, 5],
        "logits": "logits",
        "classes": CLASSES,
        "measure": "maxprob",
        "policy": Policy([], [1.0]),
        "hop": 0,
        "state": 0,
        "result": Prediction,
    }
    kw.update(change)
    with pytest.raises(error, match=match):
        OneCall(**kw)


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros(4, np.int32), "dtype"),
        (np.zeros(4, ">f4"), "dtype"),
        (np.zeros(8, np.float32)[::2], "C-contiguous"),
        ([0.0, 1.0], "numpy.ndarray"),
    ],
    ids=["int", "big-endian", "view", "list"],
)
def test_all_finite_refuses_what_it_cannot_read_in_place(x, match):
    with pytest.raises(TypeError, match=match):
        all_finite(x)


def test_other_float_widths_fall_back_to_numpy():
    test = _finite_test(np.dtype(np.longdouble))
    x = np.ones(3, np.longdouble)
    assert test(x)
    x[1] = np.inf
    assert not test(x)
