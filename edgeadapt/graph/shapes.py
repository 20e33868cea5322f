"""Tensor shapes where onnx's shape inference gives up.

onnx's inference (with data propagation) loses dimensions behind shape arithmetic it
cannot fold: a Swin's H and W after patch merging, a transformer's reshapes to
``[batch * heads, ...]``. ONNX Runtime's symbolic shape inference follows such arithmetic
symbolically (``2*batch``); `symbolic_model` runs it, keeping a partial result instead
of failing. `Dims` is the shape of one tensor with its batch-proportional axes marked,
read from either kind of result (`dims_of`) or from two probe runs at batch 1 and 2
(`probed_dims`).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

__all__ = ["BATCH", "Batch", "Dims", "dims_of", "probed_dims", "symbolic_model"]

#: The dynamic batch axis' name in every model the exporters prepare.
BATCH = "batch"
#: The module name ONNX Runtime's symbolic shape inference is loaded under (and logs as).
_SYMBOLIC = "edgeadapt_ort_symbolic_shape_infer"
_SCALED = re.compile(r"^\s*(?:(\d+)\s*\*\s*)?batch(?:\s*\*\s*(\d+))?\s*$")


@dataclass(frozen=True)
class Batch:
    """An axis of `factor` times the batch size (1: the batch axis itself)."""

    factor: int = 1

    def __str__(self) -> str:
        return BATCH if self.factor == 1 else f"{self.factor}*{BATCH}"


#: A tensor's shape: static sizes and batch-proportional axes.
Dims = tuple[int | Batch, ...]


def _dim(d: onnx.TensorShapeProto.Dimension) -> int | Batch | None:
    if d.HasField("dim_value"):
        return int(d.dim_value)
    m = _SCALED.match(d.dim_param) if d.dim_param else None
    if m is None:
        return None
    return Batch(int(m.group(1) or m.group(2) or 1))


def dims_of(vi: onnx.ValueInfoProto | None) -> Dims | None:
    """The shape in `vi` if every axis is static or a multiple of ``batch``, else None."""
    if vi is None or not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    if not tt.HasField("shape"):
        return None
    dims = [_dim(d) for d in tt.shape.dim]
    if any(d is None for d in dims):
        return None
    return tuple(d for d in dims if d is not None)


def probed_dims(at_one: Sequence[int], at_two: Sequence[int]) -> Dims | None:
    """The shape of a tensor measured at batch 1 (`at_one`) and batch 2 (`at_two`): an
    axis that keeps its size is static, one that doubles is ``size * batch``."""
    if len(at_one) != len(at_two):
        return None
    out: list[int | Batch] = []
    for a, b in zip(at_one, at_two, strict=True):
        if a == b:
            out.append(int(a))
        elif b == 2 * a and a > 0:
            out.append(Batch(int(a)))
        else:
            return None
    return tuple(out)


@functools.cache
def _symbolic_inference() -> Any:
    """ONNX Runtime's ``SymbolicShapeInference`` class, loaded from its file: importing it
    as ``onnxruntime.tools.symbolic_shape_infer`` runs ``onnxruntime.tools``, which
    imports torch when it is installed (seconds and hundreds of MB for nothing here)."""
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or spec.origin is None:
        raise ImportError("onnxruntime is not installed")
    path = Path(spec.origin).parent / "tools" / "symbolic_shape_infer.py"
    tool = importlib.util.spec_from_file_location(_SYMBOLIC, path)
    if tool is None or tool.loader is None:
        raise ImportError(f"no {path}")
    module = importlib.util.module_from_spec(tool)
    tool.loader.exec_module(module)
    return module.SymbolicShapeInference


def _external_as_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model`, or a copy whose initializers stored as external data are graph inputs of
    the same type and shape.

    The symbolic inference reads the values of every initializer an arithmetic node
    (Add, Mul, ...) takes, in case they are shape data, and external data it cannot open
    (a relative location, looked up from the working directory) stops it at the first
    such weight: a Swin's stages after the first lost their shapes that way. Weights
    moved out as external data are not shape data; as inputs their shapes stay known
    and their values are never loaded."""
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    if not external:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    moved = {t.name for t in external}
    kept = [t for t in out.graph.initializer if t.name not in moved]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    listed = {vi.name for vi in out.graph.input}
    out.graph.input.extend(
        onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
        for t in external
        if t.name not in listed
    )
    return out


def symbolic_model(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """`model` with the value infos of ONNX Runtime's symbolic shape inference, as far as
    it got (None when the tool is missing or fails at once). Initializers held as external
    data are read as inputs of their shape (`_external_as_inputs`): the result lists them
    as graph inputs."""
    quiet = logging.getLogger(_SYMBOLIC)
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it logs every comparison it cannot decide
    try:
        # The steps of `SymbolicShapeInference.infer_shapes`, which on a partial result
        # writes ``sym_shape_infer_temp.onnx`` into the working directory and raises;
        # here a partial result is kept (the rest stays unknown) and nothing is written.
        sym = _symbolic_inference()(2**31 - 1, True, False, 0)
        sym._preprocess(_external_as_inputs(model))
        while sym.run_:
            sym._infer_impl()
        sym._update_output_from_vi()
        return sym.out_mp_
    except Exception:  # a missing or failing optional tool only leaves shapes unknown
        return None
    finally:
        quiet.setLevel(level)
