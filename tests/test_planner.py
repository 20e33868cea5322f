"""Planner: subset search, calibration on one split, figures on the other, budget table."""

import dataclasses
import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeadapt.errors import InputError
from edgeadapt.oracle.equations import exact_oracle
from edgeadapt.planning.calibrate import calibrate, simulate
from edgeadapt.planning.planner import (
    Outcomes,
    PlanCosts,
    PlanOptions,
    budget_table,
    gap_closure,
    make_plan,
)
from edgeadapt.planning.risk import required_samples
from edgeadapt.planning.scheduler import budget_state
from edgeadapt.planning.search import subset_costs
from tests.synthetic import nested_outcomes

SHA = "ab" * 32


def outcomes(n, s, seed, noise=1.0):
    """`nested_outcomes` as the planner's Outcomes, and the cascade costs."""
    conf, correct, cost = nested_outcomes(n, s, seed, noise)
    return Outcomes(tuple(f"exit{i}" for i in range(s)), correct, conf), cost


def _simulated(plan, data):
    """The plan's threshold policy simulated on `data` over its kept states."""
    cols = list(plan.states)
    return simulate(
        data.conf[:, cols], data.correct[:, cols], np.array(plan.cost_ms), np.array(plan.thresholds)
    )


plans = st.tuples(
    st.integers(40, 300),
    st.integers(2, 5),
    st.integers(0, 2**31),
    st.integers(1, 4),
    st.sampled_from([0.0, 0.01, 0.05]),
    st.sampled_from(["early-exit", "ensemble"]),
)


@given(plans)
def test_plan_keeps_the_drop_on_calibration_and_reports_heldout(args):
    n, s, seed, k, max_drop, kind = args
    data, cost = outcomes(n, s, seed)
    calib, held = data.split(0.5, seed)
    plan = make_plan(
        calib,
        held,
        cost,
        manifest_sha256=SHA,
        kind=kind,
        options=PlanOptions(max_states=k, max_drop=max_drop, calibration="empirical"),
    )
    assert plan.promise is None
    assert plan.calibration.drop <= max_drop + 1e-12
    assert 1 <= len(plan.states) <= k
    assert list(plan.states) == sorted(set(plan.states))
    assert len(plan.thresholds) == len(plan.states) - 1
    # held-out figures are the simulated policy on the held-out split
    run = _simulated(plan, held)
    assert plan.heldout.accuracy == pytest.approx(run.accuracy)
    assert plan.heldout.cost_ms == pytest.approx(run.expected_cost)
    assert plan.heldout.reference_accuracy == held.correct[:, plan.reference_state].mean()
    assert plan.drop_bound >= plan.heldout.drop - 1e-12
    oracle = exact_oracle(held.correct, cost)
    assert (plan.r_oracle, plan.a_oracle) == (oracle.r_oracle, oracle.a_oracle)
    # the budget table rises in cost and accuracy over kept states
    assert {r.state for r in plan.budget} <= set(plan.states)
    assert all(
        a.budget_ms < b.budget_ms and a.accuracy < b.accuracy
        for a, b in itertools.pairwise(plan.budget)
    )


@settings(max_examples=25)
@given(
    st.integers(30, 120),
    st.integers(2, 4),
    st.integers(0, 2**31),
    st.sampled_from(["early-exit", "ensemble"]),
)
def test_search_is_no_worse_than_any_subset(n, s, seed, kind):
    data, cost = outcomes(n, s, seed)
    plan = make_plan(
        data,
        data,
        cost,
        manifest_sha256=SHA,
        kind=kind,
        options=PlanOptions(max_states=s, max_drop=0.02, calibration="empirical"),
    )
    ref = data.correct.mean(axis=0).max()
    best = np.inf
    for k in range(1, s + 1):
        for states in itertools.combinations(range(s), k):
            cols = list(states)
            cal = calibrate(
                data.conf[:, cols],
                data.correct[:, cols],
                subset_costs(cost, states, kind),
                max_drop=0.02,
                reference_accuracy=ref,
                polish=False,
            )
            if cal.feasible:
                best = min(best, cal.expected_cost)
    assert plan.calibration.cost_ms <= best + 1e-9


def test_gap_closure_is_one_when_the_policy_is_the_oracle():
    data, cost = outcomes(400, 4, 5)
    correct = data.correct
    hopeless = ~correct.any(axis=1)
    # confidence says exactly "this state is right"; hopeless samples are sure at once
    conf = correct.astype(np.float32)
    conf[hopeless, 0] = 1.0
    perfect = Outcomes(data.names, correct, conf)
    plan = make_plan(
        perfect,
        perfect,
        cost,
        manifest_sha256=SHA,
        options=PlanOptions(max_states=4, max_drop=0.0, calibration="empirical"),
    )
    assert plan.heldout.cost_ms == pytest.approx(plan.r_oracle)
    assert plan.gap_closure == pytest.approx(1.0)


@settings(max_examples=25)
@given(
    st.integers(40, 1500),
    st.integers(2, 4),
    st.integers(0, 2**31),
    st.sampled_from(["early-exit", "ensemble"]),
    st.sampled_from(["net", "loss"]),
)
def test_risk_controlled_plan_promises_or_keeps_the_static_model(n, s, seed, kind, kept):
    data, cost = outcomes(n, s, seed)
    calib, held = data.split(0.5, seed)
    plan = make_plan(
        calib,
        held,
        cost,
        manifest_sha256=SHA,
        kind=kind,
        options=PlanOptions(max_drop=0.02, delta=0.1, promise=kept),
    )
    promise = plan.promise
    assert promise is not None
    assert promise.kind == kept
    assert (promise.max_drop, promise.delta, promise.n) == (0.02, 0.1, held.n)
    assert promise.required_n == required_samples(0.02, 0.1)
    if promise.holds:
        assert promise.p_value <= 0.1
        assert plan.drop_bound == 0.02
        run = _simulated(plan, held)
        ref = held.correct[:, plan.reference_state]
        right = held.correct[np.arange(held.n), np.array(plan.states)[run.exit_state]]
        assert np.count_nonzero(ref & ~right) == promise.losses
        assert np.count_nonzero(~ref & right) == promise.gains
    else:
        assert plan.states == (plan.reference_state,)
        assert plan.thresholds == ()
        assert plan.heldout.drop == 0.0
    if held.n < promise.required_n:
        assert not promise.holds


def test_gap_closure_values():
    assert gap_closure(10.0, 10.0, 4.0) == 0.0
    assert gap_closure(10.0, 7.0, 4.0) == pytest.approx(0.5)
    assert gap_closure(10.0, 7.0, 10.0) is None


def test_exact_oracle_matches_a_loop():
    data, cost = outcomes(200, 4, 3, noise=3.0)
    correct = data.correct.copy()
    correct[::7, 0] = True  # break nesting so the oracle beats the last state
    res = exact_oracle(correct, cost)
    r, a = res.r_oracle, res.a_oracle
    per = [cost[row.argmax()] if row.any() else cost.min() for row in correct]
    assert r == pytest.approx(np.mean(per))
    assert a == correct.any(axis=1).mean()


def test_budget_table_and_lookup():
    costs = np.array([1.0, 2.0, 3.0, 4.0])
    accuracy = np.array([0.5, 0.7, 0.6, 0.9])
    table = budget_table(costs, accuracy, [0, 1, 2, 3])
    assert [(r.budget_ms, r.state) for r in table] == [(1.0, 0), (2.0, 1), (4.0, 3)]
    assert [budget_state(table, b) for b in (0.5, 1.0, 2.5, 3.9, 4.0, 99)] == [0, 0, 1, 1, 3, 3]


def test_from_evaluation_and_split():
    ev = SimpleNamespace(
        labels=np.array([0, 1, 2, 1]),
        pred=np.array([[0, 0], [1, 1], [0, 2], [2, 1]]),
        conf=np.full((4, 2), 0.5, np.float32),
        states=np.array(["a", "b"]),
    )
    o = Outcomes.from_evaluation(ev)
    assert o.correct.tolist() == [[True, True], [True, True], [False, True], [False, True]]
    calib, held = o.split(0.5, seed=1)
    assert calib.n == held.n == 2
    # predictions alone: the agreement policy plans them, the threshold policy cannot
    bare = Outcomes.from_evaluation(SimpleNamespace(**{**ev.__dict__, "conf": None}))
    assert bare.conf is None
    np.testing.assert_array_equal(
        bare.scores([0, 1], "agreement"), [[0, 1], [0, 1], [0, 0], [0, 0]]
    )
    with pytest.raises(InputError, match="confidences"):
        bare.scores([0, 1])
    with pytest.raises(InputError, match="confidences"):
        make_plan(*bare.split(0.5, seed=1), [1.0, 2.0], manifest_sha256="0" * 64)
    assert o.measure == calib.measure == held.measure == "maxprob"


def test_from_evaluation_picks_the_measure():
    margin = np.array([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6], [0.7, 0.8]], np.float32)
    ev = SimpleNamespace(
        labels=np.array([0, 1, 2, 1]),
        pred=np.array([[0, 0], [1, 1], [0, 2], [2, 1]]),
        conf=np.full((4, 2), 0.5, np.float32),
        conf_margin=margin,
        states=np.array(["a", "b"]),
        source="e.npz",
    )
    o = Outcomes.from_evaluation(ev, "margin")
    assert o.measure == "margin"
    np.testing.assert_array_equal(o.conf, margin)
    bare = Outcomes.from_evaluation(ev, "entropy")
    assert bare.conf is None
    assert bare.measure == "entropy"
    with pytest.raises(InputError, match="thresholds entropy confidences") as info:
        make_plan(*bare.split(0.5, seed=0), [1.0, 2.0], manifest_sha256="0" * 64)
    assert info.value.field == "conf_entropy"
    with pytest.raises(InputError, match="must be one of"):
        Outcomes.from_evaluation(ev, "logits")


def test_plan_records_the_splits_measure_and_refuses_a_mix():
    data, cost = outcomes(200, 3, 0)
    entropy = Outcomes(data.names, data.correct, data.conf - 1.0, "entropy")
    calib, held = entropy.split(0.5, seed=0)
    plan = make_plan(calib, held, cost, manifest_sha256=SHA, options=PlanOptions(max_drop=0.05))
    assert plan.measure == "entropy"
    assert all(t <= 0 for t in plan.thresholds)
    with pytest.raises(InputError, match="different measures") as info:
        make_plan(calib, held, cost, manifest_sha256=SHA, options=PlanOptions(measure="margin"))
    assert info.value.field == "measure"
    maxprob = Outcomes(data.names, data.correct, data.conf, "maxprob").split(0.5, seed=0)[1]
    with pytest.raises(InputError, match="different measures"):
        make_plan(calib, maxprob, cost, manifest_sha256=SHA)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_states": 0}, "max_states"),
        ({"max_drop": -0.1}, "max_drop"),
        ({"measure": "logits"}, "measure"),
        ({"kind": "tree"}, "kind"),
        ({"delta": 1.0}, "delta"),
        ({"manifest_sha256": "xyz"}, "manifest_sha256"),
        ({"state_costs_ms": [1.0, 2.0]}, "state_costs_ms"),
        ({"state_costs_ms": [1.0, np.nan, 3.0]}, "state_costs_ms"),
    ],
)
def test_bad_arguments(kwargs, match):
    data, cost = outcomes(50, 3, 0)
    args = {"manifest_sha256": SHA, "state_costs_ms": cost, **kwargs}
    costs = args.pop("state_costs_ms")
    fields = {f.name for f in dataclasses.fields(PlanOptions)}
    options = PlanOptions(**{k: args.pop(k) for k in list(args) if k in fields})
    with pytest.raises(InputError, match=match):
        make_plan(data, data, costs, options=options, **args)


def test_confidences_must_fit_the_measure():
    data, cost = outcomes(50, 3, 0)
    with pytest.raises(InputError, match="entropy range"):
        make_plan(data, data, cost, manifest_sha256=SHA, options=PlanOptions(measure="entropy"))


def test_split_names_must_agree():
    data, cost = outcomes(50, 3, 0)
    other = Outcomes(("x", "y", "z"), data.correct, data.conf)
    with pytest.raises(InputError, match="heldout"):
        make_plan(data, other, cost, manifest_sha256=SHA)


def test_plan_records_the_static_baseline():
    data, cost = outcomes(300, 4, 5)
    calib, held = data.split(0.5, 0)
    plan = make_plan(
        calib, held, PlanCosts(cost, static_ms=float(cost[-1]) * 0.9), manifest_sha256=SHA
    )
    assert plan.static_ms == pytest.approx(cost[-1] * 0.9)
    assert plan.beats_static is (plan.heldout.cost_ms < plan.static_ms)
    assert make_plan(calib, held, cost, manifest_sha256=SHA).static_ms is None
    with pytest.raises(InputError, match="static_ms"):
        make_plan(calib, held, PlanCosts(cost, static_ms=float("nan")), manifest_sha256=SHA)


def test_profile_costs_read_both_baselines_and_the_order():
    from edgeadapt.planning.planner import profile_costs
    from tests.device_inputs import known_profile, multiexit

    bundle = multiexit()
    chain = profile_costs(known_profile(bundle, whole_ms=0.8, order="chain"), bundle)
    assert chain.state_ms == pytest.approx((0.1, 0.3, 0.6, 1.0))
    assert chain.static_ms == 0.8
    assert chain.order == "chain"
    assert chain.note is None
    old = profile_costs(known_profile(bundle), bundle)  # no order recorded: step order
    assert old.static_ms is None
    assert old.order == "step"
    assert "--order chain" in old.note


def test_a_plan_that_cannot_beat_the_static_model_keeps_it_and_says_why():
    data, cost = outcomes(2000, 3, 4)
    calib, held = data.split(0.5, 0)
    free = make_plan(
        calib,
        held,
        cost,
        manifest_sha256=SHA,
        options=PlanOptions(max_drop=0.05, calibration="empirical"),
    )
    assert len(free.states) > 1
    # A static model cheaper than the cascade's expected cost wins.
    slow = make_plan(
        calib,
        held,
        PlanCosts(cost, static_ms=free.heldout.cost_ms * 0.99),
        manifest_sha256=SHA,
        options=PlanOptions(max_drop=0.05, calibration="empirical"),
    )
    assert slow.states == (slow.reference_state,)
    assert slow.thresholds == ()
    assert slow.fallback is not None
    assert "beats the measured static model" in slow.fallback
    # One just above it does not.
    fast = make_plan(
        calib,
        held,
        PlanCosts(cost, static_ms=free.heldout.cost_ms * 1.01),
        manifest_sha256=SHA,
        options=PlanOptions(max_drop=0.05, calibration="empirical"),
    )
    assert fast.states == free.states
    assert fast.fallback is None
    assert fast.beats_static


def test_a_branch_plan_keeps_the_pareto_branches_even_when_the_full_one_is_the_static_model():
    data, cost = outcomes(1200, 4, 9)
    calib, held = data.split(0.5, 0)
    acc = calib.correct.mean(axis=0)
    plan = make_plan(
        calib,
        held,
        PlanCosts(cost, static_ms=float(cost[-1])),
        manifest_sha256=SHA,
        kind="branches",
        options=PlanOptions(branches="table"),
    )
    assert plan.fallback is None
    assert plan.branches is not None
    assert plan.branches.run == "table"
    assert len(plan.budget) > 1
    assert list(plan.states) == [
        s for s in range(4) if all(acc[s] > acc[t] for t in range(4) if cost[t] < cost[s])
    ]


def test_plan_summary_json_is_the_plans_summary_with_where_it_came_from():
    from edgeadapt.planning.planner import PlanCosts, PlanSummary

    data, cost = outcomes(400, 3, 0)
    calib, held = data.split()
    plan = make_plan(
        calib, held, cost, manifest_sha256=SHA, options=PlanOptions(calibration="empirical")
    )
    assert PlanSummary(plan).to_json() == plan.summary()
    costs = PlanCosts(tuple(cost), None, "chain")
    doc = PlanSummary(plan, costs, "p.json").to_json()
    assert doc == {**plan.summary(), "profile_order": "chain", "path": "p.json"}
    assert PlanSummary(plan).saving_vs_r_n == plan.summary()["saving_vs_r_n"]


def test_plan_options_replan_the_same_plan():
    from edgeadapt.planning.planner import plan_options

    data, cost = outcomes(400, 3, 1)
    calib, held = data.split()
    plan = make_plan(
        calib, held, cost, manifest_sha256=SHA, options=PlanOptions(max_drop=0.02, max_states=2)
    )
    options = plan_options(plan)
    assert options.heldout == 0.5
    assert options.calibration == "risk"
    assert (options.max_drop, options.max_states) == (0.02, 2)
    again = make_plan(calib, held, cost, manifest_sha256=SHA, options=options)
    assert again == plan
    # a plan held to a named reference is made again against it
    named = make_plan(
        calib,
        held,
        cost,
        manifest_sha256=SHA,
        options=dataclasses.replace(options, reference=data.names[0]),
    )
    assert named.reference_state == 0
    assert plan_options(named).reference == data.names[0]
    assert make_plan(calib, held, cost, manifest_sha256=SHA, options=plan_options(named)) == named


def test_budget_state_looks_up_through_the_kernel_reference():
    from edgeadapt import kernel_ref

    costs = np.array([1.0, 2.0, 2.0, 5.0])
    accuracy = np.array([0.5, 0.7, 0.8, 0.9])
    table = budget_table(costs, accuracy, [0, 1, 2, 3])
    for budget in (0.0, 1.0, 1.9, 2.0, 4.9, 5.0, 50.0):
        row = kernel_ref.lookup([r.budget_ms for r in table], [r.accuracy for r in table], budget)
        assert budget_state(table, budget) == (table[0] if row is None else table[row]).state
    assert [r.state for r in table] == [0, 2, 3]  # equal cost: the more accurate kept
