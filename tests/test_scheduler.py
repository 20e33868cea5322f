"""The content-aware scheduler of branches bundles: the fit, its promise on new data, the
kernel against its numpy reference, the plan file, the refusals, and AdaptiveModel
running a scheduler plan as the planner simulated it."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from edgeadapt import kernel
from edgeadapt.cli import cli
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.evaluation import load_evaluation, save_evaluation
from edgeadapt.formats.plan import check_plan, load_plan, plan_to_doc, save_plan
from edgeadapt.formats.profile import load_profile, save_profile
from edgeadapt.kernel_ref import SCHEDULER_NEVER, scheduler_decide
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.planning.planner import Outcomes, PlanOptions, make_plan, simulate_plan
from edgeadapt.planning.scheduler import (
    exit_costs,
    features,
    fit_estimators,
    policy_scores,
    simulate_scheduler,
)
from tests.plans import scheduler_plan
from tests.synthetic import gate_evaluation

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
SHA = "0" * 64
COSTS = np.array([1.0, 2.0, 4.0])
SCHEDULER = PlanOptions(policy="scheduler", max_drop=0.05, delta=0.1)


def branch_logits(n: int, seed: int, classes: int = 5) -> tuple[np.ndarray, list[np.ndarray]]:
    """Labels and three branches' float32 logits that share each sample's difficulty:
    the cheapest branch's confidence tells how hard a sample is, so it predicts whether
    each branch is right; deeper branches are more skilled."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    ease = rng.random(n)
    out = []
    for skill in (3.0, 5.0, 8.0):
        x = rng.standard_normal((n, classes)).astype(np.float32)
        x[np.arange(n), labels] += (skill * ease + 0.3 * rng.standard_normal(n)).astype(np.float32)
        out.append(x)
    return labels, out


def _outcomes(n: int, seed: int) -> Outcomes:
    labels, logits = branch_logits(n, seed)
    return Outcomes.from_evaluation(gate_evaluation(labels, logits))


def _plan(calib: Outcomes, held: Outcomes, options: PlanOptions = SCHEDULER):
    return make_plan(calib, held, COSTS, manifest_sha256=SHA, kind="branches", options=options)


def test_estimators_learn_from_the_first_branchs_confidence():
    out = _outcomes(4000, 0)
    x = features(out, 0)
    assert x.shape == (4000, 3)
    assert x.dtype == np.float32
    ref = out.correct[:, -1]
    est = fit_estimators(x, out.correct, ref)
    assert len(est) == 2
    s = policy_scores(est, out, (0, 1, 2))
    assert s.shape == (4000, 3)
    assert (s[:, -1] == 0).all()
    for j, margin in ((0, 0.1), (1, 0.01)):
        target = out.correct[:, j] | ~ref
        assert s[target, j].mean() > s[~target, j].mean() + margin
    assert est[0].weights[0] > 0  # surer first branch: more often right


def test_exit_costs_pay_the_first_branch_then_the_one_picked():
    np.testing.assert_allclose(exit_costs(COSTS, (0, 2)), [1.0, 5.0])
    np.testing.assert_allclose(exit_costs(COSTS, (0, 1, 2), 0.5), [1.5, 4.0, 6.0])
    np.testing.assert_allclose(exit_costs(COSTS, (2,), 0.5), [4.0])
    # starting at the second kept branch: the first alone (the table's pick under a
    # small budget), the second alone, or the second and then the third
    np.testing.assert_allclose(exit_costs(COSTS, (0, 1, 2), first=1), [1.0, 2.0, 6.0])


def test_a_scheduler_plan_promises_and_saves():
    calib, held = _outcomes(3000, 1).split(0.5, 0)
    plan = _plan(calib, held)
    assert plan.policy == "scheduler"
    assert plan.promise is not None
    assert plan.promise.holds
    assert plan.states[-1] == plan.reference_state == 2
    first = plan.scheduler_first
    assert len(plan.scheduler or ()) == len(plan.states) - 1 - first >= 1
    assert all(t == SCHEDULER_NEVER for t in plan.thresholds[:first])
    assert plan.heldout.cost_ms < COSTS[2]  # cheaper than the reference branch alone
    run = simulate_plan(plan, held)
    assert run.accuracy == pytest.approx(plan.heldout.accuracy)
    assert run.expected_cost == pytest.approx(plan.heldout.cost_ms)
    # it does pick per input, from its first branch on
    assert 0 < np.count_nonzero(run.exit_state == first) < held.n
    assert (run.exit_state >= first).all()


def test_a_per_hop_overhead_is_counted_per_branch_run():
    from edgeadapt.planning.planner import PlanCosts

    calib, held = _outcomes(3000, 1).split(0.5, 0)
    costs = PlanCosts(tuple(COSTS), hop_overhead_ms=0.25)
    plan = make_plan(calib, held, costs, manifest_sha256=SHA, kind="branches", options=SCHEDULER)
    assert plan.hop_overhead_ms == 0.25
    run = simulate_plan(plan, held)
    assert run.expected_cost == pytest.approx(plan.heldout.cost_ms)
    first = plan.scheduler_first
    paid = exit_costs(COSTS, plan.states, 0.25, first)
    want = (
        np.asarray(plan.cost_ms)
        + 0.25
        + np.where(np.arange(len(paid)) > first, COSTS[plan.states[first]] + 0.25, 0)
    )
    np.testing.assert_allclose(paid, want)
    assert run.expected_cost == pytest.approx(paid[run.exit_state].mean())


def test_the_promise_holds_over_many_resamples_of_new_data():
    """Plans made on 60 independent draws of calibration and held-out data: the share
    whose drop on a large fresh sample exceeds max_drop stays within delta (with the
    binomial slack of 60 draws)."""
    fresh = _outcomes(40000, 10_000)
    ref = fresh.correct[:, -1].mean()
    over = promised = 0
    for seed in range(60):
        calib, held = _outcomes(1200, seed).split(0.5, seed)
        plan = _plan(calib, held)
        if plan.promise is None or not plan.promise.holds or len(plan.states) == 1:
            continue
        promised += 1
        drop = ref - simulate_plan(plan, fresh).accuracy
        over += drop > SCHEDULER.max_drop
    assert promised >= 30  # the promise is not vacuous
    assert over <= SCHEDULER.delta * promised + 2 * math.sqrt(promised * 0.1 * 0.9)


def test_empirical_calibration_and_the_reference_alone():
    calib, held = _outcomes(2000, 2).split(0.5, 0)
    plan = _plan(calib, held, PlanOptions(policy="scheduler", calibration="empirical"))
    assert plan.policy == "scheduler"
    assert plan.promise is None
    # too few held-out samples to promise anything: the reference branch alone
    tiny_c, tiny_h = _outcomes(60, 3).split(0.5, 0)
    alone = _plan(tiny_c, tiny_h, PlanOptions(policy="scheduler", max_drop=0.001))
    assert alone.states == (alone.reference_state,)
    assert alone.scheduler == ()
    assert alone.fallback is not None


def test_under_a_budget_only_affordable_branches_are_picked():
    calib, held = _outcomes(2000, 4).split(0.5, 0)
    plan = _plan(calib, held)
    free = simulate_scheduler(plan, held)
    # a budget leaving room for no second branch: the first answers every row
    tight = simulate_scheduler(plan, held, budget_ms=plan.cost_ms[0] + 0.5)
    assert (tight.exit_state == 0).all()
    assert tight.expected_cost <= free.expected_cost
    # room for the table's deepest pick alone, not after the first: the table's pick
    deep = simulate_scheduler(plan, held, budget_ms=plan.cost_ms[-1] + 0.1)
    assert (deep.exit_state == len(plan.states) - 1).all()
    assert deep.expected_cost == plan.cost_ms[-1]
    # room for the first, then any branch: the scheduler, its second branch bounded
    first = plan.scheduler_first
    mid = simulate_scheduler(plan, held, budget_ms=plan.cost_ms[first] + plan.cost_ms[-1])
    np.testing.assert_array_equal(mid.exit_state, free.exit_state)
    roomy = simulate_scheduler(plan, held, budget_ms=1e6)
    np.testing.assert_array_equal(roomy.exit_state, free.exit_state)


def test_the_scheduler_is_refused_for_other_bundles_by_name():
    calib, held = _outcomes(400, 5).split(0.5, 0)
    for kind in ("early-exit", "ensemble"):
        with pytest.raises(InputError, match="scheduler policy picks the branch") as e:
            make_plan(calib, held, COSTS, manifest_sha256=SHA, kind=kind, options=SCHEDULER)
        assert e.value.field == "policy"


def test_plan_file_round_trip_and_faults(tmp_path):
    calib, held = _outcomes(2000, 6).split(0.5, 0)
    plan = _plan(calib, held)
    path = tmp_path / "plan.json"
    save_plan(path, plan)
    assert load_plan(path) == plan
    doc = json.loads(path.read_text())
    assert doc["version"] == 2
    assert doc["policy"]["kind"] == "scheduler"
    assert doc["policy"]["features"] == ["maxprob", "margin", "entropy"]

    def refused(change, match):
        bad = plan_to_doc(plan)
        change(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(InputError, match=match) as e:
            load_plan(path)
        assert str(path) in str(e.value)

    refused(lambda d: d["policy"].update(features=["maxprob"]), r"\$\.policy\.features")
    refused(lambda d: d["policy"]["estimators"].pop(), r"\$\.policy\.estimators")
    refused(
        lambda d: d["policy"]["estimators"][0].update(weights=[1.0]),
        r"\$\.policy\.estimators\[0\]\.weights",
    )
    refused(
        lambda d: d["policy"]["estimators"][0].update(bias="x"),
        r"\$\.policy\.estimators\[0\]\.bias",
    )
    refused(lambda d: d["thresholds"].__setitem__(0, 2.5), r"\$\.thresholds")
    refused(lambda d: d["bundle"].update(kind="early-exit"), r"\$\.policy")
    refused(lambda d: d["policy"].update(first=len(plan.states)), r"\$\.policy\.first")
    refused(
        lambda d: (
            d["policy"].update(first=d["policy"]["first"] + 1)
            if d["policy"]["first"] + 1 < len(plan.states)
            else d["policy"].update(first=-1)
        ),
        r"\$\.policy\.(estimators|first)",
    )


def test_never_thresholds_are_written_and_read_as_never(tmp_path):
    calib, held = _outcomes(2000, 7).split(0.5, 0)
    plan = _plan(calib, held)
    never = plan.__class__(
        **{**plan.__dict__, "thresholds": (SCHEDULER_NEVER,) * len(plan.thresholds)}
    )
    save_plan(tmp_path / "p.json", never)
    run = simulate_plan(load_plan(tmp_path / "p.json"), held)
    assert (run.exit_state == len(plan.states) - 1).all()


_floats = st.floats(-4.0, 4.0, allow_nan=False, width=32)


@settings(max_examples=150, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 12),
    classes=st.integers(2, 9),
    states=st.integers(1, 5),
    available=st.one_of(st.just(math.inf), st.floats(-1.0, 12.0)),
    nan_row=st.booleans(),
)
def test_kernel_schedule_equals_the_reference(seed, batch, classes, states, available, nan_row):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((batch, classes)) * rng.uniform(0.1, 8.0)).astype(np.float32)
    if nan_row:
        x[rng.integers(batch), rng.integers(classes)] = np.nan
    w = rng.standard_normal((states - 1, 3)) * 3
    b = rng.standard_normal(states - 1)
    t = rng.uniform(0.0, 1.0, states - 1)
    t[rng.random(states - 1) < 0.2] = SCHEDULER_NEVER
    c = np.sort(rng.uniform(0.0, 10.0, states))
    want = scheduler_decide(x, w, b, t, c, available)
    est = [kernel.Estimator(list(wi), bi) for wi, bi in zip(w, b, strict=True)]
    got = kernel.schedule(x, est, list(t), list(c), available)
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(got[2], want[2])


def test_kernel_schedule_refuses_bad_arguments():
    x = np.zeros((2, 3), np.float32)
    e = [kernel.Estimator([1.0, 0.0, 0.0], 0.0)]
    with pytest.raises(ValueError, match="estimators"):
        kernel.schedule(x, e, [0.5, 0.5], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        kernel.schedule(x, e, [0.5], [1.0, 2.0], math.nan)
    with pytest.raises(ValueError, match="costs_ms"):
        kernel.schedule(x, e, [0.5], [1.0, -2.0])
    with pytest.raises(ValueError, match="weights"):
        kernel.Estimator([1.0, 2.0], 0.0)
    with pytest.raises(ValueError, match="finite"):
        kernel.Estimator([1.0, math.inf, 0.0], 0.0)


@pytest.fixture(scope="module")
def branches(tmp_path_factory) -> Path:
    """The shipped family bundle declared as execution branches."""
    d = tmp_path_factory.mktemp("branches") / "bundle"
    shutil.copytree(BUNDLES / "mnist1d-family", d)
    manifest = d / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"kind": "ensemble"', '"kind": "branches"'))
    return d


@pytest.mark.parametrize(("batch", "first"), [(1, 0), (64, 0), (64, 1)])
def test_adaptive_model_runs_a_scheduler_plan_as_simulated(branches, batch, first, tmp_path):
    from edgeadapt.cascade.model import AdaptiveModel

    x, ev, outcomes, plan = scheduler_plan(branches, 320)
    if first:  # the scheduler starts at the second kept branch; the first serves budgets
        assert plan.scheduler is not None
        est = plan.scheduler[first:]
        median = float(np.median(policy_scores(est, outcomes, plan.states, first)[:, first]))
        plan = replace(
            plan,
            scheduler=est,
            scheduler_first=first,
            thresholds=(SCHEDULER_NEVER, median),  # half the rows answer at the second
        )
    assert plan.policy == "scheduler"
    assert len(plan.states) >= 2
    save_plan(tmp_path / "plan.json", plan)
    want = simulate_plan(plan, outcomes)
    want_pred = ev.pred[:, list(plan.states)][np.arange(len(x)), want.exit_state]
    with AdaptiveModel.load(branches, plan=tmp_path / "plan.json") as m:
        assert m.scheduler is not None
        outs = [m.predict(x[i : i + batch]) for i in range(0, len(x), batch)]
    exit_state = np.concatenate([o.exit_state for o in outs])
    pred = np.concatenate([o.pred for o in outs])
    np.testing.assert_array_equal(exit_state, np.asarray(plan.states)[want.exit_state])
    np.testing.assert_array_equal(pred, want_pred)
    assert len(np.unique(exit_state)) > 1  # the scheduler picks per input: not vacuous
    assert not np.concatenate([o.budget_exit for o in outs]).any()


def test_adaptive_model_under_budgets(branches):
    """No room for anything: the budget table's pick (the first kept branch) alone; a
    budget with room for every branch: the scheduler's choices as without one."""
    from edgeadapt.cascade.model import AdaptiveModel

    x, ev, outcomes, plan = scheduler_plan(branches, 64)
    free = simulate_plan(plan, outcomes).exit_state
    assert (free != 0).any()
    with AdaptiveModel.load(branches, plan=plan) as m:
        tight = m.predict(x, budget_ms=1e-6)
        roomy = m.predict(x, budget_ms=1e6)
    assert (tight.exit_state == plan.states[0]).all()
    np.testing.assert_array_equal(tight.pred, ev.pred[:, plan.states[0]])
    assert not tight.budget_exit.any()
    np.testing.assert_array_equal(roomy.exit_state, np.asarray(plan.states)[free])
    assert not roomy.budget_exit.any()


def _cli_inputs(bundle_dir: Path, tmp: Path) -> list[str]:
    """``edgeadapt plan`` arguments for `bundle_dir`: an evaluation on 600 random inputs
    labelled by its last state, and a short profile."""
    bundle = load_bundle(bundle_dir)
    x = np.random.default_rng(1).normal(size=(600, 1, 40)).astype(np.float32)
    ev = evaluate_bundle(bundle, x, np.zeros(600, dtype=np.int64))
    ev = replace(ev, labels=ev.pred[:, -1].copy())
    save_evaluation(tmp / "eval.npz", ev)
    timing = TimingOptions(batches=(1,), warmup=1, iters=10)
    save_profile(tmp / "profile.json", profile_bundle(bundle, timing=timing))
    return [
        "plan",
        str(bundle_dir),
        "--profile",
        str(tmp / "profile.json"),
        "--evaluation",
        str(tmp / "eval.npz"),
        "--max-drop",
        "0.1",
        "--calibration",
        "empirical",
        "--policy",
        "scheduler",
        "-o",
        str(tmp / "plan.json"),
    ]


def test_edgeadapt_plan_makes_a_scheduler_plan_and_refuses_it_for_an_ensemble(branches, tmp_path):
    (tmp_path / "b").mkdir()
    result = CliRunner().invoke(cli, [*_cli_inputs(branches, tmp_path / "b"), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["policy"]["kind"] == "scheduler"
    assert load_plan(tmp_path / "b" / "plan.json").policy == "scheduler"
    (tmp_path / "e").mkdir()
    family = BUNDLES / "mnist1d-family"
    result = CliRunner().invoke(cli, _cli_inputs(family, tmp_path / "e"))
    assert result.exit_code == 2, result.output
    assert "scheduler policy picks the branch of a branches bundle" in result.output


def test_the_report_sets_the_scheduler_against_the_budget_table(branches, tmp_path):
    """On the family-as-branches bundle's measured costs (three branches of about the
    same cost) the scheduler keeps the reference branch alone, and the report has no
    comparison; on the synthetic costs of `scheduler_plan` it has one, which the report
    renders: at every budget the scheduler's mean cost fits it, as the table's does."""
    from edgeadapt.planning.planner import plan_bundle, profile_costs
    from edgeadapt.planning.scheduler import budget_comparison
    from edgeadapt.report import render_report, report_data

    _cli_inputs(branches, tmp_path)
    bundle = load_bundle(branches)
    ev = load_evaluation(tmp_path / "eval.npz")
    costs = profile_costs(load_profile(tmp_path / "profile.json", bundle), bundle)
    options = PlanOptions(calibration="empirical", max_drop=0.2)
    save_plan(tmp_path / "t.json", plan_bundle(bundle, ev, costs, options))
    data = report_data(
        bundle,
        profile=tmp_path / "profile.json",
        evaluation=tmp_path / "eval.npz",
        plan=tmp_path / "t.json",
    )
    scheduled = next(p.plan for p in data.policies if p.policy == "scheduler")
    assert scheduled is not None
    assert (len(scheduled.states) > 1) == bool(data.scheduler)

    _, _, outcomes, plan = scheduler_plan(branches, 320)
    points = budget_comparison(plan, outcomes.split(0.5, 0)[1])
    assert len(points) >= 3
    for p in points:
        assert p.scheduler_cost_ms <= p.budget_ms + 1e-9
        assert p.table_cost_ms <= p.budget_ms + 1e-9
    assert points[-1].table_state == plan.states[-1]  # the largest budget: the most accurate
    render_report(replace(data, scheduler=points), tmp_path / "report.html")
    html = (tmp_path / "report.html").read_text()
    assert "content-aware scheduler" in html
    assert html.count("<tr>") >= len(points)


def test_runners_that_do_not_run_the_scheduler_refuse_it_by_name(branches):
    _, _, _, plan = scheduler_plan(branches, 64)
    with pytest.raises(InputError, match="scheduler policy"):
        check_plan(plan, load_bundle(branches), "plan.json", policies=("threshold", "gate"))
