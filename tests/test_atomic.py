"""Directory transactions: the swap, its fallback, the cleanup of dead writers' temps."""

import os
import subprocess
import sys

import pytest

from edgeadapt.formats import atomic


def _tree(path, text):
    path.mkdir()
    (path / "f.txt").write_text(text)
    return path


def _dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(proc.stdout)


@pytest.mark.parametrize("swap", [True, False], ids=["renameat2", "two-renames"])
def test_replace_directory_swaps_in_the_new_tree(tmp_path, monkeypatch, swap):
    if not swap:  # a kernel or filesystem without RENAME_EXCHANGE
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)
    out = _tree(tmp_path / "out", "old")
    with atomic.staged_directory(out) as tmp:
        (tmp / "f.txt").write_text("new")
        atomic.replace_directory(tmp, out)
    assert (out / "f.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # neither temp nor old tree left


def test_replace_directory_into_an_absent_target(tmp_path):
    out = tmp_path / "deeper" / "out"
    with atomic.staged_directory(out) as tmp:
        (tmp / "f.txt").write_text("new")
        atomic.replace_directory(tmp, out)
    assert [p.name for p in out.parent.iterdir()] == ["out"]
    assert (out / "f.txt").read_text() == "new"


def test_a_failed_build_leaves_the_target_and_no_temp(tmp_path):
    out = _tree(tmp_path / "out", "old")

    def build() -> None:
        with atomic.staged_directory(out) as tmp:
            (tmp / "f.txt").write_text("half")
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build()
    assert (out / "f.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_clean_stale_removes_only_dead_writers_temps(tmp_path):
    dead = _tree(tmp_path / f"{atomic.TMP_PREFIX}b-{_dead_pid()}-abcd_123", "x")
    dead_old = _tree(tmp_path / f"{dead.name}-old", "x")
    mine = _tree(tmp_path / f"{atomic.TMP_PREFIX}b-{os.getpid()}-abcd_123", "x")
    live = _tree(tmp_path / f"{atomic.TMP_PREFIX}b-{os.getppid()}-abcd_123", "x")
    other = _tree(tmp_path / f"{atomic.TMP_PREFIX}not-a-writer", "x")
    assert sorted(atomic.clean_stale(tmp_path)) == sorted([dead, dead_old])
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in (mine, live, other))
