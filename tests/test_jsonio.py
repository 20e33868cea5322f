"""Strict JSON: atomic writes, NaN rejected both ways, errors that name file and path."""

import json
import os
import stat

import pytest

from edgeadapt.errors import InputError
from edgeadapt.formats.jsonio import Fields, read_json, write_json


def test_round_trip(tmp_path):
    p = tmp_path / "d.json"
    write_json(p, {"format": "x", "version": 1, "a": [1, 2]})
    assert read_json(p, fmt="x", versions=[1])["a"] == [1, 2]
    assert [q.name for q in tmp_path.iterdir()] == ["d.json"]  # no temp file left


def test_write_rejects_nan_and_keeps_old_file(tmp_path):
    p = tmp_path / "d.json"
    write_json(p, {"format": "x", "version": 1})
    with pytest.raises(InputError, match="non-finite"):
        write_json(p, {"format": "x", "version": 1, "v": float("nan")})
    assert json.loads(p.read_text()) == {"format": "x", "version": 1}
    assert len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"format": "x", "version": 1, "v": NaN}', "NaN is not allowed"),
        ('{"format": "x", "version": 1, "v": Infinity}', "Infinity is not allowed"),
        ('{"format": "y", "version": 1}', r"\$\.format"),
        ('{"format": "x", "version": 9}', r"\$\.version"),
        ('{"format": "x", "version": true}', r"\$\.version"),
        ("[1]", "expected a JSON object"),
        ("{", "invalid JSON"),
    ],
)
def test_read_rejects(tmp_path, text, match):
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(InputError, match=match) as info:
        read_json(p, fmt="x", versions=[1])
    assert "bad.json" in str(info.value)


def test_read_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_json(tmp_path / "nope.json", fmt="x", versions=[1])


def test_fields_name_the_path():
    f = Fields({"states": [{"cost": -1}], "n": True}, source="m.json")
    with pytest.raises(InputError, match=r"m\.json: \$\.states\[0\]\.cost: must be >= 0"):
        f.items("states")[0].number("cost", minimum=0)
    with pytest.raises(InputError, match=r"\$\.n: expected int, got bool"):
        f.get("n", int)
    with pytest.raises(InputError, match=r"\$\.missing: missing required field"):
        f.get("missing", str)


def test_written_files_follow_the_umask_not_mkstemp(tmp_path):
    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"format": "x", "version": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
