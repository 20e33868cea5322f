"""FLOPs/MACs counter against hand-computed values."""

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.flops import ancestors, count_flops, count_params
from tests.models import multi_exit_cnn


def _one(op, x_shape, inits, out_name="y", extra_inputs=(), **attrs):
    """A one-node model: input x of `x_shape` (first axis 'batch'), weights `inits`."""
    tensors = [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in inits.items()]
    node = helper.make_node(op, ["x", *inits, *extra_inputs], [out_name], **attrs)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *x_shape])],
        [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, None)],
        initializer=tensors,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_conv_with_groups_dilation_and_bias():
    # x [1, 4, 10, 10], w [6, 2, 3, 3] (groups 2), dilation 2, no pad -> out [6, 6, 6]
    m = _one("Conv", (4, 10, 10), {"w": (6, 2, 3, 3), "b": (6,)}, group=2, dilations=[2, 2])
    cost = count_flops(m)
    macs = 6 * 6 * 6 * 2 * 9
    assert cost.macs == macs
    assert cost.flops == 2 * macs + 6 * 6 * 6


def test_conv_transpose():
    # x [1, 3, 5], w [3, 4, 3] (C_in, C_out/groups, k), stride 2 -> every input feeds 4*3 outputs
    m = _one("ConvTranspose", (3, 5), {"w": (3, 4, 3)}, strides=[2])
    assert count_flops(m).macs == 3 * 5 * 4 * 3
    assert count_flops(m).flops == 2 * 3 * 5 * 4 * 3


def test_gemm_transposed_with_bias_and_matmul():
    m = _one("Gemm", (20,), {"w": (7, 20), "c": (7,)}, transB=1)
    assert count_flops(m).macs == 7 * 20
    assert count_flops(m).flops == 2 * 7 * 20 + 7
    mm = _one("MatMul", (5, 8), {"w": (8, 3)})  # [1,5,8] @ [8,3]
    assert count_flops(mm).macs == 5 * 3 * 8


def test_pooling_normalisation_elementwise():
    assert (
        count_flops(_one("MaxPool", (2, 8), {}, kernel_shape=[2], strides=[2])).flops == 2 * 4 * 2
    )
    assert count_flops(_one("GlobalAveragePool", (3, 5, 5), {})).flops == 75
    bn = {"s": (3,), "bias": (3,), "mean": (3,), "var": (3,)}
    assert count_flops(_one("BatchNormalization", (3, 4), bn)).flops == 2 * 12
    assert count_flops(_one("Relu", (3, 4), {})).flops == 12
    assert count_flops(_one("Softmax", (10,), {})).flops == 30
    assert count_flops(_one("Reshape", (3, 4), {}, extra_inputs=["shape"])).unknown_ops == []


def test_unknown_ops_count_zero_and_are_listed():
    node = helper.make_node("Mystery", ["x"], ["y"], domain="custom")
    graph = helper.make_graph(
        [node, helper.make_node("Relu", ["y"], ["z"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    m = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom", 1)]
    )
    cost = count_flops(m)
    assert cost.unknown_ops == ["Mystery", "Relu"]  # Relu's input shape is unknown too
    assert cost.flops == 0


def test_multi_exit_cnn_total_by_hand():
    m = multi_exit_cnn()
    conv1 = 2 * (8 * 40 * 1 * 3) + 8 * 40 + 8 * 40  # conv + bias + relu
    exit0 = 8 * 40 + 2 * 10 * 8 + 10  # gap + gemm + bias
    conv2 = 2 * (16 * 20 * 8 * 3) + 16 * 20 + 16 * 20
    exit1 = 16 * 20 + 2 * 10 * 16 + 10
    conv3 = 2 * (16 * 10 * 16 * 3) + 16 * 10 + 16 * 10
    fc = 2 * 10 * 160 + 10
    cost = count_flops(m)
    assert cost.flops == conv1 + exit0 + conv2 + exit1 + conv3 + fc
    assert cost.unknown_ops == []
    assert count_params(m) == (8 * 3 + 8) + (10 * 8 + 10) + (16 * 24 + 16) + (10 * 16 + 10) + (
        16 * 48 + 16
    ) + (10 * 160 + 10)
    stage0 = ancestors(m, ["conv1_relu"])
    assert cost.subset(stage0)[0] == conv1


@given(
    groups=st.sampled_from([1, 2, 4]),
    per_group_in=st.integers(1, 3),
    per_group_out=st.integers(1, 3),
    k=st.integers(1, 5),
    stride=st.integers(1, 3),
    dilation=st.integers(1, 3),
    pad=st.integers(0, 2),
    # >= 13: the widest dilated kernel (3 * (5 - 1) + 1) must fit, or the Conv is invalid
    length=st.integers(13, 30),
)
def test_conv1d_macs_match_formula(
    groups, per_group_in, per_group_out, k, stride, dilation, pad, length
):
    c_in, c_out = groups * per_group_in, groups * per_group_out
    m = _one(
        "Conv",
        (c_in, length),
        {"w": (c_out, per_group_in, k)},
        group=groups,
        strides=[stride],
        dilations=[dilation],
        pads=[pad, pad],
    )
    out_len = (length + 2 * pad - dilation * (k - 1) - 1) // stride + 1
    assert count_flops(m).macs == c_out * out_len * per_group_in * k
