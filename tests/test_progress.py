"""edgeadapt.commands.progress: the bars on stderr, with the samples per second."""

from __future__ import annotations

import io
import sys

import pytest

from edgeadapt.commands import progress
from edgeadapt.commands.progress import progress_on_first_call, rate_text


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_rate_text():
    assert rate_text(2500, 2.0) == "1,250 samples/s"
    assert rate_text(10, 0.0) == ""


@pytest.mark.parametrize("total", [300, None], ids=["known total", "loader script"])
def test_progress_shows_the_rate_since_the_first_call(monkeypatch, total):
    clock = iter([100.0, 102.0, 104.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with progress_on_first_call("evaluating", show=True) as update:
        update(100, total)  # the first batch: the clock starts here
        update(300, total)  # 200 samples in 2 s
    assert "100 samples/s" in err.getvalue()


def test_progress_off_writes_nothing(monkeypatch):
    err = _Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    with progress_on_first_call("evaluating", show=False) as update:
        update(100, 300)
    assert err.getvalue() == ""
