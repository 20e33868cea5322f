"""Learned exit gates: the fit, the planner's gate policy, the plan file, and the kernel
running a gate plan row for row as the planner simulated it."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeadapt import kernel
from edgeadapt.cli import cli
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.evaluation import Evaluation, save_evaluation
from edgeadapt.formats.identity import BundleIdentity
from edgeadapt.formats.plan import Gate, check_plan, load_plan, plan_to_doc, save_plan
from edgeadapt.formats.profile import save_profile
from edgeadapt.kernel_ref import gate_score, predict_confidence
from edgeadapt.measure.profiler import TimingOptions, profile_bundle
from edgeadapt.planning.gates import GateInputs, fit_gates, fit_logistic, scores
from edgeadapt.planning.planner import Outcomes, PlanOptions, make_plan, simulate_plan
from edgeadapt.runtimes import get_runtime
from tests.plans import gate_plan
from tests.synthetic import gate_evaluation, gate_logits

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
SHA = "0" * 64


def test_fit_logistic_recovers_known_weights_and_is_stationary():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20000, 3))
    w, b = np.array([1.5, -2.0, 0.5]), 0.3
    y = rng.random(20000) < 1.0 / (1.0 + np.exp(-(x @ w + b)))
    got_w, got_b = fit_logistic(x, y, l2=1.0)
    np.testing.assert_allclose(got_w, w, atol=0.1)
    assert abs(got_b - b) < 0.1
    p = 1.0 / (1.0 + np.exp(-(x @ got_w + got_b)))
    grad = x.T @ (p - y) + 1.0 * got_w  # the penalised optimum: zero gradient
    assert np.abs(grad).max() < 1e-6 * len(y)
    # one class only: the penalty keeps the weights finite
    ones_w, ones_b = fit_logistic(x, np.ones(20000, bool))
    assert np.isfinite([*ones_w, ones_b]).all()
    assert ones_b > 5


def test_gates_use_agreement_and_the_previous_score():
    labels, logits = gate_logits(4000, 3, 5, 1)
    ev = gate_evaluation(labels, logits)
    inputs = GateInputs(ev.pred, ev.conf, ev.conf_margin, ev.conf_entropy)
    gates = fit_gates(inputs, ev.correct, ev.correct[:, -1])
    assert len(gates) == 2
    s = scores(gates, inputs)
    assert s.dtype == np.float32
    assert s.shape == (4000, 2)
    target = ev.correct[:, 1] | ~ev.correct[:, -1]
    assert s[target, 1].mean() > s[~target, 1].mean() + 0.1
    assert gates[0].weights[3] == 0.0 or abs(gates[0].weights[3]) < 1e-6  # no earlier exit
    # gate 1 reads gate 0's score: changing gate 0 changes gate 1's scores
    other = (Gate(weights=(0.0,) * 5, bias=3.0), gates[1])
    assert not np.array_equal(scores(other, inputs)[:, 1], s[:, 1])
    want = gate_score(
        ev.conf[:, 1],
        ev.conf_margin[:, 1],
        ev.conf_entropy[:, 1],
        (ev.pred[:, 1] == ev.pred[:, 0]).astype(np.float64),
        s[:, 0],
        gates[1].weights,
        gates[1].bias,
    )
    np.testing.assert_array_equal(s[:, 1], want)


@pytest.fixture(scope="module")
def synthetic():
    labels, logits = gate_logits(3000, 4, 6, 2)
    ev = gate_evaluation(labels, logits)
    calib, held = Outcomes.from_evaluation(ev).split(heldout=0.5, seed=0)
    return ev, logits, calib, held


@pytest.mark.parametrize("calibration", ["risk", "empirical"])
def test_gate_plan_keeps_its_promise_figures(synthetic, calibration):
    _, _, calib, held = synthetic
    costs = [1.0, 2.0, 3.0, 4.0]
    plan = make_plan(
        calib,
        held,
        costs,
        manifest_sha256=SHA,
        options=PlanOptions(max_drop=0.02, calibration=calibration, policy="gate"),
    )
    assert plan.policy == "gate"
    assert plan.gates is not None
    assert len(plan.gates) == len(plan.states) - 1 == len(plan.thresholds)
    assert len(plan.states) > 1  # the synthetic cascade leaves room to exit early
    if calibration == "risk":
        assert plan.promise is not None
        assert plan.promise.holds
    else:
        assert plan.calibration.drop <= 0.02 + 1e-9
    run = simulate_plan(plan, held)
    assert run.expected_cost == pytest.approx(plan.heldout.cost_ms)
    assert run.accuracy == pytest.approx(plan.heldout.accuracy)
    assert plan.summary()["policy"]["kind"] == "gate"


def test_gate_plan_needs_every_measure(synthetic):
    _, _, calib, held = synthetic
    bare = Outcomes(calib.names, calib.correct, calib.conf, "maxprob")
    with pytest.raises(InputError, match="gates read"):
        make_plan(bare, held, [1, 2, 3, 4], manifest_sha256=SHA, options=PlanOptions(policy="gate"))
    with pytest.raises(InputError, match="policy"):
        make_plan(
            calib, held, [1, 2, 3, 4], manifest_sha256=SHA, options=PlanOptions(policy="oracle")
        )


def test_gate_plan_file_round_trip_and_checks(synthetic, tmp_path):
    _, _, calib, held = synthetic
    plan = make_plan(
        calib,
        held,
        [1, 2, 3, 4],
        manifest_sha256=SHA,
        options=PlanOptions(max_drop=0.02, policy="gate"),
    )
    path = tmp_path / "plan.json"
    save_plan(path, plan)
    doc = json.loads(path.read_text())
    assert doc["version"] == 2
    assert doc["policy"]["kind"] == "gate"
    assert len(doc["policy"]["gates"]) == len(plan.states) - 1
    assert load_plan(path) == plan

    threshold = make_plan(
        calib, held, [1, 2, 3, 4], manifest_sha256=SHA, options=PlanOptions(max_drop=0.02)
    )
    save_plan(path, threshold)
    doc = json.loads(path.read_text())
    assert doc["version"] == 1
    assert "policy" not in doc
    doc["version"], doc["policy"] = 2, {"kind": "threshold"}
    path.write_text(json.dumps(doc))
    assert load_plan(path) == threshold

    bad = plan_to_doc(plan)
    bad["policy"]["gates"] = bad["policy"]["gates"][:-1]
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"\$\.policy"):
        load_plan(path)
    bad = plan_to_doc(plan)
    bad["policy"]["gates"][0]["weights"] = [1.0, 2.0]
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"\$\.policy\.gates\[0\]\.weights"):
        load_plan(path)
    bad = plan_to_doc(plan)
    bad["thresholds"][0] = 1.5  # gate scores lie in [0, 1]
    path.write_text(json.dumps(bad))
    with pytest.raises(InputError, match=r"\$\.thresholds"):
        load_plan(path)


def test_check_plan_refuses_a_policy_the_runner_cannot_run(synthetic):
    _, _, calib, held = synthetic
    plan = make_plan(
        calib,
        held,
        [1, 2, 3, 4],
        manifest_sha256=SHA,
        options=PlanOptions(max_drop=0.02, policy="gate"),
    )
    with pytest.raises(InputError, match="gate policy"):
        check_plan(plan, object(), "plan.json")  # refused before the bundle is read


def _bundle_logits(bundle, x):
    """Each step's logits on `x` (the early-exit chain run by hand)."""
    rt = get_runtime("onnxruntime", threads=1)
    sessions = [rt.load(step.path) for step in bundle.steps]
    env = {bundle.input.name: x}
    out = []
    try:
        for step, session in zip(bundle.steps, sessions, strict=True):
            env.update(session.run({k: env[k] for k in step.inputs}))
            out.append(np.ascontiguousarray(env[step.logits], dtype=np.float32))
    finally:
        for s in sessions:
            s.close()
    return out


def _gate_plan_on_multiexit(n: int):
    """A gate plan for the shipped multi-exit bundle, made on its logits for `n` random
    inputs (seed 0) labelled by the last state, half calibration and half held out:
    (evaluation, outcomes, logits per state, plan)."""
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    x = np.random.default_rng(0).normal(size=(n, 1, 40)).astype(np.float32)
    logits = _bundle_logits(bundle, x)
    labels = predict_confidence(logits[-1])[0]  # agreement with the last state
    ev = gate_evaluation(labels, logits, [s.name for s in bundle.states])
    outcomes = Outcomes.from_evaluation(ev)
    return ev, outcomes, logits, gate_plan(bundle, outcomes)


def test_kernel_runs_a_gate_plan_as_the_planner_simulated_it():
    """A gate plan on the shipped multi-exit bundle, run with GateRun over the bundle's
    logits with compaction as the cascade runs it, exits every row where the planner's
    simulation says, with the same answer."""
    ev, outcomes, logits, plan = _gate_plan_on_multiexit(800)
    assert len(plan.states) >= 2
    want = simulate_plan(plan, outcomes)
    assert 0 < np.count_nonzero(want.exit_state < len(plan.states) - 1) < 800

    run = kernel.GateRun(plan.gates, plan.measure)
    run.start(800)
    pred_buf, conf_buf, mask_buf, idx_buf = kernel.decide_buffers(800)
    exit_at = np.full(800, -1)
    pred = np.full(800, -2)
    rows = np.arange(800)
    for pos, state in enumerate(plan.states):
        threshold = plan.thresholds[pos] if pos < len(plan.thresholds) else 2.0
        k = run.decide_into(
            np.ascontiguousarray(logits[state][rows]),
            threshold,
            pred_buf,
            conf_buf,
            mask_buf,
            idx_buf,
        )
        n = rows.size
        gone = np.ones(n, bool) if pos == len(plan.states) - 1 else mask_buf[:n].copy()
        exit_at[rows[gone]] = pos
        pred[rows[gone]] = pred_buf[:n][gone]
        rows = rows[idx_buf[:k]] if pos < len(plan.states) - 1 else rows[:0]
        if rows.size == 0:
            break
    np.testing.assert_array_equal(exit_at, want.exit_state)
    kept_pred = ev.pred[:, list(plan.states)]
    np.testing.assert_array_equal(pred, kept_pred[np.arange(800), want.exit_state])


def test_plan_command_gate_policy(tmp_path):
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    x = np.random.default_rng(1).normal(size=(600, 1, 40)).astype(np.float32)
    logits = _bundle_logits(bundle, x)
    ev = gate_evaluation(predict_confidence(logits[-1])[0], logits)
    ev = Evaluation(
        ev.labels,
        ev.pred,
        np.array([s.name for s in bundle.states]),
        ev.conf,
        conf_margin=ev.conf_margin,
        conf_entropy=ev.conf_entropy,
        num_classes=bundle.num_classes,
        bundle=BundleIdentity.of(bundle),
    )
    save_evaluation(tmp_path / "eval.npz", ev)
    save_profile(
        tmp_path / "profile.json", profile_bundle(bundle, timing=TimingOptions(warmup=1, iters=10))
    )
    out = tmp_path / "plan.json"
    args = [
        "plan",
        str(bundle.path),
        "--profile",
        str(tmp_path / "profile.json"),
        "--evaluation",
        str(tmp_path / "eval.npz"),
        "--max-drop",
        "0.05",
        "--policy",
        "gate",
        "-o",
        str(out),
    ]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    plan = load_plan(out)
    assert summary["policy"]["kind"] == plan.policy
    if plan.gates:
        assert len(summary["policy"]["gates"]) == len(plan.states) - 1
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert "policy: gate" in text.output


@pytest.mark.parametrize("batch", [1, 64])
def test_adaptive_model_runs_a_gate_plan_as_the_planner_simulated_it(batch):
    """AdaptiveModel loads a gate plan and, at batch 1 and with compaction at batch 64,
    exits every row at the state and with the answer the planner's simulation gives."""
    from edgeadapt.cascade.model import AdaptiveModel

    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    x = np.random.default_rng(0).normal(size=(320, 1, 40)).astype(np.float32)
    ev, outcomes, _, plan = _gate_plan_on_multiexit(len(x))
    want = simulate_plan(plan, outcomes)
    want_pred = ev.pred[:, list(plan.states)][np.arange(len(x)), want.exit_state]
    with AdaptiveModel.load(bundle, plan=plan) as m:
        assert m.gates is not None
        outs = [m.predict(x[i : i + batch]) for i in range(0, len(x), batch)]
    exit_state = np.concatenate([o.exit_state for o in outs])
    pred = np.concatenate([o.pred for o in outs])
    np.testing.assert_array_equal(exit_state, np.asarray(plan.states)[want.exit_state])
    np.testing.assert_array_equal(pred, want_pred)
    assert len(np.unique(exit_state)) > 1  # some rows exit early: not vacuous
