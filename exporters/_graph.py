"""Graph helpers shared by the ONNX and family exporters: loading a source model,
giving it a dynamic batch axis, shape inference, name lookups and ONNX Runtime runs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import shape_inference
from onnx.external_data_helper import (
    convert_model_to_external_data,
    write_external_data_tensors,
)

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import BATCH, InputSpec
from edgeadapt.formats.jsonio import check_regular
from edgeadapt.graph.deps import subgraphs
from edgeadapt.graph.shapes import Dims, dims_of, probed_dims, symbolic_model

#: Source models larger than this (protobuf's 2 GB limit) are refused: shape inference,
#: the Extractor and ONNX Runtime sessions from bytes all need the model in one proto.
MAX_MODEL_BYTES = (2 << 30) - 1
#: The file that `load_external` moves a source model's weights to.
WEIGHTS_FILE = "weights.bin"
#: Initializers at least this large are moved to `WEIGHTS_FILE`.
EXTERNAL_MIN_BYTES = 1024
RTOL = 1e-3
ATOL = 1e-5
_NP_DTYPES: dict[int, str] = {
    onnx.TensorProto.FLOAT: "float32",
    onnx.TensorProto.FLOAT16: "float16",
    onnx.TensorProto.DOUBLE: "float64",
    onnx.TensorProto.INT64: "int64",
    onnx.TensorProto.INT32: "int32",
    onnx.TensorProto.INT8: "int8",
    onnx.TensorProto.UINT8: "uint8",
    onnx.TensorProto.BOOL: "bool",
}


def load_source(path: str | os.PathLike[str]) -> onnx.ModelProto:
    """Load a source model with its external data; refuse one that cannot be held in
    one protobuf (> 2 GB), or that imports an ONNX opset newer than this onnx (and so
    ONNX Runtime) knows, with a message saying so."""
    path = check_regular(path)
    try:
        model = onnx.load(str(path), load_external_data=True)
    except Exception as e:  # protobuf DecodeError, missing external data files, ...
        raise InputError(f"not a readable ONNX model ({e})", source=path) from None
    size = model.ByteSize()
    if size > MAX_MODEL_BYTES:
        raise InputError(
            f"the model with its external data is {size / 2**30:.1f} GiB; models over 2 GB "
            "cannot be split in memory by this exporter (shape inference and the Extractor "
            "need a single protobuf). Export smaller parts of the network instead.",
            source=path,
        )
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and not 1 <= opset.version <= newest:
            raise InputError(
                f"imports ONNX opset {opset.version}; this onnx {onnx.__version__} knows "
                f"opsets 1..{newest} (re-export the model at a released opset)",
                source=path,
                field="opset_import",
            )
    return model


def load_external(path: str | os.PathLike[str], work: Path) -> onnx.ModelProto:
    """`load_source`, with every initializer of at least `EXTERNAL_MIN_BYTES` moved to
    ``work/weights.bin`` as external data: the proto left in memory holds the graph only,
    so copies of it, shape inference and per-step graphs stay small, and ONNX Runtime
    sessions over it load the weights from that file (`session` with `at` in `work`)."""
    model = load_source(path)
    convert_model_to_external_data(
        model,
        all_tensors_to_one_file=True,
        location=WEIGHTS_FILE,
        size_threshold=EXTERNAL_MIN_BYTES,
        convert_attribute=False,
    )
    write_external_data_tensors(model, str(work))
    return model


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The real inputs of the main graph (initializers that are also listed excluded)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def with_dynamic_batch(
    model: onnx.ModelProto, source: str | os.PathLike[str], *, single: bool = True
) -> onnx.ModelProto:
    """A copy whose inputs have the dynamic batch axis ``batch``, shapes inferred
    (`single`: refuse a model with more than one input)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inputs = graph_inputs(out)
    if not inputs or (single and len(inputs) != 1):
        names = [i.name for i in inputs]
        want = "exactly one input" if single else "at least one input"
        raise InputError(f"expected a model with {want}, got {names}", source=source)
    changed = False
    for vi in inputs:
        tt = vi.type.tensor_type
        if not vi.type.HasField("tensor_type") or not tt.HasField("shape") or not tt.shape.dim:
            raise InputError(f"input {vi.name!r} has no shape", source=source)
        if tt.shape.dim[0].dim_param != BATCH:
            tt.shape.dim[0].Clear()
            tt.shape.dim[0].dim_param = BATCH
            changed = True
    if changed:
        del out.graph.value_info[:]
        for o in out.graph.output:
            dims = o.type.tensor_type.shape.dim
            if dims:
                dims[0].Clear()
                dims[0].dim_param = BATCH
    try:
        return infer(out, source)
    except InputError as e:
        if not changed:
            raise
        raise InputError(
            f"this model cannot run at another batch size: {e} (its graph fixes the batch "
            "size, e.g. a Reshape to a constant shape; export it with a dynamic batch axis: "
            "torch.onnx.export(..., dynamic_axes=...) or dynamic_shapes=...)",
            source=source,
        ) from None


def infer(model: onnx.ModelProto, source: str | os.PathLike[str]) -> onnx.ModelProto:
    """Strict shape inference with data propagation; errors name the source model."""
    try:
        return shape_inference.infer_shapes(
            model, check_type=True, strict_mode=True, data_prop=True
        )
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError) as e:
        raise InputError(f"shape inference failed: {e}", source=source) from None


def input_specs(model: onnx.ModelProto, source: str | os.PathLike[str]) -> list[InputSpec]:
    """The bundle input specs of a model prepared by `with_dynamic_batch`."""
    specs = []
    for vi in graph_inputs(model):
        tt = vi.type.tensor_type
        dims: list[int | str] = [BATCH]
        for k, d in enumerate(tt.shape.dim[1:], 1):
            if not d.HasField("dim_value"):
                raise InputError(
                    f"input {vi.name!r} axis {k} is not static ({d.dim_param or '?'}); only "
                    "the batch axis may be dynamic",
                    source=source,
                )
            dims.append(int(d.dim_value))
        if tt.elem_type not in _NP_DTYPES:
            raise InputError(f"input {vi.name!r} has an unsupported element type", source=source)
        specs.append(InputSpec(vi.name, tuple(dims), _NP_DTYPES[tt.elem_type]))
    return specs


def input_spec(model: onnx.ModelProto, source: str | os.PathLike[str]) -> InputSpec:
    """The input spec of a one-input model prepared by `with_dynamic_batch`."""
    return input_specs(model, source)[0]


def value_infos(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    g = model.graph
    return {vi.name: vi for vi in [*g.value_info, *g.input, *g.output]}


def static_tail(vi: onnx.ValueInfoProto | None) -> tuple[int, ...] | None:
    """The per-sample shape (axes after the batch axis) if all of it is static."""
    if vi is None or not vi.type.HasField("tensor_type"):
        return None
    tt = vi.type.tensor_type
    if not tt.HasField("shape") or len(tt.shape.dim) < 2:
        return None
    tail = tt.shape.dim[1:]
    if not all(d.HasField("dim_value") for d in tail):
        return None
    return tuple(int(d.dim_value) for d in tail)


def rename_input(model: onnx.ModelProto, old: str, new: str) -> None:
    """Rename the graph input `old` to `new` everywhere it is read (bodies included)."""

    def visit(g: onnx.GraphProto) -> None:
        if any(i.name == old for i in g.input if g is not model.graph):
            return  # shadowed by a body input of the same name
        for n in g.node:
            for k, x in enumerate(n.input):
                if x == old:
                    n.input[k] = new
            for sub in subgraphs(n):
                visit(sub)

    for vi in model.graph.input:
        if vi.name == old:
            vi.name = new
    visit(model.graph)


def session(model: onnx.ModelProto, at: Path | None = None):  # -> ort.InferenceSession
    """A single-threaded CPU ONNX Runtime session over an in-memory model, or (`at`) over
    the model saved to that path, beside the external data its initializers name."""
    if at is None:
        return open_session(model.SerializeToString())
    at.write_bytes(model.SerializeToString())
    return open_session(str(at))


def open_session(model: str | bytes):  # -> ort.InferenceSession
    """A single-threaded CPU ONNX Runtime session over a model's bytes or its file (a
    calibration worker's: the same options give the same activations, bit for bit)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 4  # failures are re-raised with a message of our own
    # Without ORT's arena, freed activations and a deleted session's weights go back to
    # the system, so sessions over a large model one after another do not add up.
    opts.enable_cpu_mem_arena = False
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> onnx.ModelProto:
    """A copy of an inferred model that also outputs the tensors `names`, for ONNX Runtime:
    without the inferred shapes of intermediate tensors, which make its memory planner
    hold several times the activations (2.6 GB against 0.8 GB for a ViT-B/16 at batch
    32)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.value_info[:]
    infos = value_infos(model)
    present = {o.name for o in out.graph.output}
    for name in names:
        if name not in present:
            out.graph.output.append(infos.get(name, onnx.ValueInfoProto(name=name)))
            present.add(name)
    return out


def resolve_dims(
    model: onnx.ModelProto, names: Sequence[str], specs: Sequence[InputSpec], work: Path
) -> dict[str, Dims]:
    """The shape of each tensor in `names` (batch axes marked) from the inferred value
    infos; where onnx's inference gave up, from ONNX Runtime's symbolic inference; then
    from a probe run on random inputs at batch 1 and 2. Names left unknown are absent."""
    infos = value_infos(model)
    dims = {n: d for n in names if (d := dims_of(infos.get(n))) is not None}
    missing = [n for n in names if n not in dims]
    if missing:
        symbolic = symbolic_model(model)
        if symbolic is not None:
            sym_infos = value_infos(symbolic)
            dims.update({n: d for n in missing if (d := dims_of(sym_infos.get(n))) is not None})
        missing = [n for n in missing if n not in dims]
    if missing:
        dims.update(_probe(model, missing, specs, work))
    return dims


def _probe(
    model: onnx.ModelProto, names: list[str], specs: Sequence[InputSpec], work: Path
) -> dict[str, Dims]:
    """Shapes of `names` measured by running the model at batch 1 and 2 ({} when it
    cannot run)."""
    try:
        sess = session(with_outputs(model, names), at=work / "probe.onnx")
        one, two = (sess.run(names, f) for f in example_feeds(model, specs, batches=(1, 2)))
    except Exception:  # onnxruntime's own exception types: the shapes stay unknown
        return {}
    found = {}
    for name, a, b in zip(names, one, two, strict=True):
        d = probed_dims(np.shape(a), np.shape(b))
        if d is not None:
            found[name] = d
    return found


def tolerance(want: np.ndarray, rtol: float, atol: float) -> float:
    """The absolute tolerance for a comparison with `want`: `rtol` times the largest
    magnitude in `want`, at least `atol` (logits near zero get the scale of the others)."""
    peak = float(np.max(np.abs(want))) if want.size else 0.0
    return max(atol, rtol * peak)


def worst_error(
    got: np.ndarray, want: np.ndarray, rtol: float = RTOL, atol: float = ATOL
) -> tuple[float, bool]:
    """(max abs error, whether it is within `tolerance(want, rtol, atol)`)."""
    if got.shape != want.shape:
        return float("inf"), False
    err = np.abs(got.astype(np.float64) - want.astype(np.float64))
    worst = float(err.max()) if err.size else 0.0
    return worst, bool(np.all(np.isfinite(err))) and worst <= tolerance(want, rtol, atol)


def _index_bound(model: onnx.ModelProto, name: str) -> int:
    """Exclusive upper bound for random values of an integer input: the smallest table
    it indexes with Gather (a vocabulary), else 2 (a 0/1 mask or type id)."""
    sizes = {t.name: list(t.dims) for t in model.graph.initializer}
    bounds = []
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == name:
            dims = sizes.get(node.input[0])
            if dims:
                axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
                bounds.append(int(dims[axis]))
    return min(bounds) if bounds else 2


def example_feeds(
    model: onnx.ModelProto, specs: Sequence[InputSpec], seed: int = 0, batches=(1, 7)
) -> list[dict[str, np.ndarray]]:
    """Random feeds for every input at each batch size in `batches`: floats are normal,
    integer inputs lie below the table they index; a ``*mask*`` input keeps a random
    prefix of at least one token."""
    rng = np.random.default_rng(seed)
    out = []
    for b in batches:
        feeds = {}
        for spec in specs:
            shape = (b, *(int(d) for d in spec.shape[1:]))
            kind = np.dtype(spec.dtype).kind
            if kind == "f":
                feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            elif "mask" in spec.name.lower() and len(shape) == 2:
                keep = rng.integers(1, shape[1] + 1, size=b)
                mask = np.arange(shape[1])[None, :] < keep[:, None]
                feeds[spec.name] = mask.astype(spec.dtype)
            else:
                high = _index_bound(model, spec.name)
                feeds[spec.name] = rng.integers(0, high, size=shape).astype(spec.dtype)
        out.append(feeds)
    return out
