"""`edgeadapt.oracle.bound`: the oracle on a bundle's measured or FLOPs state costs, and its checks."""

import json
from dataclasses import replace

import numpy as np
import pytest

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.evaluation import Evaluation, save_evaluation
from edgeadapt.formats.identity import BundleIdentity
from edgeadapt.formats.profile import flops_costs, save_profile
from edgeadapt.oracle.bound import bundle_bound
from edgeadapt.oracle.equations import alphas
from tests.device_inputs import (
    brute_oracle,
    known_evaluation,
    known_profile,
    multiexit,
)

CASCADE_MS = np.cumsum([0.1, 0.2, 0.3, 0.4])


def bound_json(*args, **kwargs):
    """`bundle_bound`'s result as `edgeadapt bound --json` prints it."""
    return bundle_bound(*args, **kwargs).to_json()


@pytest.fixture(scope="module")
def bundle():
    return multiexit()


@pytest.fixture(scope="module")
def evaluation():
    return known_evaluation()


@pytest.fixture
def files(tmp_path, bundle, evaluation):
    profile, ev = tmp_path / "p.json", tmp_path / "e.npz"
    save_profile(profile, known_profile(bundle))
    save_evaluation(ev, evaluation)
    return profile, ev


def test_ms_costs_are_the_profile_cascade_and_exact_oracle_matches_brute_force(bundle, evaluation):
    out = bound_json(bundle, profile=known_profile(bundle), evaluation=evaluation)
    assert out["cost"]["unit"] == "ms"
    assert [s["cost"] for s in out["states"]] == pytest.approx(CASCADE_MS)
    r, a = brute_oracle(evaluation.correct, CASCADE_MS)
    assert out["method"] == "exact"
    assert out["exact"]["r_oracle"] == pytest.approx(r)
    assert out["exact"]["a_oracle"] == pytest.approx(a)
    assert out["exact"]["r_ratio"] == pytest.approx(1.0 / r)
    assert out["r_n"] == pytest.approx(1.0)
    expected_alphas = alphas(evaluation.correct)
    assert out["alphas"] == pytest.approx(list(expected_alphas))
    assert out["alpha_min"] == pytest.approx(expected_alphas.min())
    assert {"alpha1", "constant_alpha_min", "continuous"} <= out.keys()
    assert out["smallest_state"]["classes"] == bundle.num_classes
    assert out["evaluation"]["samples"] == 400
    assert out["profile"]["runtime"] == "onnxruntime"


def test_views_hold_the_exact_oracle_on_cascade_and_direct_flops(bundle, evaluation):
    out = bound_json(bundle, profile=known_profile(bundle), evaluation=evaluation)
    views = out["views"]
    assert list(views) == ["cascade_ms", "cascade_flops", "direct_flops"]
    assert views["cascade_ms"]["r_oracle"] == pytest.approx(out["exact"]["r_oracle"])
    for name, view in (("cascade_flops", "cascade"), ("direct_flops", "direct")):
        costs = flops_costs(bundle, view)
        assert views[name]["unit"] == "flops"
        assert views[name]["costs"] == costs
        r, _ = brute_oracle(evaluation.correct, costs)
        assert views[name]["r_oracle"] == pytest.approx(r)
        assert views[name]["r_ratio"] == pytest.approx(costs[-1] / r)
    # the direct view drops the heads of earlier exits, so it is never costlier
    assert views["direct_flops"]["r_oracle"] <= views["cascade_flops"]["r_oracle"]


def test_flops_costs_need_no_profile(bundle, evaluation):
    out = bound_json(bundle, evaluation=evaluation, cost="flops")
    assert out["cost"]["unit"] == "flops"
    assert [s["cost"] for s in out["states"]] == [float(f) for f in bundle.flops]
    assert "profile" not in out
    assert "cascade_ms" not in out["views"]


def test_paths_and_any_column_order_give_the_same_figures(bundle, evaluation, files):
    profile, ev = files
    from_paths = bound_json(bundle.path, profile=profile, evaluation=ev)
    shuffled = evaluation.select(["exit2", "exit0", "exit3", "exit1"])
    from_objects = bound_json(bundle, profile=known_profile(bundle), evaluation=shuffled)
    for key in ("exact", "alpha1", "constant_alpha_min", "alphas", "states", "views"):
        assert from_paths[key] == from_objects[key]
    assert from_paths["profile"]["path"] == str(profile)
    json.dumps(from_paths, allow_nan=False)  # JSON-ready


def test_alpha_and_classes_pass_through(bundle, evaluation):
    out = bound_json(
        bundle, profile=known_profile(bundle), evaluation=evaluation, alpha=0.5, classes=3
    )
    assert out["method"] == "constant-alpha"
    assert out["alpha"] == 0.5
    assert out["smallest_state"]["classes"] == 3


def test_accuracy_dip_needs_the_envelope(bundle):
    ev = known_evaluation(rates=(0.5, 0.9, 0.8, 0.95))
    with pytest.raises(InputError, match="dominated states: exit2"):
        bound_json(bundle, profile=known_profile(bundle), evaluation=ev)
    out = bound_json(bundle, profile=known_profile(bundle), evaluation=ev, envelope=True)
    assert out["dominated"] == ["exit2"]


def _renamed(evaluation: Evaluation, names) -> Evaluation:
    return Evaluation(
        evaluation.labels,
        evaluation.pred,
        np.array(names),
        evaluation.conf,
        bundle=BundleIdentity.of(multiexit()),
    )


@pytest.mark.parametrize(
    ("names", "match"),
    [
        (["exit0", "exit1", "exit2", "last"], "missing exit3; not in the bundle: last"),
        (["exit0", "exit1", "exit2"], "missing exit3"),
        (["exit0", "exit1", "exit2", "exit3", "exit4"], "not in the bundle: exit4"),
    ],
)
def test_evaluation_with_other_states_is_refused(bundle, tmp_path, names, match):
    base = known_evaluation(names=names, rates=[0.5] * len(names))
    path = tmp_path / "other.npz"
    save_evaluation(path, replace(base, bundle=BundleIdentity.of(bundle)))  # columns edited
    with pytest.raises(InputError, match=match) as err:
        bound_json(bundle, profile=known_profile(bundle), evaluation=path)
    assert "other.npz: states:" in str(err.value)


def test_labels_outside_the_bundle_classes_are_refused(bundle, tmp_path, evaluation):
    path = tmp_path / "labels.npz"
    shifted = Evaluation(
        evaluation.labels + 10, evaluation.pred, evaluation.states, bundle=evaluation.bundle
    )
    save_evaluation(path, shifted)
    with pytest.raises(
        InputError, match=r"labels\.npz: labels: class indices must lie in 0\.\.9 \(the 10"
    ):
        bound_json(bundle, profile=known_profile(bundle), evaluation=path)


def test_profile_of_another_bundle_is_refused(bundle, evaluation, files):
    profile, _ = files
    doc = json.loads(profile.read_text())
    doc["bundle"]["manifest_sha256"] = "0" * 64
    profile.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"p\.json: \$\.bundle\.manifest_sha256: .*another bundle"):
        bound_json(bundle, profile=profile, evaluation=evaluation)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"cost": "ms"}, "profile: cost 'ms' needs a profile"),
        ({"cost": "watts"}, "cost: must be one of ms, flops"),
        ({"cost": "flops", "evaluation": None}, "evaluation: the oracle needs"),
    ],
)
def test_missing_or_bad_arguments_fail_clearly(bundle, evaluation, kwargs, match):
    with pytest.raises(InputError, match=match):
        bound_json(bundle, **{"evaluation": evaluation, **kwargs})


def test_static_baseline_is_the_profiles_whole_model(bundle, evaluation):
    out = bound_json(bundle, profile=known_profile(bundle, whole_ms=0.8), evaluation=evaluation)
    static = out["static"]
    r_oracle = out["r_oracle"]
    assert static["cost_ms"] == 0.8
    assert static["origin"] == "composed"
    assert static["state"] == "exit3"
    assert static["delta_r"] == pytest.approx(0.8 - r_oracle)
    assert static["r_ratio"] == pytest.approx(0.8 / r_oracle)
    assert static["full_path_ratio"] == pytest.approx(CASCADE_MS[-1] / 0.8)
    assert out["r_n"] == pytest.approx(CASCADE_MS[-1])  # R_N stays the sum of the steps
    json.dumps(out, allow_nan=False)


def test_no_static_baseline_without_the_whole_model_or_in_flops(bundle, evaluation):
    assert (
        bound_json(bundle, profile=known_profile(bundle), evaluation=evaluation)["static"] is None
    )
    flops = bound_json(
        bundle, profile=known_profile(bundle, whole_ms=0.8), evaluation=evaluation, cost="flops"
    )
    assert flops["static"] is None


def test_result_is_typed_and_its_json_holds_every_part(bundle, evaluation):
    bound = bundle_bound(bundle, profile=known_profile(bundle, whole_ms=0.8), evaluation=evaluation)
    assert bound.summary.method == "exact"
    assert bound.static is not None
    assert bound.static.cost_ms == pytest.approx(0.8)
    assert set(bound.views) == {"cascade_ms", "cascade_flops", "direct_flops"}
    doc = bound.to_json()
    assert doc["views"]["cascade_ms"] == bound.views["cascade_ms"].to_json()
    assert doc["static"] == bound.static.to_json()
    assert doc["exact"] == bound.summary.exact.point.to_json()
    labels = [row[0] for row in bound.baselines()]
    assert labels == [
        f"R_N: the sum of the steps ({bound.summary.baseline})",
        "static: measured whole model (composed)",
    ]


def test_defaults_find_the_bundles_profile_and_name_parameters(tmp_path, evaluation):
    from edgeadapt.formats.profile import default_profile_path
    from edgeadapt.oracle.bound import bundle_bound_defaults
    from tests.device_inputs import copy_multiexit

    path = copy_multiexit(tmp_path)
    ev = tmp_path / "e.npz"
    save_evaluation(ev, evaluation)
    assert bundle_bound_defaults(path, evaluation=ev).unit == "flops"  # no profile yet
    with pytest.raises(InputError) as err:
        bundle_bound_defaults(path, evaluation=ev, cost="ms")
    assert err.value.source == "cost"
    with pytest.raises(InputError) as err:
        bundle_bound_defaults(path, cost="flops")
    assert err.value.source == "evaluation"
    b = multiexit()
    target = default_profile_path(load_bundle(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    save_profile(target, known_profile(b))
    assert bundle_bound_defaults(path, evaluation=ev).unit == "ms"


def test_table_bound_joins_the_evaluation_by_name(tmp_path):
    from edgeadapt.oracle.bound import table_bound

    table = tmp_path / "t.csv"
    table.write_text("name,cost,accuracy\nbig,8,0.9\nsmall,1,0.5\nextra,3,0.7\n")
    ev = tmp_path / "e.npz"
    labels = np.arange(10) % 3
    pred = np.stack([np.where(labels == 0, labels, 9), labels], axis=1)
    save_evaluation(ev, Evaluation(labels, pred, np.array(["small", "big"])))
    result = table_bound(table, ev)
    assert result.ignored == ("extra",)
    assert result.summary.names == ("small", "big")
    assert result.to_json()["ignored"] == ["extra"]
    assert "ignored" not in table_bound(table).to_json()
