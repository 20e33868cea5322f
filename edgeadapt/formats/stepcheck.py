"""What a step's outputs must look like before anyone reads them.

A runtime hands back whatever the ONNX graph computes. A step whose output lost the
batch axis (a fixed batch of 1, a reduction over rows) would otherwise broadcast one
row's answer to every sample, or, after compaction, index rows that do not exist; and
logits of another dtype or rank would be misread by the decision kernel. The cascade,
the evaluator and the profiler check every step's outputs here, at the cost of a few
attribute reads per output.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from edgeadapt.errors import InputError

__all__ = ["check_logits", "check_rows", "check_step"]

_FLOAT32 = np.dtype(np.float32)


def check_rows(out: Mapping[str, Any], rows: int, source: str | os.PathLike[str]) -> None:
    """Every output of one step call holds `rows` rows (axis 0 is the batch axis)."""
    for name, a in out.items():
        shape = getattr(a, "shape", ())
        if not shape or shape[0] != rows:
            raise InputError(
                f"has shape {list(shape)} for an input of {rows} row(s): every output of a "
                "step must keep the batch axis (axis 0) of its input",
                source=source,
                field=f"output {name!r}",
            )


def check_logits(
    logits: Any, rows: int, num_classes: int, source: str | os.PathLike[str], name: str
) -> None:
    """Logits are float32 ``[rows, num_classes]``: what the decision kernel reads."""
    shape = getattr(logits, "shape", ())
    if getattr(logits, "dtype", None) != _FLOAT32 or shape != (rows, num_classes):
        dtype = getattr(logits, "dtype", type(logits).__name__)
        raise InputError(
            f"logits are {dtype} {list(shape)}; expected float32 [{rows}, {num_classes}] "
            "(batch rows by the bundle's num_classes)",
            source=source,
            field=f"output {name!r}",
        )


def check_step(
    out: Mapping[str, Any],
    rows: int,
    logits: str,
    num_classes: int,
    source: str | os.PathLike[str],
) -> Mapping[str, Any]:
    """`check_rows` and `check_logits` on one step call's outputs; returns `out`."""
    check_rows(out, rows, source)
    check_logits(out[logits], rows, num_classes, source, logits)
    return out
