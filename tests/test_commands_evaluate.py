"""`edgeadapt evaluate`: files written, output, the profile's runtime settings, exit code 2."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeadapt.cli import cli
from edgeadapt.evaluation import load_evaluation

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "data" / "bundles"
MULTIEXIT = BUNDLES / "mnist1d-multiexit"


def run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture
def bundle_dir(tmp_path):
    """A private copy of the shipped bundle, so default outputs land in tmp_path."""
    return Path(
        shutil.copytree(
            MULTIEXIT, tmp_path / "b", ignore=shutil.ignore_patterns("profiles", "*.npz")
        )
    )


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "d.npz"
    np.savez(path, x=rng.standard_normal((40, 1, 40)).astype(np.float32), y=rng.integers(0, 10, 40))
    return path


def test_evaluate_writes_the_evaluation(bundle_dir, data, tmp_path):
    out = tmp_path / "e.npz"
    result = run("evaluate", bundle_dir, "--data", data, "--batch", 16, "-o", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    ev = load_evaluation(out)
    assert ev.pred.shape == (40, 4)
    assert doc["states"] == list(ev.names)
    assert doc["accuracy"] == pytest.approx(list(ev.accuracies))
    assert doc["samples"] == 40


def test_evaluate_human_output_and_default_path(bundle_dir, data):
    result = run("evaluate", bundle_dir, "--data", data)
    assert result.exit_code == 0, result.output
    assert "accuracy" in result.output
    assert load_evaluation(bundle_dir / "evaluation.npz").pred.shape == (40, 4)


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
def test_evaluate_bad_data_names_the_key(bundle_dir, tmp_path, arrays, key):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    result = run("evaluate", bundle_dir, "--data", path)
    assert result.exit_code == 2, result.output
    assert f"{path}: {key}:" in result.output


def test_evaluate_bad_batch_and_missing_file_exit_2(bundle_dir, data, tmp_path):
    assert run("evaluate", bundle_dir, "--data", data, "--batch", 0).exit_code == 2
    result = run("evaluate", bundle_dir, "--data", tmp_path / "none.npz")
    assert result.exit_code == 2
    assert "file not found" in result.output


def _profile(bundle_dir, threads):
    """A profile of the bundle on this device at its default place, under `threads`."""
    from edgeadapt.bundle import load_bundle
    from edgeadapt.profile import default_profile_path, profile_bundle, save_profile

    bundle = load_bundle(bundle_dir)
    prof = profile_bundle(bundle, threads=threads, warmup=0, iters=10, whole=False)
    save_profile(default_profile_path(bundle), prof)


def test_evaluate_runs_under_the_profile_settings_unless_overridden(bundle_dir, data, tmp_path):
    from edgeadapt.evaluate import evaluate_to_file

    _profile(bundle_dir, threads=2)
    done = evaluate_to_file(bundle_dir, data, output=tmp_path / "e.npz")
    assert done.runtime.threads == 2
    assert done.runtime_note is None
    inherited = run("evaluate", bundle_dir, "--data", data, "--json")
    assert inherited.exit_code == 0, inherited.output
    assert inherited.stderr == ""
    overridden = run("evaluate", bundle_dir, "--data", data, "--threads", 1, "--json")
    assert overridden.exit_code == 0, overridden.output
    assert overridden.stderr.count("\n") == 1
    assert "threads 1 (profile: 2)" in overridden.stderr
    assert json.loads(overridden.stdout)["accuracy"] == json.loads(inherited.stdout)["accuracy"]


def test_evaluate_without_a_profile_keeps_the_runtime_defaults(bundle_dir, data):
    from edgeadapt.evaluate import evaluate_to_file
    from edgeadapt.presets import RuntimeConfig

    done = evaluate_to_file(bundle_dir, data)
    assert done.runtime == RuntimeConfig("onnxruntime")
    assert done.runtime_note is None
    assert done.path == bundle_dir / "evaluation.npz"
