"""`edgeadapt evaluate`: files written, output, the profile's runtime settings, exit code 2."""

import json

import numpy as np
import pytest

from edgeadapt.formats.evaluation import load_evaluation
from tests.clirun import invoke as run


def test_evaluate_writes_the_evaluation(multiexit_copy, mnist1d_npz, tmp_path):
    out = tmp_path / "e.npz"
    result = run(
        "evaluate", multiexit_copy, "--data", mnist1d_npz, "--batch", 16, "-o", out, "--json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    ev = load_evaluation(out)
    assert ev.pred.shape == (40, 4)
    assert doc["states"] == list(ev.names)
    assert doc["accuracy"] == pytest.approx(list(ev.accuracies))
    assert doc["samples"] == 40


def test_evaluate_human_output_and_default_path(multiexit_copy, mnist1d_npz):
    result = run("evaluate", multiexit_copy, "--data", mnist1d_npz)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    assert load_evaluation(multiexit_copy / "evaluation.npz").pred.shape == (40, 4)


@pytest.mark.parametrize(
    ("arrays", "key"),
    [
        ({"x": np.zeros((4, 1, 40), np.float32)}, "y"),
        ({"y": np.zeros(4, int)}, "x"),
        ({"x": np.zeros((4, 1, 40), int), "y": np.zeros(4, int)}, "x"),
        ({"x": np.zeros((4, 1, 41), np.float32), "y": np.zeros(4, int)}, "x"),
        ({"x": np.zeros((4, 1, 40), np.float32), "y": np.zeros(5, int)}, "y"),
        ({"x": np.zeros((4, 1, 40), np.float32), "y": np.full(4, 99)}, "y"),
    ],
)
def test_evaluate_bad_data_names_the_key(multiexit_copy, tmp_path, arrays, key):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = run("evaluate", multiexit_copy, "--data", path)
    assert result.exit_code == 2, result.output
    assert f"{path}: {key}:" in result.output


def test_evaluate_bad_batch_and_missing_file_exit_2(multiexit_copy, mnist1d_npz, tmp_path):
    assert run("evaluate", multiexit_copy, "--data", mnist1d_npz, "--batch", 0).exit_code == 2
    result = run("evaluate", multiexit_copy, "--data", tmp_path / "none.npz")
    assert result.exit_code == 2
    assert "file not found" in result.output


def _profile(multiexit_copy, threads):
    """A profile of the bundle on this device at its default place, under `threads`."""
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.profile import default_profile_path, save_profile
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle

    bundle = load_bundle(multiexit_copy)
    prof = profile_bundle(
        bundle, threads=threads, timing=TimingOptions(warmup=0, iters=10, whole=False)
    )
    save_profile(default_profile_path(bundle), prof)


def test_evaluate_runs_under_the_profile_settings_unless_overridden(
    multiexit_copy, mnist1d_npz, tmp_path
):
    from edgeadapt.measure.evaluate import evaluate_to_file

    _profile(multiexit_copy, threads=2)
    done = evaluate_to_file(multiexit_copy, mnist1d_npz, output=tmp_path / "e.npz")
    assert done.runtime.threads == 2
    assert done.runtime_note is None
    inherited = run("evaluate", multiexit_copy, "--data", mnist1d_npz, "--json")
    assert inherited.exit_code == 0, inherited.output
    assert inherited.stderr == ""
    overridden = run("evaluate", multiexit_copy, "--data", mnist1d_npz, "--threads", 1, "--json")
    assert overridden.exit_code == 0, overridden.output
    assert overridden.stderr.count("\n") == 1
    assert "threads 1 (profile: 2)" in overridden.stderr
    assert json.loads(overridden.stdout)["accuracy"] == json.loads(inherited.stdout)["accuracy"]


def test_evaluate_without_a_profile_keeps_the_runtime_defaults(multiexit_copy, mnist1d_npz):
    from edgeadapt.formats.presets import RuntimeConfig
    from edgeadapt.measure.evaluate import evaluate_to_file

    done = evaluate_to_file(multiexit_copy, mnist1d_npz)
    assert done.runtime == RuntimeConfig("onnxruntime")
    assert done.runtime_note is None
    assert done.path == multiexit_copy / "evaluation.npz"
