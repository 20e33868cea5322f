"""FLOPs/MACs counter against hand-computed values."""

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.graph.deps import ancestors
from edgeadapt.graph.flops import count_flops, count_params
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
    # HF EfficientNet's pooler: a kernel as wide as the hidden size over a 2x2 map reads
    # the 4 values once per output, not 1280 x 1280 of them
    wide = _one(
        "AveragePool", (3, 2, 2), {}, kernel_shape=[1280] * 2, strides=[1280] * 2, ceil_mode=1
    )
    assert count_flops(wide).flops == 3 * 4
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


def _graph(nodes, inputs, inits=(), opsets=(("", 17),), output="y"):
    """A model of `nodes`; `inputs` maps names to shapes (first axis 'batch')."""
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", *s])
            for n, s in inputs.items()
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
        initializer=list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets])


def _init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


@settings(max_examples=25, deadline=None)
@given(
    batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
    m=st.integers(1, 6),
    k=st.integers(1, 6),
    n=st.integers(1, 6),
    broadcast=st.booleans(),
)
def test_batched_matmul_macs(batch, m, k, n, broadcast):
    """[1, *batch, m, k] @ [*batch, k, n] (or a broadcast [k, n]) = prod(batch)*m*n*k MACs."""
    w = np.zeros((k, n) if broadcast else (*batch, k, n), np.float32)
    model = _graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": (*batch, m, k)}, [_init("w", w)]
    )
    cost = count_flops(model)
    macs = int(np.prod(batch, dtype=np.int64)) * m * n * k
    assert (cost.macs, cost.flops, cost.unknown_ops) == (macs, 2 * macs, [])


def test_attention_pattern_by_hand():
    """Scaled dot-product attention over q, k, v [B, heads 2, S 5, E 4]."""
    h, s, e = 2, 5, 4
    nodes = [
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
        helper.make_node("MatMul", ["q", "kt"], ["scores"]),
        helper.make_node("Div", ["scores", "scale"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["y"]),
    ]
    model = _graph(
        nodes,
        {"q": (h, s, e), "k": (h, s, e), "v": (h, s, e), "bias": (1, 1, s)},
        [_init("scale", np.float32(2.0))],
    )
    cost = count_flops(model)
    qk = av = h * s * s * e
    assert cost.macs == qk + av
    assert cost.flops == 2 * (qk + av) + 2 * h * s * s + 3 * h * s * s  # Div, Add, Softmax
    assert cost.unknown_ops == []


@pytest.mark.parametrize(
    ("op", "per_element", "opset"),
    [
        ("Add", 1, 17),
        ("Mul", 1, 17),
        ("Div", 1, 17),
        ("Sub", 1, 17),
        ("Pow", 1, 17),
        ("Sqrt", 1, 17),
        ("Tanh", 1, 17),
        ("Erf", 1, 17),
        ("Gelu", 1, 20),
    ],
)
def test_elementwise_ops_cost_one_flop_per_output(op, per_element, opset):
    arity = 2 if op in ("Add", "Mul", "Div", "Sub", "Pow") else 1
    ins = ["x", "x"][:arity]
    model = _graph([helper.make_node(op, ins, ["y"])], {"x": (3, 7)}, opsets=(("", opset),))
    cost = count_flops(model)
    assert (cost.flops, cost.unknown_ops) == (21 * per_element, [])


def test_layernorm_reducemean_gemm_by_hand():
    nodes = [
        helper.make_node("LayerNormalization", ["x", "g", "b"], ["ln"], axis=-1),
        helper.make_node("ReduceMean", ["ln"], ["y"], axes=[1], keepdims=0),
    ]
    model = _graph(
        nodes,
        {"x": (6, 8)},
        [_init("g", np.ones(8, np.float32)), _init("b", np.zeros(8, np.float32))],
    )
    cost = count_flops(model)
    assert cost.flops == 5 * 48 + 48
    gemm = _one("Gemm", (8,), {"w": (8, 3)})
    assert count_flops(gemm).macs == 24


def test_fused_contrib_attention_ops():
    s, d_in, d, heads = 6, 8, 8, 2
    attention = helper.make_node(
        "Attention", ["x", "w", "b"], ["y"], domain="com.microsoft", num_heads=heads
    )
    model = _graph(
        [attention],
        {"x": (s, d_in)},
        [_init("w", np.zeros((d_in, 3 * d), np.float32)), _init("b", np.zeros(3 * d, np.float32))],
        opsets=(("", 17), ("com.microsoft", 1)),
    )
    # com.microsoft ops have no onnx shape inference: shapes come from ORT's symbolic one
    cost = count_flops(model)
    macs = s * d_in * 3 * d + 2 * s * s * d
    assert cost.macs == macs
    assert cost.flops == 2 * macs + 3 * d * s + 3 * heads * s * s
    mha = helper.make_node(
        "MultiHeadAttention", ["q", "k", "v"], ["y"], domain="com.microsoft", num_heads=heads
    )
    model = _graph(
        [mha], {"q": (s, d), "k": (4, d), "v": (4, d)}, opsets=(("", 17), ("com.microsoft", 1))
    )
    cost = count_flops(model)
    assert cost.macs == s * 4 * (d + d)
    assert cost.unknown_ops == []


def test_einsum_contraction():
    model = _graph(
        [helper.make_node("Einsum", ["x", "w"], ["y"], equation="bij,jk->bik")],
        {"x": (5, 3)},
        [_init("w", np.zeros((3, 4), np.float32))],
    )
    assert count_flops(model).macs == 5 * 3 * 4


def test_shapes_onnx_cannot_fold_come_from_symbolic_inference():
    """Reshape to [-1, prod(shape[1:3])]: onnx's data propagation stops at ReduceProd."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Slice", ["s", "start", "end"], ["tail"]),
        helper.make_node("ReduceProd", ["tail"], ["n"], keepdims=1),
        helper.make_node("Concat", ["minus1", "n"], ["shape"], axis=0),
        helper.make_node("Reshape", ["x", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["y"]),
    ]
    inits = [
        _init("start", np.array([1], np.int64)),
        _init("end", np.array([3], np.int64)),
        _init("minus1", np.array([-1], np.int64)),
        _init("w", np.zeros((24, 5), np.float32)),
    ]
    cost = count_flops(_graph(nodes, {"x": (4, 6)}, inits))
    assert cost.unknown_ops == []
    assert cost.macs == 24 * 5


def test_torch_text_encoder_macs_by_hand(tmp_path):
    torch = pytest.importorskip("torch", reason="the test graph is exported from torch")
    from tests import graphs

    ids, mask = graphs.text_inputs(2)
    path = graphs.export_legacy(
        graphs.text_encoder(),
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        ["input_ids", "attention_mask"],
        tmp_path / "t.onnx",
    )
    t, h = graphs.TOKENS + 1, graphs.HIDDEN
    per_layer = t * h * 3 * h + t * h * h + 2 * t * h * 2 * h + 2 * t * t * h
    cost = count_flops(onnx.load(str(path)))
    assert cost.unknown_ops == []
    assert cost.macs == 2 * per_layer + h * graphs.TEXT_CLASSES


def test_partial_symbolic_inference_writes_no_file(tmp_path, monkeypatch):
    """An op no shape inference knows stays unknown; counting writes nothing to the cwd."""
    monkeypatch.chdir(tmp_path)
    nodes = [
        helper.make_node("Mystery", ["x"], ["m"], domain="custom"),
        helper.make_node("Relu", ["x"], ["y"]),
    ]
    model = _graph(nodes, {"x": (4,)}, opsets=(("", 17), ("custom", 1)))
    cost = count_flops(model)
    assert cost.unknown_ops == ["Mystery"]
    assert cost.flops == 4
    assert list(tmp_path.iterdir()) == []
