"""Dependencies in an ONNX graph follow the outer-scope reads of If/Loop bodies."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.graph.deps import ancestors, body_tensors, node_inputs
from edgeadapt.graph.flops import count_flops


def _vi(name: str, shape: list[int] | None = None, dtype: int = TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def _if_model() -> onnx.ModelProto:
    """x -> Relu -> r; x -> Neg -> n; If(cond) picks Sigmoid(r) or n; each branch reads
    an outer name (r or n) without it being an input of the If node."""
    then = helper.make_graph(
        [helper.make_node("Sigmoid", ["r"], ["t_out"])], "then", [], [_vi("t_out", [1, 4])]
    )
    other = helper.make_graph(
        [helper.make_node("Identity", ["n"], ["e_out"])], "else", [], [_vi("e_out", [1, 4])]
    )
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Neg", ["x"], ["n"], name="neg"),
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other),
        helper.make_node("Exp", ["x"], ["unused"], name="exp"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [_vi("x", [1, 4])],
        [_vi("y", [1, 4]), _vi("unused", [1, 4])],
        [numpy_helper.from_array(np.zeros((), np.float32), "zero")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _loop_model() -> onnx.ModelProto:
    """A Loop whose body adds the outer tensor `w` (computed by Mul) to its carried value."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "w"], ["acc_out"]),
        ],
        "body",
        [
            _vi("i", [], TensorProto.INT64),
            _vi("cond_in", [], TensorProto.BOOL),
            _vi("acc_in", [1, 4]),
        ],
        [_vi("cond_out", [], TensorProto.BOOL), _vi("acc_out", [1, 4])],
    )
    nodes = [
        helper.make_node("Mul", ["x", "x"], ["w"], name="mul"),
        helper.make_node("Loop", ["trips", "", "x"], ["y"], name="loop", body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [_vi("x", [1, 4])],
        [_vi("y", [1, 4])],
        [numpy_helper.from_array(np.array(3, np.int64), "trips")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_if_branches_outer_reads_are_dependencies():
    m = _if_model()
    onnx.checker.check_model(m, full_check=True)
    assert sorted(node_inputs(m.graph.node[4])) == ["cond", "n", "r"]
    # relu (0) and neg (1) feed only the branches; exp (5) is not an ancestor of y.
    assert ancestors(m, ["y"]) == {0, 1, 2, 3, 4}
    assert ancestors(m, ["y"], stop=["r"]) == {1, 2, 3, 4}
    assert body_tensors(m) == {"t_out": "If node 'if'", "e_out": "If node 'if'"}
    # the stage/head split of a bundle step counts the branch inputs as the stage's
    cost = count_flops(m)
    assert cost.subset(ancestors(m, ["y"]))[0] == cost.flops - cost.nodes[5].flops


def test_loop_body_outer_read_is_a_dependency():
    m = _loop_model()
    onnx.checker.check_model(m, full_check=True)
    assert node_inputs(m.graph.node[1]) == ["trips", "x", "w"]
    assert ancestors(m, ["y"]) == {0, 1}
    assert ancestors(m, ["y"], stop=["w"]) == {1}
