"""AdaptiveModel: threshold extremes, a numpy reference, backends, budget, compaction, plans,
NaN logits and bad inputs, on the shipped demo bundles."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.bundle import InputSpec, load_bundle, write_bundle
from edgeadapt.formats.plan import Plan
from edgeadapt.kernel import confidence
from edgeadapt.runtimes import get_runtime
from tests.plans import runner_plan

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
MULTIEXIT = BUNDLES / "mnist1d-multiexit"
FAMILY = BUNDLES / "mnist1d-family"
ORT = {"threads": 1}


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 40)).astype(np.float32)


def state_logits(path: Path, x: np.ndarray) -> list[np.ndarray]:
    """Every state's logits on every row, running each step by hand (the reference)."""
    bundle = load_bundle(path)
    rt = get_runtime("onnxruntime", **ORT)
    out, prev = [], {bundle.input.name: x}
    for step in bundle.steps:
        with rt.load(step.path) as s:
            res = s.run({n: x if n == bundle.input.name else prev[n] for n in step.inputs})
        out.append(res[step.logits])
        if bundle.kind == "early-exit":
            prev = res
    return out


@pytest.fixture(scope="module", params=[MULTIEXIT, FAMILY], ids=["early-exit", "ensemble"])
def case(request):
    x = _x(48)
    return request.param, x, state_logits(request.param, x)


def test_thresholds_above_one_give_the_last_state(case):
    path, x, logits = case
    with AdaptiveModel.load(path, thresholds=1.5, runtime_options=ORT) as m:
        out = m.predict(x)
    last = len(logits) - 1
    np.testing.assert_array_equal(out.pred, logits[-1].argmax(axis=1))
    assert (out.exit_state == last).all()
    assert out.latency_ms["rows"] == [len(x)] * len(logits)


def test_thresholds_zero_give_the_first_state(case):
    path, x, logits = case
    with AdaptiveModel.load(path, thresholds=0.0, runtime_options=ORT) as m:
        out = m.predict(x)
    np.testing.assert_array_equal(out.pred, logits[0].argmax(axis=1))
    assert (out.exit_state == 0).all()
    assert out.latency_ms["rows"] == [len(x)]  # nobody continues: later steps never run
    np.testing.assert_allclose(out.conf, confidence(logits[0]), rtol=1e-6)


_MULTI_LOGITS = state_logits(MULTIEXIT, _x(32, seed=1))


@settings(max_examples=20)
@given(t=st.lists(st.floats(0.0, 1.0, width=32), min_size=3, max_size=3))
def test_matches_a_numpy_reference_cascade(t):
    """Exit at the first state whose maxprob >= its threshold; rows run = rows still active."""
    x = _x(32, seed=1)
    logits = _MULTI_LOGITS
    conf = np.stack([confidence(z) for z in logits], axis=1)
    passed = conf[:, :3] >= np.array(t, dtype=np.float64)
    want_state = np.where(passed.any(axis=1), passed.argmax(axis=1), 3)
    with AdaptiveModel.load(MULTIEXIT, thresholds=t, runtime_options=ORT) as m:
        out = m.predict(x)
    np.testing.assert_array_equal(out.exit_state, want_state)
    rows = np.arange(len(x))
    np.testing.assert_array_equal(
        out.pred, np.stack([z.argmax(axis=1) for z in logits], axis=1)[rows, want_state]
    )
    ran = [int((want_state >= j).sum()) for j in range(4)]
    assert out.latency_ms["rows"] == [r for r in ran if r > 0]


def test_compaction_runs_later_steps_on_the_survivors_only(case):
    path, x, logits = case
    with AdaptiveModel.load(path, thresholds=0.5, runtime_options=ORT) as m:
        out = m.predict(x)
    rows = out.latency_ms["rows"]
    assert rows[0] == len(x)
    assert rows == [int((out.exit_state >= j).sum()) for j in range(len(rows))]
    assert sum(rows) < len(x) * len(logits)  # someone exited early
    assert len(out.latency_ms["steps"]) == len(rows)
    assert out.latency_ms["total"] >= sum(out.latency_ms["steps"])
    conf_all = np.stack([confidence(z) for z in logits], axis=1)
    early = out.exit_state < len(logits) - 1
    assert (conf_all[early, out.exit_state[early]] >= 0.5).all()


@pytest.mark.parametrize("path", [MULTIEXIT, FAMILY], ids=["early-exit", "ensemble"])
def test_onnxruntime_and_openvino_agree(path):
    x = _x(40, seed=3)
    outs = []
    for runtime, opts in (("onnxruntime", ORT), ("openvino", {"threads": 1})):
        with AdaptiveModel.load(path, runtime, thresholds=0.6, runtime_options=opts) as m:
            outs.append(m.predict(x))
    a, b = outs
    np.testing.assert_array_equal(a.pred, b.pred)
    np.testing.assert_array_equal(a.exit_state, b.exit_state)
    np.testing.assert_allclose(a.conf, b.conf, atol=1e-4)


def test_budget_below_the_first_step_returns_the_first_exit():
    x = _x(16)
    costs = [5.0, 5.0, 5.0, 5.0]
    with AdaptiveModel.load(MULTIEXIT, thresholds=2.0, step_costs_ms=costs) as m:
        out = m.predict(x, budget_ms=1e-3)
        full = m.predict(x, budget_ms=1e6)
    first = state_logits(MULTIEXIT, x)[0].argmax(axis=1)
    np.testing.assert_array_equal(out.pred, first)
    assert (out.exit_state == 0).all()
    assert out.budget_exit.all()
    assert out.latency_ms["rows"] == [16]
    assert (full.exit_state == 3).all()
    assert not full.budget_exit.any()


def test_budget_stops_before_a_step_that_cannot_fit_and_learns_costs():
    x = _x(8)
    # steps 0 and 1 predicted free, step 2 predicted 1 s: stop after state 1
    with AdaptiveModel.load(MULTIEXIT, thresholds=2.0, step_costs_ms=[0, 0, 1000, 0]) as m:
        out = m.predict(x, budget_ms=500.0)
        assert (out.exit_state == 1).all()
        assert out.budget_exit.all()
        assert len(out.latency_ms["rows"]) == 2
        assert m.policy.predicted_ms(0) > 0  # the measured latency was folded in


def test_a_step_inflated_by_one_slow_run_is_tried_again():
    # one preempted run (1 s) inflates step 1's prediction far past the budget; the
    # skipped step drifts back toward its prior (EWMA 0.2) until it runs again
    with AdaptiveModel.load(MULTIEXIT, thresholds=2.0, step_costs_ms=[0.01] * 4) as m:
        m.policy.observe(1, 1000.0)  # predicted 200 ms
        skipped = 0
        while m.predict(_x(1), budget_ms=50.0).budget_exit[0]:
            skipped += 1
            assert skipped < 20, m.policy.costs_ms
        # 200 * 0.8^k + 0.2 * 0.01 * (1 - 0.8^k) <= 50 - elapsed first at k = 7
        assert skipped == 7
        assert m.policy.predicted_ms(1) < 50.0


def _plan(path: Path, states, thresholds, cost_ms) -> Plan:
    return runner_plan(load_bundle(path), states, thresholds, cost_ms, budget=False)


def test_early_exit_plan_runs_skipped_steps_without_deciding():
    x = _x(20)
    logits = state_logits(MULTIEXIT, x)
    plan = _plan(MULTIEXIT, [1, 2], [0.0], [1.0, 2.0])
    with AdaptiveModel.load(MULTIEXIT, plan=plan) as m:
        out = m.predict(x)
    assert (out.exit_state == 1).all()  # state 0 never decides, state 1 takes everyone
    np.testing.assert_array_equal(out.pred, logits[1].argmax(axis=1))
    assert out.latency_ms["rows"] == [20, 20]
    plan = replace(plan, thresholds=(2.0,))
    with AdaptiveModel.load(MULTIEXIT, plan=plan) as m:
        out = m.predict(x)
        budget = m.predict(x, budget_ms=1e-3)  # plan costs: state 2 does not fit
    assert (out.exit_state == 2).all()
    assert out.latency_ms["rows"] == [20, 20, 20]
    assert (budget.exit_state == 1).all()
    assert budget.budget_exit.all()


def test_ensemble_plan_runs_only_its_members():
    x = _x(20)
    logits = state_logits(FAMILY, x)
    plan = _plan(FAMILY, [0, 2], [2.0], [1.0, 3.0])
    with AdaptiveModel.load(FAMILY, plan=plan) as m:
        out = m.predict(x)
        assert m.sessions[1] is None  # never loaded
    np.testing.assert_array_equal(out.pred, logits[2].argmax(axis=1))
    assert (out.exit_state == 2).all()
    assert out.latency_ms["rows"] == [20, 20]


def test_plan_for_another_bundle_is_refused():
    plan = replace(_plan(FAMILY, [0, 2], [0.5], [1.0, 2.0]), manifest_sha256="0" * 64)
    with pytest.raises(InputError, match="another bundle"):
        AdaptiveModel.load(FAMILY, plan=plan)


def _log_member(seed: int) -> onnx.ModelProto:
    """x -> Log(Flatten(x) @ W): NaN logits wherever the row has a negative product."""
    w = np.abs(np.random.default_rng(seed).standard_normal((10, 40))).astype(np.float32)
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Gemm", ["f", "w"], ["g"], transB=1),
        helper.make_node("Log", ["g"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "log",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 40])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_nan_logits_never_exit_and_end_as_minus_one(tmp_path):
    bundle = write_bundle(
        tmp_path / "b",
        kind="ensemble",
        input=InputSpec("x", ("batch", 1, 40)),
        num_classes=10,
        models=[_log_member(0), _log_member(1)],
        producer={"exporter": "test", "source_sha256": "0" * 64},
    )
    x = np.abs(_x(6))
    x[[1, 4]] *= -1  # these rows give NaN logits at both states
    with AdaptiveModel.load(bundle, thresholds=0.0) as m:
        out = m.predict(x)
    np.testing.assert_array_equal(out.exit_state, [0, 1, 0, 0, 1, 0])
    np.testing.assert_array_equal(out.pred[[1, 4]], [-1, -1])
    assert np.isnan(out.conf[[1, 4]]).all()
    assert (out.pred[[0, 2, 3, 5]] >= 0).all()
    assert out.latency_ms["rows"] == [6, 2]


@pytest.fixture(scope="module")
def model():
    with AdaptiveModel.load(MULTIEXIT, thresholds=0.5, step_costs_ms=[1, 1, 1, 1]) as m:
        yield m


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (_x(4).astype(np.float64), "dtype float32"),
        (_x(4)[:, 0], r"shape \[B, 1, 40\]"),
        (np.zeros((4, 1, 39), np.float32), r"shape \[B, 1, 40\]"),
        (np.zeros((0, 1, 40), np.float32), "empty batch"),
        (np.where(np.arange(4)[:, None, None] == 2, np.nan, _x(4)).astype(np.float32), "NaN"),
        (_x(4).tolist(), "numpy array"),
    ],
    ids=["float64", "rank", "features", "empty", "nan", "list"],
)
def test_bad_input_is_a_clear_error(model, x, match):
    with pytest.raises(InputError, match=match):
        model.predict(x)


@pytest.mark.parametrize("budget", [0, -1.0, float("nan"), float("inf"), True, "5"])
def test_bad_budget_is_refused(model, budget):
    with pytest.raises(InputError, match="budget_ms"):
        model.predict(_x(2), budget_ms=budget)


def test_budget_without_costs_is_refused():
    with AdaptiveModel.load(FAMILY, thresholds=0.5) as m, pytest.raises(InputError, match="costs"):
        m.predict(_x(2), budget_ms=5.0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"runtime": "nope", "thresholds": 0.5}, "unknown runtime"),
        ({"thresholds": [0.5, 0.5]}, "got 2"),
        ({"thresholds": [0.5, float("nan"), 0.5]}, "NaN"),
        ({"thresholds": "0.5"}, "number"),
        ({}, "thresholds or a plan"),
        ({"thresholds": 0.5, "measure": "bogus"}, "measure"),
        ({"thresholds": 0.5, "step_costs_ms": [1, 2]}, "one per step"),
        ({"thresholds": 0.5, "step_costs_ms": [1, 2, float("nan"), 1]}, "finite"),
    ],
)
def test_bad_load_arguments_are_clear_errors(kwargs, match):
    with pytest.raises(EdgeadaptError, match=match):
        AdaptiveModel.load(MULTIEXIT, **kwargs)


def test_profile_seeds_the_policy_costs():
    from edgeadapt.formats.profile import MIN_SAMPLES
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle

    bundle = load_bundle(MULTIEXIT)
    profile = profile_bundle(bundle, timing=TimingOptions(iters=MIN_SAMPLES, warmup=2))
    p50 = [s.get("p50") for s in profile.step_stats(1)]
    with AdaptiveModel.load(bundle, thresholds=2.0, profile=profile) as m:
        assert m.policy.costs_ms == pytest.approx(p50)
        out = m.predict(_x(1), budget_ms=1e6)
    assert (out.exit_state == 3).all()
    with pytest.raises(InputError, match="not both"):
        AdaptiveModel.load(bundle, thresholds=2.0, profile=profile, step_costs_ms=p50)


def test_budget_exit_after_compaction_keeps_each_rows_last_answer():
    """Rows that exit by threshold keep their state; the rest, stopped by the budget before
    state 2, answer with state 1 (both the scattered and the in-place answer paths)."""
    x = _x(40, seed=5)
    logits = state_logits(MULTIEXIT, x)
    conf = [confidence(z) for z in logits]
    t0, t1 = float(np.median(conf[0])), float(np.median(conf[1]))
    want = np.where(conf[0] >= t0, 0, 1)
    with AdaptiveModel.load(
        MULTIEXIT, thresholds=[t0, t1, 2.0], step_costs_ms=[0, 0, 1000, 0]
    ) as m:
        out = m.predict(x, budget_ms=500.0)
    np.testing.assert_array_equal(out.exit_state, want)
    rows = np.arange(len(x))
    np.testing.assert_array_equal(
        out.pred, np.stack([z.argmax(axis=1) for z in logits], axis=1)[rows, want]
    )
    np.testing.assert_allclose(out.conf, np.stack(conf, axis=1)[rows, want], rtol=1e-6)
    stopped = (conf[0] < t0) & (conf[1] < t1)
    np.testing.assert_array_equal(out.budget_exit, stopped)
    assert stopped.any()  # the budget stopped some rows
    assert (~stopped & (want == 1)).any()  # some exited at state 1 by threshold
    assert (want == 0).any()
    assert out.latency_ms["rows"] == [40, int((conf[0] < t0).sum())]


def test_input_fast_path_agrees_with_the_complete_check(model):
    x = _x(64, seed=6)  # 2560 elements: the numpy sum
    want = model.predict(x)
    wide = np.repeat(x, 2, axis=2)[:, :, ::2]  # the same values, not contiguous
    np.testing.assert_array_equal(model.predict(wide).pred, want.pred)
    huge = np.full((2, 1, 40), 3e38, np.float32)  # finite, but the sum overflows
    assert model.predict(huge).pred.shape == (2,)
    for n in (1, 64):  # the Python sum and the numpy sum
        for bad in (np.nan, np.inf, -np.inf):
            x = _x(n, seed=7)
            x[n - 1, 0, 39] = bad
            with pytest.raises(InputError, match="NaN or infinity"):
                model.predict(x)


@pytest.mark.parametrize(
    ("path", "plan_states"),
    [(MULTIEXIT, None), (FAMILY, None), (FAMILY, [0, 2])],
    ids=["early-exit", "ensemble", "ensemble-plan"],
)
def test_warmup_runs_every_loaded_step_and_leaves_the_policy_alone(monkeypatch, path, plan_states):
    from edgeadapt.runtimes.onnxruntime import OnnxRuntimeSession

    calls: list[tuple[str, int]] = []
    real = OnnxRuntimeSession._run

    def counting(self, feeds):
        calls.append((self.path.name, next(iter(feeds.values())).shape[0]))
        return real(self, feeds)

    monkeypatch.setattr(OnnxRuntimeSession, "_run", counting)
    costs = [1.0, 2.0, 3.0, 4.0][: len(load_bundle(path).steps)]
    if plan_states is None:
        kwargs: dict = {"thresholds": 2.0, "step_costs_ms": costs}
    else:
        kwargs, costs = {"plan": _plan(path, plan_states, [2.0], [1.0, 3.0])}, [1.0, 2.0]
    with AdaptiveModel.load(path, runtime_options=ORT, warmup=3, **kwargs) as m:
        assert m.policy.costs_ms == pytest.approx(costs)  # warm-up times are not learned
        loaded = [s.path.name for s in m.sessions if s is not None]
        assert sorted(calls) == sorted((name, 1) for name in loaded for _ in range(3))
        x = _x(6, seed=8)
        out = m.predict(x)
    np.testing.assert_array_equal(out.pred, state_logits(path, x)[-1].argmax(axis=1))


@pytest.mark.parametrize("warmup", [-1, 1.5, True, "2"])
def test_bad_warmup_is_refused(warmup):
    with pytest.raises(InputError, match="warmup"):
        AdaptiveModel.load(MULTIEXIT, thresholds=0.5, warmup=warmup)


def test_openvino_outputs_stay_the_callers_across_shared_and_copied_calls():
    """Large outputs are written in place into fresh arrays, small ones copied: no call
    may write into an array an earlier call returned."""
    bundle = load_bundle(MULTIEXIT)
    step = bundle.steps[0]  # activation0: 15 KB per row, shared from a few rows up
    ov = get_runtime("openvino", threads=1).load(step.path)
    ref = get_runtime("onnxruntime", **ORT).load(step.path)
    first, small, second = _x(64, seed=9), _x(1, seed=10), _x(64, seed=11)
    with ov, ref:
        kept = ov.run({"x": first})
        snapshot = {k: v.copy() for k, v in kept.items()}
        got_small = ov.run({"x": small})
        got_second = ov.run({"x": second})
        assert not np.shares_memory(kept[step.activation], got_second[step.activation])
        for k in kept:
            np.testing.assert_array_equal(kept[k], snapshot[k])
        for x, got in ((first, kept), (small, got_small), (second, got_second)):
            want = ref.run({"x": x})
            for k in want:
                np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4)


def _spinning(session) -> tuple[str, str]:
    """The spin entries of the ONNX Runtime session behind one of our sessions."""
    options = session._session.get_session_options()
    return tuple(
        options.get_session_config_entry(f"session.{pool}.allow_spinning")
        for pool in ("intra_op", "inter_op")
    )


def test_cascade_sessions_do_not_spin_idle_workers_by_default():
    """Each session has its own thread pool: spinning workers of one step would take the
    cores the next step needs."""
    from edgeadapt.formats.presets import RuntimeConfig, load_preset

    with AdaptiveModel.load(MULTIEXIT, thresholds=2.0, runtime_options={"threads": 2}) as m:
        assert [_spinning(s) for s in m.sessions] == [("0", "0")] * len(m.sessions)
    options = RuntimeConfig.resolve(load_preset("x86-ort-2t")).backend_options()
    with AdaptiveModel.load(MULTIEXIT, thresholds=2.0, runtime_options=options) as m:
        assert {_spinning(s) for s in m.sessions} == {("0", "0")}
    # the user can still ask for spinning, directly or through a preset's options
    options = RuntimeConfig.resolve(
        load_preset("x86-ort-2t"), options={"spin": True}
    ).backend_options()
    with AdaptiveModel.load(MULTIEXIT, thresholds=2.0, runtime_options=options) as m:
        assert {_spinning(s) for s in m.sessions} == {("1", "1")}


def test_a_preset_of_ones_own_can_turn_spinning_on(tmp_path):
    import json

    from edgeadapt.formats.presets import RuntimeConfig, load_preset

    doc = json.loads(Path(load_preset("x86-ort-2t").source).read_text())
    doc.update(name="my-board", options={**doc["options"], "spin": True})
    path = tmp_path / "my-board.json"
    path.write_text(json.dumps(doc))
    options = RuntimeConfig.resolve(load_preset(path)).backend_options()
    with AdaptiveModel.load(MULTIEXIT, thresholds=2.0, runtime_options=options) as m:
        assert {_spinning(s) for s in m.sessions} == {("1", "1")}
