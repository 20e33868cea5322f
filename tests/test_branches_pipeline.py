"""Execution branches end to end on a residual CNN trained here on MNIST-1D: export the
branches, evaluate and profile them like any bundle, and plan: the budget table maps
shrinking budgets to shallower branches, each the most accurate that fits."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training the residual CNN needs torch")
pytest.importorskip("mnist1d", reason="the MNIST-1D data needs the mnist1d package")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from edgeadapt.data.mnist1d import mnist1d_splits
    from edgeadapt.demo.train import export_onnx_model, train_residual_cnn

    tmp = tmp_path_factory.mktemp("branches")
    splits = mnist1d_splits(n_train=4000, n_calibration=1000, n_test=1000)
    model = train_residual_cnn(splits.train, width=32)
    path = export_onnx_model(model, splits.train.x, tmp / "rescnn.onnx")
    calib = tmp / "calib.npz"
    np.savez(calib, x=splits.calibration.x, y=splits.calibration.y)
    return tmp, path, calib, splits


@pytest.mark.slow
def test_branches_evaluate_profile_and_plan_a_budget_table(trained):
    from edgeadapt.exporters.branches import export_branches
    from edgeadapt.formats.profile import state_costs
    from edgeadapt.measure.evaluate import evaluate_bundle
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle
    from edgeadapt.planning.planner import Outcomes, make_plan

    tmp, path, calib, splits = trained
    bundle = export_branches(path, tmp / "bundle", calibration=calib, max_branches=6)
    info = bundle.extra["branches"]
    assert len(info["blocks"]) == 4
    assert info["candidates"] == 16
    assert bundle.states[-1].name == "full"
    assert bundle.flops == sorted(bundle.flops)

    ev = evaluate_bundle(bundle, splits.test.x, splits.test.y)
    test_acc = (ev.pred == splits.test.y[:, None]).mean(axis=0)
    assert test_acc[-1] > 0.8  # the trained full network
    assert test_acc[-1] > test_acc[0] + 0.05  # skipping blocks costs accuracy

    profile = profile_bundle(bundle, timing=TimingOptions(batches=(1,), warmup=5, min_seconds=0.05))
    costs = np.asarray(state_costs(profile, bundle))
    assert costs[-1] > costs[0]  # the full branch runs more blocks

    outcomes = Outcomes.from_evaluation(ev)
    calib_half, held = outcomes.split(0.5, 0)
    plan = make_plan(
        calib_half, held, costs, manifest_sha256=bundle.manifest_sha256, kind="branches"
    )
    rows = plan.budget
    assert all(a.budget_ms < b.budget_ms for a, b in itertools.pairwise(rows))
    assert all(a.accuracy < b.accuracy for a, b in itertools.pairwise(rows))
    from edgeadapt.planning.scheduler import budget_state

    # A budget below the cheapest kept branch runs the first row; the largest budget
    # runs the most accurate row; each row is the most accurate kept branch that fits.
    assert budget_state(rows, 0.0) == rows[0].state
    assert budget_state(rows, float(costs.max()) * 10) == rows[-1].state
    for row in rows:
        fits = [s for s in plan.states if costs[s] <= row.budget_ms]
        best = max(fits, key=lambda s: calib_half.correct[:, s].mean())
        assert calib_half.correct[:, best].mean() == pytest.approx(row.accuracy)
