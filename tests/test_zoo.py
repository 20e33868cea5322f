"""edgeadapt.zoo: reduced versions of the zoo's graphs (a residual CNN with BatchNorm,
MobileNet/EfficientNet blocks with SE, a 2-block ViT, a 2-layer masked BERT) go through
torch export -> `export_onnx` with cuts and trained heads -> `AdaptiveModel`, and the
bundle's full path must answer exactly as the original ONNX model does."""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeadapt import zoo
from edgeadapt.errors import InputError
from tests.scripts import script_module


def test_cut_tensors_names_the_missing_module(tmp_path: Path) -> None:
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    node = onnx.helper.make_node("Relu", ["x"], ["y"], name="/layer1/relu/Relu")
    path = tmp_path / "m.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", [x], [y])), path)
    assert zoo.cut_tensors(path, ["layer1"]) == ["y"]
    with pytest.raises(InputError, match="'layer9'"):
        zoo.cut_tensors(path, ["layer9"])


def _dynamo_node(op: str, inputs: list[str], out: str, scopes: list[str]) -> onnx.NodeProto:
    node = onnx.helper.make_node(op, inputs, [out], name=f"node_{out}")
    onnx.helper.set_metadata_props(node, {"pkg.torch.onnx.name_scopes": repr(scopes)})
    return node


def test_cut_tensors_reads_dynamo_name_scopes(tmp_path: Path) -> None:
    """dynamo names tensors after the traced code (``add_3``) and records the module in
    each node's metadata: a block's result is its last node read outside it."""
    block = ["", "encoder", "encoder.layer.0"]
    nodes = [
        _dynamo_node("Relu", ["x"], "relu", [*block, "relu"]),
        _dynamo_node("Neg", ["relu"], "neg", [*block, "neg"]),
        _dynamo_node("Add", ["relu", "neg"], "add_3", [*block, "add_3"]),
        _dynamo_node("Shape", ["add_3"], "shape", [*block, "shape"]),
        _dynamo_node("Relu", ["add_3"], "y", ["", "encoder", "encoder.layer.1", "relu_1"]),
    ]
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2])
    path = tmp_path / "m.onnx"
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph(nodes, "g", [x], [y])), path)
    assert zoo.cut_tensors(path, ["encoder.layer.0", "encoder.layer.1", "encoder"]) == [
        "add_3",
        "y",
        "y",
    ]


def test_token_inputs_start_with_cls_and_pad_after_the_mask() -> None:
    m = zoo.get("bert_small", tiny=True)
    data = zoo.random_inputs(m, 32, seed=3)
    ids, mask = data["input_ids"], data["attention_mask"]
    assert ids.dtype == mask.dtype == np.int64
    assert ids.shape == mask.shape == (32, 16)
    assert (ids[:, 0] == zoo.CLS_ID).all()
    assert ((ids == 0) == (mask == 0)).all()  # padding exactly where the mask is 0
    assert (np.diff(mask, axis=1) <= 0).all()  # one run of tokens, then padding
    assert mask.sum(axis=1).min() >= 4
    assert mask.sum(axis=1).max() <= 16


def test_unknown_model_lists_the_zoo() -> None:
    with pytest.raises(InputError, match="resnet18"):
        zoo.get("alexnet")


def _supports(name: str) -> str | None:
    """Why the exporter or the cascade on this branch cannot take `name` yet, if so."""
    from edgeadapt.cascade.model import AdaptiveModel
    from edgeadapt.exporters.heads import POOLS
    from edgeadapt.formats.bundle import write_bundle

    m = zoo.get(name, tiny=True)
    if m.pool not in POOLS:
        return f"the ONNX exporter has no --pool {m.pool} head"
    if len(m.inputs) > 1 and (
        "inputs" not in inspect.signature(write_bundle).parameters
        or not hasattr(AdaptiveModel, "check_inputs")
    ):
        return "multi-input bundles are not supported by the exporter and cascade here"
    return None


@pytest.mark.parametrize("name", zoo.names())
def test_full_path_equals_the_original_model(name: str, tmp_path: Path) -> None:
    pytest.importorskip("torch", reason="the zoo's models need the torch extra")
    reason = _supports(name)
    if reason is not None:
        pytest.skip(reason)
    from edgeadapt.cascade.model import AdaptiveModel
    from edgeadapt.exporters.compose import whole_model
    from edgeadapt.exporters.onnx import export_onnx

    m = zoo.get(name, tiny=True)
    source = zoo.export(m, zoo.build(m, seed=1), tmp_path / "model.onnx")
    calib = zoo.random_inputs(m, 96, seed=2)
    zoo.write_data(tmp_path / "calib.npz", calib, zoo.teacher_labels(source, calib))
    cuts = zoo.cut_tensors(source, m.cuts)
    bundle = export_onnx(
        source, tmp_path / "bundle", cuts=cuts, calibration=tmp_path / "calib.npz", pool=m.pool
    )
    assert len(bundle.states) == len(m.cuts) + 1

    import onnxruntime as ort

    test = zoo.random_inputs(m, 9, seed=4)
    sess = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    (logits,) = sess.run([zoo.LOGITS], test)
    # Re-estimated BatchNorm (and LayerNorm) keep the logits well away from 0, so that
    # agreeing on them means something.
    assert np.std(logits) > 1e-2
    want_pred = logits.argmax(axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    want_conf = (e / e.sum(axis=1, keepdims=True)).max(axis=1)

    feeds = test if len(m.inputs) > 1 else test[m.inputs[0].name]
    with AdaptiveModel.load(bundle, thresholds=2.0) as model:  # maxprob <= 1: never exits
        out = model.predict(feeds)
    assert (out.exit_state == len(bundle.states) - 1).all()
    np.testing.assert_array_equal(out.pred, want_pred)
    np.testing.assert_allclose(out.conf, want_conf, rtol=1e-4, atol=1e-6)

    whole = ort.InferenceSession(
        whole_model(bundle).SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (again,) = whole.run(None, test)
    np.testing.assert_allclose(again, logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())


def test_bench_models_quick_measures_ratios(tmp_path: Path) -> None:
    """bench/models.py --quick on one model and one setting: it exports in a child
    process, times both paths and writes figures that agree with its own verdicts."""
    pytest.importorskip("torch", reason="the zoo's models need the torch extra")
    import json
    import math

    out = tmp_path / "bench.json"
    args = ["--quick", "--models", "resnet18", "--settings", "ort-1t", "--batches", "1,2"]
    with script_module("bench/models.py", "bench_models") as bench:
        assert bench.main([*args, "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["export"]["error"] is None
    assert row["export"]["seconds"] > 0
    assert row["export"]["peak_rss_mb"] > 10  # the child's own high-water mark
    assert [(s["setting"], s["batch"]) for s in row["settings"]] == [("ort-1t", 1), ("ort-1t", 2)]
    for s in row["settings"]:
        assert math.isfinite(s["ratio"])
        assert s["ratio"] > 0
        assert s["ratio_range"][0] <= s["ratio"] <= s["ratio_range"][1]
        assert s["target"] == 1.05
        assert s["hit"] == (s["ratio"] <= 1.05)


@pytest.mark.slow
def test_example_pipeline_runs_every_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """examples/zoo_pipeline.py --tiny: every command it prints runs and succeeds."""
    pytest.importorskip("torch", reason="the zoo's models need the torch extra")
    argv = ["--model", "resnet18", "--tiny", "--out", str(tmp_path), "--calibration", "64"]
    with script_module("examples/zoo_pipeline.py", "zoo_pipeline") as example:
        assert example.main([*argv, "--test", "64"]) == 0
    printed = capsys.readouterr().out
    for command in ("export onnx", "inspect", "profile", "evaluate", "bound", "plan", "run"):
        assert f"\n$ edgeadapt {command} " in printed
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    assert (tmp_path / "plan.json").is_file()
    assert (tmp_path / "run.npz").is_file()
