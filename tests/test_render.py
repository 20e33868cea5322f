"""The shared text table and number formats."""

from __future__ import annotations

import math

import pytest

from edgeadapt.oracle.bound import oracle_cells
from edgeadapt.oracle.equations import OraclePoint
from edgeadapt.render import num, pct, ratio, saving, table


def test_table_aligns_numbers_right_and_names_left() -> None:
    text = table(["state", "ms"], [["exit0", "1.5"], ["exit10", "12.25"]])
    assert text.splitlines() == ["state      ms", "exit0     1.5", "exit10  12.25"]


def test_table_has_no_trailing_spaces_and_refuses_ragged_rows() -> None:
    text = table(["a", "b"], [["x", ""]], left=(0, 1))
    assert all(line == line.rstrip() for line in text.splitlines())
    with pytest.raises(ValueError, match="row 0 has 1 cells"):
        table(["a", "b"], [["x"]])


@pytest.mark.parametrize("fn", [num, ratio, pct])
def test_missing_values_print_as_dash(fn) -> None:  # type: ignore[no-untyped-def]
    assert fn(None) == "-"
    assert fn(math.nan) == "-"


def test_number_formats() -> None:
    assert num(0.123456) == "0.1235"
    assert num(123456.0) == "123,456.0"
    assert ratio(1.234) == "1.23x"
    assert pct(0.9312) == "93.1%"
    assert pct(0.0825, 2, signed=True) == "+8.25%"
    assert pct(-0.007, 2, signed=True) == "-0.70%"


def test_saving_in_words() -> None:
    assert saving(0.123) == "saves 12.3%"
    assert saving(-0.045) == "costs 4.5% more"
    assert saving(None) == "n/a"
    # a cost equal to the baseline but for rounding error saves nothing, either sign
    assert saving(-1e-12) == saving(1e-12) == saving(0.0) == "saves 0.0%"


def test_oracle_cells_in_column_order() -> None:
    point = OraclePoint(r_oracle=1.25, a_oracle=0.9, delta_r=3.75, r_ratio=4.0, delta_a=0.02)
    assert oracle_cells(point) == ["1.25", "90.00%", "3.75", "4.00x", "+2.00%"]
    assert oracle_cells(OraclePoint(0.0, 0.9, 5.0, None, 0.0))[3] == "-"
