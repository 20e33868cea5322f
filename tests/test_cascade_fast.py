"""The one-state fast path of `AdaptiveModel.predict` (a plan that keeps one state, a
branch answering alone): the same answers as the general cascade row for row, the same
refusals word for word as `edgeadapt.data.inputs.check_batch`, and arrays the caller owns."""

from pathlib import Path

import numpy as np
import pytest

from edgeadapt.cascade.model import AdaptiveModel, Prediction
from edgeadapt.data.inputs import check_batch
from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.kernel import OneCall
from tests.plans import runner_plan

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
ORT = {"threads": 1}


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 40)).astype(np.float32)


@pytest.fixture(scope="module")
def family():
    """The family bundle's last member alone (fast path) and the full cascade with no
    early exit (general path: the same member answers every row)."""
    bundle = load_bundle(BUNDLES / "mnist1d-family")
    last = len(bundle.states) - 1
    plan = runner_plan(bundle, [last], [], [1.0], budget=False)
    with (
        AdaptiveModel.load(bundle, "onnxruntime", plan=plan, runtime_options=ORT) as one,
        AdaptiveModel.load(bundle, "onnxruntime", thresholds=2.0, runtime_options=ORT) as full,
    ):
        yield bundle, one, full


def test_the_fast_path_is_taken(family):
    bundle, one, full = family
    assert one._one is not None
    assert full._one is None
    call, _ = one._one
    got = call(_x(2))  # the native call answers by itself
    assert isinstance(got, Prediction)
    assert got.exit_state.tolist() == [len(bundle.states) - 1] * 2
    assert call(_x(2)[:, :, ::2]) is None  # a batch it cannot vouch for goes back


def test_a_failing_run_is_worded_as_the_session_words_it(family, monkeypatch):
    bundle, one, _ = family
    _, session = one._one

    def broken(feeds):
        raise RuntimeError("device lost")

    native = OneCall(
        broken,
        bundle.input.name,
        np.dtype(np.float32),
        [1, 40],
        one._route[-1].logits,
        bundle.num_classes,
        "maxprob",
        policy=one.policy,
        hop=0,
        state=0,
        result=Prediction,
    )
    monkeypatch.setattr(one, "_one", (native, session))
    with pytest.raises(EdgeadaptError, match=r"failed to run: device lost") as e:
        one.predict(_x(1))
    assert str(session.path) in str(e.value)


def test_logits_the_kernel_cannot_read_in_place_take_the_python_answer(family, monkeypatch):
    bundle, one, full = family
    _, session = one._one
    name = one._route[-1].logits

    def transposed(feeds):  # the logits as a Fortran-ordered view
        out = session.unchecked_run(feeds)
        return {name: np.asfortranarray(out[name])}

    native = OneCall(
        transposed,
        bundle.input.name,
        np.dtype(np.float32),
        [1, 40],
        name,
        bundle.num_classes,
        "maxprob",
        policy=one.policy,
        hop=0,
        state=len(bundle.states) - 1,
        result=Prediction,
    )
    monkeypatch.setattr(one, "_one", (native, session))
    x = _x(5, seed=9)
    got, want = one.predict(x), full.predict(x)
    np.testing.assert_array_equal(got.pred, want.pred)
    np.testing.assert_array_equal(got.conf, want.conf)
    np.testing.assert_array_equal(got.exit_state, want.exit_state)
    assert got.latency_ms["total"] >= got.latency_ms["steps"][0] > 0


def test_a_closed_model_refuses_rather_than_calling_natively():
    bundle = load_bundle(BUNDLES / "mnist1d-family")
    plan = runner_plan(bundle, [0], [], [1.0], budget=False)
    m = AdaptiveModel.load(bundle, "onnxruntime", plan=plan, runtime_options=ORT)
    m.predict(_x(1))
    m.close()
    with pytest.raises(EdgeadaptError, match="closed"):
        m.predict(_x(1))


@pytest.mark.parametrize("batch", [1, 3, 64, 700])
def test_fast_path_answers_equal_the_general_path(family, batch):
    bundle, one, full = family
    x = _x(batch, seed=batch)
    fast = one.predict(x)
    general = full.predict(x)
    # the mapping form takes the checked route (check_inputs, then the one hop)
    checked = one.predict({bundle.input.name: x})
    for got in (fast, checked):
        np.testing.assert_array_equal(got.pred, general.pred)
        np.testing.assert_array_equal(got.conf, general.conf)
        np.testing.assert_array_equal(got.exit_state, general.exit_state)
        np.testing.assert_array_equal(got.budget_exit, general.budget_exit)
        assert got.pred.dtype == general.pred.dtype
        assert got.conf.dtype == general.conf.dtype
        assert got.latency_ms["rows"] == [batch]
        assert len(got.latency_ms["steps"]) == 1
        assert got.latency_ms["total"] > 0


def test_a_view_takes_the_complete_check_and_answers_alike(family):
    _, one, _ = family
    x = _x(8, seed=3)
    view = np.repeat(x, 2, axis=0)[::2]  # not C-contiguous
    assert not view.flags.c_contiguous
    assert one._check.array(view) is None
    got, want = one.predict(view), one.predict(x)
    np.testing.assert_array_equal(got.pred, want.pred)
    np.testing.assert_array_equal(got.conf, want.conf)


def test_returned_arrays_are_not_overwritten_by_the_next_call(family):
    _, one, _ = family
    first = one.predict(_x(4, seed=1))
    pred, conf = first.pred.copy(), first.conf.copy()
    second = one.predict(_x(4, seed=2))
    assert not np.array_equal(second.conf, conf)  # different inputs, different answers
    np.testing.assert_array_equal(first.pred, pred)
    np.testing.assert_array_equal(first.conf, conf)
    assert first.pred.flags.writeable
    assert first.conf.flags.writeable
    # every row alike: shared, so read-only
    assert not first.exit_state.flags.writeable
    assert not first.budget_exit.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        first.exit_state[0] = 0


def _bad_inputs() -> dict[str, object]:
    x = _x(2)
    nan, inf = x.copy(), x.copy()
    nan[1, 0, 3] = np.nan
    inf[0, 0, 0] = -np.inf
    big = _x(300)  # 12,000 values: past the Python sum, numpy's finiteness test
    big[299, 0, 39] = np.nan
    return {
        "float64": x.astype(np.float64),
        "big-endian": x.astype(">f4"),
        "int": x.astype(np.int32),
        "rank": x[0],
        "shape": x[:, :, :39].copy(),
        "empty": x[:0],
        "nan": nan,
        "inf": inf,
        "large nan": big,
        "list": x.tolist(),
        "unknown name": {"y": x},
        "scalar": np.float32(1.0),
    }


@pytest.mark.parametrize("case", list(_bad_inputs()))
def test_bad_inputs_are_refused_with_the_complete_checks_words(family, case):
    bundle, one, full = family
    bad = _bad_inputs()[case]
    with pytest.raises(InputError) as want:
        check_batch(bundle.inputs, bad, source="input")
    for model in (one, full):
        with pytest.raises(InputError) as got:
            model.predict(bad)
        assert str(got.value) == str(want.value)
        assert (got.value.source, got.value.field) == (want.value.source, want.value.field)


def test_multiexit_one_state_runs_the_merged_model_and_answers_as_the_cascade():
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    last = len(bundle.states) - 1
    plan = runner_plan(bundle, [last], [], [1.0], budget=False)
    x = _x(16, seed=5)
    with (
        AdaptiveModel.load(bundle, "onnxruntime", plan=plan, runtime_options=ORT) as one,
        AdaptiveModel.load(bundle, "onnxruntime", thresholds=2.0, runtime_options=ORT) as full,
    ):
        assert one.static is not None
        assert one._one is not None
        got, want = one.predict(x), full.predict(x)
    np.testing.assert_array_equal(got.pred, want.pred)
    np.testing.assert_array_equal(got.exit_state, want.exit_state)
    # one merged graph against four chained ones: equal to float rounding
    np.testing.assert_allclose(got.conf, want.conf, rtol=1e-5, atol=1e-6)
