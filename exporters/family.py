"""Family exporter: independent ONNX classifiers of different sizes -> an ensemble bundle.

Every member must take the same input (shape and dtype; a different input name is
renamed to the first model's) and output ``[batch, classes]`` logits with the same class
count. States are ordered by FLOPs (ties keep the given order), and each member is
checked to reproduce its source model on random inputs of batch 1 and 7.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import onnx

from edgeadapt.bundle import Bundle, write_bundle
from edgeadapt.digest import file_sha256
from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph
from edgeadapt.flops import count_flops


def _state_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        name, k = p.stem, 2
        while name in names:
            name, k = f"{p.stem}-{k}", k + 1
        names.append(name)
    return names


def _check_member(model: onnx.ModelProto, original: onnx.ModelProto, source: Path) -> None:
    """The prepared member must compute what the source model computes."""
    spec = _graph.input_spec(model, source)
    want_in = _graph.graph_inputs(original)[0].name
    out = model.graph.output[0].name
    try:
        got_sess, want_sess = _graph.session(model), _graph.session(original)
        for x in _graph.example_inputs(spec):
            got = got_sess.run([out], {spec.name: x})[0]
            want = want_sess.run([out], {want_in: x})[0]
            err, ok = _graph.worst_error(got, want)
            if not ok:
                raise InputError(f"parity check failed (max abs error {err:.3g})", source=source)
    except InputError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types
        raise InputError(
            f"ONNX Runtime cannot run the model with a dynamic batch axis: {e}", source=source
        ) from None


def export_family(
    model_paths: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str] | None = None,
    force: bool = False,
) -> Bundle:
    """Write the classifiers at `model_paths` as an ensemble bundle, cheapest state first.

    `names` (default: the file stems) name the states in the given order.
    """
    paths = [Path(p) for p in model_paths]
    if len(paths) < 2:
        raise InputError("a family needs at least two models")
    if names is not None and len(names) != len(paths):
        raise InputError(f"{len(names)} names for {len(paths)} models", field="--name")
    state_names = list(names) if names is not None else _state_names(paths)
    members = []
    first = None
    for path in paths:
        original = _graph.load_source(path)
        model = _graph.with_dynamic_batch(original, path, single=True)
        spec = _graph.input_spec(model, path)
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
        if first is None:
            first = (spec, tail[0], path)
        else:
            spec0, classes0, path0 = first
            if (spec.shape, spec.dtype) != (spec0.shape, spec0.dtype):
                raise InputError(
                    f"input {spec.shape} {spec.dtype} differs from {path0.name}'s "
                    f"{spec0.shape} {spec0.dtype}",
                    source=path,
                )
            if tail[0] != classes0:
                raise InputError(f"{tail[0]} classes, but {path0.name} has {classes0}", source=path)
            if spec.name != spec0.name:
                _graph.rename_input(model, spec.name, spec0.name)
        _check_member(model, original, path)
        members.append((count_flops(model).flops, model, path))
    assert first is not None
    order = sorted(range(len(members)), key=lambda k: members[k][0])
    return write_bundle(
        out_dir,
        kind="ensemble",
        input=first[0],
        num_classes=first[1],
        models=[members[k][1] for k in order],
        state_names=[state_names[k] for k in order],
        producer={
            "exporter": "edgeadapt.exporters.family",
            "sources": [members[k][2].name for k in order],
            "source_sha256": [file_sha256(members[k][2]) for k in order],
        },
        force=force,
    )
