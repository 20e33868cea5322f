"""`edgeadapt profile`: files written, output, exit code 2."""

import json
import re
from pathlib import Path

import pytest

from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.device import device_id
from edgeadapt.formats.profile import load_profile
from tests.clirun import invoke as run

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"


def test_profile_writes_a_valid_file_at_the_default_place(multiexit_copy):
    result = run(
        "profile", multiexit_copy, "--iters", 10, "--warmup", 1, "--batch", "1,2", "--json"
    )
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    path = multiexit_copy / "profiles" / f"{device_id()}.json"
    assert doc["path"] == str(path)
    assert doc["format"] == "edgeadapt-profile"
    assert [b["batch"] for b in doc["batches"]] == [1, 2]
    prof = load_profile(path, load_bundle(multiexit_copy))
    assert prof.batches == (1, 2)
    assert all(s.n == 10 for s in prof.step_stats(2))


def test_profile_prints_a_table(multiexit_copy, tmp_path):
    out = tmp_path / "p.json"
    result = run("profile", multiexit_copy, "--iters", 10, "--warmup", 0, "-o", out)
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.output
    assert "R_i ms" in result.output
    for name in ("exit0", "exit1", "exit2", "exit3"):
        assert name in result.output
    assert f"wrote {out}" in result.output
    load_profile(out)


def test_profile_chain_order_is_recorded(multiexit_copy, tmp_path):
    out = tmp_path / "chain.json"
    result = run("profile", multiexit_copy, "--iters", 10, "--order", "chain", "-o", out)
    assert result.exit_code == 0, result.output
    assert load_profile(out).settings["order"] == "chain"
    bad = run("profile", multiexit_copy, "--order", "random")
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


def test_profile_with_a_device_preset_and_an_override(multiexit_copy):
    result = run("profile", multiexit_copy, "--device", "x86-ort-2t", "--iters", 10, "--warmup", 0)
    assert result.exit_code == 0, result.output
    assert "threads 2" in result.output
    assert "(preset x86-ort-2t)" in result.output
    path = multiexit_copy / "profiles" / f"{device_id()}-x86-ort-2t.json"
    assert load_profile(path).settings["threads"] == 2
    out = multiexit_copy / "one.json"
    args = ["--device", "x86-ort-2t", "--threads", 1, "--iters", 10, "-o", out, "--json"]
    result = run("profile", multiexit_copy, *args)
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
def test_profile_bad_values_exit_2(multiexit_copy, args, message):
    result = run("profile", multiexit_copy, *args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (multiexit_copy / "profiles").exists()


def test_profile_times_the_whole_model_and_says_so(multiexit_copy, tmp_path):
    out = tmp_path / "p.json"
    result = run(
        "profile", multiexit_copy, "--iters", 10, "--warmup", 0, "--batch", "1,2", "-o", out
    )
    assert result.exit_code == 0, result.output
    assert "steps timed in chain order" in result.output  # the default
    assert len(re.findall(r"^whole model +[12] ", result.output, re.M)) == 2
    assert "whole model (static baseline): composed from the bundle" in result.output
    assert "full path R_N / whole" in result.output
    prof = load_profile(out)
    assert prof.order == "chain"
    assert set(prof.whole) == {1, 2}
    # the whole model timed in the steps' rounds: the ratio's spread, per batch
    for b in (1, 2):
        r = prof.full_over_whole[b]
        assert f"x at batch {b} (per round {r.p10:.2f}-{r.p90:.2f}x, {r.rounds} rounds)" in (
            result.output
        )
    assert prof.whole_model["origin"] == "composed"


def test_profile_whole_from_a_file_and_without(multiexit_copy, tmp_path):
    import onnx

    from edgeadapt.exporters.compose import whole_model

    original = tmp_path / "original.onnx"
    onnx.save(whole_model(load_bundle(multiexit_copy)), original)
    out = tmp_path / "p.json"
    doc = json.loads(
        run(
            "profile", multiexit_copy, "--iters", 10, "--whole", original, "-o", out, "--json"
        ).output
    )
    assert doc["whole_model"]["origin"] == "file"
    assert doc["whole_model"]["path"] == str(original)
    assert "whole" in doc["batches"][0]
    result = run("profile", multiexit_copy, "--iters", 10, "--no-whole", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    assert "whole_model" not in json.loads(result.output)
    both = run("profile", multiexit_copy, "--whole", original, "--no-whole")
    assert both.exit_code == 2
    assert "--whole" in both.output


def test_profile_refuses_a_whole_model_of_other_inputs(multiexit_copy, tmp_path):
    import onnx

    from edgeadapt.exporters.compose import whole_model

    family = load_bundle(BUNDLES / "mnist1d-family")
    model = whole_model(family)
    model.graph.input[0].name = "pixels"
    for node in model.graph.node:
        node.input[:] = ["pixels" if n == family.input.name else n for n in node.input]
    other = tmp_path / "other.onnx"
    onnx.save(model, other)
    result = run("profile", multiexit_copy, "--iters", 10, "--whole", other)
    assert result.exit_code == 2
    assert f"{other}: inputs: whole model reads ['pixels']" in result.output
