"""ONNX splitter: own heads, trained heads on MNIST-1D, and every refused cut."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgeadapt.bundle import load_bundle
from edgeadapt.datasets import mnist1d_splits
from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph
from edgeadapt.exporters.onnx import export_onnx
from edgeadapt.npzio import save_npz
from tests.models import control_flow, multi_exit_cnn, run_bundle, skip_connection

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
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Mystery", ["r"], ["m"], domain="custom"),
        helper.make_node("Flatten", ["m"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)]
    )
    _refused(tmp_path, model, r"cut 'm' has no shape information", cuts=["m"], calibration="c.npz")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"cuts": []}, "cuts: give at least one cut"),
        ({"cuts": ["conv1_relu", "conv1_relu"]}, "repeat"),
        ({"cuts": ["conv1_relu"]}, "cannot tell which output is the final logits"),
        ({"cuts": ["conv1_relu"], "logits": "logits"}, r"calibration: cuts .* have no exit head"),
        ({"cuts": ["conv1_relu"], "heads": {"conv2_relu": "exit1"}}, "heads: .*not one of the cuts"),
        (
            {"cuts": ["conv1_relu"], "heads": {"conv1_relu": "conv2_relu"}, "logits": "logits"},
            r"must have shape \[batch, classes\]",
        ),
        ({"cuts": ["x"], "logits": "logits"}, "graph input or a weight"),
        (
            {"cuts": ["logits"], "heads": {"logits": "exit0"}, "logits": "logits"},
            "is the final logits",
        ),
        ({"cuts": ["conv1_relu"], "heads": {"conv1_relu": "exit0"}, "pool": "max"}, "pool: must be"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kw, match):
    _refused(tmp_path, multi_exit_cnn(), match, **kw)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        (
            {"x": np.zeros((4, 1, 39), np.float32), "y": np.zeros(4, np.int64)},
            r"x: per-sample shape",
        ),
        (
            {"x": np.zeros((4, 1, 40), np.float32), "y": np.full(4, 10)},
            r"y: labels must lie in \[0, 10\)",
        ),
        (
            {"x": np.zeros((4, 1, 40), np.float32), "y": np.zeros(3, np.int64)},
            r"y: 4 samples in x but 3",
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
