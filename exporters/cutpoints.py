"""The valid cut points of an ONNX classifier: where exactly one activation crosses.

`find_cuts` lists every tensor that `export_onnx` accepts as a single cut: an activation
(`exporters._split`) with a static per-sample shape, such that what the rest of the graph
needs from before it is that tensor plus what can be computed again (masks, position
ids, shapes). Each comes with the share of the model's FLOPs computed up to it and the
module the exporter recorded for the node that makes it, so cuts can be chosen by stage
and cost instead of by guessing tensor names.

Candidates come from one pass over the graph in its (topological) order, keeping the set
of activations still to be read: where that set is a single tensor, the tensor is a
candidate, which `_split.plan_step` then confirms as the exporter would.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeadapt.exporters import _graph, _split
from edgeadapt.graph.flops import count_flops
from edgeadapt.graph.modulepaths import module_path
from edgeadapt.graph.shapes import Batch, Dims

__all__ = ["CutPoint", "find_cuts"]


@dataclass(frozen=True)
class CutPoint:
    """One valid cut: the tensor, its per-sample shape, the share of the model's FLOPs
    computed up to it, the op and module that make it (`module` None when the exporter
    recorded none)."""

    tensor: str
    shape: tuple[int, ...]
    flops_share: float
    op_type: str
    module: str | None

    def to_json(self) -> dict[str, object]:
        return {
            "tensor": self.tensor,
            "shape": list(self.shape),
            "flops_share": self.flops_share,
            "op_type": self.op_type,
            "module": self.module,
        }


def _last_reads(g: _split.Graph, outputs: set[str]) -> dict[str, int]:
    """Activation -> index of the last node that reads its values (graph outputs: past
    the last node)."""
    last: dict[str, int] = {}
    for i, reads in enumerate(g.value_reads):
        for x in reads:
            if x in g.activations:
                last[x] = i
    for name in outputs:
        last[name] = len(g.nodes)
    return last


def _candidates(g: _split.Graph, outputs: set[str]) -> list[str]:
    """Activations that are the only one still to be read at some point of the order."""
    last = _last_reads(g, outputs)
    live = {x for x in g.inputs if x in g.activations and x in last}
    found: list[str] = []
    for i, node in enumerate(g.nodes):
        live.update(o for o in node.output if o in g.activations and last.get(o, -1) > i)
        live.difference_update([x for x in g.value_reads[i] if last.get(x) == i])
        if len(live) == 1:
            (only,) = live
            if only not in found and only not in outputs and only in g.producer:
                found.append(only)
    return found


def _static_tail(d: Dims | None) -> tuple[int, ...] | None:
    if not d or d[0] != Batch(1) or len(d) < 2:
        return None
    tail = d[1:]
    return tuple(int(x) for x in tail) if all(isinstance(x, int) for x in tail) else None


def find_cuts(model_path: str | os.PathLike[str], *, mask: str | None = None) -> list[CutPoint]:
    """Every valid single cut of the ONNX model at `model_path`, in graph order.

    `mask` names the input that masks tokens (default: the one integer ``*mask*`` input);
    it does not seed activations even when it is a float input."""
    source = Path(model_path)
    with tempfile.TemporaryDirectory(prefix="edgeadapt-cuts-") as tmp:
        work = Path(tmp)
        model = _graph.with_dynamic_batch(_graph.load_external(source, work), source, single=False)
        specs = _graph.input_specs(model, source)
        masks = {mask} if mask else {s.name for s in specs if "mask" in s.name.lower()}
        data = [s.name for s in specs if np.dtype(s.dtype).kind == "f" and s.name not in masks]
        g = _split.Graph(model, data)
        outputs = {o.name for o in model.graph.output}
        candidates = _candidates(g, outputs)
        dims = _graph.resolve_dims(model, candidates, specs, work)
        valid: list[str] = []
        for name in candidates:
            if _static_tail(dims.get(name)) is None:
                continue
            before, _ = _split.plan_step(g, 0, [name], None, set())
            try:
                _, reads = _split.plan_step(g, 1, sorted(outputs), name, before)
            except _split.SkipError:
                continue
            missing = [r for r in reads.values() if r not in dims]
            if missing:
                dims.update(_graph.resolve_dims(model, missing, specs, work))
            if all(r in dims for r in reads.values()):
                valid.append(name)
        cost = count_flops(model)
    total = max(cost.flops, 1)
    out = []
    for name in valid:
        before, _ = _split.plan_step(g, 0, [name], None, set())
        k = g.producer[name]
        shape = _static_tail(dims[name])
        assert shape is not None
        out.append(
            CutPoint(
                name,
                shape,
                cost.subset(before)[0] / total,
                g.nodes[k].op_type,
                module_path(g.nodes[k]),
            )
        )
    return out
