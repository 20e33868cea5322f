"""exporters._split and exporters.cutpoints on small graphs built here: what a later step
recomputes (a mask, the shape of an earlier activation, a shared weight), what it refuses
(an activation that skips the cut, named with its producer and reader), shapes found by a
probe run, and the cut points `inspect --cuts` lists."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph, _split
from edgeadapt.exporters.cutpoints import find_cuts
from edgeadapt.exporters.onnx import export_onnx
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.npzio import save_npz
from edgeadapt.graph import shapes as shapeinfer
from edgeadapt.graph.shapes import Batch
from tests import graphs
from tests.clirun import invoke
from tests.models import skip_connection

T, H, VOCAB, CLASSES = 8, 8, 20, 4


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def masked_encoder(layers: int = 3) -> onnx.ModelProto:
    """``input_ids, attention_mask [B, T]`` -> embedding -> `layers` x (MatMul, + mask
    bias, Relu) -> mean -> logits, as transformers 5.x builds it: the additive mask bias
    is made once from ``attention_mask`` and from the *shape* of the embeddings output
    (``Shape`` -> ``ConstantOfShape`` zeros added to it) and read by every layer."""
    rng = np.random.default_rng(0)
    inits = [
        _init("table", rng.standard_normal((VOCAB, H)).astype(np.float32)),
        _init("neg", np.array(-1e4, np.float32)),
        _init("one", np.array(1.0, np.float32)),
        _init("axis1", np.array([1], np.int64)),
        _init("fc", rng.standard_normal((H, CLASSES)).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["emb"], name="embed"),
        helper.make_node("Shape", ["emb"], ["emb_shape"], name="emb_shape", end=2),
        helper.make_node(
            "ConstantOfShape",
            ["emb_shape"],
            ["zeros"],
            name="zeros",
            value=numpy_helper.from_array(np.zeros(1, np.float32)),
        ),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "mask_f"], ["inv"], name="inv"),
        helper.make_node("Mul", ["inv", "neg"], ["bias0"], name="bias0"),
        helper.make_node("Add", ["bias0", "zeros"], ["bias1"], name="bias1"),
        helper.make_node("Unsqueeze", ["bias1", "axis1"], ["bias"], name="bias"),
    ]
    src = "emb"
    for i in range(layers):
        inits.append(_init(f"w{i}", (rng.standard_normal((H, H)) / np.sqrt(H)).astype(np.float32)))
        nodes += [
            helper.make_node("MatMul", [src, f"w{i}"], [f"mm{i}"], name=f"layer{i}/mm"),
            # a [B, T, H] activation plus a [B, 1, T] bias: T == H keeps it broadcastable
            helper.make_node("Add", [f"mm{i}", "bias"], [f"biased{i}"], name=f"layer{i}/bias"),
            helper.make_node("Relu", [f"biased{i}"], [f"out{i}"], name=f"layer{i}/relu"),
        ]
        src = f"out{i}"
    nodes += [
        helper.make_node("ReduceMean", [src, "axis1"], ["pooled"], keepdims=0, name="pool"),
        helper.make_node("MatMul", ["pooled", "fc"], ["logits"], name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "masked_encoder",
        [
            helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", T]),
            helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", T]),
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _text_feeds(n, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (n, T))
    keep = rng.integers(1, T + 1, n)
    mask = (np.arange(T)[None, :] < keep[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def test_mask_and_shape_reads_are_recomputed_in_each_later_step(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(masked_encoder(), path)
    calib = _text_feeds(80)
    save_npz(tmp_path / "c.npz", **calib, y=np.random.default_rng(1).integers(0, CLASSES, 80))
    bundle = export_onnx(
        path, tmp_path / "b", cuts=["out0", "out1"], calibration=tmp_path / "c.npz"
    )
    loaded = load_bundle(tmp_path / "b")
    assert [s.inputs for s in loaded.steps[1:]] == [
        ("out0", "attention_mask"),
        ("out1", "attention_mask"),
    ]
    for step in loaded.steps[1:]:
        model = onnx.load(str(step.path))
        read = {x for n in model.graph.node for x in n.input}
        assert "emb" not in read
        assert "table" not in read
        assert {"bias", "zeros"} <= {o for n in model.graph.node for o in n.output}
    for batch in (1, 5):
        feeds = _text_feeds(batch, seed=batch)
        got = graphs.run_chain(bundle, feeds)[-1]
        want = graphs.run_model(path, feeds)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_skip_connection_error_names_tensor_producer_and_reader(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(skip_connection(), path)
    with pytest.raises(InputError) as e:
        export_onnx(path, tmp_path / "b", cuts=["r2"], calibration="unused.npz")
    assert str(e.value).startswith(
        "cuts: cut 'r2' does not separate the graph: the activation 'r1' (made by Relu node "
        "'r1') is computed before the cut and read after it by Add node 's' in step 1"
    )
    assert not (tmp_path / "b").exists()


def _residual_net() -> onnx.ModelProto:
    """stem Conv -> block0 Conv -> block1: ``y = x + conv_b(conv_a(x))`` -> GAP -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [
        _init(n, (rng.standard_normal((4, c, 3, 3)) / 6).astype(np.float32))
        for n, c in (("ws", 3), ("w0", 4), ("wa", 4), ("wb", 4))
    ]
    inits.append(_init("fc", rng.standard_normal((CLASSES, 4)).astype(np.float32)))
    conv = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["x", "ws"], ["stem"], name="stem", **conv),
        helper.make_node("Conv", ["stem", "w0"], ["block0"], name="block0", **conv),
        helper.make_node("Conv", ["block0", "wa"], ["a"], name="block1/conv_a", **conv),
        helper.make_node("Conv", ["a", "wb"], ["b"], name="block1/conv_b", **conv),
        helper.make_node("Add", ["block0", "b"], ["block1"], name="block1/add"),
        helper.make_node("GlobalAveragePool", ["block1"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flat"),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1, name="fc"),
    ]
    graph = helper.make_graph(
        nodes,
        "residual",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_cut_inside_a_residual_block_names_the_block_input_not_the_stem(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_residual_net(), path)
    with pytest.raises(
        InputError,
        match=r"the activation 'block0' \(made by Conv node "
        r"'block0'\) .* read after it by Add node 'block1/add'",
    ):
        export_onnx(path, tmp_path / "b", cuts=["a"], calibration="unused.npz")


def test_find_cuts_lists_block_boundaries_only(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_residual_net(), path)
    cuts = find_cuts(path)
    assert [c.tensor for c in cuts] == ["stem", "block0", "block1", "gap", "flat"]
    shares = [c.flops_share for c in cuts]
    assert shares == sorted(shares)
    assert 0 < shares[0] < shares[2] < 1
    assert cuts[1].shape == (4, 8, 8)
    assert cuts[1].op_type == "Conv"
    result = invoke("inspect", path, "--cuts", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert [c["tensor"] for c in doc["cuts"]] == [c.tensor for c in cuts]
    table = invoke("inspect", path, "--cuts")
    assert table.exit_code == 0
    assert "block0" in table.output
    assert "flops before" in table.output


def test_every_listed_cut_of_the_masked_encoder_exports(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(masked_encoder(layers=2), path)
    cuts = [c.tensor for c in find_cuts(path)]
    assert {"emb", "out0", "biased0", "mm1"} <= set(cuts)
    assert "bias" not in cuts  # the mask bias is no activation: it is recomputed, not cut
    feeds = _text_feeds(2, seed=9)
    for cut in cuts:
        bundle = export_onnx(path, tmp_path / cut, cuts=[cut], calibration=_calib(tmp_path))
        got = graphs.run_chain(bundle, feeds)[-1]
        np.testing.assert_allclose(got, graphs.run_model(path, feeds), rtol=1e-5, atol=1e-5)


def _calib(tmp_path):
    path = tmp_path / "c.npz"
    if not path.exists():
        save_npz(path, **_text_feeds(60), y=np.random.default_rng(1).integers(0, CLASSES, 60))
    return path


def _lost_shape_net(rows: int = 4, cols: int = 6, bias: bool = False) -> onnx.ModelProto:
    """``x [B, rows, cols]`` (`bias`: plus a bias) -> Relu -> Reshape to ``[B, cols, rows]``
    with a target shape computed through float arithmetic (``Cast``, ``Div``, ``Floor``)
    that onnx's data propagation does not fold -> Relu (the cut) -> flatten -> Gemm."""
    rng = np.random.default_rng(0)
    inits = [
        _init("two", np.array(2.0, np.float32)),
        _init("twelve", np.array([12.0], np.float32)),
        _init("head_dims", np.array([cols, rows], np.int64)),
        _init("i0", np.array([0], np.int64)),
        _init("fc", rng.standard_normal((CLASSES, rows * cols)).astype(np.float32)),
    ]
    first = "x"
    if bias:
        inits.append(_init("bias", rng.standard_normal((rows, cols)).astype(np.float32)))
        first = "xb"
    nodes = [
        *([helper.make_node("Add", ["x", "bias"], ["xb"])] if bias else []),
        helper.make_node("Relu", [first], ["r"]),
        helper.make_node("Shape", ["r"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["b"]),
        helper.make_node("Cast", ["b"], ["bf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["bf", "twelve"], ["b12"]),
        helper.make_node("Div", ["b12", "two"], ["b6"]),
        helper.make_node("Div", ["b6", "twelve"], ["bh"]),
        helper.make_node("Mul", ["bh", "two"], ["bb"]),
        helper.make_node("Floor", ["bb"], ["bfl"]),
        helper.make_node("Cast", ["bfl"], ["bi"], to=TensorProto.INT64),
        helper.make_node("Concat", ["bi", "head_dims"], ["target"], axis=0),
        helper.make_node("Reshape", ["r", "target"], ["moved"]),
        helper.make_node("Relu", ["moved"], ["cut"]),
        helper.make_node("Flatten", ["cut"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "lost",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", rows, cols])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_flops_share_counts_what_follows_a_lost_shape_beside_external_weights(tmp_path):
    """find_cuts moves weights of at least 1 KiB out as external data; ONNX Runtime's
    symbolic inference, which reads the bias (an Add input) in case it is shape data,
    must still run, or the Gemm after the cut (its input shape lost by onnx) counts zero
    and the cut sits at 100% of the FLOPs (a Swin's later stages did)."""
    rows, cols = 16, 24  # a 1.5 KiB bias: external
    path = tmp_path / "m.onnx"
    onnx.save(_lost_shape_net(rows, cols, bias=True), path)
    (cut,) = [c for c in find_cuts(path) if c.tensor == "cut"]
    n = rows * cols
    before, after = 3 * n, 2 * n * CLASSES + CLASSES  # Add, Relu, Relu | Gemm with bias
    assert cut.shape == (cols, rows)
    assert cut.flops_share == pytest.approx(before / (before + after), rel=0.01)


@pytest.mark.parametrize("symbolic", [True, False])
def test_cut_whose_shape_onnx_loses_is_found(tmp_path, monkeypatch, symbolic):
    model = _lost_shape_net()
    inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    assert shapeinfer.dims_of(_graph.value_infos(inferred).get("cut")) is None
    if not symbolic:  # ONNX Runtime's symbolic inference unavailable: the probe run finds it
        monkeypatch.setattr(_graph, "symbolic_model", lambda m: None)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    save_npz(
        tmp_path / "c.npz",
        x=rng.standard_normal((50, 4, 6)).astype(np.float32),
        y=rng.integers(0, CLASSES, 50),
    )
    bundle = export_onnx(path, tmp_path / "b", cuts=["cut"], calibration=tmp_path / "c.npz")
    assert bundle.extra["heads"][0]["features"] == 24
    x = rng.standard_normal((3, 4, 6)).astype(np.float32)
    np.testing.assert_allclose(
        graphs.run_chain(bundle, {"x": x})[-1], graphs.run_model(path, {"x": x}), rtol=1e-5
    )


@pytest.mark.parametrize(
    ("dims", "op", "attrs", "want"),
    [
        ((Batch(1), 197, 768), "Shape", {}, [5, 197, 768]),
        ((Batch(1), 197, 768), "Shape", {"start": 1}, [197, 768]),
        ((Batch(12), 197, 64), "Shape", {"end": 2}, [60, 197]),
        ((3, Batch(2)), "Size", {}, 30),
        ((7, 3), "Shape", {"start": -1}, [3]),
    ],
)
def test_shape_reads_are_rebuilt_from_the_batch_axis(dims, op, attrs, want):
    node = helper.make_node(op, ["activation"], ["out"], **attrs)
    nodes = _split.rewrite_shape_read(node, dims, TensorProto.FLOAT, ("cut", 0), "t")
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("cut", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("out", TensorProto.INT64, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(["out"], {"cut": np.zeros((5, 2), np.float32)})
    np.testing.assert_array_equal(got, want)


def test_dims_parse_batch_multiples_and_probes():
    vi = helper.make_tensor_value_info("t", TensorProto.FLOAT, ["batch", "4*batch", 3, "batch*2"])
    assert shapeinfer.dims_of(vi) == (Batch(1), Batch(4), 3, Batch(2))
    assert shapeinfer.dims_of(helper.make_tensor_value_info("t", 1, ["unk__3", 2])) is None
    assert shapeinfer.probed_dims((1, 12, 5), (2, 24, 5)) == (Batch(1), Batch(12), 5)
    assert shapeinfer.probed_dims((2, 5), (3, 5)) is None
    assert shapeinfer.probed_dims((1,), (2, 1)) is None


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "no such bundle directory or model file"),
        (b"not a protobuf", "not a readable ONNX model"),
    ],
)
def test_inspect_cuts_of_a_bad_file_is_one_error_line(tmp_path, content, match):
    path = tmp_path / "m.onnx"
    if content is not None:
        path.write_bytes(content)
    result = invoke("inspect", path, "--cuts")
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: ")
    assert str(path) in lines[0]
    assert match in lines[0]
