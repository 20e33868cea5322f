"""`edgeadapt plan` on the shipped multi-exit bundle: files in, validated plan out."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.cli import cli
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.evaluation import load_evaluation, save_evaluation
from edgeadapt.formats.plan import load_plan
from edgeadapt.formats.profile import save_profile
from edgeadapt.measure.evaluate import evaluate_bundle
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.planning.calibrate import exit_states
from edgeadapt.planning.planner import Outcomes, PlanCosts

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """A profile and an evaluation of the multi-exit bundle; labels are the last state's
    predictions on random inputs, so every state's accuracy is a real agreement rate."""
    tmp = tmp_path_factory.mktemp("plan")
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    profile = tmp / "profile.json"
    save_profile(profile, profile_bundle(bundle, timing=TimingOptions(warmup=2, iters=20)))
    x = np.random.default_rng(0).normal(size=(600, 1, 40)).astype(np.float32)
    first = evaluate_bundle(bundle, x, np.zeros(600, np.int64))
    evaluation = evaluate_bundle(bundle, x, first.pred[:, -1].astype(np.int64))
    save_evaluation(tmp / "eval.npz", evaluation)
    return bundle, profile, tmp / "eval.npz", tmp, x


def test_plan_writes_a_valid_plan(artefacts):
    bundle, profile, evaluation, tmp, _ = artefacts
    out = tmp / "plan.json"
    args = ["plan", str(bundle.path), "--profile", str(profile), "--evaluation", str(evaluation)]
    result = CliRunner().invoke(cli, [*args, "--max-drop", "0.02", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    plan = load_plan(out)
    assert summary["states"] == list(plan.state_names)
    assert summary["states"][-1] in {s.name for s in bundle.states}
    assert len(summary["thresholds"]) == len(summary["states"]) - 1
    assert 0 < summary["cost"] <= summary["r_n"] * (1 + 1e-12)  # a mean of equal costs rounds
    assert summary["oracle"]["r_oracle"] <= summary["cost"]
    assert set(summary) >= {"accuracy", "cost", "oracle", "gap_closure", "drop_bound"}


def test_plan_refuses_another_bundles_profile(artefacts, tmp_path):
    _, profile, evaluation, _, _ = artefacts
    family = str(BUNDLES / "mnist1d-family")
    result = CliRunner().invoke(
        cli, ["plan", family, "--profile", str(profile), "--evaluation", str(evaluation)]
    )
    assert result.exit_code == 2
    assert "profile.json" in result.output
    assert not (BUNDLES / "mnist1d-family" / "plan.json").exists()


def test_plan_names_a_missing_evaluation(artefacts, tmp_path):
    bundle, profile, _, _, _ = artefacts
    missing = tmp_path / "none.npz"
    result = CliRunner().invoke(
        cli, ["plan", str(bundle.path), "--profile", str(profile), "--evaluation", str(missing)]
    )
    assert result.exit_code == 2
    assert "none.npz" in result.output


@pytest.mark.parametrize("measure", ["margin", "entropy"])
def test_a_measure_plan_exits_the_rows_the_planner_simulated(artefacts, measure):
    """The plan's thresholds, run through AdaptiveModel (the C++ kernel) on the same
    samples, exit exactly the rows the planner's simulation exited, so the held-out
    accuracy the plan reports is what the cascade achieves."""
    bundle, profile, evaluation, tmp, x = artefacts
    out = tmp / f"plan-{measure}.json"
    args = ["plan", str(bundle.path), "--profile", str(profile), "--evaluation", str(evaluation)]
    result = CliRunner().invoke(
        cli,
        [
            *args,
            "--measure",
            measure,
            "--max-drop",
            "0.02",
            "--calibration",
            "empirical",
            "-o",
            str(out),
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["measure"] == measure
    plan = load_plan(out)
    assert plan.measure == measure
    assert len(plan.states) >= 2  # some rows exit early: the comparison is not vacuous

    outcomes = Outcomes.from_evaluation(load_evaluation(evaluation), measure)
    kept = list(plan.states)
    simulated = np.asarray(kept)[exit_states(outcomes.conf[:, kept], np.array(plan.thresholds))]
    assert len(np.unique(simulated)) >= 2
    with AdaptiveModel.load(bundle, plan=out) as model:
        ran = model.predict(x)
    np.testing.assert_array_equal(ran.exit_state, simulated)

    rows = np.random.default_rng(0).permutation(outcomes.n)  # the CLI's split (seed 0)
    heldout = np.sort(rows[outcomes.n - round(0.5 * outcomes.n) :])
    labels = load_evaluation(evaluation).labels
    accuracy = float((ran.pred[heldout] == labels[heldout]).mean())
    assert accuracy == pytest.approx(plan.heldout.accuracy, abs=1e-12)


def test_plan_on_an_evaluation_without_the_measure_names_the_key(artefacts, tmp_path):
    bundle, profile, evaluation, _, _ = artefacts
    old = load_evaluation(evaluation)
    path = tmp_path / "old.npz"
    np.savez(path, labels=old.labels, pred=old.pred, states=old.states, conf=old.conf)
    args = ["plan", str(bundle.path), "--profile", str(profile), "--evaluation", str(path)]
    result = CliRunner().invoke(cli, [*args, "--measure", "margin", "-o", str(tmp_path / "p")])
    assert result.exit_code == 2
    assert "old.npz: conf_margin" in result.output
    assert "needs margin confidences" in result.output


def test_plan_states_its_saving_against_both_baselines(artefacts):
    bundle, profile, evaluation, tmp, _ = artefacts
    from edgeadapt.formats.profile import load_profile, static_cost

    args = ["plan", str(bundle.path), "--profile", str(profile), "--evaluation", str(evaluation)]
    out = tmp / "plan-static.json"
    result = CliRunner().invoke(cli, [*args, "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    static = static_cost(load_profile(profile), bundle)
    assert static is not None  # the profiler times the whole model by default
    assert summary["static_ms"] == static
    assert load_plan(out).static_ms == static
    if summary["keeps_static"]:  # the plan is the static model: no saving against itself
        assert summary["states"] == [bundle.states[-1].name]
        assert summary["saving_vs_static"] == 0.0
        assert summary["beats_static"] is False
    else:
        assert summary["saving_vs_static"] == pytest.approx(1 - summary["cost"] / static)
        assert summary["beats_static"] is (summary["cost"] < static)
    assert summary["profile_order"] == "chain"
    text = CliRunner().invoke(cli, [*args, "-o", str(out)]).output
    assert "vs R_N, the sum of the steps:" in text
    assert "vs the static model, the measured whole model:" in text
    assert "note:" not in text  # chain-order costs: nothing to warn about


def test_plan_notes_a_profile_timed_each_step_alone(artefacts, tmp_path):
    bundle, _, evaluation, _, _ = artefacts
    profile = tmp_path / "step.json"
    save_profile(
        profile, profile_bundle(bundle, timing=TimingOptions(iters=10, order="step", whole=False))
    )
    args = ["plan", str(bundle.path), "--profile", str(profile), "--evaluation", str(evaluation)]
    result = CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "plan.json")])
    assert result.exit_code == 0, result.output
    assert "note: the profile timed each step alone (step order)" in result.output
    assert "vs the static model: not measured" in result.output
    summary = json.loads(
        CliRunner().invoke(cli, [*args, "-o", str(tmp_path / "plan.json"), "--json"]).output
    )
    assert summary["profile_order"] == "step"
    assert summary["static_ms"] is None
    assert summary["beats_static"] is None


def test_a_plan_of_one_state_prints_no_thresholds_and_no_saving_against_itself():
    from dataclasses import replace

    from edgeadapt.commands.plan import plan_text
    from edgeadapt.planning.planner import Outcomes, PlanSummary, make_plan

    rng = np.random.default_rng(1)
    correct = rng.random((40, 3)) < [0.5, 0.7, 0.9]
    data = Outcomes(("s0", "s1", "s2"), correct, rng.random((40, 3)).astype(np.float32))
    calib, held = data.split(0.5, 0)
    # too few held-out samples for a promise: the plan keeps the last state alone, and
    # the whole model was timed slower than the sum of the steps (a loaded profile)
    plan = make_plan(
        calib, held, PlanCosts([0.1, 0.2, 0.3], static_ms=0.6), manifest_sha256="0" * 64
    )
    assert plan.state_names == ("s2",)
    text = plan_text(PlanSummary(plan))
    assert "thresholds: none (one state answers every input)" in text
    assert "thresholds (" not in text
    assert "the plan is the static model" in text
    assert "saves" not in text.split("vs the static model")[1]
    # a cascade still states its saving and verdict
    cascade = replace(plan, states=(0, 2), thresholds=(0.9,), cost_ms=(0.1, 0.3))
    text = plan_text(PlanSummary(cascade))
    assert "thresholds (maxprob): 0.9000" in text
    assert "; the plan beats it)" in text


def test_plan_reference_is_named_and_checked(artefacts):
    bundle, profile, evaluation, tmp, _ = artefacts
    out = tmp / "plan-ref.json"
    args = ["plan", str(bundle.path), "--profile", str(profile), "--evaluation", str(evaluation)]
    first = bundle.states[0].name
    result = CliRunner().invoke(
        cli, [*args, "--reference", first, "--max-drop", "0.02", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    plan = load_plan(out)
    # the labels are the last state's predictions: by default it is the reference
    assert plan.reference_state == 0
    assert plan.state_names == (first,)  # the cheapest state alone meets its own accuracy
    result = CliRunner().invoke(cli, [*args, "--reference", "nope", "-o", str(tmp / "no.json")])
    assert result.exit_code == 2
    assert "no state named 'nope'" in result.output
    assert "reference" in result.output
    assert not (tmp / "no.json").exists()
