"""`edgeadapt plan` on the shipped multi-exit bundle: files in, validated plan out."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeadapt.bundle import load_bundle
from edgeadapt.cli import cli
from edgeadapt.evaluate import evaluate_bundle
from edgeadapt.evaluation import save_evaluation
from edgeadapt.plan import load_plan
from edgeadapt.profile import profile_bundle, save_profile

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "data" / "bundles"


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory):
    """A profile and an evaluation of the multi-exit bundle; labels are the last state's
    predictions on random inputs, so every state's accuracy is a real agreement rate."""
    tmp = tmp_path_factory.mktemp("plan")
    bundle = load_bundle(BUNDLES / "mnist1d-multiexit")
    profile = tmp / "profile.json"
    save_profile(profile, profile_bundle(bundle, warmup=2, iters=20))
    x = np.random.default_rng(0).normal(size=(600, 1, 40)).astype(np.float32)
    first = evaluate_bundle(bundle, x, np.zeros(600, np.int64))
    evaluation = evaluate_bundle(bundle, x, first.pred[:, -1].astype(np.int64))
    save_evaluation(tmp / "eval.npz", evaluation)
    return bundle, profile, tmp / "eval.npz", tmp


def test_plan_writes_a_valid_plan(artefacts):
    bundle, profile, evaluation, tmp = artefacts
    out = tmp / "plan.json"
    args = ["plan", str(bundle.path), "--profile", str(profile), "--evaluation", str(evaluation)]
    result = CliRunner().invoke(cli, [*args, "--max-drop", "0.02", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    plan = load_plan(out)
    assert summary["states"] == list(plan.state_names)
    assert summary["states"][-1] in {s.name for s in bundle.states}
    assert len(summary["thresholds"]) == len(summary["states"]) - 1
    assert 0 < summary["cost"] <= summary["r_n"]
    assert summary["oracle"]["r_oracle"] <= summary["cost"]
    assert set(summary) >= {"accuracy", "cost", "oracle", "gap_closure", "drop_bound"}


def test_plan_refuses_another_bundles_profile(artefacts, tmp_path):
    _, profile, evaluation, _ = artefacts
    family = str(BUNDLES / "mnist1d-family")
    result = CliRunner().invoke(
        cli, ["plan", family, "--profile", str(profile), "--evaluation", str(evaluation)]
    )
    assert result.exit_code == 2
    assert "profile.json" in result.output
    assert not (BUNDLES / "mnist1d-family" / "plan.json").exists()


def test_plan_names_a_missing_evaluation(artefacts, tmp_path):
    bundle, profile, _, _ = artefacts
    missing = tmp_path / "none.npz"
    result = CliRunner().invoke(
        cli, ["plan", str(bundle.path), "--profile", str(profile), "--evaluation", str(missing)]
    )
    assert result.exit_code == 2
    assert "none.npz" in result.output
