"""Calibration sets read from an ``.npz`` a batch at a time, never whole.

A calibration npz holds one array per graph input, named as the input, plus ``y`` (the
labels); a single-input model also accepts its array as ``x``. The arrays are checked
from their ``.npy`` headers up front and streamed a batch at a time
(`edgeadapt.data.batches`, the reader `run` and `evaluate` use, with the same rules and
errors), so a set of 2,000 images at 224 px does not have to fit in memory next to the
activations.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeadapt.data.batches import Inputs, open_inputs, read_labels
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import InputSpec


@dataclass(frozen=True)
class Calibration:
    """A validated calibration npz: `n` samples of every model input, labels `y`."""

    path: Path
    inputs: Inputs
    y: np.ndarray

    @property
    def n(self) -> int:
        return self.inputs.rows

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.inputs.specs]

    def batches(self, size: int) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """(feeds by input name, labels) for consecutive batches of at most `size`."""
        for lo, feeds in self.inputs.batches(size):
            yield feeds, self.y[lo : lo + next(iter(feeds.values())).shape[0]]


def open_calibration(
    path: str | os.PathLike[str], specs: Sequence[InputSpec], num_classes: int
) -> Calibration:
    """Check the npz at `path` against the model inputs `specs` and the class count
    (without reading the sample data); errors name the file and the array."""
    path = Path(path)
    inputs = open_inputs(path, specs)
    y = read_labels(path, inputs.rows, num_classes, of="the model's logits")
    if inputs.rows < 2:
        raise InputError("needs at least 2 samples", source=path, field="y")
    return Calibration(path, inputs, y.astype(np.int64))
