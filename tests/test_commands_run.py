"""`edgeadapt run`: table, --json keys, -o npz, --batch, thresholds forms, clear errors."""

import json
from pathlib import Path

import numpy as np
import pytest

from tests.clirun import invoke

BUNDLE = (
    Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"
)


def run(*args):
    return invoke("run", *args)


@pytest.fixture
def xfile(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((10, 1, 40)).astype(np.float32))
    return path


def test_json_output_matches_the_api(xfile):
    from edgeadapt.cascade.model import AdaptiveModel

    result = run(BUNDLE, "--input", xfile, "--thresholds", "0.5,0.6,0.7", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert set(doc) == {"pred", "exit_state", "conf", "budget_exit", "latency_ms", "batch", "casts"}
    assert doc["batch"]["given"] is False
    assert doc["batch"]["batch"] * doc["batch"]["bytes_per_sample"] <= doc["batch"]["memory"]
    assert doc["casts"] == []
    with AdaptiveModel.load(BUNDLE, thresholds=[0.5, 0.6, 0.7]) as m:
        want = m.predict(np.load(xfile))
    assert doc["pred"] == want.pred.tolist()
    assert doc["exit_state"] == want.exit_state.tolist()
    np.testing.assert_allclose(doc["conf"], want.conf, rtol=1e-6)
    assert doc["latency_ms"]["rows"] == want.latency_ms["rows"]
    assert doc["latency_ms"]["batches"] == 1


def test_batches_and_npz_output(xfile, tmp_path):
    out = tmp_path / "out.npz"
    result = run(BUNDLE, "--input", xfile, "--thresholds", "0.5", "--batch", "3", "-o", out)
    assert result.exit_code == 0, result.output
    assert "10 samples" in result.output
    assert "4 batch(es)" in result.output
    with np.load(out, allow_pickle=False) as z:
        assert z["pred"].dtype == np.int64
        assert z["pred"].shape == (10,)
        whole = json.loads(run(BUNDLE, "--input", xfile, "--thresholds", "0.5", "--json").output)
        assert z["pred"].tolist() == whole["pred"]
        assert z["exit_state"].tolist() == whole["exit_state"]


def test_table_lists_every_sample(xfile):
    result = run(BUNDLE, "--input", xfile, "--thresholds", "2")
    assert result.exit_code == 0, result.output
    assert result.stderr.startswith("note: batch 256 (the most chosen): about ")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["sample", "pred", "exit", "conf"]
    assert len(lines) == 12
    assert all(" exit3 " in line for line in lines[1:11])


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--thresholds", "0.5", "--budget-ms", "5"], "needs predicted step costs"),
        (["--thresholds", "0.5", "--budget-ms", "0"], "--budget-ms: "),
        (["--thresholds", "0.5", "--budget-ms", "nan"], "--budget-ms: "),
        (["--thresholds", "abc"], "--thresholds"),
        (["--thresholds", "0.5,0.5"], "got 2"),
        ([], "exactly one of --thresholds and --plan"),
        (["--thresholds", "0.5", "--runtime", "nope"], "--runtime: 'nope' is not one of"),
        (["--thresholds", "0.5", "--measure", "bogus"], "measure"),
    ],
)
def test_bad_options_are_clear_errors(xfile, args, match):
    result = run(BUNDLE, "--input", xfile, *args)
    assert result.exit_code == 2
    assert match in result.output


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda p: np.save(p, np.zeros((3, 1, 40), np.int64)), "dtype int64 not accepted"),
        (lambda p: np.save(p, np.zeros((3, 40), np.float32)), "shape"),
        (lambda p: np.save(p, np.zeros((0, 1, 40), np.float32)), "empty batch"),
        (lambda p: np.save(p, np.full((2, 1, 40), np.nan, np.float32)), "NaN"),
        (lambda p: np.save(p, np.array([{"a": 1}], dtype=object)), "object arrays are not"),
        (lambda p: p.write_text("garbage"), "not a readable"),
        (lambda p: None, "file not found"),
    ],
    ids=["int64", "rank", "empty", "nan", "pickle", "garbage", "missing"],
)
def test_bad_input_files_are_clear_errors(tmp_path, make, match):
    path = tmp_path / "bad.npy"
    make(path)
    result = run(BUNDLE, "--input", path, "--thresholds", "0.5")
    assert result.exit_code == 2, result.output
    assert match in result.output


def test_plan_file_restricts_states_and_gives_budget_costs(xfile, tmp_path):
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.plan import save_plan
    from tests.plans import runner_plan

    plan = runner_plan(load_bundle(BUNDLE), [1, 2], [1.0], [1.0, 2.0])
    path = tmp_path / "plan.json"
    save_plan(path, plan)
    doc = json.loads(run(BUNDLE, "--input", xfile, "--plan", path, "--json").output)
    assert set(doc["exit_state"]) == {2}
    assert doc["latency_ms"]["rows"] == [10, 10, 10]
    doc = json.loads(
        run(BUNDLE, "--input", xfile, "--plan", path, "--budget-ms", "0.001", "--json").output
    )
    assert set(doc["exit_state"]) == {1}
    assert all(doc["budget_exit"])
    both = run(BUNDLE, "--input", xfile, "--plan", path, "--thresholds", "0.5")
    assert both.exit_code == 2
    assert "exactly one" in both.output


def test_an_npz_input_for_a_one_input_bundle(xfile, tmp_path):
    """`x` in an npz (other arrays, such as labels, ignored) gives what the .npy gives."""
    path = tmp_path / "x.npz"
    np.savez(path, x=np.load(xfile), y=np.zeros(10, np.int64))
    args = ["--thresholds", "0.5", "--json"]
    from_npz = run(BUNDLE, "--input", path, *args)
    assert from_npz.exit_code == 0, from_npz.output
    assert (
        json.loads(from_npz.output)["pred"]
        == json.loads(run(BUNDLE, "--input", xfile, *args).output)["pred"]
    )
    np.savez(path, inputs=np.load(xfile))
    result = run(BUNDLE, "--input", path, "--thresholds", "0.5")
    assert result.exit_code == 2
    assert "x.npz: x: missing array 'x'" in result.output


def test_library_errors_name_the_flag_that_set_the_value(xfile):
    from edgeadapt.cascade.run import MAX_BATCH

    result = run(BUNDLE, "--input", xfile, "--thresholds", "0.5", "--batch", MAX_BATCH + 1)
    assert result.exit_code == 2
    assert result.output.startswith(f"error: --batch: {MAX_BATCH + 1} is not in the range 1<=x<=")


def _plan_file(tmp_path, runtime):
    from dataclasses import replace

    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.plan import save_plan
    from tests.plans import runner_plan

    path = tmp_path / "plan.json"
    save_plan(
        path, replace(runner_plan(load_bundle(BUNDLE), [1, 3], [0.9], [1.0, 2.0]), runtime=runtime)
    )
    return path


def test_a_plan_runs_under_its_runtime_settings_unless_overridden(xfile, tmp_path):
    from edgeadapt.formats.presets import RuntimeConfig

    path = _plan_file(tmp_path, RuntimeConfig(threads=2))
    inherited = run(BUNDLE, "--input", xfile, "--plan", path, "--json")
    assert inherited.exit_code == 0, inherited.output
    assert "note:" not in inherited.stderr
    overridden = run(BUNDLE, "--input", xfile, "--plan", path, "--threads", 1, "--json")
    assert overridden.exit_code == 0, overridden.output
    assert overridden.stderr.count("\n") == 1  # one line says so
    assert overridden.stderr.startswith("note: runtime settings differ from the plan's")
    assert "threads 1 (plan: 2)" in overridden.stderr
    # the answers do not depend on the threads; stdout stays one JSON object
    assert json.loads(overridden.stdout)["pred"] == json.loads(inherited.stdout)["pred"]


def test_an_old_plan_without_runtime_settings_runs_as_before(xfile, tmp_path):
    path = _plan_file(tmp_path, None)
    for args in ([], ["--threads", 2], ["--runtime", "onnxruntime"]):
        result = run(BUNDLE, "--input", xfile, "--plan", path, *args, "--json")
        assert result.exit_code == 0, result.output
        assert result.stderr == ""


def test_a_budget_takes_the_profiles_costs_at_the_asked_percentile(xfile, tmp_path):
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.profile import save_profile
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle

    profile = profile_bundle(
        load_bundle(BUNDLE), threads=1, timing=TimingOptions(iters=10, warmup=1, overhead=False)
    )
    path = tmp_path / "profile.json"
    save_profile(path, profile)
    args = ["--input", xfile, "--thresholds", "2", "--profile", path, "--json"]
    for stat in ("p50", "p99"):
        result = run(BUNDLE, *args, "--budget-ms", "1000", "--cost-percentile", stat)
        assert result.exit_code == 0, result.output
        assert set(json.loads(result.output)["exit_state"]) == {3}  # a budget that fits all
    bad = run(BUNDLE, *args, "--cost-percentile", "p75")
    assert bad.exit_code == 2
    assert "p75" in bad.output
