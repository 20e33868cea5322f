"""`write_report` and `edgeadapt report`: files, embedded images, figures that agree with
`bundle_bound`, and clear refusals of inputs made for something else."""

import base64
import html
import json
import re
import sys
from dataclasses import replace

import numpy as np
import pytest

from edgeadapt.errors import InputError, MissingExtraError
from edgeadapt.formats.evaluation import Evaluation, load_evaluation, save_evaluation
from edgeadapt.formats.plan import load_plan, save_plan
from edgeadapt.formats.profile import default_profile_path, save_profile
from edgeadapt.oracle.bound import bundle_bound
from edgeadapt.planning.planner import Outcomes, PlanCosts, simulate_plan
from edgeadapt.report import FIGURES, render_report, report_data, write_report
from tests.clirun import invoke
from tests.device_inputs import copy_multiexit, multiexit

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def device(tmp_path_factory):
    """The shipped multi-exit bundle with a real (short) profile on this machine, an
    evaluation on 400 MNIST-1D samples, and a plan made from them, saved as files."""
    from edgeadapt.data.mnist1d import mnist1d_splits
    from edgeadapt.formats.profile import state_costs, static_cost
    from edgeadapt.measure.evaluate import evaluate_bundle
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle
    from edgeadapt.planning.planner import Outcomes, make_plan

    bundle = multiexit()
    root = tmp_path_factory.mktemp("device")
    profile = profile_bundle(bundle, timing=TimingOptions(warmup=2, iters=10))
    data = mnist1d_splits(42, n_train=10, n_calibration=400, n_test=10).calibration
    evaluation = evaluate_bundle(bundle, data.x, data.y)
    calib, held = Outcomes.from_evaluation(evaluation).split()
    plan = make_plan(
        calib,
        held,
        PlanCosts(state_costs(profile, bundle), static_ms=static_cost(profile, bundle)),
        manifest_sha256=bundle.manifest_sha256,
    )
    paths = {"profile": root / "p.json", "evaluation": root / "e.npz", "plan": root / "plan.json"}
    save_profile(paths["profile"], profile)
    save_evaluation(paths["evaluation"], evaluation)
    save_plan(paths["plan"], plan)
    return bundle, paths


@pytest.fixture(scope="session")
def written(device, tmp_path_factory):
    bundle, paths = device
    out = tmp_path_factory.mktemp("report") / "report.html"
    return write_report(bundle, **paths, out=out)


def rows(page: str) -> dict[str, list[str]]:
    """Every table row of the page, keyed by its first cell."""
    found = {}
    for row in re.findall(r"<tr>(.*?)</tr>", page):
        cells = [html.unescape(c) for c in re.findall(r"<t[dh]>(.*?)</t[dh]>", row)]
        found[cells[0]] = cells[1:]
    return found


def pct(cell: str) -> float:
    return float(cell.rstrip("%")) / 100


def test_report_writes_the_pngs_and_a_self_contained_html(written):
    stems = ["report-accuracy-cost.png", "report-alphas.png", "report-rratio.png", "report.html"]
    assert [p.name for p in written] == stems
    page = written[-1].read_text()
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 3
    for png, encoded in zip(written[:-1], images, strict=True):
        data = png.read_bytes()
        assert data.startswith(PNG)
        assert base64.b64decode(encoded) == data
    assert not re.search(r'(src|href)="(?!data:)', page)  # nothing fetched from elsewhere
    for name in ("exit0", "exit1", "exit2", "exit3"):
        assert f"<td>{name}</td>" in page
    for _, caption in FIGURES.values():
        assert html.escape(caption) in page


def test_report_numbers_agree_with_bundle_bound(device, written):
    bundle, paths = device
    bound = bundle_bound(
        bundle, profile=paths["profile"], evaluation=paths["evaluation"], envelope=True
    ).to_json()
    table = rows(written[-1].read_text())
    for state, alpha in zip(bound["states"], [None, *bound["alphas"]], strict=True):
        cost, _, acc, alpha_cell = table[state["name"]]
        assert float(cost) == pytest.approx(state["cost"], rel=1e-3)
        assert pct(acc) == pytest.approx(state["accuracy"], abs=5e-5)
        if alpha is not None:
            assert float(alpha_cell) == pytest.approx(alpha, rel=1e-2)
    labels = {
        "exact oracle (eq. 4/5)": bound["exact"],
        "alpha=1 (eq. 9)": bound["alpha1"],
        f"alpha_min={bound['alpha_min']:.3f} (eq. 8)": bound["constant_alpha_min"],
        "continuous (eq. 13)": bound["continuous"],
    }
    for label, point in labels.items():
        r_oracle, a_oracle, _, ratio, _ = table[label]
        assert float(r_oracle) == pytest.approx(point["r_oracle"], rel=1e-3)
        assert pct(a_oracle) == pytest.approx(point["a_oracle"], abs=5e-5)
        assert float(ratio.rstrip("x")) == pytest.approx(point["r_ratio"], abs=5e-3)
    for name, view in bound["views"].items():
        assert float(table[name][-1].rstrip("x")) == pytest.approx(view["r_ratio"], abs=5e-3)


def test_report_shows_the_plan_and_the_subset_curve(device, written):
    from edgeadapt.formats.plan import load_plan

    bundle, paths = device
    plan = load_plan(paths["plan"])
    table = rows(written[-1].read_text())
    assert table["states"] == [", ".join(plan.state_names)]
    assert pct(table["held-out accuracy"][0]) == pytest.approx(plan.heldout.accuracy, abs=5e-5)
    data = report_data(bundle, **paths)
    bound = data.bound.to_json()
    # k = N is the exact oracle of every state; k = 1 the most accurate state (the
    # cheapest among equals) alone
    assert data.curve[-1].r_oracle == pytest.approx(bound["exact"]["r_oracle"])
    accuracy = data.inputs.evaluation.correct.mean(axis=0)
    assert data.curve[0].states == (int(np.argmax(accuracy)),)
    assert table[str(len(data.curve))][0] == ", ".join(bound["bundle"]["states"])


def test_report_states_both_baselines(device, written):
    from edgeadapt.formats.plan import load_plan

    bundle, paths = device
    page = written[-1].read_text()
    table = rows(page)
    bound = report_data(bundle, **paths).bound.to_json()
    static = bound["static"]
    r_n_row = table[f"R_N: the sum of the steps ({bound['baseline']})"]
    assert float(r_n_row[0]) == pytest.approx(bound["r_n"], rel=1e-3)
    static_row = table["static: measured whole model (composed)"]
    assert float(static_row[0]) == pytest.approx(static["cost_ms"], rel=1e-3)
    assert float(static_row[-1].rstrip("x")) == pytest.approx(static["r_ratio"], abs=5e-3)
    assert f"The full path costs {static['full_path_ratio']:.2f}x the static model." in page
    plan = load_plan(paths["plan"])
    assert table["vs R_N, the sum of the steps"][0].startswith(f"{plan.r_n:.4g} ms (")
    against = table["vs the static model (measured whole model)"][0]
    assert against.startswith(f"{plan.static_ms:.4g} ms (")
    assert ("does NOT beat it" in against) is (not plan.beats_static)


def test_sweep_runs_from_the_first_kept_state_alone_to_the_last(device):
    bundle, paths = device
    data = report_data(bundle, **paths)
    ev, costs = data.inputs.evaluation, data.inputs.costs
    first, last = data.sweep_states[0], data.sweep_states[-1]
    cheap = int(np.argmin(data.sweep.expected_cost))
    assert data.sweep.expected_cost[cheap] == pytest.approx(costs[first])
    assert data.sweep.accuracy[cheap] == pytest.approx(ev.correct[:, first].mean())
    assert np.isinf(data.sweep.levels[-1])
    assert data.sweep.expected_cost[-1] == pytest.approx(costs[last])
    assert data.sweep.accuracy[-1] == pytest.approx(ev.correct[:, last].mean())


@pytest.mark.parametrize("measure", ["maxprob", "margin"])
def test_the_plan_on_the_whole_evaluation_joins_its_two_splits(device, measure):
    """The report re-runs the plan's thresholds, with the plan's confidence measure, on the
    evaluation the plan was split from: its figures must be the size-weighted mean of the
    plan's calibration and held-out figures."""
    from edgeadapt.formats.evaluation import load_evaluation
    from edgeadapt.planning.planner import Outcomes, make_plan

    bundle, paths = device
    outcomes = Outcomes.from_evaluation(load_evaluation(paths["evaluation"]), measure)
    costs = report_data(bundle, **{**paths, "plan": None}).inputs.costs
    plan = make_plan(*outcomes.split(), costs, manifest_sha256=bundle.manifest_sha256)
    data = report_data(bundle, **{**paths, "plan": plan})
    assert data.measure == measure
    calib, held = plan.calibration, plan.heldout
    n = calib.n + held.n
    accuracy, cost = data.plan_here
    assert accuracy == pytest.approx((calib.n * calib.accuracy + held.n * held.accuracy) / n)
    assert cost == pytest.approx((calib.n * calib.cost_ms + held.n * held.cost_ms) / n)


def test_report_without_plan_or_confidences(device, tmp_path):
    bundle, paths = device
    full = load_evaluation(paths["evaluation"])
    ev = Evaluation(full.labels, full.pred, full.states, bundle=full.bundle)
    save_evaluation(tmp_path / "noconf.npz", ev)
    out = write_report(
        bundle,
        profile=paths["profile"],
        evaluation=tmp_path / "noconf.npz",
        out=tmp_path / "r.html",
    )
    page = out[-1].read_text()
    assert f"evaluation {tmp_path / 'noconf.npz'} (" in page
    assert "No plan given" in page
    assert "no maxprob confidences: no policy sweep" in page
    assert page.count("data:image/png;base64,") == 3


def _edited(path, tmp_path, change):
    doc = json.loads(path.read_text())
    change(doc)
    target = tmp_path / path.name
    target.write_text(json.dumps(doc))
    return target


def _other_sha(doc):
    doc["bundle"]["manifest_sha256"] = "0" * 64


def test_report_from_objects_in_memory(device, tmp_path):
    from edgeadapt.formats.evaluation import load_evaluation
    from edgeadapt.formats.plan import load_plan
    from edgeadapt.formats.profile import load_profile

    bundle, paths = device
    ev = load_evaluation(paths["evaluation"])
    unsaved = Evaluation(
        ev.labels,
        ev.pred,
        ev.states,
        ev.conf,
        conf_margin=ev.conf_margin,
        conf_entropy=ev.conf_entropy,
    )
    out = write_report(
        bundle,
        profile=load_profile(paths["profile"]),
        evaluation=unsaved,
        plan=load_plan(paths["plan"]),
        out=tmp_path / "mem.html",
    )
    page = out[-1].read_text()
    assert "evaluation (not saved) (" in page
    assert rows(page) == rows(
        write_report(bundle, **paths, out=tmp_path / "f.html")[-1].read_text()
    )


def test_inputs_made_for_something_else_are_refused_and_leave_the_old_report(device, tmp_path):
    bundle, paths = device
    out = tmp_path / "r.html"
    write_report(bundle, **paths, out=out)
    before = out.read_bytes()
    bad_profile = _edited(paths["profile"], tmp_path, _other_sha)
    with pytest.raises(InputError, match=r"p\.json: \$\.bundle\.manifest_sha256: .*another bundle"):
        write_report(bundle, **{**paths, "profile": bad_profile}, out=out)
    bad_plan = _edited(paths["plan"], tmp_path, _other_sha)
    with pytest.raises(InputError, match=r"plan\.json: \$\.bundle\.manifest_sha256: .*another"):
        write_report(bundle, **{**paths, "plan": bad_plan}, out=out)
    ev = load_evaluation(paths["evaluation"])
    other = tmp_path / "other.npz"
    save_evaluation(other, ev.select(["exit0", "exit1", "exit2"]))  # of it, edited
    with pytest.raises(InputError, match=r"other\.npz: states: .*missing exit3"):
        write_report(bundle, **{**paths, "evaluation": other}, out=out)
    assert out.read_bytes() == before


def test_missing_matplotlib_names_the_plot_extra(device, tmp_path, monkeypatch):
    bundle, paths = device
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingExtraError, match=r"edgeadapt\[plot\]"):
        write_report(bundle, **paths, out=tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


# ---------------------------------------------------------------------- CLI


def test_cli_report_json(device, tmp_path):
    bundle, paths = device
    out = tmp_path / "cli.html"
    result = invoke(
        "report",
        bundle.path,
        "--profile",
        paths["profile"],
        "--evaluation",
        paths["evaluation"],
        "--plan",
        paths["plan"],
        "-o",
        out,
        "--json",
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["html"] == str(out)
    assert [p.rsplit("/", 1)[1] for p in summary["images"]] == [
        "cli-accuracy-cost.png",
        "cli-alphas.png",
        "cli-rratio.png",
    ]
    bound = bundle_bound(bundle, profile=paths["profile"], evaluation=paths["evaluation"])
    assert summary["exact"] == pytest.approx(bound.to_json()["exact"])
    assert [p["policy"] for p in summary["policies"]] == ["threshold", "gate", "agreement"]
    assert summary["policy"]["gap_closure"] is not None
    plan = load_plan(paths["plan"])
    assert summary["policy"]["kind"] == plan.policy
    run = simulate_plan(plan, Outcomes.from_evaluation(load_evaluation(paths["evaluation"])))
    want = {"accuracy": run.accuracy, "cost": run.expected_cost}
    assert summary["policy"]["on_evaluation"] == pytest.approx(want)


def test_cli_report_finds_the_bundle_defaults(device, tmp_path):
    from edgeadapt.formats.bundle import load_bundle

    _, paths = device
    copy = copy_multiexit(tmp_path)
    result = invoke("report", copy, "-o", tmp_path / "r.html")
    assert result.exit_code == 2
    assert "--profile: not given and" in result.output
    default = default_profile_path(load_bundle(copy))
    default.parent.mkdir()
    default.write_bytes(paths["profile"].read_bytes())
    (copy / "evaluation.npz").write_bytes(paths["evaluation"].read_bytes())
    (copy / "plan.json").write_bytes(paths["plan"].read_bytes())
    result = invoke("report", copy, "-o", tmp_path / "r.html")
    assert result.exit_code == 0, result.output
    assert "oracle gap closure" in result.output
    assert "every policy planned from this profile and evaluation:" in result.output
    lines = result.output.splitlines()
    assert any(line.startswith("threshold  ") for line in lines)
    assert any(line.startswith(("gate  ", "gate: not planned")) for line in lines)
    assert f"wrote {tmp_path / 'r.html'}" in result.output


def test_report_compares_every_policy_planned_from_its_inputs(device, written):
    from edgeadapt.formats.evaluation import load_evaluation
    from edgeadapt.formats.plan import load_plan
    from edgeadapt.formats.profile import load_profile, state_costs, static_cost
    from edgeadapt.planning.planner import PlanCosts, plan_bundle, plan_options

    bundle, paths = device
    data = report_data(bundle, **paths)
    assert [p.policy for p in data.policies] == ["threshold", "gate", "agreement"]
    plan = load_plan(paths["plan"])
    profile = load_profile(paths["profile"])
    costs, static = state_costs(profile, bundle), static_cost(profile, bundle)
    ev = load_evaluation(paths["evaluation"])
    options = plan_options(plan)
    for outcome in data.policies:
        assert outcome.plan is not None, outcome.reason
        # the same plan `edgeadapt plan --policy P` makes from these files and options
        costs_then = PlanCosts(
            tuple(costs), static, stat=plan.cost_stat, hop_overhead_ms=plan.hop_overhead_ms
        )
        again = plan_bundle(bundle, ev, costs_then, replace(options, policy=outcome.policy))
        assert outcome.plan.policy == outcome.policy
        assert outcome.plan.heldout == again.heldout
        assert outcome.plan.gap_closure == again.gap_closure
    # the plan given is the threshold policy made from the same split: the same figures
    assert data.policies[0].plan.heldout == plan.heldout
    table = rows(written[-1].read_text())
    for outcome in data.policies:
        p = outcome.plan
        states, acc, cost, gap, _ = table[outcome.policy]
        assert states == ", ".join(p.state_names)
        assert pct(acc) == pytest.approx(p.heldout.accuracy, abs=5e-5)
        assert float(cost) == pytest.approx(p.heldout.cost_ms, rel=1e-3)
        assert gap == ("n/a" if p.gap_closure is None else f"{100 * p.gap_closure:.1f}%")


def test_report_says_why_a_policy_cannot_be_planned(device, tmp_path):
    from edgeadapt.formats.evaluation import load_evaluation

    bundle, paths = device
    ev = load_evaluation(paths["evaluation"])
    maxprob_only = Evaluation(ev.labels, ev.pred, ev.states, ev.conf)
    data = report_data(bundle, profile=paths["profile"], evaluation=maxprob_only)
    threshold, gate, agreement = data.policies
    assert threshold.plan is not None
    assert agreement.plan is not None  # predictions are all it reads
    assert gate.plan is None
    assert "lacks what gates read" in gate.reason
    page = write_report(
        bundle, profile=paths["profile"], evaluation=maxprob_only, out=tmp_path / "r.html"
    )[-1].read_text()
    assert "gate: not planned: the calibration split lacks what gates read" in html.unescape(page)


def test_the_page_names_the_bundle_by_its_identity(device, written):
    bundle, _ = device
    assert f"manifest sha256 {bundle.manifest_sha256}" in written[-1].read_text()


# ------------------------------------------------- the plan's point, any policy


def _plan_row(page: str, plan, n: int, point: tuple[float, float]) -> None:
    """The plan section's row of its point on this evaluation is `point`."""
    label = f"the plan's {plan.policy} policy on this evaluation (its own costs)"
    accuracy, cost = point
    assert rows(page)[label] == [f"{100 * accuracy:.2f}% at {cost:.4g} ms ({n} samples)"]


@pytest.mark.parametrize("policy", ["threshold", "gate", "agreement"])
def test_the_plans_point_is_its_policy_as_simulate_plan_runs_it(device, tmp_path, policy):
    """Gate and agreement plans threshold other scores than the confidences: a plan of any
    policy, given as a file (to the CLI too), is shown and its point on the whole
    evaluation is what `simulate_plan` (what a runner reproduces row for row) gives."""
    from edgeadapt.formats.profile import load_profile
    from edgeadapt.planning.planner import (
        Outcomes,
        PlanOptions,
        plan_bundle,
        profile_costs,
        simulate_plan,
    )

    bundle, paths = device
    ev = load_evaluation(paths["evaluation"])
    # no static model: a cascade is kept even where it would not beat it here
    costs = replace(profile_costs(load_profile(paths["profile"], bundle), bundle), static_ms=None)
    options = PlanOptions(policy=policy, max_drop=0.15)
    plan = plan_bundle(bundle, ev, costs, options)
    assert plan.policy == policy
    assert len(plan.states) > 1  # a cascade: its exits depend on the policy's scores
    save_plan(tmp_path / "plan.json", plan)
    data = report_data(bundle, **{**paths, "plan": tmp_path / "plan.json"})
    want = simulate_plan(plan, Outcomes.from_evaluation(ev, plan.measure))
    assert len(np.unique(want.exit_state)) > 1
    assert data.plan_here == (pytest.approx(want.accuracy), pytest.approx(want.expected_cost))
    # `edgeadapt report --plan` takes it too
    args = ["--profile", paths["profile"], "--evaluation", paths["evaluation"]]
    out = tmp_path / "r.html"
    result = invoke("report", bundle.path, *args, "--plan", tmp_path / "plan.json", "-o", out)
    assert result.exit_code == 0, result.output
    assert f"({policy} policy)" in result.output
    _plan_row(out.read_text(), plan, ev.labels.size, data.plan_here)


def test_a_plan_whose_policy_the_evaluation_cannot_feed_says_so(device, tmp_path):
    """A gate plan on an evaluation without every measure's confidences: no point, and
    the page says why."""
    from edgeadapt.formats.profile import load_profile
    from edgeadapt.planning.planner import PlanOptions, plan_bundle, profile_costs

    bundle, paths = device
    ev = load_evaluation(paths["evaluation"])
    costs = profile_costs(load_profile(paths["profile"], bundle), bundle)
    plan = plan_bundle(bundle, ev, costs, PlanOptions(policy="gate"))
    maxprob_only = Evaluation(ev.labels, ev.pred, ev.states, ev.conf)
    data = report_data(bundle, profile=paths["profile"], evaluation=maxprob_only, plan=plan)
    assert data.plan_here is None
    page = write_report(
        bundle,
        profile=paths["profile"],
        evaluation=maxprob_only,
        plan=plan,
        out=tmp_path / "r.html",
    )[-1].read_text()
    label = "the plan's gate policy on this evaluation (its own costs)"
    assert rows(page)[label] == ["not run: the evaluation lacks what the gate policy reads"]


@pytest.fixture(scope="module")
def branches(tmp_path_factory):
    """The shipped family bundle declared as execution branches, and a short profile."""
    import shutil

    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle
    from tests.device_inputs import MULTIEXIT

    d = tmp_path_factory.mktemp("branches") / "bundle"
    shutil.copytree(MULTIEXIT.parent / "mnist1d-family", d)
    manifest = d / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"kind": "ensemble"', '"kind": "branches"'))
    bundle = load_bundle(d)
    timing = TimingOptions(batches=(1,), warmup=1, iters=10)
    return d, profile_bundle(bundle, timing=timing)


def test_a_scheduler_plans_point_is_the_scheduler_run(branches, tmp_path):
    """A scheduler plan's point is the scheduler's picks (`simulate_plan`), not its last
    kept branch alone; the report renders it."""
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.planning.planner import simulate_plan
    from tests.plans import scheduler_plan

    d, profile = branches
    _, ev, outcomes, plan = scheduler_plan(d, 320)
    assert plan.policy == "scheduler"
    want = simulate_plan(plan, outcomes)
    assert len(np.unique(want.exit_state)) > 1  # it picks per input: not its last alone
    bundle = load_bundle(d)
    data = report_data(bundle, profile=profile, evaluation=ev, plan=plan)
    assert data.plan_here == (pytest.approx(want.accuracy), pytest.approx(want.expected_cost))
    page = render_report(data, tmp_path / "r.html")[-1].read_text()
    _plan_row(page, plan, ev.labels.size, data.plan_here)
