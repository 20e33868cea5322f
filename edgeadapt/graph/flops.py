"""Analytic FLOPs/MACs of an ONNX graph, per sample, from its inferred shapes.

One multiply-accumulate is one MAC and two FLOPs. Counts are per sample: every
symbolic dimension (the batch axis) is taken as 1 before shape inference. Shapes come
from onnx's shape inference with data propagation; where it leaves a tensor without a
static shape (shape arithmetic it cannot fold, as in many transformer exports), ONNX
Runtime's symbolic shape inference fills it in. Nodes whose operator is not known here,
or whose shapes stay unknown, count as zero and are listed in `GraphCost.unknown_ops`,
so a report never hides that part of the graph was not counted. Ops that only move or
reinterpret data (Reshape, Transpose, Concat, ...) are known and cost zero.

Per-op conventions (output elements `E`, input elements `I`):
Conv `E * (C_in / groups) * prod(kernel)` MACs (+ `E` bias adds; dilation and strides
enter through the inferred output shape); ConvTranspose `I * (C_out / groups) *
prod(kernel)` MACs; Gemm `M*N*K` MACs (+ `M*N` for C); MatMul (batched, broadcast) `E *
K` MACs; Einsum the product of every index's size (two-operand contractions); attention
as MatMul QK^T + Softmax + MatMul V counts through those nodes; the fused
``com.microsoft`` Attention (`S*D_in*3D` projection MACs + `2*S^2*D`) and
MultiHeadAttention / ai.onnx Attention (`S*L*(D_qk + D_v)` MACs) count the same
products and a `3 * heads * S * L` softmax; MaxPool and AveragePool `E * prod(kernel)`
FLOPs (each kernel axis at most the input's); global pooling and reductions `I` FLOPs; BatchNormalization `2E`;
Layer/Instance/GroupNormalization `5E`, RMS/SimplifiedLayerNormalization `4E`,
SkipLayerNormalization `7E`; Softmax `3E`; elementwise ops (Add, Mul, Div, Sub, Pow,
Sqrt, Tanh, Erf, Gelu, ...) `E`, FastGelu/BiasGelu `2E`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import onnx
from onnx import shape_inference

from edgeadapt.graph.shapes import symbolic_model


def _ops(names: str) -> frozenset[str]:
    return frozenset(names.split())


_ELEMENTWISE = _ops(
    """Abs Acos Acosh Add And Asin Asinh Atan Atanh BitShift Ceil Celu Clip Cos Cosh Div Elu
    Equal Erf Exp Floor Gelu Greater GreaterOrEqual HardSigmoid HardSwish LeakyRelu Less
    LessOrEqual Log Max Mean Min Mish Mod Mul Neg Not Or PRelu Pow Reciprocal Relu Round
    Selu Sigmoid Sign Sin Sinh Softplus Softsign Sqrt Sub Sum Tan Tanh ThresholdedRelu
    Where Xor IsNaN IsInf QuantizeLinear DequantizeLinear QuickGelu Swish CumSum BitwiseAnd
    BitwiseOr BitwiseXor BitwiseNot Shrink"""
)
_REDUCE = _ops(
    """GlobalAveragePool GlobalMaxPool GlobalLpPool ReduceMean ReduceSum ReduceMax ReduceMin
    ReduceProd ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceSumSquare ArgMax
    ArgMin"""
)
_FREE = _ops(
    """Reshape Flatten Transpose Squeeze Unsqueeze Concat Split Slice Gather GatherElements
    GatherND Identity Shape Size Constant ConstantOfShape Cast CastLike Dropout Pad Expand
    Tile DepthToSpace SpaceToDepth Range NonZero TopK ScatterND ScatterElements Trilu
    OneHot EyeLike Optional OptionalGetElement OptionalHasElement"""
)
_NORM5 = frozenset({"LayerNormalization", "InstanceNormalization", "GroupNormalization"})
_NORM4 = frozenset({"RMSNormalization", "SimplifiedLayerNormalization"})
_NORM7 = frozenset({"SkipLayerNormalization", "SkipSimplifiedLayerNormalization"})
_BIAS_ACT = frozenset({"FastGelu", "BiasGelu", "BiasAdd"})
_SOFTMAX = frozenset({"Softmax", "LogSoftmax", "Hardmax"})


@dataclass(frozen=True)
class NodeCost:
    """The cost of one node of the main graph (index into `graph.node`)."""

    index: int
    op_type: str
    flops: int
    macs: int
    known: bool


@dataclass(frozen=True)
class GraphCost:
    """Per-node costs of a graph; `flops`/`macs` are totals, `unknown_ops` the op types
    counted as zero because this counter does not know them (or lacked their shapes)."""

    nodes: tuple[NodeCost, ...]

    @property
    def flops(self) -> int:
        return sum(n.flops for n in self.nodes)

    @property
    def macs(self) -> int:
        return sum(n.macs for n in self.nodes)

    @property
    def unknown_ops(self) -> list[str]:
        return sorted({n.op_type for n in self.nodes if not n.known})

    def subset(self, indices: Iterable[int]) -> tuple[int, int]:
        """(flops, macs) of the nodes with these indices."""
        chosen = set(indices)
        picked = [n for n in self.nodes if n.index in chosen]
        return sum(n.flops for n in picked), sum(n.macs for n in picked)


def _per_sample(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy whose symbolic input dimensions are fixed to 1, with shapes inferred."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    initializers = {t.name for t in fixed.graph.initializer}
    for vi in fixed.graph.input:
        if vi.name in initializers or not vi.type.HasField("tensor_type"):
            continue
        for dim in vi.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.Clear()
                dim.dim_value = 1
    del fixed.graph.value_info[:]
    for out in fixed.graph.output:  # drop stale output shapes that name the old batch
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    return shape_inference.infer_shapes(fixed, data_prop=True)


def _shapes(model: onnx.ModelProto, symbolic_as_one: bool = False) -> dict[str, tuple[int, ...]]:
    """Static shapes of every tensor that has one (initializers included);
    `symbolic_as_one`: a symbolic dimension counts as 1 (the per-sample batch axis)."""
    out: dict[str, tuple[int, ...]] = {}
    g = model.graph
    for vi in [*g.input, *g.value_info, *g.output]:
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type") and tt.HasField("shape"):
            dims = tt.shape.dim
            if all(d.HasField("dim_value") for d in dims):
                out[vi.name] = tuple(int(d.dim_value) for d in dims)
            elif symbolic_as_one and all(d.HasField("dim_value") or d.dim_param for d in dims):
                out[vi.name] = tuple(
                    int(d.dim_value) if d.HasField("dim_value") else 1 for d in dims
                )
    for t in g.initializer:
        out[t.name] = tuple(int(d) for d in t.dims)
    return out


def _symbolic_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Shapes from ONNX Runtime's symbolic shape inference ({} when it cannot run)."""
    inferred = symbolic_model(model)
    return {} if inferred is None else _shapes(inferred, symbolic_as_one=True)


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


#: Ops whose cost is a fixed number of flops per output element (no MACs), that number.
_PER_ELEMENT: dict[str, int] = {
    **dict.fromkeys(_BIAS_ACT, 2),
    **dict.fromkeys(_NORM7, 7),
    **dict.fromkeys(_NORM4, 4),
    **dict.fromkeys(_NORM5, 5),
    "BatchNormalization": 2,
    **dict.fromkeys(_SOFTMAX, 3),
    **dict.fromkeys(_ELEMENTWISE, 1),
}  # (the sets are disjoint)


def _node_cost(node: onnx.NodeProto, shapes: dict[str, tuple[int, ...]]) -> tuple[int, int] | None:
    """(flops, macs) of one node, or None when the op or a needed shape is unknown."""
    op = node.op_type
    if op in _FREE:
        return 0, 0
    ins = [shapes.get(n) if n else None for n in node.input]
    outs = [shapes.get(n) if n else None for n in node.output]
    out = outs[0] if outs else None
    first = ins[0] if ins else None
    if out is None:
        return None
    e = math.prod(out)
    per_element = _PER_ELEMENT.get(op)
    if per_element is not None:
        return per_element * e, 0
    if op == "Einsum":
        return _einsum(node, ins)
    if op in ("Attention", "MultiHeadAttention"):
        return _attention(node, ins, out)
    if op in _REDUCE:
        return None if first is None else (math.prod(first), 0)
    if op in ("MaxPool", "AveragePool", "LpPool"):
        kernel = _attr(node, "kernel_shape", None)
        if kernel is None or first is None or len(first) != 2 + len(kernel):
            return None
        # a window wider than the input (HF EfficientNet pools a 2x2 map with a
        # 1280-wide kernel, ceil_mode) reads only the input
        return e * math.prod(min(int(k), d) for k, d in zip(kernel, first[2:], strict=True)), 0
    return _dense_cost(node, ins, e)


def _dense_cost(
    node: onnx.NodeProto, ins: list[tuple[int, ...] | None], e: int
) -> tuple[int, int] | None:
    """(flops, macs) of a convolution or a matrix product with `e` output elements, or
    None when the op or a needed shape is unknown."""
    op = node.op_type
    first = ins[0] if ins else None
    if op == "Conv":
        w = ins[1] if len(ins) > 1 else None
        if w is None:
            return None
        macs = e * w[1] * math.prod(w[2:])  # w: [C_out, C_in/groups, *kernel]
        bias = e if len(node.input) > 2 and node.input[2] else 0
        return 2 * macs + bias, macs
    if op == "ConvTranspose":
        w = ins[1] if len(ins) > 1 else None
        if w is None or first is None:
            return None
        macs = math.prod(first) * w[1] * math.prod(w[2:])  # w: [C_in, C_out/groups, *kernel]
        bias = e if len(node.input) > 2 and node.input[2] else 0
        return 2 * macs + bias, macs
    if op == "Gemm":
        a = first
        if a is None or len(a) != 2:
            return None
        k = a[0] if _attr(node, "transA", 0) else a[1]
        macs = e * k
        bias = e if len(node.input) > 2 and node.input[2] else 0
        return 2 * macs + bias, macs
    if op in ("MatMul", "MatMulInteger", "FusedMatMul"):
        second = ins[1] if len(ins) > 1 else None
        if first is not None:
            k = first[-1]
        elif second is not None and len(second) >= 2:
            k = second[-2]
        elif second is not None:
            k = second[0]
        else:
            return None
        macs = e * k
        return 2 * macs, macs
    return None


def _einsum(node: onnx.NodeProto, ins: list[tuple[int, ...] | None]) -> tuple[int, int] | None:
    """A contraction's MACs: the product of the sizes of every index it names."""
    raw = _attr(node, "equation", b"")
    equation = raw.decode() if isinstance(raw, bytes) else str(raw)
    lhs = equation.replace(" ", "").split("->")[0]
    terms = lhs.split(",")
    if "." in lhs or len(terms) != len(ins) or any(i is None for i in ins):
        return None
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, ins, strict=True):
        assert shape is not None
        if len(term) != len(shape):
            return None
        for letter, dim in zip(term, shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), dim)
    macs = math.prod(sizes.values())
    return (2 * macs, macs) if len(terms) > 1 else (macs, 0)


def _attention(
    node: onnx.NodeProto, ins: list[tuple[int, ...] | None], out: tuple[int, ...]
) -> tuple[int, int] | None:
    """Fused attention: QK^T and AV products plus a softmax over every score."""
    q = ins[0] if ins else None
    if q is None:
        return None
    if node.domain == "com.microsoft" and node.op_type == "Attention":
        w = ins[1] if len(ins) > 1 else None  # [D_in, 3 * D] packed QKV weights
        if w is None or len(q) != 3:
            return None
        s, d = q[1], w[1] // 3
        heads = int(_attr(node, "num_heads", 1))
        macs = s * q[2] * w[1] + 2 * s * s * d
        return 2 * macs + w[1] * s + 3 * heads * s * s, macs
    k = ins[1] if len(ins) > 1 else None
    v = ins[2] if len(ins) > 2 else None
    if k is None or v is None or len(q) != len(k):
        return None
    if len(q) == 4:  # [B, heads, S, E] (ai.onnx Attention)
        heads, s, e = q[1], q[2], q[3]
        length, ev = k[2], v[3]
        macs = heads * s * length * (e + ev)
    elif len(q) == 3:  # [B, S, heads * E]
        heads = int(_attr(node, "num_heads", _attr(node, "q_num_heads", 1)))
        s, length = q[1], k[1]
        macs = s * length * (q[2] + v[2])
    else:
        return None
    return 2 * macs + 3 * heads * s * length, macs


def count_flops(model: onnx.ModelProto) -> GraphCost:
    """Per-sample FLOPs and MACs of every node of `model`'s main graph.

    Nodes inside control-flow bodies (If/Loop/Scan) are not expanded: the control-flow
    node itself is listed as unknown.
    """
    inferred = _per_sample(model)
    shapes = _shapes(inferred)
    produced = [o for n in inferred.graph.node for o in n.output if o]
    if any(o not in shapes for o in produced):
        shapes = {**_symbolic_shapes(inferred), **shapes}
    nodes = []
    for i, node in enumerate(inferred.graph.node):
        cost = _node_cost(node, shapes)
        known = cost is not None
        flops, macs = cost if cost is not None else (0, 0)
        nodes.append(NodeCost(i, node.op_type, int(flops), int(macs), known))
    return GraphCost(tuple(nodes))


def count_params(model: onnx.ModelProto) -> int:
    """Number of parameter elements: the initializers of the main graph."""
    return sum(math.prod(t.dims) for t in model.graph.initializer)
