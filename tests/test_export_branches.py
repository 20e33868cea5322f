"""Branch exporter: residual blocks found, bypassed and enumerated; the bundle's branches
share one weights file, run as any bundle, and bad block names get clear errors."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.data.memory import BatchChoice
from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph
from edgeadapt.exporters.branches import (
    WEIGHTS_FILE,
    export_branches,
    find_blocks,
    name_nodes,
    pareto,
    skip_blocks,
)
from edgeadapt.formats.bundle import load_bundle

C, L, CLASSES = 16, 16, 10


def _conv(name, x, out, rng, cin=C, cout=C, stride=1):
    w = numpy_helper.from_array(
        (rng.standard_normal((cout, cin, 3)) / np.sqrt(3 * cin)).astype(np.float32), f"{name}_w"
    )
    node = helper.make_node("Conv", [x, w.name], [out], name=name, pads=[1, 1], strides=[stride])
    return node, w


def residual_cnn(seed: int = 0) -> onnx.ModelProto:
    """stem -> 3 identity residual blocks -> a strided block with a projection shortcut
    (shape-changing: never skippable) -> pool -> linear."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    n, w = _conv("stem", "x", "h0", rng, cin=1)
    nodes += [n, helper.make_node("Relu", ["h0"], ["a0"], name="stem_relu")]
    inits.append(w)
    x = "a0"
    for b in range(3):
        n1, w1 = _conv(f"b{b}_c1", x, f"b{b}_t", rng)
        n2, w2 = _conv(f"b{b}_c2", f"b{b}_r", f"b{b}_u", rng)
        nodes += [
            n1,
            helper.make_node("Relu", [f"b{b}_t"], [f"b{b}_r"], name=f"b{b}_relu1"),
            n2,
            helper.make_node("Add", [x, f"b{b}_u"], [f"b{b}_s"], name=f"block{b}"),
            helper.make_node("Relu", [f"b{b}_s"], [f"b{b}_o"], name=f"b{b}_relu2"),
        ]
        inits += [w1, w2]
        x = f"b{b}_o"
    n1, w1 = _conv("d_c1", x, "d_t", rng, cout=2 * C, stride=2)
    ns, ws = _conv("d_proj", x, "d_p", rng, cout=2 * C, stride=2)
    nodes += [n1, ns, helper.make_node("Add", ["d_p", "d_t"], ["d_s"], name="down")]
    inits += [w1, ws]
    fc = numpy_helper.from_array(
        (rng.standard_normal((2 * C, CLASSES)) / 4).astype(np.float32), "fc_w"
    )
    nodes += [
        helper.make_node("ReduceMean", ["d_s"], ["pooled"], axes=[2], keepdims=0, name="pool"),
        helper.make_node("MatMul", ["pooled", "fc_w"], ["logits"], name="fc"),
    ]
    inits.append(fc)
    graph = helper.make_graph(
        nodes,
        "rescnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, L])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return model


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "rescnn.onnx"
    onnx.save(residual_cnn(), path)
    return path


@pytest.fixture
def calibration(tmp_path):
    """Inputs labelled by the full model itself: the full branch scores 100%."""
    x = np.random.default_rng(1).standard_normal((300, 1, L)).astype(np.float32)
    model = residual_cnn()
    y = _graph.session(model).run(None, {"x": x})[0].argmax(axis=1)
    path = tmp_path / "calib.npz"
    np.savez(path, x=x, y=y)
    return path


def test_identity_blocks_are_found_and_the_projection_block_is_not():
    model = _graph.infer(residual_cnn(), "m")
    blocks = find_blocks(model)
    assert [b.add for b in blocks] == ["block0", "block1", "block2"]
    assert blocks[0].input == "a0"
    assert len(blocks[0].nodes) == 3  # conv, relu, conv


def test_skipping_a_block_is_the_model_without_it():
    model = _graph.infer(residual_cnn(), "m")
    blocks = find_blocks(model)
    skipped = skip_blocks(model, [blocks[1]])
    names = {n.name for n in skipped.graph.node}
    assert "block1" not in names
    assert not names & {"b1_c1", "b1_relu1", "b1_c2"}
    assert {t.name for t in skipped.graph.initializer} == {
        t.name for t in model.graph.initializer
    } - {"b1_c1_w", "b1_c2_w"}
    # By hand: block 1 bypassed means block 2 reads relu(a1) = a1 (a1 >= 0 already).
    x = np.random.default_rng(0).standard_normal((4, 1, L)).astype(np.float32)
    got = _graph.session(skipped).run(None, {"x": x})[0]
    hand = onnx.ModelProto()
    hand.CopyFrom(model)
    for node in hand.graph.node:
        if node.name == "b1_relu2":
            node.input[0] = "b0_o"
    want = _graph.session(hand).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_export_writes_the_pareto_branches_with_shared_weights(tmp_path, source, calibration):
    seen = []
    bundle = export_branches(
        source,
        tmp_path / "b",
        calibration=calibration,
        max_branches=8,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1] == (8, 8)  # 2^3 skip sets scored
    assert bundle.kind == "branches"
    names = [s.name for s in bundle.states]
    assert names[-1] == "full"
    flops = bundle.flops
    assert flops == sorted(flops)
    info = bundle.extra["branches"]
    acc = [s["calibration_accuracy"] for s in info["states"]]
    assert acc == sorted(acc)
    assert acc[-1] == 1.0
    assert info["enumeration"] == "all 8 subsets of 3 blocks"
    assert WEIGHTS_FILE in bundle.files
    # Every branch file is small; the weights are stored once.
    sizes = {f: (bundle.path / f).stat().st_size for f in bundle.files}
    assert all(sizes[s.file] < sizes[WEIGHTS_FILE] for s in bundle.steps)
    whole = residual_cnn().ByteSize()
    assert sum(sizes.values()) < 1.5 * whole
    reloaded = load_bundle(bundle.path)
    assert reloaded.verified
    # The full branch computes the source model.
    x = np.random.default_rng(3).standard_normal((5, 1, L)).astype(np.float32)
    import onnxruntime as ort

    full = ort.InferenceSession(str(bundle.steps[-1].path), providers=["CPUExecutionProvider"])
    want = _graph.session(residual_cnn()).run(None, {"x": x})[0]
    np.testing.assert_allclose(full.run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-6)


def test_a_branch_bundle_runs_through_evaluate(tmp_path, source, calibration):
    from edgeadapt.measure.evaluate import evaluate_bundle

    bundle = export_branches(source, tmp_path / "b", calibration=calibration, max_branches=3)
    data = np.load(calibration)
    ev = evaluate_bundle(bundle, data["x"], data["y"])
    acc = (ev.pred == data["y"][:, None]).mean(axis=0)
    want = [s["calibration_accuracy"] for s in bundle.extra["branches"]["states"]]
    np.testing.assert_allclose(acc, want)


def test_branches_are_scored_in_batches_of_the_budget_or_the_given_size(
    tmp_path, source, calibration
):
    auto = export_branches(source, tmp_path / "a", calibration=calibration, max_branches=3)
    given = export_branches(
        source, tmp_path / "g", calibration=calibration, max_branches=3, batch=7
    )
    assert given.extra["branches"]["batch"] == BatchChoice(7, True).to_json()
    chosen = auto.extra["branches"]["batch"]
    assert not chosen["given"]
    assert chosen["batch"] * chosen["bytes_per_sample"] <= chosen["memory"]
    assert given.extra["branches"]["states"] == auto.extra["branches"]["states"]


def test_named_blocks_and_bad_names(tmp_path, source, calibration):
    bundle = export_branches(
        source, tmp_path / "b", calibration=calibration, blocks=["block2"], max_branches=4
    )
    assert bundle.extra["branches"]["blocks"] == ["block2"]
    assert [s.name for s in bundle.states] == ["skip-1", "full"]
    with pytest.raises(InputError, match="'down' is an Add but not a skippable") as e:
        export_branches(source, tmp_path / "c", calibration=calibration, blocks=["down"])
    assert e.value.source == "blocks"
    with pytest.raises(InputError, match="'fc' is not an Add node"):
        export_branches(source, tmp_path / "c", calibration=calibration, blocks=["fc"])
    with pytest.raises(InputError, match="max_branches"):
        export_branches(source, tmp_path / "c", calibration=calibration, max_branches=1)
    assert not (tmp_path / "c").exists()


def test_a_model_without_residual_blocks_is_refused(tmp_path, calibration):
    model = residual_cnn()
    for node in model.graph.node:
        if node.op_type == "Add" and node.name.startswith("block"):
            node.op_type = "Mul"  # x * f(x): not a residual
    path = tmp_path / "plain.onnx"
    onnx.save(model, path)
    with pytest.raises(InputError, match="no skippable residual block"):
        export_branches(path, tmp_path / "b", calibration=calibration)


def test_calibration_of_the_wrong_shape_names_the_file(tmp_path, source):
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros((4, 1, L + 1), np.float32), y=np.zeros(4, np.int64))
    with pytest.raises(InputError, match=r"x: expected shape \[B, 1, \d+\], got") as e:
        export_branches(source, tmp_path / "b", calibration=bad)
    assert str(bad) in str(e.value)


def test_unnamed_adds_get_names():
    model = residual_cnn()
    for node in model.graph.node:
        node.name = ""
    name_nodes(model)
    assert len({n.name for n in model.graph.node}) == len(model.graph.node)
    assert [b.add for b in find_blocks(_graph.infer(model, "m"))] == ["Add_5", "Add_10", "Add_15"]


def test_pareto_front_spreads_and_keeps_its_ends():
    from edgeadapt.exporters.branches import Branch

    pts = [Branch((str(k),), k, k / 10) for k in range(10)]
    pts.append(Branch(("dominated",), 5, 0.0))
    front = pareto(pts, 4)
    assert [b.flops for b in front] == [0, 3, 6, 9]


def test_cli_export_branches_then_inspect(tmp_path, source, calibration):
    import json

    from click.testing import CliRunner

    from edgeadapt.cli import cli

    out = tmp_path / "b"
    result = CliRunner().invoke(
        cli,
        ["export", "branches", str(source), "--calibration", str(calibration), "-o", str(out)],
    )
    assert result.exit_code == 0, result.output
    assert "branches" in result.output
    result = CliRunner().invoke(cli, ["inspect", str(out), "--json"])
    doc = json.loads(result.output)
    assert doc["kind"] == "branches"
    assert doc["states"][-1]["name"] == "full"
    bad = CliRunner().invoke(
        cli,
        [
            "export",
            "branches",
            str(source),
            "--calibration",
            str(calibration),
            "--block",
            "nope",
            "-o",
            str(tmp_path / "c"),
        ],
    )
    assert bad.exit_code == 2
    assert "'nope' is not an Add node" in bad.output
