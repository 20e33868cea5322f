"""Cascades over execution branches (`edgeadapt.planning.branches`): the planner plans a
branches bundle's budget table and its cascade (threshold, gate or agreement), keeps the
cheaper at the promise (or the one asked for) and says why; the plan file records both;
the promise holds over resamples; `AdaptiveModel` runs a branches cascade plan, and the
family's (an ensemble's) plans of every policy, row for row as the planner simulated
them; older branches plans still run their table; `plan --branches` and the report."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph
from edgeadapt.exporters.branches import export_branches
from edgeadapt.formats.plan import load_plan, plan_from_doc, plan_to_doc, save_plan
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.planning.planner import Outcomes, PlanOptions, make_plan, simulate_plan
from tests.synthetic import gate_evaluation, gate_logits
from tests.test_export_branches import L, residual_cnn
from tests.test_risk_plan import _true_drop, _violation_limit

SHA = "0" * 64
CHEAP_FIRST = [0.5, 1.5, 3.0]  # each branch's own cost: the cheap ones save
CLOSE = [2.5, 2.8, 3.0]  # a cascade pays every branch run: running two costs more


@pytest.fixture(scope="module")
def pool() -> Outcomes:
    labels, logits = gate_logits(20_000, 3, 6, 11)
    return Outcomes.from_evaluation(gate_evaluation(labels, logits))


def _plan(calib, held, costs, **options):
    return make_plan(
        calib, held, costs, manifest_sha256=SHA, kind="branches", options=PlanOptions(**options)
    )


def _splits(pool):
    return pool.take(np.arange(3000)), pool.take(np.arange(3000, 6000))


@pytest.mark.parametrize("policy", ["threshold", "gate", "agreement"])
@pytest.mark.parametrize("costs", [CHEAP_FIRST, CLOSE])
def test_auto_keeps_the_cheaper_of_the_cascade_and_the_table_and_says_why(pool, policy, costs):
    calib, held = _splits(pool)
    plan = _plan(calib, held, costs, max_drop=0.02, policy=policy)
    choice = plan.branches
    assert choice is not None
    assert choice.asked == "auto"
    assert choice.cascade is not None
    cheaper = choice.cascade.cost_ms < choice.table.cost_ms
    assert choice.run == ("cascade" if cheaper else "table")
    assert plan.walks == cheaper
    kept = choice.cascade if cheaper else choice.table
    assert plan.states == kept.states
    assert plan.heldout.cost_ms == pytest.approx(kept.cost_ms)
    assert plan.heldout.accuracy == pytest.approx(kept.accuracy)
    # the figures of both, and the verdict, in one line
    for option in (choice.cascade, choice.table):
        assert f"{option.cost_ms:.4g} ms" in choice.why
    assert f"the plan keeps the {choice.run}" in choice.why
    # the table: the Pareto branches, its most accurate branch alone without a budget
    assert choice.table.states == (0, 1, 2)
    assert choice.table.cost_ms == pytest.approx(costs[plan.reference_state])
    if cheaper:
        assert plan.policy == policy
        assert plan.promise is not None
        assert plan.promise.holds
        # a sample pays every branch run: cumulative exit costs
        np.testing.assert_allclose(plan.cost_ms, np.cumsum(np.asarray(costs)[list(plan.states)]))
    else:
        assert plan.policy == "threshold"  # the table has no policy; thresholds unused
        assert plan.cost_ms == tuple(costs[s] for s in plan.states)
    assert plan_from_doc(plan_to_doc(plan), source="plan.json") == plan


def test_cheap_first_branches_are_cascaded_and_close_ones_are_not(pool):
    """Not vacuous: on these costs auto keeps the cascade, on close costs the table."""
    calib, held = _splits(pool)
    assert _plan(calib, held, CHEAP_FIRST, max_drop=0.02).branches.run == "cascade"
    assert _plan(calib, held, CLOSE, max_drop=0.02).branches.run == "table"


@pytest.mark.parametrize("asked", ["cascade", "table"])
def test_a_forced_choice_is_kept_and_recorded(pool, asked, tmp_path):
    calib, held = _splits(pool)
    costs = CLOSE if asked == "cascade" else CHEAP_FIRST  # against auto's choice
    plan = _plan(calib, held, costs, max_drop=0.02, branches=asked, policy="gate")
    assert plan.branches.run == asked
    assert plan.branches.asked == asked
    assert plan.branches.why.startswith(f"the {asked} was asked for")
    assert plan.walks == (asked == "cascade")
    assert (plan.policy == "gate") == (asked == "cascade")  # the table has no policy
    save_plan(tmp_path / "plan.json", plan)
    assert load_plan(tmp_path / "plan.json") == plan
    run = simulate_plan(plan, held)
    assert run.expected_cost == pytest.approx(plan.heldout.cost_ms)


def test_gate_policy_is_accepted_for_branches(pool):
    calib, held = _splits(pool)
    plan = _plan(calib, held, CHEAP_FIRST, max_drop=0.02, policy="gate")
    assert plan.branches.run == "cascade"
    assert plan.gates is not None
    assert len(plan.gates) == len(plan.states) - 1 >= 1
    assert plan_to_doc(plan)["policy"]["kind"] == "gate"


def test_a_bad_choice_and_a_bad_branches_block_are_refused(pool):
    calib, held = _splits(pool)
    with pytest.raises(InputError, match="auto") as e:
        _plan(calib, held, CHEAP_FIRST, branches="both")
    assert e.value.field == "branches"
    plan = _plan(calib, held, CHEAP_FIRST, max_drop=0.02)
    doc = plan_to_doc(plan)
    bad = {**doc, "branches": {**doc["branches"], "asked": "table"}}
    with pytest.raises(InputError, match=r"\$\.branches\.run"):
        plan_from_doc(bad, source="plan.json")
    bad = {**doc, "branches": {**doc["branches"], "run": "table"}}
    with pytest.raises(InputError, match=r"\$\.branches\.table"):
        plan_from_doc(bad, source="plan.json")  # the table keeps other states
    other = {**doc, "bundle": {**doc["bundle"], "kind": "ensemble"}}
    with pytest.raises(InputError, match=r"\$\.branches.*only a branches plan"):
        plan_from_doc(other, source="plan.json")


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["threshold", "gate"])
def test_the_branches_plans_promise_holds_over_resamples(pool, policy):
    """Each resample's calibration and held-out splits are drawn from the pool (the
    distribution): whichever auto keeps, its drop over the pool exceeds max_drop in at
    most the share delta allows, and most resamples keep a cascade that saves. (On this
    pool agreement keeps the table: its promise over resamples is test_risk_plan's.)"""
    max_drop, delta, resamples = 0.02, 0.1, 100
    rng = np.random.default_rng(5)
    drops, cascaded = [], []
    for _ in range(resamples):
        calib = pool.take(rng.integers(0, pool.n, 1000))
        held = pool.take(rng.integers(0, pool.n, 1500))
        plan = _plan(calib, held, CHEAP_FIRST, max_drop=max_drop, delta=delta, policy=policy)
        drops.append(_true_drop(plan, pool, "net"))
        cascaded.append(plan.walks and simulate_plan(plan, pool).expected_cost < 3.0)
    assert np.count_nonzero(np.array(drops) > max_drop) <= _violation_limit(resamples, delta)
    assert np.mean(cascaded) > 0.8


@pytest.fixture(scope="module")
def branches(tmp_path_factory):
    """A small residual CNN's branches bundle, samples labelled by the full network (so
    the branches differ), and their evaluation."""
    tmp = tmp_path_factory.mktemp("bcascade")
    model = residual_cnn()
    source = tmp / "rescnn.onnx"
    onnx.save(model, source)
    x = np.random.default_rng(1).standard_normal((400, 1, L)).astype(np.float32)
    y = _graph.session(model).run(None, {"x": x})[0].argmax(axis=1)
    np.savez(tmp / "calib.npz", x=x[:120], y=y[:120])
    bundle = export_branches(source, tmp / "b", calibration=tmp / "calib.npz", max_branches=8)
    return bundle, x, Outcomes.from_evaluation(evaluate_bundle(bundle, x, y))


def _bundle_plan(bundle, outcomes, **options):
    calib, held = outcomes.split(0.5, 0)
    costs = [float(s.flops) / 1e6 for s in bundle.states]
    return make_plan(
        calib,
        held,
        costs,
        manifest_sha256=bundle.manifest_sha256,
        kind="branches",
        options=PlanOptions(**options),
    )


@pytest.mark.parametrize("policy", ["threshold", "gate"])
def test_adaptive_model_runs_a_branches_cascade_as_simulated(branches, policy):
    """A branches cascade plan runs as planned (`_runs_as_simulated`; agreement over
    branches: tests/test_agreement.py)."""
    bundle, x, outcomes = branches
    plan = _bundle_plan(
        bundle, outcomes, max_drop=0.1, calibration="empirical", branches="cascade", policy=policy
    )
    assert plan.walks
    assert len(plan.states) > 1
    _runs_as_simulated(bundle, plan, outcomes, x, [s.flops / 1e6 for s in bundle.states])


def _runs_as_simulated(bundle, plan, outcomes, x, costs):
    """At batch 1 (the native cascade engine, but for agreement: the loop) and batch 32
    (the loop, with compaction) every row exits where the plan's simulation says, with
    its answer, having run every kept member up to there (what the plan charges it)."""
    want = simulate_plan(plan, outcomes).exit_state
    kept = np.asarray(plan.states)
    assert len(np.unique(want)) > 1  # rows exit at different states: not vacuous
    with AdaptiveModel.load(bundle, plan=plan) as m:
        assert m.walks
        assert (m._cascade is not None) == (plan.policy != "agreement")  # batch 1: native
        ones = [m.predict(x[i : i + 1]) for i in range(len(x))]
        batched = [m.predict(x[i : i + 32]) for i in range(0, len(x), 32)]
    for outs in (ones, batched):
        np.testing.assert_array_equal(np.concatenate([o.exit_state for o in outs]), kept[want])
        np.testing.assert_array_equal(
            np.concatenate([o.pred for o in outs]), outcomes.pred[np.arange(len(x)), kept[want]]
        )
    runs = np.array([len(o.latency_ms["steps"]) for o in ones])
    np.testing.assert_array_equal(runs, want + 1)  # members run per sample
    own = np.asarray(costs)[kept]
    paid = np.array([own[:r].sum() for r in runs])  # every member run, each its own cost
    np.testing.assert_allclose(np.asarray(plan.cost_ms)[want], paid)


@pytest.mark.parametrize("policy", ["threshold", "gate", "agreement"])
def test_adaptive_model_runs_the_familys_plans_of_every_policy_as_simulated(policy):
    """The shipped family (an ensemble) on MNIST-1D cascades under each policy as
    planned (costs where the largest member dominates, so each policy cascades)."""
    from edgeadapt.data.mnist1d import mnist1d_splits
    from edgeadapt.formats.bundle import load_bundle
    from tests.test_agreement import BUNDLES

    bundle = load_bundle(BUNDLES / "mnist1d-family")
    data = mnist1d_splits(42, n_train=10, n_calibration=600, n_test=10).calibration
    outcomes = Outcomes.from_evaluation(evaluate_bundle(bundle, data.x, data.y))
    calib, held = outcomes.split(0.5, 0)
    costs = [0.1, 0.2, 10.0]
    plan = make_plan(
        calib,
        held,
        costs,
        manifest_sha256=bundle.manifest_sha256,
        kind="ensemble",
        options=PlanOptions(max_drop=0.1, calibration="empirical", policy=policy),
    )
    assert plan.policy == policy
    assert len(plan.states) > 1
    _runs_as_simulated(bundle, plan, outcomes, data.x, costs)


def test_a_table_plan_and_an_older_branches_plan_run_the_most_accurate_branch(branches, tmp_path):
    """The table (asked for, or a plan written before the `branches` block) answers
    with its last kept branch alone without a budget, as its simulation says."""
    bundle, x, outcomes = branches
    table = _bundle_plan(bundle, outcomes, max_drop=0.1, branches="table")
    doc = plan_to_doc(table)
    del doc["branches"]  # as written before cascades over branches
    older = plan_from_doc(doc, source="old.json")
    assert older.branches is None
    assert not older.walks
    for plan in (table, older):
        assert simulate_plan(plan, outcomes).exit_state.tolist() == [len(plan.states) - 1] * len(x)
        with AdaptiveModel.load(bundle, plan=plan) as m:
            assert not m.walks
            out = m.predict(x[:7])
            assert out.exit_state.tolist() == [plan.states[-1]] * 7
            budget = m.predict(x[:1], budget_ms=plan.budget[0].budget_ms)
            assert budget.exit_state.tolist() == [plan.budget[0].state]


def test_an_older_branches_agreement_plan_still_walks(branches):
    bundle, _, outcomes = branches
    plan = _bundle_plan(bundle, outcomes, max_drop=0.1, policy="agreement", branches="cascade")
    older = replace(plan, branches=None)
    assert older.walks
    assert older.cost_kind == "ensemble"
    np.testing.assert_array_equal(
        simulate_plan(older, outcomes).exit_state, simulate_plan(plan, outcomes).exit_state
    )


def test_plan_command_branches_option_and_a_profile_with_the_cascades_overhead(branches, tmp_path):
    """`edgeadapt plan --branches` on a profiled, evaluated branches bundle: the profile
    measures the cascade's own cost per hop (the branches walked), the plan counts it,
    and the text says which option the plan keeps and why."""
    from click.testing import CliRunner

    from edgeadapt.cli import cli
    from edgeadapt.formats.evaluation import save_evaluation
    from edgeadapt.formats.profile import save_profile
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle

    bundle, x, _ = branches
    y = _graph.session(residual_cnn()).run(None, {"x": x})[0].argmax(axis=1)
    save_evaluation(tmp_path / "eval.npz", evaluate_bundle(bundle, x, y))
    profile = profile_bundle(bundle, timing=TimingOptions(warmup=2, iters=20))
    assert profile.cascade_overhead is not None
    save_profile(tmp_path / "profile.json", profile)
    args = ["plan", str(bundle.path), "--profile", str(tmp_path / "profile.json")]
    args += ["--evaluation", str(tmp_path / "eval.npz"), "--max-drop", "0.1"]
    for asked in ("auto", "cascade", "table"):
        out = tmp_path / f"{asked}.json"
        result = CliRunner().invoke(cli, [*args, "--branches", asked, "-o", str(out)])
        assert result.exit_code == 0, result.output
        plan = load_plan(out)
        assert plan.branches.asked == asked
        assert f"branches: {plan.branches.why}" in result.output
        assert plan.hop_overhead_ms == profile.cascade_overhead.hop_ms
        if asked != "auto":
            assert plan.branches.run == asked
    refused = CliRunner().invoke(cli, [*args, "--branches", "both"])
    assert refused.exit_code == 2
    assert "auto" in refused.output


def test_report_shows_the_cascade_against_the_budget_table(branches, tmp_path):
    """For a branches bundle the report puts each policy's cascade beside the budget
    table (held-out accuracy and expected cost of both, and which the plan keeps), and
    the plan's own choice and why; its point on this evaluation is what the plan runs."""
    pytest.importorskip("matplotlib", reason="the report draws with matplotlib")
    from edgeadapt.formats.profile import state_costs, static_cost
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle
    from edgeadapt.planning.planner import PlanCosts
    from edgeadapt.report import BRANCH_HEADERS, branch_rows, report_data, write_report

    bundle, x, outcomes = branches
    y = _graph.session(residual_cnn()).run(None, {"x": x})[0].argmax(axis=1)
    evaluation = evaluate_bundle(bundle, x, y)
    profile = profile_bundle(bundle, timing=TimingOptions(warmup=2, iters=10))
    calib, held = outcomes.split(0.5, 0)
    costs = PlanCosts(state_costs(profile, bundle), static_ms=static_cost(profile, bundle))
    plan = make_plan(
        calib,
        held,
        costs,
        manifest_sha256=bundle.manifest_sha256,
        kind="branches",
        options=PlanOptions(max_drop=0.1, branches="table"),
    )
    data = report_data(bundle, profile=profile, evaluation=evaluation, plan=plan)
    rows = branch_rows(data.policies)
    assert [r[0] for r in rows] == ["threshold", "gate", "agreement"]
    # the scheduler's plan has no cascade-or-table choice: its own section shows it
    chosen = [o for o in data.policies if o.plan is not None and o.plan.policy != "scheduler"]
    for row, outcome in zip(rows, chosen, strict=True):
        choice = outcome.plan.branches
        assert row[-1] == choice.run
        assert row[3] == f"{choice.cascade.cost_ms:.4g}"
        assert row[5] == f"{choice.table.cost_ms:.4g}"
    last = plan.states[-1]
    assert data.plan_here == (
        pytest.approx(evaluation.correct[:, last].mean()),
        pytest.approx(state_costs(profile, bundle)[last]),
    )
    files = write_report(
        bundle, profile=profile, evaluation=evaluation, plan=plan, out=tmp_path / "r.html"
    )
    page = files[-1].read_text()
    assert "Branches: the cascade against the budget table" in page
    assert all(h in page for h in BRANCH_HEADERS)
    assert "The plan keeps the table" in page
