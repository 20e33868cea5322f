"""Which nodes of an ONNX graph a tensor depends on.

A control-flow node (If, Loop, Scan) reads, besides its own inputs, every outer-scope
name its bodies use without defining; those reads are dependencies too, or a walk back
from an output would miss the nodes that feed a branch. The exporters (where a cut
separates the graph) and the bundle (which nodes are a step's stage, which its head)
share this one walk.

Some inputs are read for their shape or type only (``Shape``, ``Size``, the second input
of ``CastLike``): the values that flow on from there do not depend on the values read.
`value_inputs` leaves those reads out, so an attention mask built from the *shape* of an
activation counts as independent of that activation's values.
"""

from __future__ import annotations

from collections.abc import Iterable

import onnx

__all__ = ["SHAPE_READS", "ancestors", "body_tensors", "node_inputs", "subgraphs", "value_inputs"]

#: Inputs (by position) that an op reads for their shape or element type only.
SHAPE_READS: dict[str, tuple[int, ...]] = {"Shape": (0,), "Size": (0,), "CastLike": (1,)}


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The bodies of a control-flow node (empty for any other node)."""
    out: list[onnx.GraphProto] = []
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            out.append(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            out.extend(a.graphs)
    return out


def _body_names(g: onnx.GraphProto) -> tuple[set[str], set[str]]:
    """(names defined in body `g` and its nested bodies, names it reads)."""
    defined = {i.name for i in g.input} | {t.name for t in g.initializer}
    used: set[str] = set()
    for n in g.node:
        used.update(x for x in n.input if x)
        defined.update(x for x in n.output if x)
        for sub in subgraphs(n):
            d, u = _body_names(sub)
            defined |= d
            used |= u
    return defined, used


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """A node's inputs including the outer-scope names its control-flow bodies read."""
    names = [x for x in node.input if x]
    for sub in subgraphs(node):
        defined, used = _body_names(sub)
        names.extend(sorted(used - defined))
    return names


def value_inputs(node: onnx.NodeProto) -> list[str]:
    """`node_inputs` less the inputs read only for their shape or type (`SHAPE_READS`)."""
    skip = SHAPE_READS.get(node.op_type, ())
    own = [x for k, x in enumerate(node.input) if x and k not in skip]
    return own + node_inputs(node)[sum(1 for x in node.input if x) :]


def body_tensors(model: onnx.ModelProto) -> dict[str, str]:
    """Tensor names defined only inside control-flow bodies -> the node that owns them."""
    out: dict[str, str] = {}
    for i, node in enumerate(model.graph.node):
        for sub in subgraphs(node):
            defined, _ = _body_names(sub)
            for name in defined:
                out.setdefault(name, f"{node.op_type} node {node.name or f'#{i}'!r}")
    return out


def ancestors(model: onnx.ModelProto, outputs: Iterable[str], stop: Iterable[str] = ()) -> set[int]:
    """Indices of the main-graph nodes that `outputs` depend on, through the outer-scope
    reads of control-flow bodies too, not walking past the names in `stop`."""
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output if o}
    stop_set = set(stop)
    seen: set[int] = set()
    stack = [o for o in outputs if o not in stop_set]
    while stack:
        i = producer.get(stack.pop())
        if i is None or i in seen:
            continue
        seen.add(i)
        stack.extend(n for n in node_inputs(model.graph.node[i]) if n not in stop_set)
    return seen
