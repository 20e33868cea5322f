"""The name,cost,accuracy state table: parsing, and faults that name line and column."""

from pathlib import Path

import pytest

from edgeadapt.errors import InputError
from edgeadapt.formats.statetable import load_state_table

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def table(tmp_path, text):
    p = tmp_path / "t.csv"
    p.write_text(text)
    return p


def test_parses_comments_extra_columns_any_order(tmp_path):
    p = table(tmp_path, "# source: a card\naccuracy,name,cost,note\n0.8,big,10,x\n0.5,small,1,y\n")
    t = load_state_table(p)
    assert t.names == ("big", "small")
    assert t.costs == (10.0, 1.0)
    assert t.accuracies == (0.8, 0.5)


@pytest.mark.parametrize(
    "path",
    [
        EXAMPLES / "efficientnet-torchvision.csv",
        EXAMPLES / "imagenet-val-predictions" / "gmacs.csv",
        EXAMPLES / "imagenet-val-predictions" / "gmacs-vit.csv",
    ],
)
def test_examples_load(path):
    assert len(load_state_table(path).names) >= 5


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", "empty table"),
        ("# only a comment\n", "empty table"),
        ("name,cost,accuracy\n", "a header but no states"),
        ("name,accuracy\na,0.5\n", "line 1: missing column.*cost"),
        ("name,cost,accuracy\na,nan,0.5\n", "line 2, column cost: must be finite"),
        ("name,cost,accuracy\na,-1,0.5\n", "line 2, column cost: cost must be >= 0"),
        ("name,cost,accuracy\na,1,83.95\n", r"line 2, column accuracy.*0.8395, not 83.95"),
        ("name,cost,accuracy\na,1,abc\n", "line 2, column accuracy: not a number"),
        ("name,cost,accuracy\na,1,0.5\n\na,2,0.6\n", r"line 4, column name: duplicate.*line 2"),
        ("name,cost,accuracy\na,1\n", "line 2: 2 fields"),
        ("name,cost,accuracy\n,1,0.5\n", "line 2, column name: empty name"),
        ("name,cost,cost,accuracy\na,1,1,0.5\n", "given twice"),
    ],
)
def test_faults_name_line_and_column(tmp_path, text, match):
    p = table(tmp_path, text)
    with pytest.raises(InputError, match=match) as info:
        load_state_table(p)
    assert str(p) in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        load_state_table(tmp_path / "none.csv")
