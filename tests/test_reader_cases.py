"""The Python readers on the shared table of reader cases (tests/reader_cases.json): the
bundle reader (`load_bundle`, verification included), the plan reader (`load_plan` and
`check_plan` against the shipped bundle) and `run`'s input reader (`run_to_file`) refuse
what the table refuses, with an error naming the file and the field, and accept the rest.
tests/test_native.py holds the native runner's `classify` to the same table."""

from __future__ import annotations

import gc
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from edgeadapt.cascade.run import run_to_file
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.plan import check_plan, load_plan
from tests.reader_cases import BUNDLE, Case, bundle_of, cases, make, source_of

#: the policies the native runner runs
NATIVE_POLICIES = ("threshold", "gate", "scheduler")


def _read(case: Case, made, tmp) -> None:
    if case.kind == "manifest":
        load_bundle(made)
    elif case.kind == "plan":
        bundle = load_bundle(bundle_of(case, tmp))
        check_plan(load_plan(made), bundle, str(made), policies=NATIVE_POLICIES)
    else:
        run_to_file(BUNDLE, made, thresholds=0.5, threads=1)


def _params(kind: str) -> list:
    return [
        pytest.param(c, id=c.id, marks=pytest.mark.xfail(reason=c.pending["python"]))
        if "python" in c.pending
        else pytest.param(c, id=c.id)
        for c in cases(kind)
    ]


@contextmanager
def _pending(case: Case) -> Iterator[None]:
    """A reader that does not follow the case yet may fail with another error and leave
    a file open on the way (zipfile's, on a truncated archive): the failure is kept as
    words and the file collected here, so its warning lands in this expected failure and
    not in a later test."""
    try:
        yield
    except Exception as e:
        if "python" not in case.pending:
            raise
        what = f"{type(e).__name__}: {e}"
        traceback.clear_frames(e.__traceback__)
        del e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
        raise AssertionError(f"not refused as an InputError: {what}") from None


@pytest.mark.parametrize("case", _params("manifest") + _params("plan") + _params("inputs"))
def test_the_python_readers_follow_the_shared_table(case: Case, tmp_path):
    made = make(case, tmp_path)
    if not case.refused:
        _read(case, made, tmp_path)
        return
    with _pending(case), pytest.raises(InputError) as e:
        _read(case, made, tmp_path)
    assert str(source_of(case, made)) in str(e.value)
    if case.field is not None:
        assert e.value.field == case.field, str(e.value)
    if case.words is not None:
        assert case.words in str(e.value)


def test_the_table_covers_every_reader_with_both_verdicts():
    for kind in ("manifest", "plan", "inputs"):
        verdicts = {c.refused for c in cases(kind)}
        assert verdicts == {True, False}, kind
        assert all(c.code is not None for c in cases(kind) if c.refused), kind
