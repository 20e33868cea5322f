"""The cascade's own per-hop cost in plans: measured at profile time, counted in a plan's
expected cost, deciding against the static model, recorded; older files read as before."""

import json
from dataclasses import replace

import numpy as np
import pytest

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.plan import load_plan, save_plan
from edgeadapt.formats.profile import Overhead, load_profile, save_profile
from edgeadapt.measure.overhead import measure_overhead
from edgeadapt.planning.calibrate import simulate
from edgeadapt.planning.planner import (
    PlanCosts,
    PlanOptions,
    exit_costs,
    make_plan,
    profile_costs,
    simulate_plan,
)
from edgeadapt.planning.search import subset_costs
from tests.device_inputs import BUNDLES, known_profile, multiexit
from tests.test_planner import SHA, outcomes

EMPIRICAL = PlanOptions(max_drop=0.05, calibration="empirical")


def _hops(plan, split):
    """Mean number of hops the plan runs per sample on `split`."""
    return float(np.mean(simulate_plan(replace(plan, hop_overhead_ms=None), split).exit_state + 1))


def test_exit_costs_add_one_overhead_per_hop_run():
    costs = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(exit_costs(costs, (0, 2), "early-exit", 0.5), [1.5, 5.0])
    np.testing.assert_allclose(exit_costs(costs, (0, 2), "ensemble", 0.5), [1.5, 6.0])
    # one state deploys one plain model: its call overhead the static model pays too
    np.testing.assert_allclose(exit_costs(costs, (2,), "early-exit", 0.5), [4.0])
    np.testing.assert_allclose(exit_costs(costs, (0, 2), "branches", 0.5), [1.0, 4.0])
    np.testing.assert_allclose(exit_costs(costs, (0, 2), "early-exit", None), [1.0, 4.0])


@pytest.mark.parametrize("kind", ["early-exit", "ensemble"])
def test_the_expected_cost_counts_the_hops_and_the_plan_records_it(kind):
    data, cost = outcomes(2000, 3, 4)
    calib, held = data.split(0.5, 0)
    hop = 0.01 * float(cost[0])
    plan = make_plan(
        calib,
        held,
        PlanCosts(cost, hop_overhead_ms=hop),
        kind=kind,
        manifest_sha256=SHA,
        options=EMPIRICAL,
    )
    assert len(plan.states) > 1
    assert plan.hop_overhead_ms == hop
    cols = list(plan.states)
    want = simulate(
        held.conf[:, cols],
        held.correct[:, cols],
        subset_costs(cost, plan.states, kind) + hop * np.arange(1, len(cols) + 1),
        np.asarray(plan.thresholds),
    ).expected_cost
    assert plan.heldout.cost_ms == pytest.approx(want)
    # simulate_plan reproduces the figure from the file's fields, overhead included
    assert simulate_plan(plan, held).expected_cost == pytest.approx(plan.heldout.cost_ms)
    # the steps' costs the runner budgets with are the profile's, without the overhead
    np.testing.assert_allclose(plan.cost_ms, subset_costs(cost, plan.states, kind))


def test_no_overhead_or_zero_plans_as_before():
    data, cost = outcomes(1000, 4, 7)
    calib, held = data.split(0.5, 0)
    before = make_plan(calib, held, cost, manifest_sha256=SHA)
    assert before.hop_overhead_ms is None
    zero = make_plan(calib, held, PlanCosts(cost, hop_overhead_ms=0.0), manifest_sha256=SHA)
    assert replace(zero, hop_overhead_ms=None, subsets_evaluated=0) == replace(
        before, subsets_evaluated=0
    )


def test_the_overhead_flips_the_decision_against_the_static_model():
    data, cost = outcomes(2000, 3, 4)
    calib, held = data.split(0.5, 0)
    free = make_plan(calib, held, cost, manifest_sha256=SHA, options=EMPIRICAL)
    assert len(free.states) > 1
    static = free.heldout.cost_ms * 1.02  # the cascade saves 2% without its own cost
    kept = make_plan(
        calib, held, PlanCosts(cost, static_ms=static), manifest_sha256=SHA, options=EMPIRICAL
    )
    assert kept.states == free.states
    assert kept.fallback is None
    assert kept.beats_static
    # An overhead per hop costing the cascade 5% of its expected cost: no longer worth it.
    hop = 0.05 * free.heldout.cost_ms / _hops(free, held)
    flipped = make_plan(
        calib,
        held,
        PlanCosts(cost, static_ms=static, hop_overhead_ms=hop),
        manifest_sha256=SHA,
        options=EMPIRICAL,
    )
    assert flipped.states == (flipped.reference_state,)
    assert flipped.thresholds == ()
    assert flipped.fallback is not None
    assert "beats the measured static model" in flipped.fallback
    assert "per hop included" in flipped.fallback
    assert flipped.hop_overhead_ms == hop
    assert flipped.statement == flipped.fallback
    # a one-state plan is charged no hop: its cost is the state's own
    assert flipped.heldout.cost_ms == pytest.approx(cost[flipped.reference_state])
    # A small overhead (0.5% of the cost) leaves the cascade ahead.
    small = 0.005 * free.heldout.cost_ms / _hops(free, held)
    still = make_plan(
        calib,
        held,
        PlanCosts(cost, static_ms=static, hop_overhead_ms=small),
        manifest_sha256=SHA,
        options=EMPIRICAL,
    )
    assert len(still.states) > 1
    assert still.fallback is None
    assert still.heldout.cost_ms < static


def test_the_search_weighs_fewer_states_under_an_overhead():
    data, cost = outcomes(2000, 5, 11)
    calib, held = data.split(0.5, 0)
    many = make_plan(
        calib, held, cost, manifest_sha256=SHA, options=replace(EMPIRICAL, max_states=5)
    )
    assert len(many.states) > 2
    # an overhead per hop as large as the first state's cost: a short cascade wins
    short = make_plan(
        calib,
        held,
        PlanCosts(cost, hop_overhead_ms=float(cost[-1])),
        manifest_sha256=SHA,
        options=replace(EMPIRICAL, max_states=5),
    )
    assert len(short.states) < len(many.states)
    assert short.calibration.cost_ms <= many.calibration.cost_ms + float(cost[-1]) * _hops(
        many, calib
    )


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), True, "0.1"])
def test_a_bad_overhead_is_refused(bad):
    data, cost = outcomes(200, 3, 0)
    calib, held = data.split()
    with pytest.raises(InputError, match="finite number >= 0") as e:
        make_plan(calib, held, PlanCosts(cost, hop_overhead_ms=bad), manifest_sha256=SHA)
    assert e.value.field == "hop_overhead_ms"


def test_the_plan_file_keeps_the_overhead_and_an_old_one_reads_without(tmp_path):
    data, cost = outcomes(400, 3, 2)
    calib, held = data.split()
    plan = make_plan(calib, held, PlanCosts(cost, hop_overhead_ms=0.004), manifest_sha256=SHA)
    path = tmp_path / "plan.json"
    save_plan(path, plan)
    assert json.loads(path.read_text())["hop_overhead_ms"] == 0.004
    assert load_plan(path) == plan
    doc = json.loads(path.read_text())
    del doc["hop_overhead_ms"]  # a plan written before the overhead was counted
    path.write_text(json.dumps(doc))
    assert load_plan(path).hop_overhead_ms is None
    doc["hop_overhead_ms"] = -1
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError) as e:
        load_plan(path)
    assert "hop_overhead_ms" in str(e.value)


def test_profile_costs_carry_the_profiles_overhead(tmp_path):
    bundle = multiexit()
    old = known_profile(bundle, whole_ms=0.8, order="chain")
    assert old.cascade_overhead is None  # an older profile: no overhead counted
    assert profile_costs(old, bundle).hop_overhead_ms is None
    measured = Overhead(hop_ms=0.006, call_ms=0.004, hops=4)
    prof = replace(old, settings={**old.settings, "cascade_overhead": measured.to_json()})
    assert prof.cascade_overhead == measured
    assert profile_costs(prof, bundle).hop_overhead_ms == 0.006
    path = tmp_path / "profile.json"
    save_profile(path, prof)
    assert load_profile(path, bundle).cascade_overhead == measured
    doc = json.loads(path.read_text())
    doc["settings"]["cascade_overhead"]["hop_ms"] = float("-1")
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError) as e:
        load_profile(path, bundle)
    assert e.value.field == "$.settings.cascade_overhead.hop_ms"


@pytest.mark.parametrize("name", ["mnist1d-multiexit", "mnist1d-family"])
def test_measure_overhead_on_the_demo_bundles(name):
    bundle = load_bundle(BUNDLES / name)
    got = measure_overhead(bundle, calls=10)
    assert got is not None
    assert got.hops == len(bundle.states)
    # a Python call's own cost: above nothing, far below a millisecond on any CPU
    assert 0 < got.call_ms < 1.0
    assert 0 <= got.hop_ms < 1.0
    assert Overhead.from_json(got.to_json(), "p", "f") == got
    with pytest.raises(InputError, match="calls"):
        measure_overhead(bundle, calls=0)


def test_write_plan_takes_the_profiles_overhead(tmp_path):
    from edgeadapt.planning.planner import plan_to_file
    from tests.device_inputs import copy_multiexit, known_evaluation

    bundle = load_bundle(copy_multiexit(tmp_path))
    base = known_profile(bundle, whole_ms=0.8, order="chain")
    measured = Overhead(hop_ms=0.006, call_ms=0.004, hops=4)
    prof = replace(base, settings={**base.settings, "cascade_overhead": measured.to_json()})
    ev = known_evaluation()
    got = plan_to_file(
        bundle, profile=prof, evaluation=ev, options=PlanOptions(calibration="empirical")
    )
    assert got.plan.hop_overhead_ms == 0.006
    assert got.to_json()["hop_overhead_ms"] == 0.006
    assert load_plan(got.path).hop_overhead_ms == 0.006
    # the caller's figure wins over the profile's; an old profile counts none
    mine = plan_to_file(
        bundle,
        profile=prof,
        evaluation=ev,
        hop_overhead_ms=0.0,
        options=PlanOptions(calibration="empirical"),
    )
    assert mine.plan.hop_overhead_ms == 0.0
    old = plan_to_file(
        bundle, profile=base, evaluation=ev, options=PlanOptions(calibration="empirical")
    )
    assert old.plan.hop_overhead_ms is None
