"""Family exporter: three classifiers -> an ensemble bundle ordered by FLOPs."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgeadapt.bundle import load_bundle
from edgeadapt.errors import InputError
from edgeadapt.exporters.family import export_family
from tests.models import family, multi_exit_cnn, run_bundle


@pytest.fixture
def paths(tmp_path):
    out = {}
    for name, model in family().items():
        out[name] = tmp_path / f"{name}.onnx"
        onnx.save(model, out[name])
    return out


@pytest.mark.parametrize("batch", [1, 7])
def test_family_round_trip(tmp_path, paths, batch):
    bundle = export_family(list(paths.values()), tmp_path / "b")
    assert load_bundle(tmp_path / "b").verified
    assert bundle.kind == "ensemble"
    assert [s.name for s in bundle.states] == ["linear", "mlp", "cnn"]  # by FLOPs
    assert bundle.flops == sorted(bundle.flops) == [800, 2 * 64 * 40 + 64 + 2 * 10 * 64, 8960]
    assert bundle.input.name == "x"  # mlp's input "input" was renamed
    x = np.random.default_rng(batch).standard_normal((batch, 1, 40)).astype(np.float32)
    got = run_bundle(bundle, x)
    for state, logits in zip(bundle.states, got, strict=True):
        sess = ort.InferenceSession(str(paths[state.name]), providers=["CPUExecutionProvider"])
        want = sess.run(None, {sess.get_inputs()[0].name: x})[0]
        np.testing.assert_allclose(logits, want, rtol=1e-3, atol=1e-5)


def test_names_and_duplicate_stems(tmp_path, paths):
    other = tmp_path / "sub"
    other.mkdir()
    onnx.save(family()["linear"], other / "linear.onnx")
    bundle = export_family([paths["linear"], other / "linear.onnx"], tmp_path / "b")
    assert [s.name for s in bundle.states] == ["linear", "linear-2"]
    named = export_family([paths["cnn"], paths["linear"]], tmp_path / "c", names=["big", "small"])
    assert [s.name for s in named.states] == ["small", "big"]


def _save(tmp_path, name, model):
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    return path


def _flatten(length, classes):
    """A model whose logits are its flattened input: [batch, 1, length] -> [batch, classes]."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, length])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_mismatched_members_are_refused(tmp_path, paths):
    wide = _flatten(10, 10)
    with pytest.raises(InputError, match=r"input .* differs from"):
        export_family([paths["linear"], _save(tmp_path, "wide", wide)], tmp_path / "b")
    with pytest.raises(InputError, match="must have one output"):
        export_family([paths["linear"], _save(tmp_path, "multi", multi_exit_cnn())], tmp_path / "b")
    with pytest.raises(InputError, match="at least two models"):
        export_family([paths["linear"]], tmp_path / "b")
    with pytest.raises(InputError, match="1 names for 2 models") as e:
        export_family([paths["linear"], paths["mlp"]], tmp_path / "b", names=["a"])
    assert e.value.source == "names"
    forty = _flatten(40, 40)
    with pytest.raises(InputError, match=r"40 classes, but linear\.onnx has 10"):
        export_family([paths["linear"], _save(tmp_path, "forty", forty)], tmp_path / "b")
    with pytest.raises(InputError, match="file not found"):
        export_family([paths["linear"], tmp_path / "nope.onnx"], tmp_path / "b")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(InputError, match="not a readable ONNX model"):
        export_family([paths["linear"], tmp_path / "junk.onnx"], tmp_path / "b")
    assert not (tmp_path / "b").exists()
