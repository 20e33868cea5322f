"""Bundle format v2 and v3 (v1 still reads): the step (or member) ONNX files of a model's states plus a manifest.

A bundle is a directory holding ``manifest.json`` and one ONNX file per state (and any
external-data files those reference). ``kind`` is

- ``early-exit``: state i runs steps 0..i. Step 0 reads model inputs; step i > 0
  reads the activation output of step i-1 and any model inputs it needs (such as a
  transformer's ``attention_mask``). Every
  step but the last has two outputs, ``activation`` (for the next step) and ``logits``
  (state i's prediction); the last has logits only.
- ``branches``: like ``ensemble``, each state one model; the states are execution
  branches of one network (residual blocks skipped, `edgeadapt.exporters.branches`),
  whose weights may live in one shared external-data file.
- ``ensemble``: state i is an independent model that reads the model input and outputs
  logits; for uniformity it is stored as ``steps[i]`` with no activation.

- a **precision-variant** early-exit bundle (version 3, `edgeadapt.exporters.variants`): several
  chains of steps (the same exits at several precisions), each a contiguous run of
  states whose manifest entries carry its ``chain`` name; the first step of a chain
  reads model inputs, each later one the activation of the step before it (of the same
  chain), and the last step of each chain has logits only (`edgeadapt.formats.chains`).

The manifest records the model inputs (name, shape, dtype; each shape's first axis is
the dynamic batch axis ``"batch"``; version 1 manifests hold a single ``input``,
version 2 a list ``inputs``), the class count, per step its file, I/O names, per-sample FLOPs/MACs
(split into the stage's and the head's shares) and parameter count, the sha256 of
every file, and the producer. `write_bundle` writes the whole directory atomically
(`edgeadapt.formats.atomic`); `load_bundle` validates the schema, the paths (everything stays
inside the bundle), the hashes and that the steps chain.

    >>> b = load_bundle("bundle/")
    >>> b.kind, b.num_classes, b.flops        # flops: what each state's prediction costs
    >>> b.steps[0].path, b.steps[0].activation, b.steps[0].logits
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import onnx
from onnx import numpy_helper

from edgeadapt._version import __version__
from edgeadapt.errors import InputError
from edgeadapt.formats.atomic import (
    check_path,
    fsync,
    replace_directory,
    staged_directory,
    writers_lock,
)
from edgeadapt.formats.chains import Chains, Layout, chain_starts, layout
from edgeadapt.formats.digest import file_sha256
from edgeadapt.formats.jsonio import Fields, dumps, read_json
from edgeadapt.graph.deps import ancestors
from edgeadapt.graph.flops import count_flops, count_params

FORMAT = "edgeadapt-bundle"
VERSION = 2
#: Versions `load_bundle` reads: 1 holds one ``input`` object, 2 a list of ``inputs``,
#: 3 an early-exit bundle of several chains (each state's ``chain``).
VERSIONS = (1, 2, 3)
#: The version written for a bundle of several chains (older readers refuse it).
CHAINS_VERSION = 3
MANIFEST = "manifest.json"
KINDS = ("early-exit", "ensemble", "branches")
#: Kinds whose states are independent models, each reading the model inputs.
INDEPENDENT_KINDS = ("ensemble", "branches")
BATCH = "batch"
DTYPES = ("float32", "float16", "float64", "int64", "int32", "int8", "uint8", "bool")
#: A step whose serialised size exceeds this is written with its weights in a
#: ``<step>.data`` external-data file (protobuf cannot serialise 2 GB).
EXTERNAL_DATA_THRESHOLD = 1 << 30

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class BundleError(InputError):
    """A bundle cannot be written or is invalid, tampered with, incomplete or unsafe."""


@dataclass(frozen=True)
class InputSpec:
    """The model input: `shape[0]` is the dynamic batch axis ``"batch"``, the rest static."""

    name: str
    shape: tuple[int | str, ...]
    dtype: str = "float32"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class Step:
    """One step to write: `model` outputs `logits` (and `activation` unless it is the
    last step). `head_input` is the tensor where the exit head starts; the nodes it and
    the activation depend on are the stage's share of the FLOPs, the rest the head's."""

    model: onnx.ModelProto
    logits: str
    activation: str | None = None
    head_input: str | None = None


@dataclass(frozen=True)
class StepInfo:
    """One step (or ensemble member) of a loaded bundle; `path` is absolute."""

    index: int
    file: str
    path: Path
    sha256: str
    inputs: tuple[str, ...]
    activation: str | None
    logits: str
    flops: int
    macs: int
    stage_flops: int
    stage_macs: int
    head_flops: int
    head_macs: int
    params: int
    unknown_ops: tuple[str, ...]


@dataclass(frozen=True)
class StateInfo:
    """One state: its name, the files its prediction needs, its cost and parameters."""

    name: str
    files: tuple[str, ...]
    flops: int
    macs: int
    params: int


@dataclass(frozen=True)
class Bundle:
    """A loaded bundle. `steps[i]` produces state i's logits (see the module docstring);
    `states[i].flops` is what state i's prediction costs (cascade sum for early-exit)."""

    path: Path
    kind: str
    num_classes: int
    inputs: tuple[InputSpec, ...]
    states: tuple[StateInfo, ...]
    steps: tuple[StepInfo, ...]
    files: dict[str, str]
    producer: dict[str, Any]
    extra: dict[str, Any]
    manifest_sha256: str
    verified: bool = field(default=False)
    #: Each state's chain name (a version 3 bundle), empty for a bundle of one chain.
    chain_names: tuple[str, ...] = ()

    @property
    def chains(self) -> Chains:
        """One chain index per state (`edgeadapt.formats.chains.layout`)."""
        return layout(self.kind, len(self.states), _chain_indices(self.chain_names))

    @property
    def cost_layout(self) -> Layout:
        """How a cascade's costs add up over this bundle's states
        (`edgeadapt.formats.chains.kept_costs`): its kind, or for several chains the
        chains."""
        return self.chains if self.chain_names else self.kind

    def state_steps(self, state: int) -> tuple[int, ...]:
        """The steps state `state` runs alone: its chain's steps up to it."""
        return tuple(range(chain_starts(self.chains)[state], state + 1))

    @property
    def input(self) -> InputSpec:
        """The model input of a one-input bundle; refused for several, so that no caller
        silently feeds only the first of them."""
        if len(self.inputs) != 1:
            raise BundleError(
                f"the bundle has {len(self.inputs)} inputs "
                f"({', '.join(i.name for i in self.inputs)}); use `inputs`",
                source=self.path / MANIFEST,
                field="$.inputs",
            )
        return self.inputs[0]

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def flops(self) -> list[int]:
        return [s.flops for s in self.states]

    @property
    def params(self) -> list[int]:
        return [s.params for s in self.states]

    @property
    def step_flops(self) -> list[int]:
        return [s.flops for s in self.steps]

    @property
    def stage_flops(self) -> list[int]:
        return [s.stage_flops for s in self.steps]

    @property
    def head_flops(self) -> list[int]:
        return [s.head_flops for s in self.steps]


# --------------------------------------------------------------------------- writing


def _graph_io(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    inits = {t.name for t in model.graph.initializer}
    inputs = [i.name for i in model.graph.input if i.name not in inits]
    return inputs, [o.name for o in model.graph.output]


def _check_inputs(specs: Sequence[InputSpec]) -> None:
    if not specs:
        raise BundleError("a bundle needs at least one input", field="inputs")
    seen: set[str] = set()
    for k, spec in enumerate(specs):
        at = f"inputs[{k}]"
        if not isinstance(spec, InputSpec):
            raise BundleError(f"expected an InputSpec, got {type(spec).__name__}", field=at)
        if not spec.name:
            raise BundleError("the input needs a name", field=f"{at}.name")
        if spec.name in seen:
            raise BundleError(f"duplicate input name {spec.name!r}", field=f"{at}.name")
        seen.add(spec.name)
        if not spec.shape or spec.shape[0] != BATCH:
            raise BundleError(
                f"shape[0] must be {BATCH!r}, got {spec.shape!r}", field=f"{at}.shape"
            )
        for d in spec.shape[1:]:
            if isinstance(d, bool) or not isinstance(d, int) or d < 1:
                raise BundleError(
                    "dimensions after the batch axis must be positive integers, "
                    f"got {spec.shape!r}",
                    field=f"{at}.shape",
                )
        if spec.dtype not in DTYPES:
            raise BundleError(
                f"dtype must be one of {DTYPES}, got {spec.dtype!r}", field=f"{at}.dtype"
            )


def _resolve_inputs(
    input: InputSpec | None, inputs: Sequence[InputSpec] | None
) -> tuple[InputSpec, ...]:
    if (input is None) == (inputs is None):
        raise BundleError("give exactly one of `input` and `inputs`", field="inputs")
    specs = (input,) if input is not None else tuple(inputs or ())
    _check_inputs(specs)
    return specs


def _entry(
    i: int,
    step: Step,
    kind: str,
    last: bool,
    model_inputs: set[str],
    num_classes: int,
    previous: list[str],
) -> dict[str, Any]:
    """Check one step against the chain rules and describe it for the manifest."""
    where = f"steps[{i}]"
    try:
        onnx.checker.check_model(step.model)
    except onnx.checker.ValidationError as e:
        raise BundleError(f"invalid ONNX model: {e}", field=where) from None
    inputs, outputs = _graph_io(step.model)
    independent = kind in INDEPENDENT_KINDS
    bad = _chain_error(inputs, model_inputs, independent or i == 0, previous)
    if bad:
        raise BundleError(bad, field=f"{where}.inputs")
    want = [step.logits] if last or independent else [step.activation, step.logits]
    if (step.activation is None) != (last or independent):
        raise BundleError(
            "every early-exit step but the last needs an activation output; the last and "
            "ensemble members have none",
            field=f"{where}.activation",
        )
    if sorted(outputs) != sorted(n for n in want if n):
        raise BundleError(f"outputs {outputs} must be exactly {want}", field=f"{where}.outputs")
    _check_logits(step.model, step.logits, num_classes, where)
    cost = count_flops(step.model)
    stage_roots = [n for n in (step.activation, step.head_input) if n]
    stage_nodes = (
        ancestors(step.model, stage_roots)
        if stage_roots
        else set(range(len(step.model.graph.node)))
    )
    stage_flops, stage_macs = cost.subset(stage_nodes)
    return {
        "file": {"early-exit": f"step{i}.onnx", "branches": f"branch{i}.onnx"}.get(
            kind, f"model{i}.onnx"
        ),
        "inputs": inputs,
        "activation": step.activation,
        "logits": step.logits,
        "flops": cost.flops,
        "macs": cost.macs,
        "stage_flops": stage_flops,
        "stage_macs": stage_macs,
        "head_flops": cost.flops - stage_flops,
        "head_macs": cost.macs - stage_macs,
        "params": count_params(step.model),
        "unknown_ops": cost.unknown_ops,
    }


def _chain_error(
    inputs: Sequence[str], model_inputs: set[str], first: bool, previous: Sequence[str]
) -> str | None:
    """Why a step reading `inputs` does not chain, or None: step 0 and ensemble members
    read model inputs only, a later step model inputs and the previous step's outputs."""
    allowed = model_inputs if first else {*model_inputs, *previous}
    if not inputs or any(n not in allowed for n in inputs):
        return f"inputs {list(inputs)} do not chain: allowed are {sorted(allowed)}"
    return None


def _check_logits(model: onnx.ModelProto, logits: str, num_classes: int, where: str) -> None:
    out = next(o for o in model.graph.output if o.name == logits)
    dims = out.type.tensor_type.shape.dim
    if len(dims) != 2:
        raise BundleError(
            f"logits {logits!r} must be [batch, classes], got rank {len(dims)}", field=where
        )
    if dims[1].HasField("dim_value") and dims[1].dim_value != num_classes:
        raise BundleError(
            f"logits {logits!r} have {dims[1].dim_value} classes, the bundle {num_classes}",
            field=where,
        )


#: Initializers at least this large go to a shared weights file.
SHARED_MIN_BYTES = 1024


def share_weights(
    models: Sequence[onnx.ModelProto], location: str
) -> tuple[list[onnx.ModelProto], bytes]:
    """Copies of `models` whose large initializers point, as ONNX external data, into one
    blob at `location` that holds each (by name) once; initializers of one name must be
    equal in every model."""
    blob = bytearray()
    where: dict[str, tuple[int, bytes]] = {}
    shared: list[onnx.ModelProto] = []
    for model in models:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        for t in out.graph.initializer:
            raw = numpy_helper.to_array(t).tobytes()
            if len(raw) < SHARED_MIN_BYTES:
                continue
            if t.name not in where:
                blob.extend(b"\0" * (-len(blob) % 64))  # 64-byte aligned, for mmap
                where[t.name] = (len(blob), raw)
                blob.extend(raw)
            offset, first = where[t.name]
            if first != raw:
                raise BundleError(f"initializer {t.name!r} differs between models")
            dims, dtype, name = list(t.dims), t.data_type, t.name
            t.Clear()
            t.name, t.data_type = name, dtype
            t.dims.extend(dims)
            t.data_location = onnx.TensorProto.EXTERNAL
            for key, value in (("location", location), ("offset", offset), ("length", len(raw))):
                entry = t.external_data.add()
                entry.key, entry.value = key, str(value)
        shared.append(out)
    return shared, bytes(blob)


def _save_model(model: onnx.ModelProto, path: Path) -> list[str]:
    """Save one step; return the files written (relative names)."""
    if model.ByteSize() > EXTERNAL_DATA_THRESHOLD:
        data = f"{path.name}.data"
        onnx.save_model(model, str(path), save_as_external_data=True, location=data)
        return [path.name, data]
    path.write_bytes(model.SerializeToString())
    return [path.name]


def _may_replace(tmp: Path, out: Path, force: bool) -> bool:
    """Whether the finished bundle in `tmp` is to replace what `out` holds: yes when `out`
    is absent or empty; no when it already holds the very same bundle; an existing
    different bundle only with `force`, and never a directory that is not a bundle."""
    if not out.exists() and not out.is_symlink():
        return True
    if out.is_symlink() or not out.is_dir():
        raise BundleError("exists and is not a directory", source=out)
    entries = list(out.iterdir())
    if not entries:
        return True
    if not (out / MANIFEST).is_file():
        raise BundleError(
            "exists and is not an edgeadapt bundle; refusing to replace it", source=out
        )
    if (out / MANIFEST).read_bytes() == (tmp / MANIFEST).read_bytes():
        return False  # the very same bundle is already there
    if not force:
        raise BundleError(
            "already holds a different bundle; use --force (force=True) to replace it",
            source=out,
        )
    return True


def _parts(
    kind: str, steps: Sequence[Step] | None, models: Sequence[onnx.ModelProto] | None
) -> list[Step]:
    """The steps to write: `steps` for an early-exit bundle, else one step per model
    (which must have exactly one output, its logits)."""
    if kind == "early-exit":
        if models is not None or not steps:
            raise BundleError("early-exit bundles take a non-empty `steps` and no `models`")
        return list(steps)
    if steps is not None or not models:
        raise BundleError(f"{kind} bundles take a non-empty `models` and no `steps`")
    parts = [Step(m, logits=_graph_io(m)[1][0] if len(m.graph.output) == 1 else "") for m in models]
    for i, m in enumerate(models):
        if len(m.graph.output) != 1:
            raise BundleError(
                "an ensemble member must have exactly one output (logits)", field=f"models[{i}]"
            )
    return parts


def _state_names(state_names: Sequence[str] | None, n: int) -> list[str]:
    """`state_names` checked (n distinct names, each usable as a file name), or
    ``state0``, ``state1``, ... when none are given."""
    names = list(state_names) if state_names is not None else [f"state{i}" for i in range(n)]
    if len(names) != n or len(set(names)) != len(names) or not all(names):
        raise BundleError(f"need {n} distinct non-empty names, got {names}", field="state_names")
    for j, name in enumerate(names):
        if (problem := _state_name_problem(name)) is not None:
            raise BundleError(problem, field=f"state_names[{j}]")
    return names


def _entries(
    parts: Sequence[Step], kind: str, model_inputs: set[str], num_classes: int
) -> list[dict[str, Any]]:
    """The manifest entry of each step, each checked against the outputs of the one
    before it."""
    entries: list[dict[str, Any]] = []
    previous: list[str] = []
    for i, s in enumerate(parts):
        entries.append(_entry(i, s, kind, i == len(parts) - 1, model_inputs, num_classes, previous))
        previous = _graph_io(s.model)[1]
    return entries


def write_bundle(
    out_dir: str | os.PathLike[str],
    *,
    kind: str,
    input: InputSpec | None = None,
    inputs: Sequence[InputSpec] | None = None,
    num_classes: int,
    steps: Sequence[Step] | None = None,
    models: Sequence[onnx.ModelProto] | None = None,
    state_names: Sequence[str] | None = None,
    producer: dict[str, Any],
    extra: dict[str, Any] | None = None,
    shared_weights: str | None = None,
    force: bool = False,
) -> Bundle:
    """Write a bundle to `out_dir` atomically and return it loaded and verified.

    The model inputs are `inputs` (or, for one input, `input`). Early-exit bundles take
    `steps` (in state order); ensembles take `models` (one per state, each reading model
    inputs and outputting logits only; so do branch bundles). With `shared_weights` (a
    file name), every large initializer is stored once in that file and each model
    references it as ONNX external data: branches of one network then cost about one
    model on disk. `producer` should name
    the ``exporter`` and the ``source_sha256`` of the source model; the edgeadapt
    version is added. `out_dir` may be absent, empty, or hold the very same bundle; an
    existing different bundle is replaced only with `force`. A writer killed midway
    leaves the previous bundle intact (the new one is built in a temp dir beside it).
    """
    if kind not in KINDS:
        raise BundleError(f"kind must be one of {KINDS}, got {kind!r}", field="kind")
    specs = _resolve_inputs(input, inputs)
    model_inputs = {i.name for i in specs}
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise BundleError(f"must be an integer >= 2, got {num_classes!r}", field="num_classes")
    parts = _parts(kind, steps, models)
    names = _state_names(state_names, len(parts))
    entries = _entries(parts, kind, model_inputs, num_classes)
    out = check_path(out_dir).absolute()
    with writing_bundle(out):
        return _write(
            out,
            entries,
            parts,
            names,
            kind,
            specs,
            num_classes,
            producer,
            extra,
            force,
            shared_weights,
        )


@contextlib.contextmanager
def writing_bundle(out: Path) -> Iterator[None]:
    """A bundle being written to `out`: an OSError on the way is one `BundleError` naming
    it (the writes are staged, so a bundle already there is left as it was)."""
    try:
        yield
    except OSError as e:
        raise BundleError(
            f"cannot write: {e.strerror or e} (an existing bundle there is left as it was)",
            source=out,
        ) from None


def _write(
    out: Path,
    entries: list[dict[str, Any]],
    parts: Sequence[Step],
    names: Sequence[str],
    kind: str,
    specs: Sequence[InputSpec],
    num_classes: int,
    producer: dict[str, Any],
    extra: dict[str, Any] | None,
    force: bool,
    shared_weights: str | None,
) -> Bundle:
    with staged_directory(out) as tmp:
        files: dict[str, str] = {}
        if shared_weights is not None:
            if (tmp / shared_weights).parent != tmp or shared_weights in ("", MANIFEST):
                raise BundleError(
                    f"{shared_weights!r} is not a plain file name", field="shared_weights"
                )
            models_out, blob = share_weights([p.model for p in parts], shared_weights)
            parts = [
                Step(m, p.logits, p.activation, p.head_input)
                for m, p in zip(models_out, parts, strict=True)
            ]
            (tmp / shared_weights).write_bytes(blob)
            fsync(tmp / shared_weights)
            files[shared_weights] = file_sha256(tmp / shared_weights)
        for e, s in zip(entries, parts, strict=True):
            for name in _save_model(s.model, tmp / e["file"]):
                fsync(tmp / name)
                files[name] = file_sha256(tmp / name)
            e["sha256"] = files[e["file"]]
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "kind": kind,
            "inputs": [i.to_json() for i in specs],
            "num_classes": num_classes,
            "states": [{"name": n, **e} for n, e in zip(names, entries, strict=True)],
            "files": files,
            "producer": {"edgeadapt": __version__, **producer},
            "extra": extra or {},
        }
        return commit_bundle(tmp, out, manifest, force)


def commit_bundle(tmp: Path, out: Path, manifest: dict[str, Any], force: bool) -> Bundle:
    """Write `manifest` beside the files staged in `tmp`, make them durable, swap the
    bundle into `out` (absent, empty, the very same bundle, or another only with
    `force`) and return it loaded and verified."""
    try:
        text = dumps(manifest)
    except ValueError as e:
        raise BundleError(f"cannot write non-finite number in the manifest ({e})") from None
    (tmp / MANIFEST).write_text(text, encoding="utf-8")
    fsync(tmp / MANIFEST)
    fsync(tmp)
    # Swap and re-read under the lock: another writer's swap in between would make
    # this bundle's hashes fail and pass for tampering.
    with writers_lock(out.parent):
        if _may_replace(tmp, out, force):
            replace_directory(tmp, out)
        return load_bundle(out)


# --------------------------------------------------------------------------- loading


def _safe_path(root: Path, rel: Any, source: Path, field_: str) -> Path:
    """The absolute path of bundle file `rel`, refusing anything that leaves `root`."""
    if not isinstance(rel, str) or not rel:
        raise BundleError("expected a non-empty relative path", source=source, field=field_)
    if (
        PurePosixPath(rel).is_absolute()
        or PureWindowsPath(rel).is_absolute()
        or PureWindowsPath(rel).drive
        or "\\" in rel
    ):
        raise BundleError(f"absolute path {rel!r} is not allowed", source=source, field=field_)
    if ".." in PurePosixPath(rel).parts:
        raise BundleError(f"path {rel!r} leaves the bundle ('..')", source=source, field=field_)
    path = root / rel
    probe = path
    while probe != root:
        if probe.is_symlink():
            raise BundleError(
                f"path {rel!r} is a symlink; bundle files must be regular files",
                source=source,
                field=field_,
            )
        probe = probe.parent
    if not path.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"path {rel!r} leaves the bundle", source=source, field=field_)
    return path


def _nonneg(v: Any) -> str | None:
    return None if v >= 0 else "must be >= 0"


def _not_empty(v: Any) -> str | None:
    return "must not be empty" if v == "" else None


#: the most values one input row may hold (cpp/runner refuses the same)
MAX_ROW_ELEMENTS = 2**31 - 1


def _is_control(c: str) -> bool:
    """C0, DEL and C1 controls, line/paragraph separators, zero-width and bidi controls:
    the set cpp/runner/src/bundle.cpp `has_control` refuses."""
    o = ord(c)
    return (
        o < 0x20
        or 0x7F <= o <= 0x9F
        or 0x200B <= o <= 0x200F
        or o in (0x2028, 0x2029)
        or 0x202A <= o <= 0x202E
    )


def _state_name_problem(name: str) -> str | None:
    """Why `name` cannot name a state, or None: it is printed in tables and reports, so
    control characters (newlines, ANSI escapes) are refused."""
    if not name:
        return "must not be empty"
    if any(_is_control(c) for c in name):
        return f"must not contain control characters, got {name!r}"
    return None


def _parse_input(f: Fields) -> InputSpec:
    name = f.get("name", str, check=lambda v: None if v else "must not be empty")
    shape = f.get("shape", list)
    if not shape or shape[0] != BATCH:
        f.fail(f"the first axis must be {BATCH!r} (the dynamic batch axis)", "shape")
    for k, d in enumerate(shape[1:], 1):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise BundleError(
                "must be a positive integer", source=f.source, field=f"{f.path}.shape[{k}]"
            )
    if math.prod(shape[1:]) > MAX_ROW_ELEMENTS:
        f.fail(f"a row of {math.prod(shape[1:])} values exceeds {MAX_ROW_ELEMENTS}", "shape")
    dtype = f.get("dtype", str, check=lambda v: None if v in DTYPES else f"must be one of {DTYPES}")
    return InputSpec(name, tuple(shape), dtype)


def _parse_inputs(f: Fields, version: int) -> tuple[InputSpec, ...]:
    """Version 1: one ``input`` object; version 2: a non-empty list ``inputs``."""
    if version == 1:
        return (_parse_input(f.child("input")),)
    items = f.items("inputs")
    if not items:
        f.fail("a bundle needs at least one input", "inputs")
    specs: list[InputSpec] = []
    for item in items:
        spec = _parse_input(item)
        if any(spec.name == s.name for s in specs):
            item.fail(f"duplicate input name {spec.name!r}", "name")
        specs.append(spec)
    return tuple(specs)


def _str_list(f: Fields, key: str) -> tuple[str, ...]:
    values = f.get(key, list)
    for k, v in enumerate(values):
        if not isinstance(v, str) or not v:
            raise BundleError(
                "expected a non-empty string", source=f.source, field=f"{f.path}.{key}[{k}]"
            )
    return tuple(values)


def _external_locations(model: onnx.ModelProto) -> list[str]:
    """The location of every tensor that points at external data ("" when it names
    none): initializers, sparse initializers, tensor and sparse-tensor attributes (a
    Constant's ``value`` or ``sparse_value``), subgraphs, functions and training graphs,
    every place ONNX allows a tensor. cpp/runner/src/onnx_scan.cpp walks the same ones."""
    found: list[str] = []
    attr = onnx.AttributeProto

    def tensor(t: onnx.TensorProto) -> None:
        if t.data_location == onnx.TensorProto.EXTERNAL or len(t.external_data):
            found.append({e.key: e.value for e in t.external_data}.get("location", ""))

    def sparse(t: onnx.SparseTensorProto) -> None:
        tensor(t.values)
        tensor(t.indices)

    def nodes(ns: Iterable[onnx.NodeProto]) -> None:
        for node in ns:
            for a in node.attribute:
                if a.type == attr.TENSOR:
                    tensor(a.t)
                elif a.type == attr.TENSORS:
                    for t in a.tensors:
                        tensor(t)
                elif a.type == attr.SPARSE_TENSOR:
                    sparse(a.sparse_tensor)
                elif a.type == attr.SPARSE_TENSORS:
                    for st in a.sparse_tensors:
                        sparse(st)
                elif a.type == attr.GRAPH:
                    graph(a.g)
                elif a.type == attr.GRAPHS:
                    for sub in a.graphs:
                        graph(sub)

    def graph(g: onnx.GraphProto) -> None:
        for t in g.initializer:
            tensor(t)
        for st in g.sparse_initializer:
            sparse(st)
        nodes(g.node)

    graph(model.graph)
    for f in model.functions:
        nodes(f.node)
    for info in model.training_info:
        graph(info.initialization)
        graph(info.algorithm)
    return found


_ONNX_DTYPES = {
    "float32": onnx.TensorProto.FLOAT,
    "float16": onnx.TensorProto.FLOAT16,
    "float64": onnx.TensorProto.DOUBLE,
    "int64": onnx.TensorProto.INT64,
    "int32": onnx.TensorProto.INT32,
    "int8": onnx.TensorProto.INT8,
    "uint8": onnx.TensorProto.UINT8,
    "bool": onnx.TensorProto.BOOL,
}


def _check_facts(
    bundle: Bundle, s: StepInfo, model: onnx.ModelProto, source: Path, where: str
) -> None:
    """The manifest's facts hold for the ONNX file: each model input it reads has the
    manifest's dtype and static dimensions, and its logits are float32 [batch, num_classes]
    (where the file declares them); axis 0 of every input and output, activations
    included, is never fixed (rows are compacted). cpp/runner/src/bundle.cpp
    `check_step_file` checks the same."""
    specs = {i.name: i for i in bundle.inputs}

    def refuse(message: str) -> None:
        raise BundleError(f"{s.file!r}: {message}", source=source, field=where)

    def dims(v: onnx.ValueInfoProto) -> list[int | None] | None:
        t = v.type.tensor_type
        if not t.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]

    inits = {t.name for t in model.graph.initializer}
    for v in model.graph.input:
        if v.name in inits:
            continue
        spec = specs.get(v.name)
        if spec is not None and v.type.tensor_type.elem_type != _ONNX_DTYPES[spec.dtype]:
            refuse(f"input {v.name!r} is not {spec.dtype}, the manifest's dtype")
        d = dims(v)
        if d is None:
            continue
        if spec is not None and len(d) != len(spec.shape):
            refuse(f"input {v.name!r} has rank {len(d)}, the manifest's shape {list(spec.shape)}")
        if d and d[0] is not None:  # an activation's rows too: they are compacted
            refuse(f"input {v.name!r} has a fixed batch axis of {d[0]}; axis 0 must be dynamic")
        if spec is None:
            continue
        for k, (got, want) in enumerate(zip(d[1:], spec.shape[1:], strict=True), 1):
            if got is not None and got != want:
                refuse(f"input {v.name!r} has {got} on axis {k}, the manifest's shape {want}")
    for v in model.graph.output:
        d = dims(v)
        if d is not None and d and d[0] is not None:
            refuse(f"output {v.name!r} has a fixed batch axis of {d[0]}; axis 0 must be dynamic")
        if v.name != s.logits:
            continue
        if v.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
            refuse(f"logits {v.name!r} are not float32")
        if d is not None and (len(d) != 2 or d[1] not in (None, bundle.num_classes)):
            refuse(
                f"logits {v.name!r} have shape {d}; the manifest says [batch, {bundle.num_classes}]"
            )


def _verify_files(bundle: Bundle, source: Path) -> None:
    for rel, digest in bundle.files.items():
        if file_sha256(bundle.path / rel) != digest:
            raise BundleError(
                f"sha256 mismatch for {rel!r}: the file was altered",
                source=source,
                field=f"$.files.{rel}",
            )


def verify_bundle(bundle: Bundle) -> Bundle:
    """Check every file's hash and each step's ONNX I/O and external data against the
    manifest; return the bundle marked verified, or raise BundleError."""
    source = bundle.path / MANIFEST
    _verify_files(bundle, source)
    for s in bundle.steps:
        where = f"$.states[{s.index}]"
        try:
            model = onnx.load(str(s.path), load_external_data=False)
        except Exception as e:  # protobuf raises its own DecodeError
            raise BundleError(
                f"{s.file!r} is not a readable ONNX model ({e})", source=source, field=where
            ) from None
        for loc in _external_locations(model):
            rel = str(PurePosixPath(s.file).parent / loc) if loc else loc
            _safe_path(bundle.path, rel, source, f"{where}.file ({s.file} external data)")
            if rel not in bundle.files:
                raise BundleError(
                    f"{s.file!r} references external data {loc!r} that the manifest does not list",
                    source=source,
                    field=where,
                )
        inputs, outputs = _graph_io(model)
        _check_facts(bundle, s, model, source, where)
        want_out = [n for n in (s.activation, s.logits) if n]
        if tuple(inputs) != s.inputs or sorted(outputs) != sorted(want_out):
            raise BundleError(
                f"{s.file!r} has inputs {inputs} and outputs {outputs}; the manifest says "
                f"{list(s.inputs)} and {want_out}",
                source=source,
                field=where,
            )
    return Bundle(**{**bundle.__dict__, "verified": True})


def load_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Load and validate a bundle directory (or its manifest.json).

    The schema, the paths (no ``..``, absolute paths or symlinks) and the chaining of
    the steps are always checked; with `verify`, also every file's sha256 and each
    ONNX file's I/O names and external-data locations.
    """
    try:
        return _load(Path(path), verify)
    except BundleError:
        raise
    except InputError as e:  # schema errors from jsonio: same message, as a BundleError
        err = BundleError(str(e))
        err.source, err.field = e.source, e.field
        raise err from None


def as_bundle(bundle: Bundle | str | os.PathLike[str]) -> Bundle:
    """`bundle` itself, or the bundle loaded (and verified) from that path: the one
    coercion every API function that takes "a bundle or its path" uses."""
    return bundle if isinstance(bundle, Bundle) else load_bundle(bundle)


def _manifest_of(root: Path) -> tuple[Path, Path]:
    """The bundle directory `root` names (it or its manifest) and its manifest, which
    must be a regular file."""
    if root.name == MANIFEST and root.is_file():
        root = root.parent
    root = check_path(root).absolute()
    source = root / MANIFEST
    if not root.is_dir():
        raise BundleError("no such bundle directory", source=root)
    if source.is_symlink():
        raise BundleError(
            "is a symlink; a bundle's manifest must be a regular file inside it", source=source
        )
    return root, source


def _parse_files(f: Fields, root: Path, source: Path) -> dict[str, str]:
    """``$.files``: each path safe, present in the bundle, with a sha256."""
    files_obj = f.get("files", dict)
    files: dict[str, str] = {}
    for rel, digest in files_obj.items():
        at = f"$.files.{rel}"
        _safe_path(root, rel, source, at)
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise BundleError("expected a lowercase hex sha256", source=source, field=at)
        if not (root / rel).is_file():
            raise BundleError(f"file {rel!r} is missing from the bundle", source=source, field=at)
        files[rel] = digest
    return files


_COST_FIELDS = ("flops", "macs", "stage_flops", "stage_macs", "head_flops", "head_macs", "params")


def _parse_step(
    s: Fields,
    i: int,
    last: bool,
    kind: str,
    root: Path,
    source: Path,
    files: Mapping[str, str],
    model_inputs: set[str],
    before: StepInfo | None,
    chain_start: bool = False,
) -> StepInfo:
    """One ``$.states[i]`` entry (its name already read): file, digest, costs, and how
    it chains to `before`, the step before it (none: the first of its chain)."""
    rel = s.get("file", str)
    file_path = _safe_path(root, rel, source, f"{s.path}.file")
    if rel not in files:
        s.fail(f"{rel!r} is not listed in $.files", "file")
    digest = s.get("sha256", str)
    if digest != files[rel]:
        s.fail("does not match $.files", "sha256")
    ints = {k: int(s.get(k, int, check=_nonneg)) for k in _COST_FIELDS}
    if ints["stage_flops"] + ints["head_flops"] != ints["flops"]:
        s.fail("stage_flops + head_flops must equal flops", "flops")
    activation = s.get("activation", (str, type(None)), check=_not_empty)
    inputs = _str_list(s, "inputs")
    first = kind in INDEPENDENT_KINDS or i == 0 or chain_start
    previous = (
        [] if first or before is None else [n for n in (before.activation, before.logits) if n]
    )
    bad = _chain_error(inputs, model_inputs, first, previous)
    if bad:
        s.fail(bad, "inputs")
    if kind == "early-exit" and (activation is None) != last:
        s.fail(
            "every early-exit step but the last (of its chain) has an activation; the last "
            "has none",
            "activation",
        )
    if kind in INDEPENDENT_KINDS and activation is not None:
        s.fail("ensemble members have no activation", "activation")
    return StepInfo(
        index=i,
        file=rel,
        path=file_path,
        sha256=digest,
        inputs=inputs,
        activation=activation,
        logits=s.get("logits", str, check=_not_empty),
        unknown_ops=_str_list(s, "unknown_ops"),
        **ints,
    )


def _state_infos(
    steps: Sequence[StepInfo], names: Sequence[str], chains: Chains
) -> list[StateInfo]:
    """Each state's files and summed costs: its chain's steps up to it (steps 0..i of a
    one-chain early-exit bundle, an ensemble member alone)."""
    states = []
    starts = chain_starts(chains)
    for i in range(len(steps)):
        chain = steps[starts[i] : i + 1]
        states.append(
            StateInfo(
                name=names[i],
                files=tuple(c.file for c in chain),
                flops=sum(c.flops for c in chain),
                macs=sum(c.macs for c in chain),
                params=sum(c.params for c in chain),
            )
        )
    return states


def _load(root: Path, verify: bool) -> Bundle:
    root, source = _manifest_of(root)
    doc = read_json(source, fmt=FORMAT, versions=list(VERSIONS))
    f = Fields(doc, source=source)
    kind = f.get("kind", str, check=lambda v: None if v in KINDS else f"must be one of {KINDS}")
    chain_names = _parse_chains(f, f.items("states"), kind, doc["version"])
    specs = _parse_inputs(f, doc["version"])
    model_inputs = {i.name for i in specs}
    num_classes = f.get("num_classes", int, check=lambda v: None if v >= 2 else "must be >= 2")
    files = _parse_files(f, root, source)
    state_fields = f.items("states")
    if not state_fields:
        f.fail("a bundle needs at least one state", "states")
    steps: list[StepInfo] = []
    names: list[str] = []
    for i, s in enumerate(state_fields):
        name = s.get("name", str, check=_state_name_problem)
        if name in names:
            s.fail(f"duplicate state name {name!r}", "name")
        names.append(name)
        start = bool(chain_names) and (i == 0 or chain_names[i - 1] != chain_names[i])
        last = i == len(state_fields) - 1 or (
            bool(chain_names) and chain_names[i + 1] != chain_names[i]
        )
        before = steps[-1] if steps else None
        steps.append(
            _parse_step(s, i, last, kind, root, source, files, model_inputs, before, start)
        )
    chains = layout(kind, len(steps), _chain_indices(chain_names))
    bundle = Bundle(
        path=root,
        kind=kind,
        num_classes=num_classes,
        inputs=specs,
        states=tuple(_state_infos(steps, names, chains)),
        steps=tuple(steps),
        files=files,
        producer=f.get("producer", dict),
        extra=f.get("extra", dict),
        manifest_sha256=file_sha256(source),
        chain_names=chain_names,
    )
    return verify_bundle(bundle) if verify else bundle


def _chain_indices(names: Sequence[str]) -> list[int]:
    """Each state's chain as an index, the chains numbered in bundle order."""
    order = list(dict.fromkeys(names))
    return [order.index(c) for c in names]


def _parse_chains(
    f: Fields, state_fields: Sequence[Fields], kind: str, version: int
) -> tuple[str, ...]:
    """Each state's ``chain`` (version 3: an early-exit bundle of at least two chains,
    each a contiguous run of states), or () for a bundle of one chain."""
    has = ["chain" in s.obj for s in state_fields]
    if version < CHAINS_VERSION:
        for s, h in zip(state_fields, has, strict=True):
            if h:
                s.fail(f"chains need manifest version {CHAINS_VERSION}", "chain")
        return ()
    if kind != "early-exit":
        f.fail(f"version {CHAINS_VERSION} is an early-exit bundle of several chains", "kind")
    if not any(has):
        f.fail(
            f"version {CHAINS_VERSION} is a bundle of several chains; no state has a chain",
            "version",
        )
    names = tuple(s.get("chain", str, check=_state_name_problem) for s in state_fields)
    seen: list[str] = []
    for i, (s, c) in enumerate(zip(state_fields, names, strict=True)):
        if c in seen and names[i - 1] != c:
            s.fail(f"the states of chain {c!r} must be contiguous", "chain")
        if c not in seen:
            seen.append(c)
    if len(seen) < 2:
        f.fail(f"a version {CHAINS_VERSION} bundle has at least two chains, got {seen}", "states")
    return names
