"""Tiny two-step early-exit bundles, sound or with one deliberately bad step output,
for the fault tests of the Python cascade, the evaluator and the native runner.

Input ``x`` float32 ``[batch, 4]``, 3 classes. Step 0 outputs the activation ``a0``
(Relu of x) and the logits ``l0``; step 1 reads ``a0`` and outputs ``l1``. A `bad`
variant changes what step 0 computes while its declared outputs stay ``[batch, ...]``
float32, as a hand-edited or miscompiled graph would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.bundle import Bundle, InputSpec, Step, write_bundle

FEATURES = 4
CLASSES = 3
SPEC = InputSpec("x", ("batch", FEATURES))

#: the step-0 faults `tiny_bundle` can build
BAD = ("act-one-row", "logits-one-row", "logits-float64", "logits-int64", "logits-rank3")


def _w(name: str, *shape: int, seed: int) -> TensorProto:
    rng = np.random.default_rng(seed)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def _step0(bad: str | None, features: int) -> Step:
    nodes = [
        helper.make_node("Relu", ["x"], ["a0_full"]),
        helper.make_node("Gemm", ["x", "w0"], ["l0_full"], transB=1),
    ]
    inits = [_w("w0", CLASSES, features, seed=0)]
    if bad in ("act-one-row", "logits-one-row"):
        inits.append(numpy_helper.from_array(np.array([0]), "first"))
    a0, l0 = "a0_full", "l0_full"
    if bad == "act-one-row":  # a fixed batch of 1: row 0 only
        nodes.append(helper.make_node("Gather", ["a0_full", "first"], ["a0_one"], axis=0))
        a0 = "a0_one"
    elif bad == "logits-one-row":
        nodes.append(helper.make_node("Gather", ["l0_full", "first"], ["l0_one"], axis=0))
        l0 = "l0_one"
    elif bad in ("logits-float64", "logits-int64"):
        to = TensorProto.DOUBLE if bad == "logits-float64" else TensorProto.INT64
        nodes.append(helper.make_node("Cast", ["l0_full"], ["l0_cast"], to=to))
        l0 = "l0_cast"
    elif bad == "logits-rank3":
        nodes.append(helper.make_node("Unsqueeze", ["l0_full", "axis1"], ["l0_r3"]))
        inits.append(numpy_helper.from_array(np.array([1]), "axis1"))
        l0 = "l0_r3"
    nodes += [
        helper.make_node("Identity", [a0], ["a0"]),
        helper.make_node("Identity", [l0], ["l0"]),
    ]
    ltype = {"logits-float64": TensorProto.DOUBLE, "logits-int64": TensorProto.INT64}
    graph = helper.make_graph(
        nodes,
        "step0",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", features])],
        [
            helper.make_tensor_value_info("a0", TensorProto.FLOAT, ["batch", features]),
            helper.make_tensor_value_info(
                "l0", ltype.get(bad or "", TensorProto.FLOAT), ["batch", CLASSES]
            ),
        ],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return Step(model, logits="l0", activation="a0")


def _step1(features: int) -> Step:
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["a0", "w1"], ["l1"], transB=1)],
        "step1",
        [helper.make_tensor_value_info("a0", TensorProto.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("l1", TensorProto.FLOAT, ["batch", CLASSES])],
        initializer=[_w("w1", CLASSES, features, seed=1)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return Step(model, logits="l1")


def tiny_bundle(out: Path, bad: str | None = None, features: int = FEATURES) -> Bundle:
    """Write the tiny bundle (step 0 with fault `bad`, one of `BAD`, or sound) to `out`;
    `features` widens the input (a large input in few rows)."""
    if bad is not None and bad not in BAD:
        raise ValueError(f"bad must be one of {BAD}, got {bad!r}")
    return write_bundle(
        out,
        kind="early-exit",
        input=InputSpec("x", ("batch", features)),
        num_classes=CLASSES,
        steps=[_step0(bad, features), _step1(features)],
        state_names=["early", "final"],
        producer={"exporter": "tests.tiny"},
    )


def tiny_inputs(rows: int, seed: int = 0, features: int = FEATURES) -> np.ndarray:
    """`rows` random float32 inputs for the tiny bundle."""
    return np.random.default_rng(seed).standard_normal((rows, features)).astype(np.float32)
