"""ONNX splitter: own heads, trained heads on MNIST-1D, and every refused cut."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgeadapt.data.memory import BatchChoice
from edgeadapt.data.mnist1d import mnist1d_splits
from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph
from edgeadapt.exporters.onnx import export_onnx
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.npzio import save_npz
from tests import graphs
from tests.models import control_flow, multi_exit_cnn, run_bundle, skip_connection, unknown_op

CUTS = ["conv1_relu", "conv2_relu"]
HEADS = {"conv1_relu": "exit0", "conv2_relu": "exit1"}


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(multi_exit_cnn(), path)
    return path


@pytest.fixture(scope="module")
def mnist1d():
    """A small MNIST-1D draw: 1000 calibration and 500 test samples."""
    splits = mnist1d_splits(7, n_train=1000, n_calibration=1, n_test=500)
    return (splits.train.x, splits.train.y), (splits.test.x, splits.test.y)


def _reference(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(
        zip(
            ["exit0", "exit1", "logits"],
            sess.run(["exit0", "exit1", "logits"], {"x": x}),
            strict=True,
        )
    )


@pytest.mark.parametrize("batch", [1, 7])
def test_own_heads_reproduce_the_source_model(tmp_path, source, batch):
    bundle = export_onnx(source, tmp_path / "b", cuts=CUTS, heads=HEADS)
    assert load_bundle(tmp_path / "b").verified
    x = np.random.default_rng(batch).standard_normal((batch, 1, 40)).astype(np.float32)
    ref = _reference(multi_exit_cnn(), x)
    got = run_bundle(bundle, x)
    for g, name in zip(got, ["exit0", "exit1", "logits"], strict=True):
        np.testing.assert_allclose(g, ref[name], rtol=1e-3, atol=1e-5)
    assert bundle.extra["parity"]["max_abs_error"] <= 1e-5
    assert [h["kind"] for h in bundle.extra["heads"]] == ["own", "own"]


def test_trained_heads_beat_chance_on_mnist1d(tmp_path, source, mnist1d):
    (cx, cy), (tx, ty) = mnist1d
    save_npz(tmp_path / "calib.npz", x=cx, y=cy)
    seen = []
    bundle = export_onnx(
        source,
        tmp_path / "b",
        cuts=CUTS,
        logits="logits",
        calibration=tmp_path / "calib.npz",
        progress=lambda label, done, total: seen.append((done, total)),
    )
    assert seen[-1][0] == seen[-1][1]
    assert load_bundle(tmp_path / "b").verified
    assert [h["kind"] for h in bundle.extra["heads"]] == ["trained-linear"] * 2
    assert bundle.head_flops[0] > 0
    assert bundle.head_flops[2] == 0
    for batch in (1, 7):
        shapes = [g.shape for g in run_bundle(bundle, tx[:batch])]
        assert shapes == [(batch, 10)] * 3
    exits = run_bundle(bundle, tx)[:2]
    accuracy = [float(np.mean(e.argmax(1) == ty)) for e in exits]
    assert min(accuracy) > 0.25, accuracy  # chance is 0.10


def test_static_batch_model_gets_a_dynamic_batch_axis(tmp_path):
    model = multi_exit_cnn()
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_value = 1
    onnx.save(model, tmp_path / "static.onnx")
    bundle = export_onnx(tmp_path / "static.onnx", tmp_path / "b", cuts=CUTS, heads=HEADS)
    assert bundle.input.shape == ("batch", 1, 40)
    assert [g.shape for g in run_bundle(bundle, np.zeros((7, 1, 40), np.float32))] == [(7, 10)] * 3


def test_source_with_external_data_is_handled(tmp_path):
    path = tmp_path / "ext.onnx"
    onnx.save(
        multi_exit_cnn(), path, save_as_external_data=True, location="ext.data", size_threshold=0
    )
    bundle = export_onnx(path, tmp_path / "b", cuts=CUTS, heads=HEADS)
    assert sorted(bundle.files) == ["step0.onnx", "step1.onnx", "step2.onnx"]


def test_source_over_2gb_is_refused_clearly(tmp_path, source, monkeypatch):
    monkeypatch.setattr(_graph, "MAX_MODEL_BYTES", 1000)
    with pytest.raises(InputError, match="models over 2 GB cannot be split"):
        export_onnx(source, tmp_path / "b", cuts=CUTS, heads=HEADS)


def _refused(tmp_path, model, match, **kw):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(InputError, match=match):
        export_onnx(path, tmp_path / "b", **kw)
    assert not (tmp_path / "b").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_parameter_errors_name_the_parameter(tmp_path, source):
    with pytest.raises(InputError, match=r"^cuts: no tensor named 'nope' in .*net\.onnx") as e:
        export_onnx(source, tmp_path / "b", cuts=["nope"], logits="logits")
    assert (e.value.source, e.value.field) == ("cuts", None)
    with pytest.raises(InputError, match="which is not one of the cuts") as e:
        export_onnx(source, tmp_path / "b", cuts=CUTS, heads={"x": "exit0"})
    assert e.value.source == "heads"
    with pytest.raises(InputError, match="must be one of") as e:
        export_onnx(source, tmp_path / "b", cuts=CUTS, heads=HEADS, pool="max")
    assert e.value.source == "pool"
    with pytest.raises(InputError, match="no exit head") as e:
        export_onnx(source, tmp_path / "b", cuts=CUTS, logits="logits")
    assert e.value.source == "calibration"
    assert not (tmp_path / "b").exists()


def test_unknown_cut_names_a_close_match(tmp_path):
    _refused(
        tmp_path,
        multi_exit_cnn(),
        r"no tensor named 'conv1_rel'.*did you mean 'conv1_relu'",
        cuts=["conv1_rel"],
        heads={},
    )


def test_cut_inside_control_flow_body(tmp_path):
    _refused(
        tmp_path,
        control_flow(),
        r"'then_neg' is defined inside the body of If node",
        cuts=["then_neg"],
    )


def test_cut_that_does_not_separate_the_graph(tmp_path):
    _refused(
        tmp_path,
        skip_connection(),
        r"cut 'r2' does not separate the graph",
        cuts=["r2"],
        calibration="unused.npz",
    )


def test_cuts_out_of_order(tmp_path):
    _refused(
        tmp_path,
        multi_exit_cnn(),
        r"'conv1_relu' comes before the previous cut 'conv2_relu'",
        cuts=["conv2_relu", "conv1_relu"],
        heads={"conv2_relu": "exit1", "conv1_relu": "exit0"},
    )


def test_cut_without_shape_information(tmp_path):
    model = unknown_op(relu_first=True)
    _refused(tmp_path, model, r"cut 'm' has no shape information", cuts=["m"], calibration="c.npz")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"cuts": []}, "cuts: give at least one cut"),
        ({"cuts": ["conv1_relu", "conv1_relu"]}, "repeat"),
        ({"cuts": ["conv1_relu"]}, "cannot tell which output is the final logits"),
        ({"cuts": ["conv1_relu"], "logits": "logits"}, r"calibration: cuts .* have no exit head"),
        (
            {"cuts": ["conv1_relu"], "heads": {"conv2_relu": "exit1"}},
            "heads: .*not one of the cuts",
        ),
        (
            {"cuts": ["conv1_relu"], "heads": {"conv1_relu": "conv2_relu"}, "logits": "logits"},
            r"must have shape \[batch, classes\]",
        ),
        ({"cuts": ["x"], "logits": "logits"}, "graph input or a weight"),
        (
            {"cuts": ["logits"], "heads": {"logits": "exit0"}, "logits": "logits"},
            "is the final logits",
        ),
        (
            {"cuts": ["conv1_relu"], "heads": {"conv1_relu": "exit0"}, "pool": "max"},
            "pool: must be",
        ),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kw, match):
    _refused(tmp_path, multi_exit_cnn(), match, **kw)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"x": np.zeros((4, 1, 39), np.float32), "y": np.zeros(4, np.int64)},
            r"x: expected shape \[B, 1, 40\], got \[4, 1, 39\]",
        ),
        (
            {"x": np.zeros((4, 1, 40), np.float32), "y": np.full(4, 10)},
            r"y: class indices must lie in 0\.\.9",
        ),
        (
            {"x": np.zeros((4, 1, 40), np.float32), "y": np.zeros(3, np.int64)},
            r"y: expected integer labels \[4\], got int64 \(3,\)",
        ),
        ({"x": np.full((4, 1, 40), np.nan, np.float32), "y": np.zeros(4, np.int64)}, "NaN"),
        ({"x": np.zeros((4, 1, 40), np.float32)}, "y: missing array"),
    ],
)
def test_bad_calibration_files(tmp_path, arrays, match):
    calib = tmp_path / "calib" / "c.npz"
    calib.parent.mkdir()
    save_npz(calib, **arrays)
    path = tmp_path / "m.onnx"
    onnx.save(multi_exit_cnn(), path)
    with pytest.raises(InputError, match=match):
        export_onnx(path, tmp_path / "b", cuts=CUTS, logits="logits", calibration=calib)
    assert not (tmp_path / "b").exists()


# --- real-model-shaped graphs (tests/graphs.py) ----------------------------------------


def _assert_full_path_equals(bundle, source, feeds):
    got = graphs.run_chain(bundle, feeds)[-1]
    want = graphs.run_model(source, feeds)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert np.abs(want).max() > 0.1  # logits are not ~0: the comparison means something


@pytest.fixture(scope="module")
def cnn_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="the test graphs are exported from torch")
    path = tmp_path_factory.mktemp("cnn") / "cnn.onnx"
    return graphs.export_legacy(graphs.residual_cnn(), (torch.zeros(2, 3, 16, 16),), ["x"], path)


@pytest.fixture(scope="module")
def text_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="the test graphs are exported from torch")
    ids, mask = graphs.text_inputs(4)
    path = tmp_path_factory.mktemp("text") / "text.onnx"
    args = (torch.from_numpy(ids), torch.from_numpy(mask))
    return graphs.export_legacy(graphs.text_encoder(), args, TEXT_INPUTS, path)


@pytest.fixture(scope="module")
def text_dynamo_onnx(tmp_path_factory):
    torch = pytest.importorskip("torch", reason="the test graphs are exported from torch")
    pytest.importorskip("onnxscript", reason="torch's dynamo ONNX exporter needs onnxscript")
    ids, mask = graphs.text_inputs(4)
    path = tmp_path_factory.mktemp("dynamo") / "text.onnx"
    args = (torch.from_numpy(ids), torch.from_numpy(mask))
    return graphs.export_dynamo(graphs.text_encoder(), args, TEXT_INPUTS, path)


TEXT_INPUTS = ["input_ids", "attention_mask"]


def _text_calibration(path, n=200, names=TEXT_INPUTS):
    ids, mask = graphs.text_inputs(n, seed=1)
    y = np.random.default_rng(0).integers(0, graphs.TEXT_CLASSES, n)
    save_npz(path, **dict(zip(names, (ids, mask), strict=False)), y=y)
    return path


def test_residual_bn_cnn_bundle_equals_the_model(tmp_path, cnn_onnx):
    cuts = graphs.tensor_names(cnn_onnx, "Relu")
    cuts = [cuts[2], cuts[4]]  # the outputs of layer1 and layer2 (after the residual add)
    rng = np.random.default_rng(0)
    save_npz(
        tmp_path / "c.npz",
        x=rng.standard_normal((96, 3, 16, 16)).astype(np.float32),
        y=rng.integers(0, 10, 96),
    )
    seen = []
    bundle = export_onnx(
        cnn_onnx,
        tmp_path / "b",
        cuts=cuts,
        calibration=tmp_path / "c.npz",
        pool="gap",
        batch_size=10,
        progress=lambda label, done, total: seen.append(label),
    )
    assert seen.count("calibration forward pass") == 10  # one tick per batch of 10
    assert [s.name for s in bundle.states] == ["exit0", "exit1", "exit2"]
    assert [h["pool"] for h in bundle.extra["heads"]] == ["gap", "gap"]
    for h in bundle.extra["heads"]:
        assert h["train_samples"] + h["heldout_samples"] == 96
        assert 0 <= h["heldout_accuracy"] <= 1
    for batch in (1, 5):
        x = rng.standard_normal((batch, 3, 16, 16)).astype(np.float32)
        _assert_full_path_equals(bundle, cnn_onnx, {"x": x})


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_masked_text_encoder_bundle_has_two_inputs_and_equals_the_model(tmp_path, text_onnx, pool):
    cuts = graphs.tensor_names(text_onnx, "LayerNormalization")[1::2]  # after each layer
    bundle = export_onnx(
        text_onnx,
        tmp_path / "b",
        cuts=cuts[:1],
        calibration=_text_calibration(tmp_path / "c.npz"),
        pool=pool,
    )
    loaded = load_bundle(tmp_path / "b")
    assert [i.name for i in loaded.inputs] == TEXT_INPUTS
    assert loaded.inputs[0].dtype == "int64"
    assert loaded.steps[0].inputs == tuple(TEXT_INPUTS)
    # layer 2 rebuilds its attention bias from the mask: the step reads it again
    assert loaded.steps[1].inputs == (cuts[0], "attention_mask")
    head = bundle.extra["heads"][0]
    assert head["pool"] == pool
    assert head["mask"] == ("attention_mask" if pool == "mean" else None)
    assert head["mask_prefix_tokens"] == (1 if pool == "mean" else 0)
    for batch in (1, 6):
        ids, mask = graphs.text_inputs(batch, seed=batch)
        feeds = {"input_ids": ids, "attention_mask": mask}
        _assert_full_path_equals(bundle, text_onnx, feeds)
        exit0 = graphs.run_chain(bundle, feeds)[0]
        assert exit0.shape == (batch, graphs.TEXT_CLASSES)


def test_dynamo_exported_text_encoder(tmp_path, text_dynamo_onnx):
    cuts = graphs.tensor_names(text_dynamo_onnx, "LayerNormalization")[1::2]
    bundle = export_onnx(
        text_dynamo_onnx,
        tmp_path / "b",
        cuts=cuts[:1],
        calibration=_text_calibration(tmp_path / "c.npz"),
    )
    assert bundle.extra["heads"][0]["pool"] == "mean"  # auto on a token sequence
    ids, mask = graphs.text_inputs(3, seed=5)
    _assert_full_path_equals(bundle, text_dynamo_onnx, {"input_ids": ids, "attention_mask": mask})


def test_model_fixed_to_one_batch_size_is_refused_clearly(tmp_path, text_onnx):
    torch = pytest.importorskip("torch")
    ids, mask = graphs.text_inputs(4)
    static = graphs.export_legacy(
        graphs.text_encoder(),
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        TEXT_INPUTS,
        tmp_path / "static.onnx",
        dynamic=False,
    )
    cut = graphs.tensor_names(static, "LayerNormalization")[1]
    with pytest.raises(InputError, match=r"static\.onnx: this model cannot run at another batch"):
        export_onnx(static, tmp_path / "b", cuts=[cut], calibration="unused.npz")
    assert not (tmp_path / "b").exists()


def test_helper_graph_fixed_to_one_batch_size(tmp_path):
    _refused(
        tmp_path,
        graphs.fixed_batch_reshape(),
        "this model cannot run at another batch size",
        cuts=["r"],
        calibration="unused.npz",
    )


def test_calibration_missing_an_input_array(tmp_path, text_onnx):
    cut = graphs.tensor_names(text_onnx, "LayerNormalization")[1]
    calib = _text_calibration(tmp_path / "c.npz", names=["input_ids"])
    with pytest.raises(
        InputError, match=r"c.npz: attention_mask: missing array\(s\) \['attention_mask'\]"
    ):
        export_onnx(text_onnx, tmp_path / "b", cuts=[cut], calibration=calib)
    assert not (tmp_path / "b").exists()


def test_token_pool_on_a_cnn_activation_names_pool(tmp_path, cnn_onnx):
    cut = graphs.tensor_names(cnn_onnx, "Relu")[2]
    with pytest.raises(InputError, match=r"pool: cut .*needs a \[batch, tokens, hidden\]"):
        export_onnx(cnn_onnx, tmp_path / "b", cuts=[cut], calibration="unused.npz", pool="cls")


def test_small_shared_constant_is_copied_into_each_step(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(graphs.shared_constant_chain(), path)
    rng = np.random.default_rng(0)
    save_npz(
        tmp_path / "c.npz",
        x=rng.standard_normal((60, 16)).astype(np.float32),
        y=rng.integers(0, 10, 60),
    )
    bundle = export_onnx(
        path, tmp_path / "b", cuts=["relu0", "relu1"], calibration=tmp_path / "c.npz"
    )
    for step in bundle.steps:
        model = onnx.load(str(step.path))
        assert "Constant" in {n.op_type for n in model.graph.node}
    x = rng.standard_normal((4, 16)).astype(np.float32)
    _assert_full_path_equals(bundle, path, {"x": x})


def _chain_calibration(path, width, n=60):
    rng = np.random.default_rng(0)
    save_npz(path, x=rng.standard_normal((n, width)).astype(np.float32), y=rng.integers(0, 10, n))
    return path


def test_large_shared_constant_is_copied_into_each_step(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(graphs.shared_constant_chain(width=512, vector=True), path)
    calib = _chain_calibration(tmp_path / "c.npz", 512)
    bundle = export_onnx(path, tmp_path / "b", cuts=["relu0", "relu1"], calibration=calib)
    for step in bundle.steps:
        model = onnx.load(str(step.path))
        shared = [n for n in model.graph.node if n.output[0] == "shared"]
        assert len(shared) == 1  # every step computes the 2048-byte constant itself
    x = np.random.default_rng(1).standard_normal((3, 512)).astype(np.float32)
    _assert_full_path_equals(bundle, path, {"x": x})


@pytest.mark.parametrize("shared", [False, True])
def test_weight_read_on_both_sides_of_a_cut_is_copied_and_counted(tmp_path, shared):
    model = graphs.shared_constant_chain(width=32)
    for node in model.graph.node:
        if node.op_type == "Gemm" and node.input[1] == "w1":
            node.input[1] = "w0"  # tied weights: layer 1 reuses layer 0's
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    calib = _chain_calibration(tmp_path / "c.npz", 32)
    bundle = export_onnx(
        path, tmp_path / "b", cuts=["relu0"], calibration=calib, shared_weights=shared
    )
    weights = bundle.extra["weights"]
    assert weights["duplicated_bytes"] == 32 * 32 * 4  # w0 is in both steps
    assert weights["shared_file"] is shared
    readers = [
        s.file
        for s in bundle.steps
        if "w0" in {t.name for t in onnx.load(str(s.path)).graph.initializer}
    ]
    assert readers == ["step0.onnx", "step1.onnx"]
    assert ("weights.data" in bundle.files) is shared
    x = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    _assert_full_path_equals(bundle, path, {"x": x})


def test_parity_tolerance_is_stated_and_overridable(tmp_path, source, mnist1d):
    (cx, cy), _ = mnist1d
    save_npz(tmp_path / "c.npz", x=cx[:200], y=cy[:200])
    kw = {"cuts": ["conv1_relu"], "logits": "logits", "calibration": tmp_path / "c.npz"}
    with pytest.raises(InputError, match=r"tolerance 0 = max\(atol 0, rtol 0 x max \|value\|"):
        export_onnx(source, tmp_path / "b", parity_rtol=0.0, parity_atol=0.0, **kw)
    assert not (tmp_path / "b").exists()
    bundle = export_onnx(source, tmp_path / "b", parity_rtol=1e-2, **kw)
    assert bundle.extra["parity"]["rtol"] == 1e-2
    with pytest.raises(InputError, match="parity_rtol: must be a finite number"):
        export_onnx(source, tmp_path / "b2", parity_rtol=float("nan"), **kw)


def test_compressed_calibration_is_streamed(tmp_path, source, mnist1d):
    (cx, cy), _ = mnist1d
    np.savez_compressed(tmp_path / "c.npz", x=cx[:100], y=cy[:100])
    bundle = export_onnx(
        source,
        tmp_path / "b",
        cuts=["conv1_relu"],
        logits="logits",
        calibration=tmp_path / "c.npz",
        batch_size=7,
    )
    assert bundle.extra["heads"][0]["train_samples"] == 80
    assert bundle.extra["calibration_batch"] == BatchChoice(7, True).to_json()
    kw = {"cuts": ["conv1_relu"], "logits": "logits", "calibration": tmp_path / "c.npz"}
    auto = export_onnx(source, tmp_path / "auto", memory="64KiB", **kw).extra["calibration_batch"]
    assert not auto["given"]
    assert auto["memory"] == 64 << 10
    assert 1 <= auto["batch"] * auto["bytes_per_sample"] <= 64 << 10


def _channels_last_model(c_in=6, width=48, classes=4, seed=0):
    """``x [B, 8, 8, c_in]`` -> MatMul (a linear layer per position) -> ``feat [B, 8, 8,
    width]`` -> LayerNorm over the channels -> mean over H and W -> MatMul -> logits: a
    Swin's layout. The linear layer's rows sum to zero, so each position's channels do
    too, and a mean over W and C carries nothing."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((c_in, width))
    w1 -= w1.mean(axis=1, keepdims=True)
    init = onnx.numpy_helper.from_array
    nodes = [
        onnx.helper.make_node("MatMul", ["x", "w1"], ["feat"]),
        onnx.helper.make_node("LayerNormalization", ["feat", "gamma", "beta"], ["ln"]),
        onnx.helper.make_node("ReduceMean", ["ln"], ["pooled"], axes=[1, 2], keepdims=0),
        onnx.helper.make_node("MatMul", ["pooled", "w2"], ["logits"]),
    ]
    inits = [
        init(w1.astype(np.float32), "w1"),
        init(np.ones(width, np.float32), "gamma"),
        init(np.zeros(width, np.float32), "beta"),
        init(rng.standard_normal((width, classes)).astype(np.float32), "w2"),
    ]
    graph = onnx.helper.make_graph(
        nodes,
        "nhwc",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 8, 8, c_in])],
        [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.FLOAT, ["batch", classes])],
        initializer=inits,
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def test_channels_last_cut_gets_a_channels_last_pooling(tmp_path):
    """auto pools [B, 8, 8, 48] (3072 values: too many to flatten) over H and W, read
    from the LayerNorm over its last axis, so the head sees the 48 channels; the
    channels-first gap would see 8 row means that carry nothing."""
    path = tmp_path / "nhwc.onnx"
    onnx.save(_channels_last_model(), path)
    rng = np.random.default_rng(1)
    n, classes = 300, 4
    y = rng.integers(0, classes, n)
    x = rng.standard_normal((n, 8, 8, 6))
    x[np.arange(n), ..., y] += 1.0  # channel y carries the class
    save_npz(tmp_path / "c.npz", x=x.astype(np.float32), y=y)
    bundle = export_onnx(path, tmp_path / "b", cuts=["feat"], calibration=tmp_path / "c.npz")
    head = bundle.extra["heads"][0]
    assert head["pool"] == "gap_last"
    assert head["features"] == 48
    assert head["heldout_accuracy"] > 0.9
    probe = rng.standard_normal((5, 8, 8, 6)).astype(np.float32)
    _assert_full_path_equals(bundle, path, {"x": probe})
    gap = export_onnx(
        path, tmp_path / "g", cuts=["feat"], calibration=tmp_path / "c.npz", pool="gap"
    )
    assert gap.extra["heads"][0]["features"] == 8
    assert gap.extra["heads"][0]["heldout_accuracy"] < 0.5
