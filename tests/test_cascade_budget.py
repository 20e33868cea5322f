"""The plan's budget table at run time: a budget picks the most accurate kept state
whose EWMA-corrected cost fits; contention that raises the measured costs picks a
cheaper one; ensembles and branches run the picked member alone."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.plan import BudgetRow
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from tests.plans import runner_plan

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
# Cascade cost of exiting at each state, ms: far above what the steps really take, so
# that a slow call on a loaded machine cannot change which state a budget picks.
COSTS = (100.0, 200.0, 300.0, 400.0)
TABLE = tuple(
    BudgetRow(budget_ms=c, state=s, accuracy=a)
    for s, c, a in zip(range(4), COSTS, (0.5, 0.8, 0.95, 0.97), strict=True)
)


def _x(n=6):
    return np.random.default_rng(0).standard_normal((n, 1, 40)).astype(np.float32)


@pytest.fixture
def multiexit():
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    # thresholds that never fire: only the budget decides where rows stop
    plan = runner_plan(bundle, (0, 1, 2, 3), (2.0, 2.0, 2.0), COSTS, table=TABLE)
    with AdaptiveModel.load(bundle, plan=plan, warmup=3) as m:  # no cold first call
        yield m


@pytest.mark.parametrize(("budget", "state"), [(150.0, 0), (200.0, 1), (390.0, 2), (1e4, 3)])
def test_the_budget_table_picks_the_most_accurate_state_that_fits(multiexit, budget, state):
    out = multiexit.predict(_x(), budget_ms=budget)
    assert (out.exit_state == state).all()
    assert len(out.latency_ms["steps"]) == state + 1  # deeper steps never ran
    assert not out.budget_exit.any()


def test_a_budget_below_every_state_answers_at_the_first_and_says_so(multiexit):
    out = multiexit.predict(_x(), budget_ms=50.0)
    assert (out.exit_state == 0).all()
    assert out.budget_exit.all()  # none is confident enough: the budget sent them out
    assert len(out.latency_ms["steps"]) == 1


def test_contention_that_raises_measured_costs_picks_a_cheaper_state(multiexit):
    assert (multiexit.predict(_x(1), budget_ms=350.0).exit_state == 2).all()
    for _ in range(20):  # a neighbour makes step 1 five times slower than planned
        multiexit.policy.observe(1, 500.0)
    assert multiexit.policy.state_ms(1) > 350.0
    out = multiexit.predict(_x(1), budget_ms=350.0)
    assert (out.exit_state == 0).all()


def test_an_ensemble_plan_runs_the_picked_member_alone():
    bundle = load_bundle(BUNDLES / "mnist1d-family")
    own = (20.0, 50.0, 100.0)
    table = [
        BudgetRow(budget_ms=c, state=s, accuracy=a)
        for s, c, a in zip(range(3), own, (0.3, 0.6, 0.9), strict=True)
    ]
    plan = runner_plan(bundle, (0, 1, 2), (2.0, 2.0), np.cumsum(own).tolist(), table=table)
    with AdaptiveModel.load(bundle, plan=plan, warmup=3) as m:
        out = m.predict(_x(), budget_ms=60.0)  # mlp alone fits (50), not logistic + mlp
        assert (out.exit_state == 1).all()
        assert len(out.latency_ms["steps"]) == 1
        assert m.predict(_x(), budget_ms=500.0).exit_state.tolist() == [2] * 6
        # without a budget the plan's threshold cascade runs, cheapest member first
        assert len(m.predict(_x()).latency_ms["steps"]) == 3


def test_the_plans_cost_percentile_sets_the_predicted_costs():
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    profile = profile_bundle(bundle, timing=TimingOptions(warmup=2, iters=30))
    for stat in ("p50", "p90"):
        plan = runner_plan(bundle, (0, 1, 2, 3), (2.0, 2.0, 2.0), COSTS, cost_stat=stat)
        with AdaptiveModel.load(bundle, plan=plan, profile=profile) as m:
            want = [s.get(stat) for s in profile.step_stats(1)]
            np.testing.assert_allclose(m.policy.costs_ms, want)


def test_a_plan_of_one_state_deploys_the_static_model():
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    x = np.random.default_rng(5).standard_normal((9, 1, 40)).astype(np.float32)
    one = runner_plan(bundle, (2,), (), (0.3,))
    with AdaptiveModel.load(bundle, plan=one, warmup=1) as m:
        assert m.static is not None
        assert all(s is None for s in m.sessions)  # no step session is loaded
        got = m.predict(x, budget_ms=1e-3)  # a budget cannot change what runs
        assert len(got.latency_ms["steps"]) == 1
    chain = runner_plan(bundle, (0, 1, 2), (2.0, 2.0), (0.1, 0.2, 0.3))
    with AdaptiveModel.load(bundle, plan=chain) as m:
        assert m.static is None
        want = m.predict(x)
    np.testing.assert_array_equal(got.pred, want.pred)
    np.testing.assert_allclose(got.conf, want.conf, rtol=1e-5)
    assert (got.exit_state == 2).all()
    assert not got.budget_exit.any()


@pytest.mark.parametrize(("stat", "quantile"), [("p50", 0.5), ("p90", 0.9), ("p99", 0.99)])
def test_a_plans_costs_keep_tracking_its_percentile(stat, quantile):
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    plan = replace(runner_plan(bundle, (0, 3), (2.0,), (100.0, 400.0), table=TABLE), cost_stat=stat)
    with AdaptiveModel.load(bundle, plan=plan) as m:
        assert m.policy.quantile == quantile
        before = m.policy.predicted_ms(1)
        m.predict(_x(1))  # both hops far below their planned cost: one step down each
        assert m.policy.predicted_ms(1) == pytest.approx(before * (1 - 0.2 * (1 - quantile)))
    with AdaptiveModel.load(bundle, plan=plan, step_costs_ms=[1.0] * 4) as m:
        assert m.policy.quantile is None  # costs given as numbers: their mean


def test_the_plans_hop_overhead_counts_against_the_budget():
    """A hop fits only with what the cascade adds per hop (the plan's `hop_overhead_ms`)
    on top of its predicted runtime cost."""
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    plan = runner_plan(bundle, (0, 1, 2, 3), (2.0, 2.0, 2.0), COSTS, table=TABLE)
    budget = 250.0  # the table picks state 1 (200 ms): hop 1 predicted at 100 ms
    for overhead, state, stopped in ((None, 1, False), (200.0, 0, True)):
        with AdaptiveModel.load(
            bundle, plan=replace(plan, hop_overhead_ms=overhead), warmup=1
        ) as m:
            out = m.predict(_x(2), budget_ms=budget)
        assert (out.exit_state == state).all()
        assert bool(out.budget_exit.all()) is stopped


def test_a_profile_gives_costs_at_the_asked_percentile_and_its_overhead():
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    profile = profile_bundle(
        bundle, threads=1, timing=TimingOptions(iters=10, warmup=1, overhead=False)
    )
    p90 = [s.get("p90") for s in profile.step_stats(1)]
    with AdaptiveModel.load(bundle, thresholds=0.9, profile=profile, cost_stat="p90") as m:
        assert m.policy.quantile == 0.9
        assert m.policy.costs_ms == pytest.approx(p90)
        assert m._hop_overhead_ms == 0.0  # this profile did not measure the overhead
    measured = replace(
        profile,
        settings={
            **profile.settings,
            "cascade_overhead": {"hop_ms": 0.5, "call_ms": 0.1, "hops": 4},
        },
    )
    with AdaptiveModel.load(bundle, thresholds=0.9, profile=measured) as m:
        assert m.policy.quantile == 0.5  # a profile's costs default to p50
        assert m._hop_overhead_ms == 0.5
    with pytest.raises(InputError, match="p75") as e:
        AdaptiveModel.load(bundle, thresholds=0.9, profile=profile, cost_stat="p75")
    assert e.value.source == "cost_stat"
