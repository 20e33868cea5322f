"""Calibration sets read a batch at a time, never whole.

A calibration set is any labelled data source (`edgeadapt.data.sources.open_source`): an
npz with one array per graph input, named as the input, plus ``y`` (the labels; a
single-input model also accepts its array as ``x``), a loader script yielding
``(feeds, labels)``, or images in class folders or a CSV list. It is checked up front as
far as can be done without reading samples and streamed a batch at a time (the reader
`run` and `evaluate` use, with the same rules and errors), so a set of 2,000 images at
224 px does not have to fit in memory next to the activations. The head fit needs the
sample count first: a loader script is read through once to count (and check) its
samples, then again to fit, and must yield the same samples both times.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeadapt.data.batches import Inputs
from edgeadapt.data.sources import DataSpec, ScriptInputs, count_rows, open_source
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import InputSpec

#: Where the class count of calibration labels comes from, for errors.
_OF = "the model's logits"


@dataclass(frozen=True)
class Calibration:
    """A validated calibration set: `n` labelled samples of every model input."""

    path: Path
    inputs: Inputs
    n: int
    num_classes: int

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.inputs.specs]

    def batches(self, size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """(feeds by input name, labels) for consecutive batches of at most `size`."""
        for _, feeds, y in self.inputs.labelled(size, self.num_classes, of=_OF):
            yield feeds, y


def open_calibration(
    path: str | os.PathLike[str] | DataSpec, specs: Sequence[InputSpec], num_classes: int
) -> Calibration:
    """Check the calibration set at `path` against the model inputs `specs` and the
    class count (an npz's labels are read now, its samples later); errors name the file
    and the array (or the script's batch, or the image)."""
    inputs = open_source(path, specs)
    n = count_rows(inputs, num_classes, of=_OF)
    if n < 2:
        field = "y" if inputs.kind == "npz" else None
        raise InputError("needs at least 2 samples", source=inputs.source, field=field)
    if not isinstance(inputs, ScriptInputs):  # label errors before the model runs
        inputs.labels(num_classes, _OF)
    return Calibration(Path(str(path)), inputs, n, num_classes)
