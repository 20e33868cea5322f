"""`edgeadapt bound`, `subset`, `import-predictions`: output, JSON keys, exit code 2."""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.formats.evaluation import Evaluation, load_evaluation, save_evaluation
from tests.clirun import invoke as run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
EFFNET = EXAMPLES / "efficientnet-torchvision.csv"


def ok_json(*args):
    result = run(*args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


@pytest.fixture
def small(tmp_path):
    """A 3-state table and a matching evaluation (200 samples)."""
    table = tmp_path / "t.csv"
    table.write_text("name,cost,accuracy\nbig,8,0.9\nsmall,1,0.5\nmid,2,0.7\nextra,3,0.7\n")
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 5, 200)
    pred = np.where(
        rng.random((200, 3)) < [0.5, 0.7, 0.9], labels[:, None], (labels[:, None] + 1) % 5
    )
    ev = tmp_path / "e.npz"
    save_evaluation(ev, Evaluation(labels, pred, np.array(["small", "mid", "big"])))
    return table, ev


def test_bound_on_example_table_prints_a_table():
    result = run("bound", "--table", EFFNET, "--classes", "1000")
    assert result.exit_code == 0, result.output
    assert "efficientnet_b7" in result.output
    assert "alpha=1 (eq. 9)" in result.output
    assert "smallest-state test" in result.output


def test_bound_json_keys_and_alpha():
    out = ok_json("bound", "--table", EFFNET)
    assert out["method"] == "alpha=1"
    assert {"r_oracle", "a_oracle", "delta_r", "r_ratio", "delta_a", "continuous"} <= out.keys()
    assert {"r_oracle", "r_ratio"} <= out["continuous"].keys()
    assert out["r_ratio"] == pytest.approx(out["r_n"] / out["r_oracle"])
    out = ok_json("bound", "--table", EFFNET, "--alpha", "0.58")
    assert out["method"] == "constant-alpha"
    assert out["a_oracle"] == pytest.approx(1 - 0.58 * (1 - 0.84122))


def test_bound_with_evaluation(small):
    table, ev = small
    out = ok_json("bound", "--table", table, "--evaluation", ev)
    assert out["method"] == "exact"
    assert len(out["alphas"]) == 2
    assert {"r_oracle", "a_oracle", "r_ratio"} <= out["exact"].keys()
    assert out["ignored"] == ["extra"]
    assert [s["name"] for s in out["states"]] == ["small", "mid", "big"]
    text = run("bound", "--table", table, "--evaluation", ev).output
    assert "exact oracle (eq. 4/5)" in text
    assert "alpha_i" in text


def test_subset_k_and_curve(small):
    table, ev = small
    out = ok_json("subset", "--table", table, "--k", "2", "--envelope")
    assert out["k"] == 2
    assert out["states"][-1] == "big"
    assert "curve" not in out
    out = ok_json("subset", "--table", table, "--evaluation", ev)
    assert [e["k"] for e in out["curve"]] == [1, 2, 3]
    assert out["states"] == ["small", "mid", "big"]
    for e in out["curve"]:
        assert e["r_ratio"] == pytest.approx(8 / e["r_oracle"])
    text = run("subset", "--table", EFFNET).output
    assert "states (cost order)" in text


def test_import_predictions_csv_and_npz(tmp_path):
    for name, preds in (("a", (1, 2)), ("b", (1, 0))):
        rows = "".join(f"{f},{p},{t}\n" for f, p, t in zip(("x", "y"), preds, (1, 0), strict=True))
        (tmp_path / f"{name}.csv").write_text("file,predicted,truth\n" + rows)
    out = tmp_path / "e.npz"
    result = run("import-predictions", tmp_path / "a.csv", f"big={tmp_path / 'b.csv'}", "-o", out)
    assert result.exit_code == 0, result.output
    assert load_evaluation(out).names == ("a", "big")
    result = run(
        "import-predictions",
        EXAMPLES / "imagenet-val-predictions" / "predictions.npz",
        "-o",
        out,
        "--states",
        "vit_tiny_patch16_224,vit_small_patch16_224",
    )
    assert result.exit_code == 0, result.output
    assert load_evaluation(out).pred.shape == (50000, 2)


@pytest.mark.parametrize("flag", ["-o", "--output", "--out"])
def test_import_predictions_output_spellings(tmp_path, flag):
    (tmp_path / "a.csv").write_text("file,predicted,truth\nx,1,1\ny,2,0\n")
    out = tmp_path / "e.npz"
    result = run("import-predictions", tmp_path / "a.csv", flag, out)
    assert result.exit_code == 0, result.output
    assert load_evaluation(out).names == ("a",)


def test_import_predictions_needs_an_output(tmp_path):
    (tmp_path / "a.csv").write_text("file,predicted,truth\nx,1,1\n")
    result = run("import-predictions", tmp_path / "a.csv")
    assert result.exit_code == 2
    assert "--output" in result.output
    assert "--out " not in run("import-predictions", "--help").output  # the old spelling is hidden


def bad_table(tmp_path, text):
    p = tmp_path / "bad.csv"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty table"),
        ("name,cost\na,1\n", "missing column"),
        ("name,cost,accuracy\na,nan,0.5\n", "line 2, column cost"),
        ("name,cost,accuracy\na,-1,0.5\n", "line 2, column cost"),
        ("name,cost,accuracy\na,1,1.5\n", "line 2, column accuracy"),
        ("name,cost,accuracy\na,1,0.5\na,2,0.6\n", "duplicate state name"),
        ("name,cost,accuracy\na,1,0.6\nb,2,0.5\n", "dominated states: b"),
    ],
)
def test_bad_tables_exit_2_with_one_line(tmp_path, text, match):
    result = run("bound", "--table", bad_table(tmp_path, text))
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert match in lines[0]
    assert "bad.csv" in lines[0]


def test_unknown_state_in_evaluation_exits_2(tmp_path, small):
    _, ev = small
    table = bad_table(tmp_path, "name,cost,accuracy\nsmall,1,0.5\nbig,8,0.9\n")
    result = run("bound", "--table", table, "--evaluation", ev)
    assert result.exit_code == 2
    assert "e.npz: states: state 'mid' is not in the table" in result.output


def test_object_arrays_exit_2(tmp_path, small):
    table, _ = small
    ev = tmp_path / "obj.npz"
    np.savez(ev, labels=np.zeros(2, int), pred=np.zeros((2, 1), object), states=np.array(["a"]))
    result = run("bound", "--table", table, "--evaluation", ev)
    assert result.exit_code == 2
    assert "pred: cannot load without pickle" in result.output


@pytest.mark.parametrize(
    ("k", "message"), [("9", "--k: must be in 1..3"), ("0", "--k: 0 is not in the range 1<=x")]
)
def test_k_out_of_range_exits_2(small, k, message):
    table, ev = small
    result = run("subset", "--table", table, "--k", k, "--evaluation", ev)
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("args", "match"), [(["--alpha", "1.5"], "--alpha"), (["--classes", "1"], "--classes")]
)
def test_bad_options_exit_2(args, match):
    result = run("bound", "--table", EFFNET, *args)
    assert result.exit_code == 2
    assert match in result.output


# ------------------------------------------------------------- bound BUNDLE


@pytest.fixture
def device_files(tmp_path):
    """A private copy of the multi-exit bundle, a known profile and evaluation of it."""
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.profile import save_profile
    from tests.device_inputs import copy_multiexit, known_evaluation, known_profile

    bundle = copy_multiexit(tmp_path)
    profile, ev = tmp_path / "p.json", tmp_path / "device.npz"
    save_profile(profile, known_profile(load_bundle(bundle)))
    save_evaluation(ev, known_evaluation())
    return bundle, profile, ev


def test_bound_bundle_json_is_bundle_bound(device_files):
    from edgeadapt.oracle.bound import bundle_bound

    bundle, profile, ev = device_files
    out = ok_json("bound", bundle, "--profile", profile, "--evaluation", ev)
    assert out == json.loads(
        json.dumps(bundle_bound(bundle, profile=profile, evaluation=ev).to_json())
    )
    assert out["cost"]["unit"] == "ms"
    assert out["states"][-1]["cost"] == pytest.approx(1.0)
    assert {"r_oracle", "a_oracle", "r_ratio"} <= out["exact"].keys()
    assert set(out["views"]) == {"cascade_ms", "cascade_flops", "direct_flops"}


def test_bound_bundle_text_names_sources_bounds_and_views(device_files):
    bundle, profile, ev = device_files
    result = run("bound", bundle, "--profile", profile, "--evaluation", ev)
    assert result.exit_code == 0, result.output
    text = result.output
    assert "costs: ms, profile p50 at batch 1, cascade" in text
    assert f"profile {profile}" in text
    assert "exact oracle (eq. 4/5)" in text
    assert "alpha_i" in text
    assert "direct_flops" in text
    assert "smallest-state test (C=10)" in text


def test_bound_bundle_cost_defaults(device_files):
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.profile import default_profile_path

    bundle, profile, ev = device_files
    assert ok_json("bound", bundle, "--evaluation", ev)["cost"]["unit"] == "flops"
    result = run("bound", bundle, "--evaluation", ev, "--cost", "ms")
    assert result.exit_code == 2
    assert "--cost: no profile given and none at" in result.output
    default = default_profile_path(load_bundle(bundle))
    default.parent.mkdir()
    default.write_bytes(profile.read_bytes())
    out = ok_json("bound", bundle, "--evaluation", ev)
    assert out["cost"]["unit"] == "ms"
    assert out["profile"]["path"] == str(default)
    assert ok_json("bound", bundle, "--evaluation", ev, "--cost", "flops")["cost"]["unit"] == (
        "flops"
    )


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ([], "give exactly one of BUNDLE or --table"),
        (["BUNDLE", "--table", EFFNET], "give exactly one of BUNDLE or --table"),
        (["--table", EFFNET, "--cost", "ms"], "--profile and --cost need BUNDLE"),
        (["BUNDLE", "--profile", "PROFILE"], "--evaluation: bound .* needs per-sample results"),
    ],
)
def test_bound_bundle_bad_forms_exit_2(device_files, args, match):
    bundle, profile, _ = device_files
    args = [{"BUNDLE": bundle, "PROFILE": profile}.get(a, a) for a in args]
    result = run("bound", *args)
    assert result.exit_code == 2
    assert re.search(match, result.output), result.output


def test_bound_bundle_refuses_an_evaluation_of_other_states(device_files, small):
    bundle, profile, _ = device_files
    _, other = small
    result = run("bound", bundle, "--profile", profile, "--evaluation", other)
    assert result.exit_code == 2
    assert "e.npz: states: states differ from the bundle" in result.output


def test_bound_bundle_states_both_baselines(tmp_path, device_files):
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.profile import save_profile
    from tests.device_inputs import known_profile

    bundle, _, ev = device_files
    profile = tmp_path / "whole.json"
    save_profile(profile, known_profile(load_bundle(bundle), whole_ms=0.8))
    out = ok_json("bound", bundle, "--profile", profile, "--evaluation", ev)
    assert out["static"]["cost_ms"] == 0.8
    assert out["static"]["r_ratio"] == pytest.approx(0.8 / out["exact"]["r_oracle"])
    text = run("bound", bundle, "--profile", profile, "--evaluation", ev).output
    assert re.search(r"R_N: the sum of the steps \(exit3\) +1 ", text)
    assert re.search(r"static: measured whole model \(composed\) +0\.8 ", text)
    assert "the full path costs 1.25x the static model" in text
    no_whole = run("bound", bundle, "--profile", device_files[1], "--evaluation", ev).output
    assert "no static baseline: the profile did not time the whole model" in no_whole
