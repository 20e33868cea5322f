"""The batch a memory budget allows: bytes per sample estimated from the ONNX graphs.

Commands that run a model over many samples (`evaluate`, `run`, export calibration,
`export branches` scoring) take their batch from a budget in bytes for the batch's
inputs and activations (the weights come on top), unless a batch is given. The rule:

    bytes per sample = RUNTIME_FACTOR x the sum over the graphs of each one's largest
                       set of per-sample tensors alive at once (graph order; a tensor
                       lives from the node that makes it to the last node that reads it)
                     + every graph's inputs and outputs (what the caller holds
                       between calls)

A bundle's steps sum because each is its own runtime session, and ONNX Runtime keeps a
session's arena at its peak after the call returns.

    batch = budget // bytes per sample, between 1 and MAX_AUTO_BATCH

Shapes come from onnx shape inference; a tensor it leaves without a static size after
the batch axis counts as large as the largest of its node's inputs. `RUNTIME_FACTOR`
covers what ONNX Runtime holds beyond the live tensors (its arena, memory patterns,
convolution workspaces): its measured peak RSS per sample was 0.9 to 4.3 times the
live set on nine torchvision graphs at 224 px, vit_b_16 the highest (`bench/memory.py`
measures it); OpenVINO's was below the live set.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
from onnx import helper, shape_inference

from edgeadapt.data.budget import (
    DEFAULT_MEMORY,
    MAX_AUTO_BATCH,
    MAX_BATCH,
    format_bytes,
    parse_bytes,
)
from edgeadapt.errors import InputError

if TYPE_CHECKING:
    from edgeadapt.formats.bundle import Bundle

__all__ = [
    "RUNTIME_FACTOR",
    "BatchChoice",
    "bundle_sample_bytes",
    "choose_batch",
    "live_bytes",
    "run_notes",
    "sample_bytes",
]

#: The runtime's peak memory per sample over the largest live set (see the docstring).
RUNTIME_FACTOR = 5
#: Initializers up to this many elements are kept for shape inference (shape operands);
#: larger ones (weights) are replaced by their type, which is all inference needs.
_SHAPE_OPERAND = 64


def _for_inference(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model`'s graph with its weights replaced by their types (inputs), which
    is all shape inference needs and keeps it fast on large models."""
    out = onnx.ModelProto()
    out.ir_version = model.ir_version
    out.opset_import.extend(model.opset_import)
    out.functions.extend(model.functions)
    g = out.graph
    g.node.extend(model.graph.node)
    g.input.extend(model.graph.input)
    g.output.extend(model.graph.output)
    listed = {i.name for i in model.graph.input}
    for t in model.graph.initializer:
        if math.prod(t.dims) <= _SHAPE_OPERAND and t.data_location != onnx.TensorProto.EXTERNAL:
            g.initializer.append(t)
        elif t.name not in listed:
            g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return out


def _sizes(model: onnx.ModelProto) -> dict[str, int | None]:
    """Per-sample bytes of every tensor with a batch axis (0 for one without; None when
    inference leaves a dimension after the batch unknown)."""
    try:
        inferred = shape_inference.infer_shapes(_for_inference(model))
    except Exception:  # onnx raises its own error types; the sizes are then all unknown
        inferred = model
    sizes: dict[str, int | None] = {}
    g = inferred.graph
    for v in (*g.input, *g.value_info, *g.output):
        sizes[v.name] = _value_bytes(v)
    for t in model.graph.initializer:
        sizes[t.name] = 0
    return sizes


def _value_bytes(v: onnx.ValueInfoProto) -> int | None:
    if not v.type.HasField("tensor_type"):
        return None
    tt = v.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = tt.shape.dim
    if not dims or dims[0].HasField("dim_value"):  # no batch axis: the same at any batch
        return 0 if all(d.HasField("dim_value") for d in dims) else None
    if any(not d.HasField("dim_value") for d in dims[1:]):
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tt.elem_type)).itemsize
    except (KeyError, TypeError, ValueError):
        return None
    return math.prod(d.dim_value for d in dims[1:]) * itemsize


def live_bytes(model: onnx.ModelProto, keep: Iterable[str] = ()) -> tuple[int, int]:
    """(the largest per-sample bytes alive at once, the graph's inputs and outputs per
    sample) over `model`'s nodes in graph order; see the module docstring. The tensors
    `keep` count as outputs too (a caller that fetches them holds them to the end)."""
    sizes = _sizes(model)
    g = model.graph
    weights = {t.name for t in g.initializer}
    last: dict[str, int] = {}
    for k, node in enumerate(g.node):
        for name in node.input:
            last[name] = k
    outputs = {o.name for o in g.output} | set(keep)
    known: dict[str, int] = {}
    live: dict[str, int] = {}
    for i in g.input:
        if i.name not in weights:
            known[i.name] = live[i.name] = sizes.get(i.name) or 0
    ends = sum(live.values())
    peak = ends
    for k, node in enumerate(g.node):
        fallback = max((known.get(x, 0) for x in node.input if x), default=0)
        for name in node.output:
            if name:
                size = sizes.get(name)
                known[name] = live[name] = fallback if size is None else size
        peak = max(peak, sum(live.values()))
        for name in {*node.input, *node.output}:
            if name in live and last.get(name, -1) <= k and name not in outputs:
                del live[name]
    ends += sum(known.get(o, 0) for o in outputs)
    return peak, ends


def sample_bytes(models: Iterable[onnx.ModelProto], keep: Iterable[str] = ()) -> int:
    """Estimated bytes per sample to run `models`, each in its own session, one after
    another on a batch (`RUNTIME_FACTOR` x the sum of their largest live sets, plus
    every model's inputs and outputs, `keep` counted among them); at least 1."""
    keep = tuple(keep)
    peak, ends = 0, 0
    for model in models:
        p, e = live_bytes(model, keep)
        peak, ends = peak + p, ends + e
    return max(1, RUNTIME_FACTOR * peak + ends)


def bundle_sample_bytes(bundle: Bundle) -> int:
    """`sample_bytes` of a bundle's steps (read without their external weights)."""
    models = []
    for step in bundle.steps:
        try:
            models.append(onnx.load(str(step.path), load_external_data=False))
        except Exception as e:  # protobuf DecodeError, unreadable file
            raise InputError(f"not a readable ONNX model ({e})", source=step.path) from None
    return sample_bytes(models)


@dataclass(frozen=True)
class BatchChoice:
    """The batch a command runs at, and why: `given` (the caller's), or chosen as the
    `memory` budget over the estimated `bytes_per_sample`."""

    batch: int
    given: bool
    bytes_per_sample: int | None = None
    memory: int | None = None

    @property
    def note(self) -> str:
        """One line saying what was chosen (for ``note:`` on stderr)."""
        if self.given or self.bytes_per_sample is None or self.memory is None:
            return f"batch {self.batch} (given)"
        per = format_bytes(self.bytes_per_sample)
        budget = format_bytes(self.memory)
        if self.batch * self.bytes_per_sample > self.memory:
            return (
                f"batch 1: one sample is estimated at {per}, over the memory budget of "
                f"{budget} (--memory)"
            )
        cap = " (the most chosen)" if self.batch == MAX_AUTO_BATCH else ""
        return f"batch {self.batch}{cap}: about {per} a sample within a {budget} memory budget"

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> BatchChoice:
        """The choice `to_json` wrote (as recorded in a bundle's manifest)."""
        return cls(doc["batch"], doc["given"], doc.get("bytes_per_sample"), doc.get("memory"))

    def to_json(self) -> dict[str, Any]:
        return {
            "batch": self.batch,
            "given": self.given,
            "bytes_per_sample": self.bytes_per_sample,
            "memory": self.memory,
        }


def run_notes(
    runtime_note: str | None, batch: BatchChoice | None, casts: Sequence[str]
) -> list[str]:
    """The lines a command shows beside its result (``note:`` on stderr): how the
    runtime differs from the recorded one, the batch and why, the arrays cast."""
    notes = [] if runtime_note is None else [runtime_note]
    if batch is not None:
        notes.append(batch.note)
    return notes + list(casts)


def choose_batch(
    estimate: Callable[[], int],
    *,
    batch: int | None = None,
    memory: int | str | None = None,
    most: int = MAX_AUTO_BATCH,
    source: str = "batch",
) -> BatchChoice:
    """`batch` when given (checked: an integer, 1 to `MAX_BATCH`); else the largest batch
    whose estimated bytes fit `memory` (default `DEFAULT_MEMORY`), 1 to `most`.
    `estimate` is called for the bytes per sample only when the batch is not given.
    Errors name `source` (the batch's parameter) or ``memory``."""
    if batch is not None:
        if isinstance(batch, bool) or not isinstance(batch, int | np.integer):
            raise InputError(f"must be an integer, got {batch!r}", source=source)
        if not 1 <= batch <= MAX_BATCH:
            raise InputError(f"must lie in 1..{MAX_BATCH}, got {batch}", source=source)
        return BatchChoice(int(batch), True)
    budget = DEFAULT_MEMORY if memory is None else parse_bytes(memory)
    per = int(estimate())
    return BatchChoice(max(1, min(most, budget // per)), False, per, budget)
