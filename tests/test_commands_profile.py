"""`edgeadapt profile`: files written, output, exit code 2."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeadapt.bundle import load_bundle
from edgeadapt.cli import cli
from edgeadapt.device import device_id
from edgeadapt.profile import load_profile

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


def test_profile_writes_a_valid_file_at_the_default_place(bundle_dir):
    result = run("profile", bundle_dir, "--iters", 10, "--warmup", 1, "--batch", "1,2", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    path = bundle_dir / "profiles" / f"{device_id()}.json"
    assert doc["path"] == str(path)
    assert doc["format"] == "edgeadapt-profile"
    assert [b["batch"] for b in doc["batches"]] == [1, 2]
    prof = load_profile(path, load_bundle(bundle_dir))
    assert prof.batches == (1, 2)
    assert all(s.n == 10 for s in prof.step_stats(2))


def test_profile_prints_a_table(bundle_dir, tmp_path):
    out = tmp_path / "p.json"
    result = run("profile", bundle_dir, "--iters", 10, "--warmup", 0, "-o", out)
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.output
    assert "R_i ms" in result.output
    for name in ("exit0", "exit1", "exit2", "exit3"):
        assert name in result.output
    assert f"wrote {out}" in result.output
    load_profile(out)


def test_profile_chain_order_is_recorded(bundle_dir, tmp_path):
    out = tmp_path / "chain.json"
    result = run("profile", bundle_dir, "--iters", 10, "--order", "chain", "-o", out)
    assert result.exit_code == 0, result.output
    assert load_profile(out).settings["order"] == "chain"
    bad = run("profile", bundle_dir, "--order", "random")
    assert bad.exit_code == 2
    assert "--order" in bad.output


def test_profile_device_list_needs_no_bundle():
    result = run("profile", "--device", "list")
    assert result.exit_code == 0, result.output
    for name in ("x86-ort-1t", "x86-ort-2t", "x86-openvino", "jetson-orin-trt-fp16"):
        assert name in result.output
    assert "as-exported" in result.output
    help_text = run("profile", "--help").output
    assert "x86-ort-1t" in help_text


def test_profile_with_a_device_preset_and_an_override(bundle_dir):
    result = run("profile", bundle_dir, "--device", "x86-ort-2t", "--iters", 10, "--warmup", 0)
    assert result.exit_code == 0, result.output
    assert "threads 2" in result.output
    assert "(preset x86-ort-2t)" in result.output
    path = bundle_dir / "profiles" / f"{device_id()}-x86-ort-2t.json"
    assert load_profile(path).settings["threads"] == 2
    out = bundle_dir / "one.json"
    args = ["--device", "x86-ort-2t", "--threads", 1, "--iters", 10, "-o", out, "--json"]
    result = run("profile", bundle_dir, *args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["settings"]["preset"] == "x86-ort-2t"
    assert doc["device"]["runtime"]["threads"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch", "0"], "--batch"),
        (["--batch", "1,x"], "--batch"),
        (["--batch", "2,2"], "--batch"),
        (["--threads", "-1"], "--threads"),
        (["--threads", "0"], "--threads"),
        (["--warmup", "-1"], "--warmup"),
        (["--iters", "5"], "--iters"),
        (["--iters", "10", "--min-seconds", "1"], "--iters"),
        (["--min-seconds", "0"], "--min-seconds"),
        (["--runtime", "nope", "--iters", "10"], "nope"),
        (["--device", "nope"], "unknown device preset 'nope'"),
        (["--device", "x86-ort-1t", "--runtime", "openvino", "--iters", "10"], "is for runtime"),
    ],
)
def test_profile_bad_values_exit_2(bundle_dir, args, message):
    result = run("profile", bundle_dir, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (bundle_dir / "profiles").exists()


def test_profile_times_the_whole_model_and_says_so(bundle_dir, tmp_path):
    out = tmp_path / "p.json"
    result = run("profile", bundle_dir, "--iters", 10, "--warmup", 0, "--batch", "1,2", "-o", out)
    assert result.exit_code == 0, result.output
    assert "steps timed in chain order" in result.output  # the default
    assert len(re.findall(r"^whole model +[12] ", result.output, re.M)) == 2
    assert "whole model (static baseline): composed from the bundle" in result.output
    assert "full path R_N / whole" in result.output
    prof = load_profile(out)
    assert prof.order == "chain"
    assert set(prof.whole) == {1, 2}
    assert prof.whole_model["origin"] == "composed"


def test_profile_whole_from_a_file_and_without(bundle_dir, tmp_path):
    import onnx

    from edgeadapt.exporters.compose import whole_model

    original = tmp_path / "original.onnx"
    onnx.save(whole_model(load_bundle(bundle_dir)), original)
    out = tmp_path / "p.json"
    doc = json.loads(
        run("profile", bundle_dir, "--iters", 10, "--whole", original, "-o", out, "--json").output
    )
    assert doc["whole_model"]["origin"] == "file"
    assert doc["whole_model"]["path"] == str(original)
    assert "whole" in doc["batches"][0]
    result = run("profile", bundle_dir, "--iters", 10, "--no-whole", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    assert "whole_model" not in json.loads(result.output)
    both = run("profile", bundle_dir, "--whole", original, "--no-whole")
    assert both.exit_code == 2
    assert "--whole" in both.output


def test_profile_refuses_a_whole_model_of_other_inputs(bundle_dir, tmp_path):
    import onnx

    from edgeadapt.exporters.compose import whole_model

    family = load_bundle(BUNDLES / "mnist1d-family")
    model = whole_model(family)
    model.graph.input[0].name = "pixels"
    for node in model.graph.node:
        node.input[:] = ["pixels" if n == family.input.name else n for n in node.input]
    other = tmp_path / "other.onnx"
    onnx.save(model, other)
    result = run("profile", bundle_dir, "--iters", 10, "--whole", other)
    assert result.exit_code == 2
    assert f"{other}: inputs: whole model reads ['pixels']" in result.output
