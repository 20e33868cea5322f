"""The plan file: round trip, and every fault named by file and JSON path."""

import json

import numpy as np
import pytest

from edgeadapt.errors import InputError
from edgeadapt.formats.plan import load_plan, plan_to_doc, save_plan
from edgeadapt.planning.planner import Outcomes, PlanCosts, PlanOptions, make_plan


def _plan(n, calibration, max_drop):
    rng = np.random.default_rng(0)
    difficulty = rng.random(n)
    skill = np.array([0.4, 0.6, 0.75, 0.9])
    correct = difficulty[:, None] < skill
    conf = (1 / (1 + np.exp(-4 * (skill - difficulty[:, None]) - rng.normal(size=(n, 4))))).astype(
        np.float32
    )
    data = Outcomes(("s0", "s1", "s2", "s3"), correct, conf)
    calib, held = data.split(0.5, 0)
    return make_plan(
        calib,
        held,
        [0.1, 0.2, 0.3, 0.4],
        manifest_sha256="0" * 64,
        options=PlanOptions(max_states=3, max_drop=max_drop, calibration=calibration),
    )


@pytest.fixture(scope="module")
def plan():
    return _plan(600, "empirical", 0.01)


@pytest.fixture(scope="module")
def promised():
    plan = _plan(4000, "risk", 0.03)
    assert plan.promise is not None
    assert plan.promise.holds
    return plan


def test_round_trip_keeps_the_promise(tmp_path, promised):
    path = tmp_path / "plan.json"
    save_plan(path, promised)
    assert load_plan(path) == promised
    doc = json.loads(path.read_text())
    assert doc["promise"]["holds"] is True
    assert doc["promise"]["max_drop"] == 0.03
    assert "exchangeable" in doc["promise"]["assumption"]
    assert doc["promise"]["kind"] == "net"
    assert doc["promise"]["path"] in ("frontier", "shared")
    assert doc["promise"]["gains"] >= 0


def test_a_promise_without_kind_reads_as_the_losses_alone(tmp_path, promised):
    """Plans written before the net promise promised the losses alone."""
    doc = plan_to_doc(promised)
    for key in ("kind", "gains", "path"):
        del doc["promise"][key]
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    old = load_plan(path).promise
    assert old is not None
    assert (old.kind, old.gains, old.path) == ("loss", None, None)
    assert "new errors" in old.describe()


@pytest.mark.parametrize(
    ("key", "value", "where"),
    [
        ("holds", False, r"\$\.promise\.holds"),
        ("passed", 99, r"\$\.promise\.passed"),
        ("delta", 1.5, r"\$\.promise\.delta"),
        ("n", 0, r"\$\.promise\.n"),
        ("kind", "both", r"\$\.promise\.kind"),
        ("gains", -1, r"\$\.promise\.gains"),
        ("gains", 10**9, r"\$\.promise\.gains"),
        ("path", "zigzag", r"\$\.promise\.path"),
    ],
)
def test_promise_faults_name_file_and_path(tmp_path, promised, key, value, where):
    doc = plan_to_doc(promised)
    doc["promise"][key] = value
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=where):
        load_plan(path)


def test_round_trip(tmp_path, plan):
    path = tmp_path / "plan.json"
    save_plan(path, plan)
    assert load_plan(path) == plan
    doc = json.loads(path.read_text())
    assert doc["format"] == "edgeadapt-plan"
    assert doc["version"] == 1
    assert doc["state_names"] == [plan.bundle_states[i] for i in plan.states]


def test_summary_keys(plan):
    summary = plan.summary()
    assert {"states", "thresholds", "accuracy", "cost", "oracle", "gap_closure"} <= summary.keys()
    json.dumps(summary, allow_nan=False)


def edit(doc, path, value):
    *parents, last = path
    for key in parents:
        doc = doc[key]
    if value is KeyError:
        del doc[last]
    else:
        doc[last] = value


@pytest.mark.parametrize(
    ("path", "value", "where"),
    [
        (["version"], 3, r"\$\.version"),
        (["format"], "edgeadapt-profile", r"\$\.format"),
        (["thresholds", 0], 1.5, r"\$\.thresholds\[0\]"),
        (["thresholds", 0], -0.1, r"\$\.thresholds\[0\]"),
        (["thresholds", 0], "0.5", r"\$\.thresholds\[0\]: expected int or float"),
        (["thresholds", 0], True, r"\$\.thresholds\[0\]: expected int or float"),
        (["thresholds"], [], r"\$\.thresholds: expected \d numbers"),
        (["states"], [2, 1], r"\$\.states: .*increasing"),
        (["states"], [0, 9], r"\$\.states: .*out of range"),
        (["states"], [], r"\$\.states: must keep"),
        (["states"], "0,1", r"\$\.states: expected list"),
        (["states", 0], 0.0, r"\$\.states\[0\]: expected int"),
        (["state_names", 0], "other", r"\$\.state_names"),
        (["cost_ms", 0], -1.0, r"\$\.cost_ms\[0\]"),
        (["measure"], "logits", r"\$\.measure: must be one of"),
        (["bundle", "kind"], "tree", r"\$\.bundle\.kind"),
        (["bundle", "manifest_sha256"], "abc", r"\$\.bundle\.manifest_sha256"),
        (["bundle", "states"], ["a", "a", "b", "c"], r"\$\.bundle\.states"),
        (["budget"], [], r"\$\.budget: must hold"),
        (["budget", 0, "state"], 99, r"\$\.budget\[0\]\.state: state 99 is not kept"),
        (
            ["budget", 0, "budget_ms"],
            1e9,
            r"\$\.budget\[1\]: budget_ms must be strictly increasing",
        ),
        (["heldout", "delta"], 0.0, r"\$\.heldout\.delta"),
        (["heldout", "n"], 0, r"\$\.heldout\.n"),
        (["calibration", "accuracy"], 1.2, r"\$\.calibration\.accuracy"),
        (["gap_closure"], "high", r"\$\.gap_closure"),
        (["oracle"], KeyError, r"\$\.oracle: missing required field"),
        (["search", "method"], "greedy", r"\$\.search\.method"),
    ],
)
def test_faults_name_file_and_path(tmp_path, plan, path, value, where):
    doc = plan_to_doc(plan)
    assert len(doc["budget"]) >= 2 or "budget_ms" not in path
    edit(doc, path, value)
    bad = tmp_path / "bad-plan.json"
    bad.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=where) as info:
        load_plan(bad)
    assert "bad-plan.json" in str(info.value)


def test_nan_threshold_is_refused_on_read_and_write(tmp_path, plan):
    doc = plan_to_doc(plan)
    text = json.dumps(doc).replace(json.dumps(doc["thresholds"][0]), "NaN", 1)
    bad = tmp_path / "nan.json"
    bad.write_text(text)
    with pytest.raises(InputError, match="NaN is not allowed"):
        load_plan(bad)
    nan_plan = type(plan)(**{**plan.__dict__, "thresholds": (float("nan"),) * len(plan.thresholds)})
    with pytest.raises(InputError, match=r"\$\.thresholds\[0\]: must be finite"):
        save_plan(tmp_path / "out.json", nan_plan)
    assert not (tmp_path / "out.json").exists()


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_plan(tmp_path / "none.json")


def test_threshold_range_follows_the_measure(tmp_path, plan):
    doc = plan_to_doc(plan)
    doc["measure"] = "entropy"  # negative entropy: thresholds <= 0
    doc["thresholds"] = [-0.5] * len(doc["thresholds"])
    ok = tmp_path / "entropy.json"
    ok.write_text(json.dumps(doc))
    assert load_plan(ok).thresholds == (-0.5,) * len(doc["thresholds"])
    doc["thresholds"][0] = 0.5
    ok.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"\$\.thresholds\[0\]: must be finite and <= 0.0"):
        load_plan(ok)


def test_static_baseline_round_trips_and_is_optional(tmp_path, plan):
    from dataclasses import replace

    assert plan.static_ms is None
    assert plan.beats_static is None
    assert "static" not in plan_to_doc(plan)  # plans without one read as before
    with_static = replace(plan, static_ms=0.25)
    path = tmp_path / "plan.json"
    save_plan(path, with_static)
    assert json.loads(path.read_text())["static"] == {"cost_ms": 0.25}
    assert load_plan(path) == with_static
    summary = with_static.summary()
    cost = plan.heldout.cost_ms
    assert summary["static_ms"] == 0.25
    assert summary["saving_vs_static"] == pytest.approx(1 - cost / 0.25)
    assert summary["saving_vs_r_n"] == pytest.approx(1 - cost / plan.r_n)
    assert summary["beats_static"] is (cost < 0.25)
    assert replace(plan, static_ms=cost / 2).beats_static is False
    doc = plan_to_doc(with_static)
    doc["static"]["cost_ms"] = -1
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match=r"\$\.static\.cost_ms"):
        load_plan(path)


@pytest.mark.parametrize("gated", [False, True], ids=["version 1", "version 2"])
def test_the_runtime_block_round_trips_and_is_optional(tmp_path, plan, gated):
    from dataclasses import replace

    from edgeadapt.formats.plan import Gate
    from edgeadapt.formats.presets import RuntimeConfig
    from edgeadapt.kernel_ref import GATE_FEATURES

    if gated:
        gates = tuple(Gate(weights=(0.0,) * len(GATE_FEATURES), bias=0.0) for _ in plan.thresholds)
        plan = replace(plan, gates=gates, thresholds=tuple(0.5 for _ in plan.thresholds))
    assert plan.runtime is None
    assert "runtime" not in plan_to_doc(plan)  # plans without one read as before
    config = RuntimeConfig("onnxruntime", "x86-ort-2t", "as-exported", 2, {"spin": False})
    path = tmp_path / "plan.json"
    save_plan(path, replace(plan, runtime=config))
    doc = json.loads(path.read_text())
    assert doc["version"] == (2 if gated else 1)
    assert doc["runtime"] == {
        "runtime": "onnxruntime",
        "preset": "x86-ort-2t",
        "precision": "as-exported",
        "threads": 2,
        "options": {"spin": False},
    }
    assert load_plan(path).runtime == config
    for threads in (-1, 0, 1025, 100_000):  # the native runner's bounds: 1..1024
        doc["runtime"]["threads"] = threads
        path.write_text(json.dumps(doc))
        with pytest.raises(InputError, match=r"plan\.json: \$\.runtime\.threads: must be"):
            load_plan(path)


def test_every_measure_the_kernel_computes_has_a_threshold_range():
    from edgeadapt.formats.plan import MEASURE_RANGES
    from edgeadapt.kernel_ref import MEASURES

    assert tuple(MEASURE_RANGES) == MEASURES


def test_a_plan_of_the_last_state_alone_saves_nothing_against_the_static_model():
    """The static model is the whole model of the last state: a plan that keeps that state
    alone deploys it as one plain model, so however the profile timed the two (here the
    whole model twice the sum of the steps, as a busy neighbour can make it), the plan is
    the static model and saves nothing against it."""
    from dataclasses import replace

    rng = np.random.default_rng(1)
    correct = rng.random((40, 4)) < [0.5, 0.6, 0.7, 0.9]
    data = Outcomes(("s0", "s1", "s2", "s3"), correct, rng.random((40, 4)).astype(np.float32))
    calib, held = data.split(0.5, 0)
    costs = [0.1, 0.2, 0.3, 0.4]
    # 20 held-out samples support no promise: the plan keeps the reference, the last state
    plan = make_plan(calib, held, PlanCosts(costs, static_ms=0.8), manifest_sha256="0" * 64)
    assert plan.state_names == ("s3",)
    assert plan.thresholds == ()
    assert plan.keeps_static
    assert plan.saving_vs_static == 0.0
    assert plan.beats_static is False
    summary = plan.summary()
    assert (summary["saving_vs_static"], summary["beats_static"]) == (0.0, False)
    assert summary["keeps_static"] is True
    # without a measured whole model there is nothing to compare
    assert replace(plan, static_ms=None).saving_vs_static is None
    assert replace(plan, static_ms=None).beats_static is None
    # one state that is not the last is another, cheaper model: compared as before
    cheaper = replace(plan, states=(2,), cost_ms=(0.3,))
    assert not cheaper.keeps_static
    assert cheaper.saving_vs_static == pytest.approx(1 - plan.heldout.cost_ms / 0.8)
