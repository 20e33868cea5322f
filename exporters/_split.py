"""Which nodes each step of a split copies, and the step graphs themselves.

An *activation* is a tensor computed from the data: a float model input (an image) and
everything computed from it by value, or the output of a layer (Conv, MatMul, Gemm, a
normalisation, attention, an embedding lookup into a float table) applied to values that
come from the model inputs, and everything computed from that. Any other tensor is built
from model inputs, constants and shapes alone without a layer in between: an attention
mask, position ids, shape arithmetic, a relative-position table, a weight the exporter
stored once and reads through an ``Identity``.

Step i holds what its outputs need back to the cut before it (step 0: back to the model
inputs). When it needs a node an earlier step already holds:

- a non-activation is copied into step i and recomputed there, whatever its size; so is
  every initializer step i reads, shared with an earlier step or not;
- a ``Shape``/``Size``/``CastLike`` that reads an activation from before the cut for its
  shape or type is rewritten: static axes become constants and the batch axis is read off
  the activation that crosses the cut (or a model input);
- an activation is refused: it skips past the cut. The error names the tensor, the node
  that makes it and the node after the cut that reads it.

Step graphs are built here rather than with `onnx.utils.Extractor`, which walks back
through the shape reads above and runs shape inference over the whole source model per
step; here each step copies only its own nodes and initializers (which may point at
external data).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgeadapt.errors import InputError
from edgeadapt.graph import deps as graphdeps
from edgeadapt.graph.shapes import Batch, Dims, dims_of

#: Ops that apply learned weights: their output, from data, is an activation.
LAYER_OPS = frozenset(
    [
        "Conv",
        "ConvTranspose",
        "ConvInteger",
        "QLinearConv",
        "MatMul",
        "MatMulInteger",
        "QLinearMatMul",
        "Gemm",
        "Einsum",
        "BatchNormalization",
        "LayerNormalization",
        "InstanceNormalization",
        "GroupNormalization",
        "RMSNormalization",
        "SimplifiedLayerNormalization",
        "SkipLayerNormalization",
        "SkipSimplifiedLayerNormalization",
        "Attention",
        "MultiHeadAttention",
        "GroupQueryAttention",
        "LSTM",
        "GRU",
        "RNN",
        "FusedMatMul",
        "FusedConv",
        "FusedGemm",
        "EmbedLayerNormalization",
        "QAttention",
        "DynamicQuantizeMatMul",
    ]
)
#: Lookups into a table: an embedding when the table is a float constant.
GATHER_OPS = frozenset({"Gather", "GatherElements", "GatherND"})
_FLOATS = frozenset(
    {
        onnx.TensorProto.FLOAT,
        onnx.TensorProto.FLOAT16,
        onnx.TensorProto.DOUBLE,
        onnx.TensorProto.BFLOAT16,
    }
)
_PREFIX = "edgeadapt_shape/"


class SkipError(InputError):
    """A cut that an activation skips past."""


class Graph:
    """One source graph's maps, built once: producers, reads, element types and which
    tensors are activations (`data` are the model inputs that seed them)."""

    def __init__(self, model: onnx.ModelProto, data: Iterable[str]) -> None:
        g = model.graph
        self.model = model
        self.nodes = list(g.node)
        self.inputs = [i.name for i in g.input]
        self.initializers = {t.name: t for t in g.initializer}
        self.producer = {o: i for i, n in enumerate(self.nodes) for o in n.output if o}
        self.reads = [graphdeps.node_inputs(n) for n in self.nodes]
        self.value_reads = [graphdeps.value_inputs(n) for n in self.nodes]
        self.infos = {vi.name: vi for vi in [*g.value_info, *g.input, *g.output]}
        self.activations = self._activations(set(data))

    def elem_type(self, name: str) -> int:
        if name in self.initializers:
            return self.initializers[name].data_type
        vi = self.infos.get(name)
        return vi.type.tensor_type.elem_type if vi is not None else 0

    def _activations(self, data: set[str]) -> set[str]:
        """Tensor names that are activations (see the module docstring)."""
        real = set(self.inputs) - set(self.initializers)
        valued = set(real)  # depends on a model input's values
        act = {n for n in data if n in real}
        for i, node in enumerate(self.nodes):
            vr = self.value_reads[i]
            outs = [o for o in node.output if o]
            embedding = (
                node.op_type in GATHER_OPS
                and len(node.input) > 1
                and node.input[1] in valued
                and node.input[0] not in valued
                and self.elem_type(node.input[0]) in _FLOATS
            )
            layer = node.op_type in LAYER_OPS and any(x in valued for x in vr)
            if embedding or layer or any(x in act for x in vr):
                act.update(outs)
                valued.update(outs)
            elif any(x in valued for x in vr):
                valued.update(outs)
        return act

    def describe(self, k: int) -> str:
        node = self.nodes[k]
        return f"{node.op_type} node {node.name or node.output[0]!r}"


@dataclass
class StepPlan:
    """Step i's nodes (indices into the source graph, the ones it shares with earlier
    steps included) and its shape reads to rewrite: node index -> activation read."""

    index: int
    inputs: list[str]
    activation: str | None
    head: str | None
    nodes: set[int]
    shape_reads: dict[int, str] = field(default_factory=dict)


def _refuse(g: Graph, prev: str | None, name: str, consumer: int | None, i: int) -> SkipError:
    what = f"read after it by {g.describe(consumer)}" if consumer is not None else "an output"
    return SkipError(
        f"cut {prev!r} does not separate the graph: the activation {name!r} (made by "
        f"{g.describe(g.producer[name])}) is computed before the cut and {what} in step "
        f"{i}: a skip connection crosses the cut. Cut where one tensor crosses "
        "(`edgeadapt inspect MODEL --cuts` lists those)",
        source="cuts",
    )


def plan_step(
    g: Graph,
    i: int,
    wanted: Sequence[str],
    prev: str | None,
    taken: set[int],
    stops: Iterable[str] = (),
) -> tuple[set[int], dict[int, str]]:
    """(nodes, shape reads to rewrite) of step `i`, which computes `wanted` from `prev`
    (None for step 0) and the model inputs; `taken` holds the earlier steps' nodes. Raises
    `SkipError` for an activation that crosses the cut."""
    stop = {*g.inputs, *stops} | ({prev} if prev else set())
    nodes: set[int] = set()
    shape_reads: dict[int, str] = {}
    stack: list[tuple[str, int | None]] = [(n, None) for n in wanted]
    while stack:
        name, consumer = stack.pop()
        k = g.producer.get(name)
        if name in stop or k is None:
            continue
        if k in taken and name in g.activations:
            raise _refuse(g, prev, name, consumer, i)
        if k in nodes:
            continue
        nodes.add(k)
        node = g.nodes[k]
        shaped = {node.input[j] for j in graphdeps.SHAPE_READS.get(node.op_type, ())}
        for x in g.reads[k]:
            xk = g.producer.get(x)
            if x in shaped and x not in stop and x in g.activations and xk in taken:
                shape_reads[k] = x
                continue
            stack.append((x, k))
    return nodes, shape_reads


def check_order(g: Graph, prev: str, first: str, param: str) -> None:
    """The tensor `first` of a step must be computed from the previous cut `prev`."""
    if g.producer[prev] in graphdeps.ancestors(g.model, [first], stop=g.inputs):
        return
    before = graphdeps.ancestors(g.model, [prev], stop=g.inputs)
    order = "comes before" if g.producer[first] in before else "does not depend on"
    raise InputError(
        f"{first!r} {order} the previous cut {prev!r}: cuts must be given in "
        "order from input to output, each depending on the one before",
        source=param,
    )


def plan(
    g: Graph,
    cuts: Sequence[str],
    heads: Mapping[str, str],
    logits: str,
) -> list[StepPlan]:
    """Every step's plan, refusing cuts out of order and activations that skip a cut."""
    plans: list[StepPlan] = []
    taken: set[int] = set()
    prev: str | None = None
    for i, cut in enumerate([*cuts, None]):
        wanted = [n for n in (cut, heads.get(cut) if cut else logits) if n]
        param = "cuts" if cut else "logits"
        if prev is not None:
            check_order(g, prev, wanted[0], param)
        nodes, shape_reads = plan_step(g, i, wanted, prev, taken)
        if not nodes:
            raise InputError(
                f"step {i} would be an empty graph ({wanted} is {prev!r})", source=param
            )
        reads = {x for k in nodes for x in g.reads[k] if shape_reads.get(k) != x}
        inputs = [prev] if prev is not None else []
        inputs += [
            n for n in g.inputs if n in reads and n not in inputs and n not in g.initializers
        ]
        plans.append(StepPlan(i, inputs, cut, heads.get(cut) if cut else None, nodes, shape_reads))
        taken |= nodes
        prev = cut
    return plans


# --------------------------------------------------------------------------- building


def _const(name: str, values: Sequence[int]) -> onnx.NodeProto:
    arr = np.asarray(list(values), dtype=np.int64)
    return helper.make_node(
        "Constant", [], [name], value=numpy_helper.from_array(arr, name), name=name
    )


def _shape_vector(dims: Dims, out: str, batch: tuple[str, int], tag: str) -> list[onnx.NodeProto]:
    """Nodes computing the int64 vector `dims` into `out`: runs of static sizes are
    constants, a ``k * batch`` axis is axis `batch[1]` of the tensor `batch[0]` times k."""
    nodes: list[onnx.NodeProto] = []
    pieces: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            name = f"{tag}/c{len(pieces)}"
            nodes.append(_const(name, run))
            pieces.append(name)
            run.clear()

    for d in dims:
        if isinstance(d, int):
            run.append(d)
            continue
        flush()
        src, axis = batch
        base = f"{tag}/b{len(pieces)}"
        nodes += [
            helper.make_node("Shape", [src], [f"{base}/shape"], name=f"{base}/shape"),
            _const(f"{base}/axis", [axis]),
            helper.make_node(
                "Gather", [f"{base}/shape", f"{base}/axis"], [f"{base}/n"], name=f"{base}/n"
            ),
        ]
        piece = f"{base}/n"
        if d.factor != 1:
            nodes += [
                _const(f"{base}/k", [d.factor]),
                helper.make_node("Mul", [piece, f"{base}/k"], [f"{base}/nk"], name=f"{base}/nk"),
            ]
            piece = f"{base}/nk"
        pieces.append(piece)
    flush()
    if not pieces:
        nodes.append(_const(out, []))
    elif len(pieces) == 1:
        nodes.append(helper.make_node("Identity", pieces, [out], name=f"{tag}/out"))
    else:
        nodes.append(helper.make_node("Concat", pieces, [out], axis=0, name=f"{tag}/out"))
    return nodes


def _attr(node: onnx.NodeProto, name: str, default: int | None) -> int | None:
    return next((int(a.i) for a in node.attribute if a.name == name), default)


def rewrite_shape_read(
    node: onnx.NodeProto, dims: Dims, elem_type: int, batch: tuple[str, int] | None, tag: str
) -> list[onnx.NodeProto]:
    """Nodes that compute what `node` (Shape, Size or CastLike of an activation of shape
    `dims` and element type `elem_type`) computes, without reading that activation."""
    if node.op_type == "CastLike":
        return [helper.make_node("Cast", [node.input[0]], [node.output[0]], to=elem_type)]
    src = batch or ("", 0)  # only read for a batch axis, which needs a real `batch`
    if node.op_type == "Shape":
        start, end = _attr(node, "start", 0), _attr(node, "end", None)
        return _shape_vector(dims[start:end], node.output[0], src, tag)
    vector = f"{tag}/dims"
    return [
        *_shape_vector(dims, vector, src, tag),
        helper.make_node("ReduceProd", [vector], [node.output[0]], keepdims=0, name=f"{tag}/n"),
    ]


def value_info(name: str, elem_type: int, dims: Dims) -> onnx.ValueInfoProto:
    shape: list[int | str] = [d if isinstance(d, int) else str(d) for d in dims]
    return helper.make_tensor_value_info(name, elem_type, shape)


def _batch_source(
    g: Graph, step_inputs: Sequence[str], dims: Mapping[str, Dims]
) -> tuple[str, int] | None:
    """A step input and its axis that is the batch axis itself."""
    for name in step_inputs:
        known = dims.get(name) or dims_of(g.infos.get(name)) or ()
        for axis, d in enumerate(known):
            if d == Batch(1):
                return name, axis
    return None


def build_step(
    g: Graph,
    step: StepPlan,
    outputs: Sequence[str],
    dims: Mapping[str, Dims],
) -> onnx.ModelProto:
    """Step `step` as a model: its nodes in source order (shape reads rewritten), the
    initializers they read, its inputs and `outputs` typed from `dims`."""
    batch = _batch_source(g, step.inputs, dims)
    nodes: list[onnx.NodeProto] = []
    for k in sorted(step.nodes):
        node = g.nodes[k]
        if k in step.shape_reads:
            read = step.shape_reads[k]
            new = rewrite_shape_read(node, dims[read], g.elem_type(read), batch, f"{_PREFIX}{k}")
            nodes.extend(new)
        else:
            nodes.append(node)
    used = {x for n in nodes for x in graphdeps.node_inputs(n)}
    inits = [g.initializers[x] for x in sorted(used) if x in g.initializers]
    graph = helper.make_graph(
        nodes,
        f"{g.model.graph.name or 'model'}_step{step.index}",
        [_input_info(g, n, dims) for n in step.inputs],
        [value_info(n, g.elem_type(n), (Batch(1), *dims[n][1:])) for n in outputs],
        initializer=inits,
    )
    model = helper.make_model(
        graph, opset_imports=list(g.model.opset_import), ir_version=g.model.ir_version
    )
    used_fns = {(n.domain, n.op_type) for n in nodes}
    model.functions.extend(f for f in g.model.functions if (f.domain, f.name) in used_fns)
    return model


def _input_info(g: Graph, name: str, dims: Mapping[str, Dims]) -> onnx.ValueInfoProto:
    if name in dims:
        return value_info(name, g.elem_type(name), dims[name])
    vi = onnx.ValueInfoProto()
    vi.CopyFrom(g.infos[name])
    return vi


def tensor_bytes(t: onnx.TensorProto) -> int:
    """Bytes of an initializer's data (from its dims and type, stored inline or not)."""
    itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return int(np.prod(t.dims, dtype=np.int64)) * itemsize


def duplicated_bytes(steps: Sequence[onnx.ModelProto]) -> tuple[int, int]:
    """(bytes of every step's initializers together, bytes of the copies beyond the
    first of each initializer that several steps read)."""
    total = dup = 0
    seen: set[str] = set()
    for step in steps:
        for t in step.graph.initializer:
            size = tensor_bytes(t)
            total += size
            if t.name in seen:
                dup += size
            seen.add(t.name)
    return total, dup
