"""The state table: a CSV with a header and columns ``name,cost,accuracy``.

One row per state, in any order; cost in any unit (GFLOPs, ms); accuracy a fraction in
[0, 1]. Other columns (a source, a note) are kept out of the way; lines starting with
``#`` are comments. Errors name the file, the line and the column.

`table_states` joins a table with an evaluation (per-sample results of the same states,
by name): the evaluation's states, costs from the table, accuracies from the results.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeadapt.errors import InputError
from edgeadapt.formats.evaluation import check_classes, load_evaluation
from edgeadapt.formats.jsonio import read_text

__all__ = ["COLUMNS", "StateTable", "TableStates", "load_state_table", "table_states"]

COLUMNS = ("name", "cost", "accuracy")


@dataclass(frozen=True)
class StateTable:
    """The rows of a state table, in file order."""

    names: tuple[str, ...]
    costs: tuple[float, ...]
    accuracies: tuple[float, ...]
    source: str


def _number(text: str, path: Path, line: int, column: str) -> float:
    where = f"line {line}, column {column}"
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"not a number: {text!r}", source=path, field=where) from None
    if not math.isfinite(value):
        raise InputError(f"must be finite, got {text!r}", source=path, field=where)
    return value


def _columns(header: list[str], path: Path, line: int) -> dict[str, int]:
    """Where each of `COLUMNS` is in the `header` (on `line`): each once."""
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InputError(
            f"missing column(s) {', '.join(missing)} (header: {','.join(header)})",
            source=path,
            field=f"line {line}",
        )
    dup = sorted({h for h in header if header.count(h) > 1 and h in COLUMNS})
    if dup:
        raise InputError(f"column(s) {', '.join(dup)} given twice", source=path)
    return {c: header.index(c) for c in COLUMNS}


def load_state_table(path: str | os.PathLike[str]) -> StateTable:
    """Read and check a state table (see the module docstring)."""
    path = Path(path)
    text = read_text(path, encoding="utf-8-sig")  # -sig: spreadsheets write a BOM
    numbered = [
        (i, line)
        for i, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not numbered:
        raise InputError("empty table: need a header 'name,cost,accuracy' and rows", source=path)
    rows = [next(csv.reader([line])) for _, line in numbered]
    header = [h.strip().lower() for h in rows[0]]
    col = _columns(header, path, numbered[0][0])
    if len(rows) == 1:
        raise InputError("empty table: a header but no states", source=path)
    names: list[str] = []
    costs: list[float] = []
    accs: list[float] = []
    first_line: dict[str, int] = {}
    for (line, _), row in zip(numbered[1:], rows[1:], strict=True):
        if len(row) != len(header):
            raise InputError(
                f"{len(row)} fields, header has {len(header)}", source=path, field=f"line {line}"
            )
        name = row[col["name"]].strip()
        if not name:
            raise InputError("empty name", source=path, field=f"line {line}, column name")
        if name in first_line:
            raise InputError(
                f"duplicate state name {name!r} (first on line {first_line[name]})",
                source=path,
                field=f"line {line}, column name",
            )
        first_line[name] = line
        cost = _number(row[col["cost"]].strip(), path, line, "cost")
        if cost < 0:
            raise InputError(
                f"cost must be >= 0, got {cost}", source=path, field=f"line {line}, column cost"
            )
        acc = _number(row[col["accuracy"]].strip(), path, line, "accuracy")
        if not 0.0 <= acc <= 1.0:
            hint = " (give a fraction: 0.8395, not 83.95)" if 1.0 < acc <= 100.0 else ""
            raise InputError(
                f"accuracy must be in [0, 1], got {acc}{hint}",
                source=path,
                field=f"line {line}, column accuracy",
            )
        names.append(name)
        costs.append(cost)
        accs.append(acc)
    return StateTable(tuple(names), tuple(costs), tuple(accs), str(path))


@dataclass(frozen=True)
class TableStates:
    """States with costs and accuracies, and per-sample correctness when an evaluation
    gave them (None otherwise); `ignored` lists the table rows the evaluation lacks,
    `source` the file the figures come from (the evaluation, else the table)."""

    names: tuple[str, ...]
    costs: np.ndarray
    accuracies: np.ndarray
    correct: np.ndarray | None
    ignored: tuple[str, ...]
    source: str


def table_states(
    table: str | os.PathLike[str],
    evaluation: str | os.PathLike[str] | None = None,
    classes: int | None = None,
) -> TableStates:
    """The states of a state table, or with `evaluation` the evaluation's states with
    their costs taken from the table by name (every state must be in the table); with
    `classes`, its labels and predictions must be class indices below it (and the class
    count it records, if any, equal)."""
    rows = load_state_table(table)
    if evaluation is None:
        return TableStates(
            rows.names, np.array(rows.costs), np.array(rows.accuracies), None, (), rows.source
        )
    ev = load_evaluation(evaluation)
    if classes is not None:
        if ev.num_classes not in (None, classes):
            raise InputError(
                f"records {ev.num_classes} classes, not the {classes} given",
                source=evaluation,
                field="num_classes",
            )
        for field in ("labels", "pred"):
            check_classes(
                getattr(ev, field), classes, source=evaluation, field=field, of="--classes"
            )
    cost_of = dict(zip(rows.names, rows.costs, strict=True))
    for name in ev.names:
        if name not in cost_of:
            raise InputError(
                f"state {name!r} is not in the table {table}", source=evaluation, field="states"
            )
    names = tuple(ev.names)
    correct = ev.correct
    return TableStates(
        names,
        np.array([cost_of[n] for n in names]),
        correct.mean(axis=0),
        correct,
        tuple(n for n in rows.names if n not in set(names)),
        str(evaluation),
    )
