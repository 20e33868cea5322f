"""Small ONNX models built with onnx.helper for the bundle and exporter tests.

MNIST-1D shaped: input ``x`` float32 ``[batch, 1, 40]``, 10 classes. Weights are seeded
random (He init), which is enough for parity and for random-feature exit heads.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
NUM_CLASSES = 10
LENGTH = 40


def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "test", inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def _x(name: str = "x") -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 1, LENGTH])


def _logits(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", NUM_CLASSES])


class _Weights:
    def __init__(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.inits: list[onnx.TensorProto] = []

    def add(self, name: str, *shape: int, fan_in: int | None = None) -> str:
        scale = np.sqrt(2.0 / fan_in) if fan_in else 0.1
        arr = (self.rng.standard_normal(shape) * scale).astype(np.float32)
        self.inits.append(numpy_helper.from_array(arr, name))
        return name


def _conv(w: _Weights, tag: str, x: str, c_in: int, c_out: int, stride: int) -> list:
    wn = w.add(f"{tag}.w", c_out, c_in, 3, fan_in=3 * c_in)
    bn = w.add(f"{tag}.b", c_out)
    return [
        helper.make_node("Conv", [x, wn, bn], [f"{tag}_out"], pads=[1, 1], strides=[stride]),
        helper.make_node("Relu", [f"{tag}_out"], [f"{tag}_relu"]),
    ]


def _gap_head(w: _Weights, tag: str, x: str, c: int, out: str) -> list:
    wn = w.add(f"{tag}.w", NUM_CLASSES, c, fan_in=c)
    bn = w.add(f"{tag}.b", NUM_CLASSES)
    return [
        helper.make_node("GlobalAveragePool", [x], [f"{tag}_gap"]),
        helper.make_node("Flatten", [f"{tag}_gap"], [f"{tag}_flat"]),
        helper.make_node("Gemm", [f"{tag}_flat", wn, bn], [out], transB=1),
    ]


def multi_exit_cnn(seed: int = 0) -> onnx.ModelProto:
    """A 3-stage 1D CNN with its own exits: ``exit0`` at ``conv1_relu`` [B,8,40],
    ``exit1`` at ``conv2_relu`` [B,16,20], final ``logits`` from ``conv3_relu`` [B,16,10]."""
    w = _Weights(seed)
    nodes = [
        *_conv(w, "conv1", "x", 1, 8, 1),
        *_gap_head(w, "exit0", "conv1_relu", 8, "exit0"),
        *_conv(w, "conv2", "conv1_relu", 8, 16, 2),
        *_gap_head(w, "exit1", "conv2_relu", 16, "exit1"),
        *_conv(w, "conv3", "conv2_relu", 16, 16, 2),
        helper.make_node("Flatten", ["conv3_relu"], ["conv3_flat"]),
        helper.make_node(
            "Gemm",
            ["conv3_flat", w.add("fc.w", NUM_CLASSES, 160, fan_in=160), w.add("fc.b", NUM_CLASSES)],
            ["logits"],
            transB=1,
        ),
    ]
    outputs = [_logits("exit0"), _logits("exit1"), _logits("logits")]
    return _model(nodes, [_x()], outputs, w.inits)


def family(seed: int = 0) -> dict[str, onnx.ModelProto]:
    """Three classifiers of rising cost, listed out of cost order on purpose:
    ``cnn`` (conv + linear), ``linear`` (one Gemm), ``mlp`` (two Gemms)."""
    w = _Weights(seed)
    flat = helper.make_node("Flatten", ["x"], ["x_flat"])
    linear = _model(
        [
            flat,
            helper.make_node(
                "Gemm", ["x_flat", w.add("lin.w", 10, 40, fan_in=40)], ["y"], transB=1
            ),
        ],
        [_x()],
        [_logits("y")],
        [w.inits[-1]],
    )
    w.inits.clear()
    mlp = _model(
        [
            helper.make_node("Flatten", ["input"], ["x_flat"]),
            helper.make_node("Gemm", ["x_flat", w.add("h.w", 64, 40, fan_in=40)], ["h"], transB=1),
            helper.make_node("Relu", ["h"], ["h_relu"]),
            helper.make_node("Gemm", ["h_relu", w.add("o.w", 10, 64, fan_in=64)], ["y"], transB=1),
        ],
        [_x("input")],  # a different input name: the family exporter renames it
        [_logits("y")],
        list(w.inits),
    )
    w.inits.clear()
    cnn = _model(
        [
            *_conv(w, "c", "x", 1, 8, 1),
            helper.make_node("Flatten", ["c_relu"], ["c_flat"]),
            helper.make_node(
                "Gemm", ["c_flat", w.add("fc.w", 10, 320, fan_in=320)], ["y"], transB=1
            ),
        ],
        [_x()],
        [_logits("y")],
        list(w.inits),
    )
    return {"cnn": cnn, "linear": linear, "mlp": mlp}


def control_flow(seed: int = 0) -> onnx.ModelProto:
    """A classifier with an If node; ``then_neg`` exists only inside its then-branch."""
    w = _Weights(seed)
    then_branch = helper.make_graph(
        [helper.make_node("Neg", ["r"], ["then_neg"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_neg", TensorProto.FLOAT, ["batch", 1, LENGTH])],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["r"], ["else_id"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_id", TensorProto.FLOAT, ["batch", 1, LENGTH])],
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("ReduceSum", ["r"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", w.add("threshold", 1)], ["cond_v"]),
        helper.make_node("Squeeze", ["cond_v"], ["cond"]),
        helper.make_node("If", ["cond"], ["b"], then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Flatten", ["b"], ["b_flat"]),
        helper.make_node(
            "Gemm", ["b_flat", w.add("fc.w", 10, 40, fan_in=40)], ["logits"], transB=1
        ),
    ]
    return _model(nodes, [_x()], [_logits("logits")], w.inits)


def skip_connection(seed: int = 0) -> onnx.ModelProto:
    """``r1 -> r2 = Neg(r1) -> Add(r1, r2)``: a cut at ``r2`` does not separate the graph."""
    w = _Weights(seed)
    nodes = [
        helper.make_node("Relu", ["x"], ["r1"]),
        helper.make_node("Neg", ["r1"], ["r2"]),
        helper.make_node("Add", ["r1", "r2"], ["s"]),
        helper.make_node("Flatten", ["s"], ["s_flat"]),
        helper.make_node(
            "Gemm", ["s_flat", w.add("fc.w", 10, 40, fan_in=40)], ["logits"], transB=1
        ),
    ]
    return _model(nodes, [_x()], [_logits("logits")], w.inits)


def unknown_op(relu_first: bool = False) -> onnx.ModelProto:
    """``x [batch, 10]`` (through a Relu to ``r`` with `relu_first`) into ``Mystery``, an
    op of the ``custom`` domain no tool knows, to ``m``, then Flatten to ``logits``:
    nothing can infer ``m``'s shape or count its FLOPs."""
    nodes = [helper.make_node("Relu", ["x"], ["r"])] if relu_first else []
    nodes += [
        helper.make_node("Mystery", ["r" if relu_first else "x"], ["m"], domain="custom"),
        helper.make_node("Flatten", ["m"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("custom", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def run_bundle(bundle, x: np.ndarray) -> list[np.ndarray]:
    """Every state's logits for input `x`, running the bundle's files on ONNX Runtime
    (early-exit: chaining activations; ensemble: each member on `x`)."""
    import onnxruntime as ort

    env = {bundle.input.name: x}
    logits = []
    for step in bundle.steps:
        sess = ort.InferenceSession(str(step.path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        feeds = {i.name: env[i.name] for i in sess.get_inputs()}
        out = dict(zip(names, sess.run(names, feeds), strict=True))
        if bundle.kind == "early-exit":
            env.update(out)
        logits.append(out[step.logits])
    return logits
