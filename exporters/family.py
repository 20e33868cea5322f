"""Family exporter: independent ONNX classifiers of different sizes -> an ensemble bundle.

Every member outputs ``[batch, classes]`` logits with the same class count and reads
model inputs of the bundle: the union of the members' inputs, where one name has one
shape and dtype in every member that reads it (a BERT-style family shares
``input_ids`` and ``attention_mask``; a member may read only some of them). When every
member has exactly one input, the inputs need only agree in shape and dtype, and a
differently named one is renamed to the first model's. States are ordered by FLOPs
(ties keep the given order), and each member is checked to reproduce its source model
on random inputs of batch 1 and 7.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx

from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph
from edgeadapt.formats.bundle import Bundle, InputSpec, write_bundle
from edgeadapt.formats.digest import file_sha256
from edgeadapt.graph.flops import count_flops


@dataclass(frozen=True)
class _Member:
    path: Path
    original: onnx.ModelProto
    model: onnx.ModelProto  # dynamic batch, shapes inferred, inputs renamed to the bundle's
    specs: tuple[InputSpec, ...]
    classes: int


def _state_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        name, k = p.stem, 2
        while name in names:
            name, k = f"{p.stem}-{k}", k + 1
        names.append(name)
    return names


def _prepare(path: Path) -> _Member:
    """Load one member and check its output is ``[batch, classes]`` logits."""
    original = _graph.load_source(path)
    model = _graph.with_dynamic_batch(original, path, single=False)
    specs = tuple(_graph.input_specs(model, path))
    if len(model.graph.output) != 1:
        outs = [o.name for o in model.graph.output]
        raise InputError(
            f"a family member must have one output (its logits), got {outs}", source=path
        )
    tail = _graph.static_tail(model.graph.output[0])
    if tail is None or len(tail) != 1:
        raise InputError(
            f"the output must have shape [batch, classes] with a static class count, got {tail}",
            source=path,
        )
    return _Member(path, original, model, specs, tail[0])


def _describe(spec: InputSpec) -> str:
    return f"{list(spec.shape)} {spec.dtype}"


def _bundle_inputs(members: Sequence[_Member]) -> list[InputSpec]:
    """The bundle's model inputs: each name once, in the order members first read them;
    a name read with another shape or dtype than before is refused, naming both files."""
    seen: dict[str, tuple[InputSpec, Path]] = {}
    for m in members:
        for spec in m.specs:
            if spec.name not in seen:
                seen[spec.name] = (spec, m.path)
                continue
            first, where = seen[spec.name]
            if (spec.shape, spec.dtype) != (first.shape, first.dtype):
                raise InputError(
                    f"input {spec.name!r} is {_describe(spec)}, but {_describe(first)} in "
                    f"{where.name}; members must agree on every input they share",
                    source=m.path,
                )
    return [spec for spec, _ in seen.values()]


def _one_input(members: Sequence[_Member]) -> tuple[list[InputSpec], list[_Member]]:
    """Members of one input each: the same shape and dtype, renamed to the first's name."""
    first = members[0].specs[0]
    renamed = [members[0]]
    for m in members[1:]:
        spec = m.specs[0]
        if (spec.shape, spec.dtype) != (first.shape, first.dtype):
            raise InputError(
                f"input {spec.shape} {spec.dtype} differs from {members[0].path.name}'s "
                f"{first.shape} {first.dtype}",
                source=m.path,
            )
        if spec.name != first.name:
            model = onnx.ModelProto()
            model.CopyFrom(m.model)
            _graph.rename_input(model, spec.name, first.name)
            m = _Member(m.path, m.original, model, (first,), m.classes)
        renamed.append(m)
    return [first], renamed


def _check_member(m: _Member) -> None:
    """The prepared member must compute what the source model computes."""
    source_names = [i.name for i in _graph.graph_inputs(m.original)]
    out = m.model.graph.output[0].name
    try:
        got_sess, want_sess = _graph.session(m.model), _graph.session(m.original)
        for feeds in _graph.example_feeds(m.model, m.specs):
            got = got_sess.run([out], feeds)[0]
            # the source reads the same arrays under its own names (one input may be renamed)
            source_feeds = dict(zip(source_names, feeds.values(), strict=True))
            want = want_sess.run([m.original.graph.output[0].name], source_feeds)[0]
            err, ok = _graph.worst_error(got, want)
            if not ok:
                raise InputError(f"parity check failed (max abs error {err:.3g})", source=m.path)
    except InputError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types
        raise InputError(
            f"ONNX Runtime cannot run the model with a dynamic batch axis: {e}", source=m.path
        ) from None


def export_family(
    model_paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    force: bool = False,
) -> Bundle:
    """Write the classifiers at `model_paths` as an ensemble bundle, cheapest state first.

    `names` (default: the file stems) name the states in the given order. The bundle's
    inputs are every input a member reads (see the module docstring).
    """
    paths = [Path(p) for p in model_paths]
    if len(paths) < 2:
        raise InputError("a family needs at least two models", source="model_paths")
    if names is not None and len(names) != len(paths):
        raise InputError(f"{len(names)} names for {len(paths)} models", source="names")
    state_names = list(names) if names is not None else _state_names(paths)
    members = []
    for path in paths:
        member = _prepare(path)
        if members and member.classes != members[0].classes:
            raise InputError(
                f"{member.classes} classes, but {members[0].path.name} has {members[0].classes}",
                source=path,
            )
        members.append(member)
    if all(len(m.specs) == 1 for m in members):
        specs, members = _one_input(members)
    else:
        specs = _bundle_inputs(members)
    for m in members:
        _check_member(m)
    flops = [count_flops(m.model).flops for m in members]
    order = sorted(range(len(members)), key=lambda k: flops[k])
    return write_bundle(
        out_dir,
        kind="ensemble",
        **({"input": specs[0]} if len(specs) == 1 else {"inputs": specs}),
        num_classes=members[0].classes,
        models=[members[k].model for k in order],
        state_names=[state_names[k] for k in order],
        producer={
            "exporter": "edgeadapt.exporters.family",
            "sources": [members[k].path.name for k in order],
            "source_sha256": [file_sha256(members[k].path) for k in order],
        },
        force=force,
    )
