"""whole_model: the steps chained back into one graph give the last state's logits, with
the intermediate heads pruned; unreadable steps, control flow and broken chains refused."""

import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from edgeadapt.errors import InputError
from edgeadapt.exporters.compose import whole_model
from edgeadapt.exporters.onnx import export_onnx
from edgeadapt.formats.bundle import InputSpec, Step, load_bundle, write_bundle
from tests.models import control_flow, multi_exit_cnn, run_bundle
from tests.multi_input import MASKED_INPUTS, masked_steps

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
MULTIEXIT = BUNDLES / "mnist1d-multiexit"
FAMILY = BUNDLES / "mnist1d-family"


def _x(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 40)).astype(np.float32)


def _run(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})


def _ops(model: onnx.ModelProto, op: str) -> int:
    return sum(n.op_type == op for n in model.graph.node)


@pytest.mark.parametrize("batch", [1, 5])
def test_whole_model_gives_the_last_state_without_the_intermediate_heads(batch):
    bundle = load_bundle(MULTIEXIT)
    x = _x(batch, seed=batch)
    whole = whole_model(bundle)
    assert [i.name for i in whole.graph.input] == [bundle.input.name]
    assert [o.name for o in whole.graph.output] == [bundle.steps[-1].logits]
    steps = [onnx.load(str(s.path)) for s in bundle.steps]
    # every step's head ends in a Gemm; only the last one's survives the pruning
    assert _ops(whole, "Gemm") == _ops(steps[-1], "Gemm")
    assert _ops(whole, "Conv") == sum(_ops(m, "Conv") for m in steps)
    (logits,) = _run(whole, x)
    np.testing.assert_allclose(logits, run_bundle(bundle, x)[-1], rtol=1e-5, atol=1e-5)


def test_whole_model_of_an_exported_network_equals_the_source(tmp_path):
    source = tmp_path / "net.onnx"
    onnx.save(multi_exit_cnn(), source)
    bundle = export_onnx(
        source,
        tmp_path / "b",
        cuts=["conv1_relu", "conv2_relu"],
        heads={"conv1_relu": "exit0", "conv2_relu": "exit1"},
    )
    x = _x(7, seed=2)
    whole = whole_model(bundle)
    (got,) = _run(whole, x)
    want = _run(multi_exit_cnn(), x)[2]  # the source's outputs: exit0, exit1, logits
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert _ops(whole, "GlobalAveragePool") == 0  # both exit heads pruned


def test_ensemble_whole_model_is_the_last_member():
    bundle = load_bundle(FAMILY)
    x = _x(4, seed=3)
    (got,) = _run(whole_model(bundle), x)
    np.testing.assert_array_equal(got, run_bundle(bundle, x)[-1])


def test_unreadable_step_is_named(tmp_path):
    shutil.copytree(MULTIEXIT, tmp_path / "b")
    bundle = load_bundle(tmp_path / "b")
    (tmp_path / "b" / bundle.steps[2].file).write_bytes(b"not a protobuf")
    with pytest.raises(InputError, match=rf"{bundle.steps[2].file}: not a readable ONNX model"):
        whole_model(bundle)


def test_steps_that_do_not_chain_are_refused():
    bundle = load_bundle(MULTIEXIT)
    steps = list(bundle.steps)
    steps[2] = replace(steps[2], inputs=(bundle.input.name,))
    with pytest.raises(InputError, match=r"states\[2\].inputs.*not a chain"):
        whole_model(replace(bundle, steps=tuple(steps)))


def test_control_flow_reading_outer_scope_is_refused(tmp_path):
    """The Extractor would drop what an If body reads from outside: refused, not mangled."""
    first = control_flow()
    first.graph.output.append(
        helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 1, 40])
    )
    w = onnx.numpy_helper.from_array(np.ones((10, 40), np.float32), "w")
    second = helper.make_model(
        helper.make_graph(
            [
                helper.make_node("Flatten", ["b"], ["f"]),
                helper.make_node("Gemm", ["f", "w"], ["y"], transB=1),
            ],
            "head",
            [helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", 1, 40])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
            initializer=[w],
        ),
        opset_imports=[helper.make_opsetid("", 17)],
    )
    second.ir_version = 8
    bundle = write_bundle(
        tmp_path / "b",
        kind="early-exit",
        input=InputSpec("x", ("batch", 1, 40)),
        num_classes=10,
        steps=[Step(first, "logits", activation="b"), Step(second, "y")],
        producer={"exporter": "test", "source_sha256": "0" * 64},
    )
    with pytest.raises(InputError, match=r"step0.onnx: If node .*outer-scope"):
        whole_model(bundle)


@pytest.mark.parametrize("state", [0, 1, 2])
def test_whole_model_of_one_state_keeps_only_its_own_head(state):
    bundle = load_bundle(MULTIEXIT)
    x = _x(3, seed=state)
    plain = whole_model(bundle, state)
    assert [o.name for o in plain.graph.output] == [bundle.steps[state].logits]
    steps = [onnx.load(str(s.path)) for s in bundle.steps[: state + 1]]
    assert _ops(plain, "Conv") == sum(_ops(m, "Conv") for m in steps)
    assert _ops(plain, "Gemm") == _ops(steps[-1], "Gemm")
    (logits,) = _run(plain, x)
    np.testing.assert_allclose(logits, run_bundle(bundle, x)[state], rtol=1e-5, atol=1e-5)


def test_ensemble_state_is_that_member():
    bundle = load_bundle(FAMILY)
    x = _x(2, seed=4)
    (got,) = _run(whole_model(bundle, 1), x)
    np.testing.assert_array_equal(got, run_bundle(bundle, x)[1])


@pytest.mark.parametrize("state", [-1, 4])
def test_state_out_of_range_is_refused(state):
    with pytest.raises(InputError, match=r"state: must be a state index in \[0, 4\)"):
        whole_model(load_bundle(MULTIEXIT), state)


def _masked_bundle(tmp_path: Path, first_reads_mask: bool):
    return write_bundle(
        tmp_path / f"masked{int(first_reads_mask)}",
        kind="early-exit",
        inputs=MASKED_INPUTS,
        num_classes=10,
        steps=masked_steps(first_reads_mask),
        producer={"exporter": "test"},
    )


@pytest.mark.parametrize("first_reads_mask", [True, False])
def test_later_steps_reading_model_inputs_share_one_graph_input(tmp_path, first_reads_mask):
    bundle = _masked_bundle(tmp_path, first_reads_mask)
    whole = whole_model(bundle)
    assert [i.name for i in whole.graph.input] == ["ids", "mask"]
    assert [o.name for o in whole.graph.output] == ["logits1"]
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((3, 4)).astype(np.float32) for n in ("ids", "mask")}
    sess = ort.InferenceSession(whole.SerializeToString(), providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, feeds)
    act = feeds["ids"] * feeds["mask"] if first_reads_mask else np.maximum(feeds["ids"], 0)
    w = onnx.numpy_helper.to_array(bundle_initializer(bundle, "w"))
    np.testing.assert_allclose(got, (act * feeds["mask"]) @ w, rtol=1e-5, atol=1e-6)


def bundle_initializer(bundle, name):
    (init,) = [i for i in onnx.load(str(bundle.steps[1].path)).graph.initializer if i.name == name]
    return init
