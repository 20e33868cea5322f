"""Family exporter: three classifiers -> an ensemble bundle ordered by FLOPs."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.errors import InputError
from edgeadapt.exporters.family import export_family
from edgeadapt.formats.bundle import load_bundle
from tests.models import family, multi_exit_cnn, run_bundle
from tests.multi_input import assert_median_threshold_split


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


# --- members with several inputs (BERT-style input_ids + attention_mask) ----------------

VOCAB, TOKENS, HIDDEN, CLASSES = 13, 5, 6, 4


def _text_member(seed, masked=True, mask_dtype=TensorProto.INT64, tokens=TOKENS):
    """Token classifier: embed input_ids, average over the tokens (the unmasked ones when
    `masked`, reading attention_mask), then a linear layer."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((VOCAB, HIDDEN)).astype(np.float32), "emb"),
        numpy_helper.from_array(rng.standard_normal((HIDDEN, CLASSES)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal(CLASSES).astype(np.float32), "b"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([2], np.int64), "axis2"),
    ]
    n = helper.make_node
    nodes = [n("Gather", ["emb", "input_ids"], ["e"])]
    inputs = [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", tokens])]
    if masked:
        inputs.append(
            helper.make_tensor_value_info("attention_mask", mask_dtype, ["batch", tokens])
        )
        nodes += [
            n("Cast", ["attention_mask"], ["m"], to=TensorProto.FLOAT),
            n("Unsqueeze", ["m", "axis2"], ["m3"]),
            n("Mul", ["e", "m3"], ["em"]),
            n("ReduceSum", ["em", "axis1"], ["s"], keepdims=0),
            n("ReduceSum", ["m3", "axis1"], ["c"], keepdims=0),
            n("Div", ["s", "c"], ["pooled"]),
        ]
    else:
        nodes.append(n("ReduceMean", ["e"], ["pooled"], axes=[1], keepdims=0))
    nodes += [n("MatMul", ["pooled", "w"], ["z"]), n("Add", ["z", "b"], ["logits"])]
    graph = helper.make_graph(
        nodes,
        "text",
        inputs,
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _text_batch(n, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(n, TOKENS)).astype(np.int64)
    keep = rng.integers(1, TOKENS + 1, size=n)
    mask = (np.arange(TOKENS)[None, :] < keep[:, None]).astype(np.int64)
    return {"input_ids": ids, "attention_mask": mask}


def test_multi_input_family_runs_through_the_cascade(tmp_path):
    from edgeadapt.data.inputs import read_batch
    from edgeadapt.formats.npzio import save_npz

    masked = _save(tmp_path, "masked", _text_member(1))
    ids_only = _save(tmp_path, "ids", _text_member(2, masked=False))
    bundle = export_family([masked, ids_only], tmp_path / "b")
    assert [s.name for s in bundle.states] == ["ids", "masked"]  # by FLOPs
    assert [(i.name, i.shape, i.dtype) for i in bundle.inputs] == [
        ("input_ids", ("batch", TOKENS), "int64"),
        ("attention_mask", ("batch", TOKENS), "int64"),
    ]
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["version"] == 2
    assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
    assert "input" not in manifest
    loaded = load_bundle(tmp_path / "b")
    assert loaded.verified

    data = _text_batch(40)
    save_npz(tmp_path / "data.npz", **data)
    feeds = read_batch(tmp_path / "data.npz", loaded.inputs)
    want = []
    for path in (ids_only, masked):
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        want.append(sess.run(None, {k: feeds[k] for k in names})[0])
    assert_median_threshold_split(loaded, feeds, want)


@pytest.mark.parametrize(
    ("other", "match"),
    [
        (
            lambda: _text_member(2, mask_dtype=TensorProto.INT32),
            r"input 'attention_mask' is \['batch', 5\] int32, but \['batch', 5\] int64 in "
            r"masked\.onnx",
        ),
        (
            lambda: _text_member(2, tokens=TOKENS + 1),
            r"input 'input_ids' is \['batch', 6\] int64, but \['batch', 5\] int64 in masked\.onnx",
        ),
    ],
)
def test_multi_input_members_that_disagree_are_refused_by_name(tmp_path, other, match):
    masked = _save(tmp_path, "masked", _text_member(1))
    bad = _save(tmp_path, "bad", other())
    with pytest.raises(InputError, match=match) as e:
        export_family([masked, bad], tmp_path / "b")
    assert e.value.source == str(bad)
    assert not (tmp_path / "b").exists()


def test_cli_multi_input_family_json(tmp_path):
    from click.testing import CliRunner

    from edgeadapt.cli import cli

    masked = _save(tmp_path, "masked", _text_member(1))
    ids_only = _save(tmp_path, "ids", _text_member(2, masked=False))
    args = ["export", "family", str(masked), str(ids_only), "-o", str(tmp_path / "b"), "--json"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [i["name"] for i in doc["inputs"]] == ["input_ids", "attention_mask"]
    assert "input" not in doc
    assert [s["name"] for s in doc["states"]] == ["ids", "masked"]
