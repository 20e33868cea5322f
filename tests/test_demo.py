"""`edgeadapt demo` / `run_demo`: the whole pipeline on MNIST-1D, on a short run.

One run per module (MNIST-1D generation and profiling take seconds); the checks compare
its figures with the separate commands on the same files and with the runtime itself.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeadapt.demo
from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.demo import run_demo
from edgeadapt.errors import InputError, MissingExtraError
from edgeadapt.formats.evaluation import load_evaluation
from edgeadapt.formats.npzio import ArraySpec, load_npz
from edgeadapt.formats.plan import load_plan
from edgeadapt.formats.profile import load_profile
from tests.clirun import invoke

SAMPLES = 120


class Recorder:
    """A UI that keeps the log lines and the bars' labels and last positions."""

    def __init__(self):
        self.lines, self.bars = [], {}

    def log(self, message):
        self.lines.append(message)

    def bar(self, label, total):
        from contextlib import contextmanager

        @contextmanager
        def bar():
            yield lambda done, _total: self.bars.__setitem__(label, (done, total))

        return bar()


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    ui = Recorder()
    result = run_demo(out, samples=SAMPLES, min_seconds=0.05, ui=ui)
    return out, result, ui


def _cli(*args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result.output


def _artefacts(b):
    """The bundle, profile and calibration evaluation the demo made, as CLI arguments."""
    profile, evaluation = b.work / "profile.json", b.work / "evaluation-calibration.npz"
    return [b.bundle.path, "--profile", profile, "--evaluation", evaluation]


def _test_split(out):
    (path,) = (out / "data").glob("*-test.npz")
    arrays = load_npz(path, {"x": ArraySpec("f", 3), "y": ArraySpec("iu", 1)})
    return arrays["x"][:SAMPLES], arrays["y"][:SAMPLES]


def test_writes_every_artefact_and_shows_progress(demo):
    _, result, ui = demo
    assert [b.name for b in result.bundles] == ["mnist1d-resnet", "mnist1d-family"]
    for b in result.bundles:
        for name in ("profile.json", "evaluation-calibration.npz", "evaluation-test.npz"):
            assert (b.work / name).is_file()
        assert load_plan(b.work / "plan.json").manifest_sha256 == b.bundle.manifest_sha256
        # profiled as the cascade calls the steps, in turn, and with the whole model
        profile = load_profile(b.work / "profile.json", b.bundle)
        assert profile.settings["order"] == "chain"
        assert b.static_ms == profile.whole_stats(1).p50
        assert load_plan(b.work / "plan.json").static_ms == b.static_ms
        html = b.report.read_text()
        assert "data:image/png;base64," in html
        assert all(name in html for name in b.state_names)
    assert any("generating MNIST-1D" in line for line in ui.lines)
    assert ui.bars["running the plan"] == (SAMPLES, SAMPLES)


def test_the_lead_bundle_is_a_small_compute_bound_multi_exit_network():
    """The residual CNN the demo leads with: four exits, each step's compute (MFLOPs)
    far above what the runtime's per-call cost stands for, a few MB on disk."""
    from edgeadapt.demo.pipeline import BUNDLES
    from edgeadapt.formats.bundle import load_bundle

    bundle = load_bundle(Path(edgeadapt.demo.__file__).parent / "bundles" / BUNDLES[0])
    assert bundle.kind == "early-exit"
    assert len(bundle.states) == 4
    assert all(step.flops > 5e6 for step in bundle.steps)
    assert sum((bundle.path / f).stat().st_size for f in bundle.files) < 3e6


def test_the_lead_plan_cascades_and_beats_the_static_model(demo):
    """The verdict the demo is about, from its profile and its plan (not a timing): the
    lead bundle's plan keeps several states and beats the measured static model; its
    profile timed the whole model in the steps' rounds."""
    _, result, _ = demo
    lead = result.bundles[0]
    plan = lead.plan.plan
    assert len(plan.states) > 1
    assert plan.beats_static is True
    assert not plan.keeps_static
    assert lead.full_over_whole is not None
    assert lead.full_over_whole.rounds >= 1


def test_bounds_agree_with_the_bound_command(demo):
    _, result, _ = demo
    b = result.bundles[0]
    printed = json.loads(_cli("bound", *_artefacts(b), "--envelope", "--json"))
    for key in ("exact", "alpha1", "continuous", "constant_alpha_min"):
        assert printed[key] == pytest.approx(b.bounds.to_json()[key])
    # R_N: the last state on the Pareto envelope (a retrained last exit may be dominated)
    assert printed["r_n"] == pytest.approx(b.bounds.summary.r_n)
    assert b.bounds.summary.r_n in b.cost_ms


def test_plan_agrees_with_the_plan_command(demo, tmp_path):
    _, result, _ = demo
    b = result.bundles[0]
    printed = json.loads(_cli("plan", *_artefacts(b), "-o", tmp_path / "plan.json", "--json"))
    for key in ("states", "thresholds", "accuracy", "cost", "gap_closure", "drop_bound"):
        assert printed[key] == pytest.approx(b.plan.to_json()[key]), key


def test_run_figures_are_what_the_runtime_gives(demo):
    out, result, _ = demo
    x, y = _test_split(out)
    for b in result.bundles:
        r = b.run
        assert r.samples == SAMPLES
        assert sum(r.exits) == SAMPLES
        plan = load_plan(b.work / "plan.json")
        with AdaptiveModel.load(b.bundle, plan=plan) as model:
            pred = model.predict(x).pred
        assert r.accuracy == pytest.approx(float(np.mean(pred == y)))
        # the static model is the reference state alone: same answers as its evaluation
        test = load_evaluation(b.work / "evaluation-test.npz")
        ref = plan.reference_state
        assert r.static_accuracy == pytest.approx(float(test.correct[:SAMPLES, ref].mean()))
        assert r.mean_ms > 0
        assert r.static_mean_ms > 0
        assert r.speedup == pytest.approx(r.static_mean_ms / r.mean_ms)
        # predicted against what `speedup` measures: the whole model the static run calls
        # (the whole model's cost, for a reference before the last state in its share)
        assert plan.static_ms is not None
        costs = b.cost_ms
        static = plan.static_ms * costs[ref] / costs[-1]
        assert r.static_cost_ms == pytest.approx(static)
        assert (r.static_cost_ms == plan.static_ms) is (ref == len(costs) - 1)
        if len(plan.states) == 1:  # one plain model, as the static model runs
            (state,) = plan.states
            plain = plan.static_ms * costs[state] / costs[-1]
            assert r.expected_cost_ms == pytest.approx(plain)
            if state == ref:  # the static model itself
                assert r.predicted_speedup == pytest.approx(1.0)
        else:
            kept = dict(zip(plan.states, plan.cost_ms, strict=True))
            expected = sum(kept[s] * n for s, n in enumerate(r.exits) if n) / SAMPLES
            assert r.expected_cost_ms == pytest.approx(expected)
            assert r.predicted_speedup == pytest.approx(static / expected)


def test_rerun_reuses_artefacts_and_rebuilds_a_broken_one(demo):
    out, first, _ = demo
    plan_path = first.bundles[0].work / "plan.json"
    profile_bytes = (first.bundles[0].work / "profile.json").read_bytes()
    plan_path.write_text("{not json")
    ui = Recorder()
    again = run_demo(out, samples=20, min_seconds=0.05, ui=ui)
    b = again.bundles[0]
    assert {"profile.json", "evaluation-calibration.npz", "evaluation-test.npz"} <= set(b.reused)
    assert "plan.json" not in b.reused
    assert any("plan.json: not reusable" in line for line in ui.lines)
    assert (b.work / "profile.json").read_bytes() == profile_bytes
    assert load_plan(plan_path).state_names == first.bundles[0].plan.plan.state_names
    assert set(again.bundles[1].reused) >= {"profile.json", "plan.json"}


def test_a_rebuilt_evaluation_rebuilds_the_plan(demo):
    out, first, _ = demo
    (first.bundles[0].work / "evaluation-calibration.npz").write_bytes(b"not an npz")
    b = run_demo(out, samples=10, min_seconds=0.05).bundles[0]
    assert "profile.json" in b.reused
    assert "evaluation-calibration.npz" not in b.reused
    assert "plan.json" not in b.reused  # made from the evaluation, so made again


def test_cli_prints_summary_and_json(demo):
    out, _, _ = demo
    text = _cli("demo", "-o", out, "--samples", 20)
    for words in ("oracle bounds", "exact oracle (eq. 4/5)", "alpha=1 (eq. 9)", "plan: keep"):
        assert words in text
    # the demo labels its bounds as `edgeadapt bound` does, one row per bound
    first = json.loads(_cli("demo", "--out", out, "--samples", 20, "--json"))["bundles"][0]
    bound_text = _cli(
        "bound",
        first["path"],
        "--profile",
        f"{first['work']}/profile.json",
        "--evaluation",
        f"{first['work']}/evaluation-calibration.npz",
        "--envelope",
    )
    for label in ("exact oracle (eq. 4/5)", "alpha=1 (eq. 9)", "continuous (eq. 13)"):
        assert label in bound_text
        assert text.count(label) == 2  # once per bundle
    for words in ("speedup", "oracle gap closure", "report:"):
        assert words in text
    # both baselines: the sum of the steps and the measured static model
    for words in (
        "static model (the whole model: backbone and last head, profiled the same way)",
        "baseline R_N = ",
        "the sum of the steps",
        "exact oracle against the static model",
        "expected cost against R_N, the sum of the steps",
        "; against the static model (",
    ):
        assert words in text, words
    doc = json.loads(_cli("demo", "--output", out, "--samples", 20, "--json"))
    assert [b["bundle"] for b in doc["bundles"]] == ["mnist1d-resnet", "mnist1d-family"]
    assert doc["bundles"][0]["run"]["samples"] == 20
    first = doc["bundles"][0]
    assert first["static_ms"] > 0
    assert first["bound"]["static"]["cost_ms"] == first["static_ms"]
    assert first["plan"]["static_ms"] == first["static_ms"]
    assert first["plan"]["beats_static"] in (True, False)


@pytest.mark.parametrize(("option", "value"), [("threads", 0), ("samples", 0), ("threads", True)])
def test_bad_options_are_refused(tmp_path, option, value):
    with pytest.raises(InputError, match=option):
        run_demo(tmp_path, **{option: value})
    assert not any(tmp_path.iterdir())


def test_retrain_without_torch_names_the_extra(tmp_path, monkeypatch, demo):
    out, _, _ = demo
    monkeypatch.setitem(sys.modules, "edgeadapt.demo.train", None)
    with pytest.raises(MissingExtraError, match=r"edgeadapt\[torch\]"):
        run_demo(out, retrain=True)


def test_retrain_runs_the_pipeline_on_the_retrained_bundles(monkeypatch, demo):
    import shutil

    import edgeadapt.demo.train as train
    from edgeadapt.formats.bundle import load_bundle

    out, first, _ = demo
    calls = []

    def fake_train_and_export(out_dir, *, names, force, log):  # the same models, without torch
        calls.append((out_dir, names, force))
        return {
            b.name: load_bundle(shutil.copytree(b.bundle.path, out_dir / b.name))
            for b in first.bundles
        }

    monkeypatch.setattr(train, "train_and_export", fake_train_and_export)
    result = run_demo(out, retrain=True, samples=10, min_seconds=0.05)
    assert calls == [(out / "bundles", ("mnist1d-resnet", "mnist1d-family"), True)]
    for b in result.bundles:
        assert b.bundle.path == out / "bundles" / b.name
        assert b.reused == []  # retraining rebuilds every artefact


def test_the_readme_block_is_what_the_demo_printed(demo):
    """bench/readme_demo.py's block for README.md: the lead bundle's summary as the demo
    prints it (files under the default directory), the others' plan and run lines, and
    the figures; README.md holds the markers it writes between."""
    from edgeadapt.commands.demo import render_bundle
    from edgeadapt.render import ratio
    from tests.scripts import ROOT, script_module

    out, result, _ = demo
    with script_module("bench/readme_demo.py", "bench_readme_demo") as script:
        text = script.block(result, "load average 1.0 before, 1.0 after")
        assert script.BLOCK.search((ROOT / "README.md").read_text())
    lead, family = result.bundles
    assert str(out) not in text
    assert render_bundle(lead).replace(str(out), "edgeadapt-demo") in text
    assert f"== {family.name}: ensemble, 3 states ==" in text
    assert "plan: keep " in text.split(f"== {family.name}")[1]
    assert f"runs {ratio(lead.run.speedup)} faster than the static model" in text
    assert "(load average 1.0 before, 1.0 after)" in text
