"""`edgeadapt export onnx|family` and `edgeadapt inspect` through the CLI."""

import json
import re

import numpy as np
import onnx
import pytest

from edgeadapt.formats.bundle import InputSpec, Step, write_bundle
from edgeadapt.formats.npzio import save_npz
from tests.clirun import invoke as _run
from tests.models import family, multi_exit_cnn, unknown_op

ONNX_ARGS = [
    "--cut",
    "conv1_relu",
    "--cut",
    "conv2_relu",
    "--head",
    "conv1_relu=exit0",
    "--head",
    "conv2_relu=exit1",
]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(multi_exit_cnn(), path)
    return path


def test_export_onnx_then_inspect_json(tmp_path, source):
    out = tmp_path / "b"
    result = _run("export", "onnx", source, *ONNX_ARGS, "-o", out)
    assert result.exit_code == 0, result.output
    assert "exit0" in result.output
    assert "exit2" in result.output
    result = _run("inspect", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"kind", "num_classes", "input", "states", "steps", "verified"} <= set(doc)
    assert doc["kind"] == "early-exit"
    assert doc["num_classes"] == 10
    assert doc["verified"] is True
    assert doc["input"] == {"name": "x", "shape": ["batch", 1, 40], "dtype": "float32"}
    assert [set(s) >= {"name", "files", "flops", "params"} for s in doc["states"]] == [True] * 3
    flops = [s["flops"] for s in doc["states"]]
    assert flops == sorted(flops)
    assert flops[-1] == sum(s["flops"] for s in doc["steps"])
    for s in doc["steps"]:
        assert s["stage_flops"] + s["head_flops"] == s["flops"]
    assert doc["states"][1]["files"] == ["step0.onnx", "step1.onnx"]


def test_inspect_table_and_tampered_bundle(tmp_path, source):
    out = tmp_path / "b"
    assert _run("export", "onnx", source, *ONNX_ARGS, "-o", out).exit_code == 0
    result = _run("inspect", out)
    assert result.exit_code == 0
    assert "verified: yes" in result.output
    assert "stage" in result.output
    (out / "step0.onnx").write_bytes((out / "step0.onnx").read_bytes()[:-1])
    result = _run("inspect", out, "--json")
    assert result.exit_code == 1
    doc = json.loads(result.stdout)
    assert doc["verified"] is False
    assert "sha256 mismatch" in doc["problem"]


def test_existing_different_bundle_needs_force(tmp_path, source):
    out = tmp_path / "b"
    assert _run("export", "onnx", source, *ONNX_ARGS, "-o", out).exit_code == 0
    again = _run("export", "onnx", source, *ONNX_ARGS, "-o", out)
    assert again.exit_code == 0, again.output  # the very same bundle: nothing to do
    other = ["--cut", "conv1_relu", "--head", "conv1_relu=exit0", "--logits", "logits"]
    refused = _run("export", "onnx", source, *other, "-o", out)
    assert refused.exit_code == 2
    assert "already holds a different bundle; use --force" in refused.output
    forced = _run("export", "onnx", source, *other, "-o", out, "--force", "--json")
    assert forced.exit_code == 0, forced.output
    assert len(json.loads(forced.stdout)["states"]) == 2


def test_export_family_json(tmp_path):
    paths = []
    for name, model in family().items():
        paths.append(tmp_path / f"{name}.onnx")
        onnx.save(model, paths[-1])
    result = _run("export", "family", *paths, "-o", tmp_path / "fam", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["kind"] == "ensemble"
    assert doc["verified"] is True
    assert [s["name"] for s in doc["states"]] == ["linear", "mlp", "cnn"]
    assert doc["steps"] == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cut", "conv1_relu", "--head", "conv1_relu"], "--head: expected CUT=OUTPUT"),
        (["--cut", "nope", "--logits", "logits"], "--cut: no tensor named 'nope' in "),
        (["--cut", "conv1_relu", "--logits", "logits"], "--calibration: cuts ['conv1_relu']"),
        (
            ["--cut", "conv1_relu", "--head", "conv2_relu=exit1", "--logits", "logits"],
            "--head: head given for 'conv2_relu', which is not one of the cuts",
        ),
        (["--cut", "conv1_relu", "--cut", "conv1_relu"], "--cut: a tensor is repeated"),
    ],
)
def test_user_errors_are_one_line_exit_2(tmp_path, source, args, message):
    result = _run("export", "onnx", source, *args, "-o", tmp_path / "b")
    assert result.exit_code == 2
    assert "error: " in result.output
    assert message in result.output
    assert not (tmp_path / "b").exists()


def test_export_family_names_flag_in_errors(tmp_path):
    paths = []
    for name, model in list(family().items())[:2]:
        paths.append(tmp_path / f"{name}.onnx")
        onnx.save(model, paths[-1])
    result = _run("export", "family", *paths, "--name", "only", "-o", tmp_path / "fam")
    assert result.exit_code == 2
    assert "error: --name: 1 names for 2 models" in result.output
    assert not (tmp_path / "fam").exists()


def test_summary_with_a_non_finite_number_is_refused_not_printed(tmp_path, source, monkeypatch):
    import edgeadapt.commands.bundles as shown

    real = shown.bundle_summary

    def with_nan(bundle, problem=None):
        doc = real(bundle, problem)
        doc["states"][1]["flops"] = float("nan")
        return doc

    monkeypatch.setattr(shown, "bundle_summary", with_nan)
    result = _run("export", "onnx", source, *ONNX_ARGS, "-o", tmp_path / "b", "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "error: cannot print the bundle summary as JSON: $.states[1].flops is nan" in (
        result.stderr
    )
    result = _run("inspect", tmp_path / "b", "--json")
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "$.states[1].flops is nan, not a finite number" in result.stderr


def test_inspect_missing_bundle(tmp_path):
    result = _run("inspect", tmp_path / "nothing")
    assert result.exit_code == 2
    assert "no such bundle directory or model file" in result.output


def test_export_onnx_trained_heads_report_accuracies(tmp_path, source):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((120, 1, 40)).astype(np.float32)
    y = (x[:, 0, :20].sum(axis=1) > 0).astype(np.int64)  # a learnable two-class rule
    save_npz(tmp_path / "c.npz", x=x, y=y)
    out = tmp_path / "b"
    args = ["--cut", "conv1_relu", "--logits", "logits", "--calibration", tmp_path / "c.npz"]
    result = _run(
        "export",
        "onnx",
        source,
        *args,
        "--batch-size",
        25,
        "--parity-rtol",
        0.01,
        "--pool",
        "gap",
        "-o",
        out,
    )
    assert result.exit_code == 0, result.output
    assert re.search(
        r"head at conv1_relu: gap pooling, 8 features, accuracy 0\.\d{3} training / "
        r"0\.\d{3} held-out \(24 samples\)",
        result.output,
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["parity"]["rtol"] == 0.01
    bad = _run("export", "onnx", source, *args, "--batch-size", 0, "-o", tmp_path / "b2")
    assert bad.exit_code == 2
    assert "--batch-size" in bad.output


def test_inspect_warns_about_ops_it_cannot_count(tmp_path):
    model = unknown_op(relu_first=False)
    write_bundle(
        tmp_path / "b",
        kind="early-exit",
        inputs=[InputSpec("x", ("batch", 10))],
        num_classes=10,
        steps=[Step(model, logits="logits")],
        producer={"exporter": "test"},
    )
    result = _run("inspect", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert "warning: step0.onnx: FLOPs leave out ops the counter cannot count: Mystery" in (
        result.stderr
    )


def test_export_onnx_two_input_text_model(tmp_path):
    torch = pytest.importorskip("torch", reason="the test graph is exported from torch")
    from tests import graphs

    ids, mask = graphs.text_inputs(4)
    names = ["input_ids", "attention_mask"]
    source = graphs.export_legacy(
        graphs.text_encoder(),
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        names,
        tmp_path / "text.onnx",
    )
    cut = graphs.tensor_names(source, "LayerNormalization")[1]
    ids, mask = graphs.text_inputs(100, seed=1)
    y = np.random.default_rng(0).integers(0, graphs.TEXT_CLASSES, 100)
    save_npz(tmp_path / "c.npz", input_ids=ids, attention_mask=mask, y=y)
    out = tmp_path / "b"
    args = ["--cut", cut, "--calibration", tmp_path / "c.npz", "--pool", "mean"]
    result = _run("export", "onnx", source, *args, "--mask", "attention_mask", "-o", out, "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [i["name"] for i in doc["inputs"]] == names
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["extra"]["heads"][0]["mask"] == "attention_mask"
    bad = _run("export", "onnx", source, *args, "--mask", "nope", "-o", tmp_path / "b2")
    assert bad.exit_code == 2
    assert "error: --mask: 'nope' is not an input of " in bad.output


def test_export_onnx_pool_choices_are_the_exporters():
    """--pool lists its choices literally (the CLI imports no exporter to start): they
    are the exporter's, gap_last included."""
    import click

    from edgeadapt.cli import cli
    from edgeadapt.exporters.heads import POOLS

    ctx = click.Context(cli)
    onnx_cmd = cli.get_command(ctx, "export").get_command(ctx, "onnx")
    pool = next(p for p in onnx_cmd.params if p.name == "pool")
    assert tuple(pool.type.choices) == POOLS
