"""Cheap second precisions of a bundle for the variants tests: every float32 weight
rounded to float16 and back (float32 I/O, same names), written as a bundle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgeadapt.formats.bundle import Bundle, Step, load_bundle, write_bundle


def rounded_variant(source: Path, out: Path, precision: str = "fp16r") -> Bundle:
    """`source` with its float32 initializers rounded through float16, as a bundle whose
    ``extra.precision`` is `precision`."""
    b = load_bundle(source)
    steps = []
    for st in b.steps:
        model = onnx.load(str(st.path))
        for t in model.graph.initializer:
            arr = numpy_helper.to_array(t)
            if arr.dtype == np.float32:
                rounded = arr.astype(np.float16).astype(np.float32)
                t.CopyFrom(numpy_helper.from_array(rounded, t.name))
        steps.append(Step(model, st.logits, st.activation))
    return write_bundle(
        out,
        kind="early-exit",
        inputs=b.inputs,
        num_classes=b.num_classes,
        steps=steps,
        state_names=[s.name for s in b.states],
        producer={"exporter": "tests.variants", "source_sha256": b.manifest_sha256},
        extra={"precision": precision},
    )
