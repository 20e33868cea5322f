"""The whole model a profile times beside the steps: the static baseline.

The unsplit network a user would otherwise deploy: composed from the bundle by
`edgeadapt.exporters.compose.whole_model` (backbone and last head, or an ensemble's last
member), or the user's original ONNX file. A user's file is checked against the bundle
before it is timed: it must read exactly the bundle's model inputs (names, dtypes, and
every dimension after the batch) and give the last state's logits (the output of that
name, or its only output) as ``[batch, classes]``; each refusal names the file and the
tensor. `edgeadapt.measure.profiler` records the provenance (origin, path, sha256 of the bytes
timed, the state it stands for) next to the timings.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.bundle import Bundle
from edgeadapt.formats.digest import file_sha256
from edgeadapt.formats.jsonio import check_regular

__all__ = ["WholeModel", "load_whole", "prepare_whole", "whole_run"]


@dataclass
class WholeModel:
    """The whole model to time beside the steps: its file, its provenance (the profile's
    ``whole_model`` entry), and once loaded its session and logits output."""

    path: Path
    provenance: dict[str, Any]
    session: Any = None
    logits: str = ""


def _bundle_inputs(bundle: Bundle) -> dict[str, Any]:
    """The bundle's model inputs by name (the tensors a whole model must read)."""
    return {spec.name: spec for spec in bundle.inputs}


def prepare_whole(
    bundle: Bundle, whole: bool | str | os.PathLike[str], tmp: Path
) -> WholeModel | None:
    """The file to time as the whole model: composed from the bundle into `tmp`, or the
    user's; None with ``whole=False``."""
    if whole is False:
        return None
    last = bundle.states[-1].name
    if whole is True:
        from edgeadapt.exporters.compose import whole_model  # not a floor below measure

        try:
            data = whole_model(bundle).SerializeToString()
        except InputError as e:
            raise InputError(
                f"cannot compose the whole model to time beside the steps ({e}); "
                "give the original model (--whole MODEL.onnx) or skip it (--no-whole)",
                source=e.source,
                field=e.field,
            ) from None
        path = tmp / "whole.onnx"
        path.write_bytes(data)
        origin, shown = "composed", None
    else:
        path = check_regular(whole)  # a FIFO would block the hash below
        origin, shown = "file", str(path)
    try:
        sha = file_sha256(path)
    except OSError as e:
        raise InputError(f"cannot read the whole model: {e.strerror}", source=path) from None
    return WholeModel(path, {"origin": origin, "path": shown, "sha256": sha, "state": last})


def load_whole(rt: Any, bundle: Bundle, whole: WholeModel) -> None:
    """Load the whole model and check it reads the bundle's inputs and gives the last
    state's logits; errors name the file."""
    path = whole.path
    try:
        session = rt.load(path)
    except InputError as e:
        if e.source != str(path):
            raise
        said = str(e).removeprefix(f"{path}: ")
        raise InputError(f"cannot load the whole model ({said})", source=path) from None
    whole.session = session
    wanted = _bundle_inputs(bundle)
    got = {t.name: t for t in session.inputs}
    if set(got) != set(wanted):
        raise InputError(
            f"whole model reads {sorted(got)}, the bundle's model inputs are {sorted(wanted)}",
            source=path,
            field="inputs",
        )
    for name, spec in wanted.items():
        t = got[name]
        rest = tuple(int(d) for d in spec.shape[1:])
        if t.dtype != np.dtype(spec.dtype) or len(t.shape) != 1 + len(rest):
            raise InputError(
                f"input {t} does not fit the bundle's {name}: {spec.dtype}[batch, "
                f"{', '.join(map(str, rest))}]",
                source=path,
                field=f"inputs.{name}",
            )
        if any(d is not None and d != r for d, r in zip(t.shape[1:], rest, strict=True)):
            raise InputError(
                f"input {t} does not fit the bundle's {name}: [batch, {', '.join(map(str, rest))}]",
                source=path,
                field=f"inputs.{name}",
            )
    logits = bundle.steps[-1].logits
    outputs = {t.name: t for t in session.outputs}
    if logits not in outputs and len(outputs) != 1:
        raise InputError(
            f"whole model has outputs {sorted(outputs)}: expected the last state's logits "
            f"{logits!r} or a single output",
            source=path,
            field="outputs",
        )
    out = outputs.get(logits) or next(iter(outputs.values()))
    classes = bundle.num_classes
    if len(out.shape) != 2 or out.shape[1] not in (None, classes):
        raise InputError(
            f"output {out} is not [batch, {classes}] logits like the bundle's last state",
            source=path,
            field=f"outputs.{out.name}",
        )
    whole.logits = out.name


def whole_run(
    whole: WholeModel, tensors: Mapping[str, np.ndarray], batch: int
) -> Callable[[], Any]:
    """The untimed first call of the whole model at `batch` (checked), then its timed call."""
    feeds = {t.name: tensors[t.name] for t in whole.session.inputs}
    try:
        got = whole.session.run(feeds, check=True)[whole.logits]
    except EdgeadaptError as e:
        raise InputError(f"whole model fails at batch {batch}: {e}", source=whole.path) from None
    if got.shape[0] != batch:
        raise InputError(
            f"whole model gives {got.shape[0]} rows of logits at batch {batch}",
            source=whole.path,
            field=f"outputs.{whole.logits}",
        )
    return partial(whole.session.run, feeds, check=False)
