"""The agreement policy: its reference (`kernel_ref.agreement_shares`), the planner's
agreement plans (from predictions alone), the plan file, and the cascade running an
agreement plan row for row as the planner simulated it (an ensemble and a branches
bundle)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeadapt import kernel
from edgeadapt.cascade.agreement import AgreementRun
from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.cli import cli
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.evaluation import Evaluation, save_evaluation
from edgeadapt.formats.plan import check_plan, load_plan, plan_from_doc, plan_to_doc
from edgeadapt.formats.profile import save_profile
from edgeadapt.kernel_ref import agreement_decide, agreement_shares, predict_confidence
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.planning.calibrate import exit_states
from edgeadapt.planning.planner import Outcomes, PlanOptions, make_plan, simulate_plan
from edgeadapt.runtimes import get_runtime
from tests.plans import runner_plan
from tests.test_gates import _bundle_logits

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
SHA = "0" * 64


def test_agreement_shares_count_the_earlier_states_that_agree():
    pred = np.array([[3, 3, 3, 1], [1, 2, 1, 1], [0, 1, 2, 3], [-1, 4, 4, -1]])
    want = np.array(
        [
            [0, 1, 1, 0],  # the last disagrees with all three
            [0, 0, 1 / 2, 2 / 3],
            [0, 0, 0, 0],
            [0, 0, 1 / 2, 0],  # -1 agrees with nothing, not even another -1
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(agreement_shares(pred), want)
    assert agreement_shares(pred).dtype == np.float32


def test_agreement_decide_matches_the_shares_and_grows_the_history():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((50, 4)).astype(np.float32)
    logits[3, 0] = np.nan
    history = rng.integers(0, 4, (50, 2))
    pred, share, exit_mask, keep, grown = agreement_decide(logits, 0.5, history)
    assert pred[3] == -1
    whole = np.concatenate([history, pred[:, None]], axis=1)
    np.testing.assert_array_equal(share, agreement_shares(whole)[:, -1])
    np.testing.assert_array_equal(exit_mask, share >= 0.5)
    np.testing.assert_array_equal(keep, np.flatnonzero(~exit_mask))
    np.testing.assert_array_equal(grown, whole[keep])
    assert not exit_mask[3]


def test_agreement_run_decides_as_the_reference_with_compaction():
    """`AgreementRun` over three states with compaction: every row exits where
    `agreement_decide` says, with the same prediction, and the share as confidence."""
    rng = np.random.default_rng(1)
    n = 200
    labels = rng.integers(0, 3, n)
    logits = []
    for _ in range(3):
        x = rng.standard_normal((n, 3)).astype(np.float32)
        x[np.arange(n), labels] += 1.5
        logits.append(x)
    thresholds = [1.0, 0.5, -np.inf]
    run = AgreementRun(3)
    run.start(n)
    pbuf, cbuf, mbuf, kbuf = kernel.decide_buffers(n)
    rows = np.arange(n)
    history = np.zeros((n, 0), dtype=np.int64)
    exit_at, got_pred = np.full(n, -1), np.full(n, -2)
    for j in range(3):
        k = run.decide_into(logits[j][rows], thresholds[j], pbuf, cbuf, mbuf, kbuf)
        m = rows.size
        pred, share, mask, keep, history = agreement_decide(logits[j][rows], thresholds[j], history)
        np.testing.assert_array_equal(pbuf[:m], pred)
        if j < 2:
            np.testing.assert_array_equal(cbuf[:m], share)
            np.testing.assert_array_equal(mbuf[:m], mask)
            np.testing.assert_array_equal(kbuf[:k], keep)
        gone = np.ones(m, bool) if j == 2 else mask
        exit_at[rows[gone]], got_pred[rows[gone]] = j, pbuf[:m][gone]
        rows = rows[kbuf[:k]] if j < 2 else rows[:0]
    assert set(np.unique(exit_at)) == {1, 2}  # state 0 never exits (nothing to agree with)
    preds = np.stack([predict_confidence(x)[0] for x in logits], axis=1)
    want = exit_states(agreement_shares(preds), np.array(thresholds[:2]))
    np.testing.assert_array_equal(exit_at, want)
    np.testing.assert_array_equal(got_pred, preds[np.arange(n), want])


def _member_logits(bundle, x):
    """Each state's logits on `x`, every step fed the input (ensemble and branches)."""
    rt = get_runtime("onnxruntime", threads=1)
    out = []
    for step in bundle.steps:
        session = rt.load(step.path)
        try:
            logits = session.run({bundle.input.name: x})[step.logits]
        finally:
            session.close()
        out.append(np.ascontiguousarray(logits, dtype=np.float32))
    return out


def _runs_as_planned(bundle, plan, x, batch):
    logits = _bundle_logits(bundle, x) if bundle.kind == "early-exit" else _member_logits(bundle, x)
    preds = np.stack([predict_confidence(z)[0] for z in logits], axis=1)
    kept = preds[:, list(plan.states)]
    want = exit_states(agreement_shares(kept), np.asarray(plan.thresholds))
    with AdaptiveModel.load(bundle, plan=plan) as m:
        assert m.agreement is not None
        outs = [m.predict(x[i : i + batch]) for i in range(0, len(x), batch)]
    exit_state = np.concatenate([o.exit_state for o in outs])
    np.testing.assert_array_equal(exit_state, np.asarray(plan.states)[want])
    np.testing.assert_array_equal(
        np.concatenate([o.pred for o in outs]), kept[np.arange(len(x)), want]
    )
    assert (exit_state != plan.states[-1]).any()  # some rows exit early: not vacuous
    return exit_state


@pytest.mark.parametrize("batch", [1, 64])
def test_adaptive_model_runs_an_agreement_plan_of_an_ensemble(batch):
    """The shipped family (an ensemble): exit at the second model when it agrees with
    the first, else run the third; at batch 1 the native cascade declines the plan and
    the Python loop runs it, with compaction at batch 64."""
    bundle = load_bundle(BUNDLES / "mnist1d-family")
    plan = replace(runner_plan(bundle, (0, 1, 2), (1.0, 1.0), (0.1, 0.3, 0.6)), agreement=True)
    x = np.random.default_rng(0).normal(size=(128, 1, 40)).astype(np.float32)
    exit_state = _runs_as_planned(bundle, plan, x, batch)
    assert len(np.unique(exit_state)) > 1  # and some do not


def test_adaptive_model_runs_an_agreement_plan_of_an_early_exit_bundle():
    """On the multi-exit bundle the agreement policy exits where the exits agree (as
    PABEE does), every step still run for its activation."""
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    plan = replace(
        runner_plan(bundle, (0, 1, 2, 3), (2.0, 1.0, 1.0), (0.1, 0.2, 0.3, 0.4)), agreement=True
    )
    x = np.random.default_rng(2).normal(size=(96, 1, 40)).astype(np.float32)
    _runs_as_planned(bundle, plan, x, 32)


def test_adaptive_model_runs_an_agreement_plan_of_branches(tmp_path):
    """A branches bundle under the agreement policy walks its branches in turn (without
    it, a branches plan runs its most accurate branch alone)."""
    import onnx

    from edgeadapt.exporters import _graph
    from edgeadapt.exporters.branches import export_branches
    from tests.test_export_branches import L, residual_cnn

    model = residual_cnn()
    source = tmp_path / "rescnn.onnx"
    onnx.save(model, source)
    x = np.random.default_rng(1).standard_normal((120, 1, L)).astype(np.float32)
    calib = tmp_path / "calib.npz"  # labelled by the full network: branches differ
    np.savez(calib, x=x, y=_graph.session(model).run(None, {"x": x})[0].argmax(axis=1))
    bundle = export_branches(source, tmp_path / "b", calibration=calib, max_branches=8)
    states = tuple(range(len(bundle.states)))
    assert len(states) >= 3
    costs = tuple(0.1 * (i + 1) for i in states)
    plan = replace(runner_plan(bundle, states, (1.0,) * (len(states) - 1), costs), agreement=True)
    _runs_as_planned(bundle, plan, x, 16)


def _predictions_only(n, seed=0):
    """Labels and predictions of three models of rising skill, with no confidences."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    pred = np.empty((n, 3), dtype=np.int64)
    for j, skill in enumerate((0.7, 0.8, 0.9)):
        right = rng.random(n) < skill
        pred[:, j] = np.where(right, labels, rng.integers(0, 10, n))
    return Evaluation(labels, pred, np.array(["small", "mid", "large"]))


def test_agreement_plan_from_predictions_alone_and_its_file():
    ev = _predictions_only(6000)
    outcomes = Outcomes.from_evaluation(ev)
    assert outcomes.conf is None
    calib, held = outcomes.split(0.5, seed=0)
    plan = make_plan(
        calib,
        held,
        [1.0, 2.0, 10.0],
        manifest_sha256=SHA,
        kind="ensemble",
        options=PlanOptions(policy="agreement"),
    )
    assert plan.policy == "agreement"
    assert plan.promise is not None
    assert plan.promise.holds
    assert plan.promise.kind == "net"
    assert len(plan.states) > 1  # agreeing cheap models answer: a real cascade
    run = simulate_plan(plan, held)
    assert run.expected_cost == pytest.approx(plan.heldout.cost_ms)
    assert plan.heldout.cost_ms < 10.0
    doc = plan_to_doc(plan)
    assert doc["version"] == 2
    assert doc["policy"] == {"kind": "agreement"}
    again = plan_from_doc(doc, source="plan.json")
    assert again == plan
    # a version 2 reader that runs thresholds only refuses it by its kind
    family = load_bundle(BUNDLES / "mnist1d-family")
    with pytest.raises(InputError, match="agreement policy"):
        check_plan(plan, family, policies=("threshold",))


def test_plan_command_agreement_policy_on_imported_predictions(tmp_path):
    """`edgeadapt plan --policy agreement` plans a family from predictions that have no
    confidences; the threshold policy says what it lacks."""
    bundle = load_bundle(BUNDLES / "mnist1d-family")
    names = np.array([s.name for s in bundle.states])
    ev = _predictions_only(4000, seed=2)
    save_evaluation(tmp_path / "eval.npz", Evaluation(ev.labels, ev.pred, names))
    save_profile(
        tmp_path / "profile.json", profile_bundle(bundle, timing=TimingOptions(warmup=1, iters=10))
    )
    args = [
        "plan",
        str(bundle.path),
        "--profile",
        str(tmp_path / "profile.json"),
        "--evaluation",
        str(tmp_path / "eval.npz"),
        "--max-drop",
        "0.02",
        "-o",
        str(tmp_path / "plan.json"),
    ]
    refused = CliRunner().invoke(cli, args)
    assert refused.exit_code == 2
    assert "eval.npz: conf" in refused.output
    assert "--policy agreement" in refused.output
    result = CliRunner().invoke(cli, [*args, "--policy", "agreement"])
    assert result.exit_code == 0, result.output
    assert "policy: agreement" in result.output
    plan = load_plan(tmp_path / "plan.json")
    # a plan that keeps one state has nothing to agree on (the family's last member alone
    # may be the cheapest plan that keeps the promise on these costs)
    assert ("thresholds (agreement shares)" in result.output) == (len(plan.states) > 1)
    assert plan.policy == "agreement"
    assert plan.promise is not None
    assert plan.promise.kind == "net"
