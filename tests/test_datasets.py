"""MNIST-1D splits: deterministic, disjoint, typed, offline, with clear argument errors."""

from __future__ import annotations

import random
import socket
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.data.mnist1d import (
    CALIBRATION_SEED,
    DEFAULT_SEED,
    DEMO_CALIBRATION,
    calibration_samples,
    mnist1d_calibration,
    mnist1d_splits,
)
from edgeadapt.errors import InputError, MissingExtraError
from edgeadapt.formats.bundle import load_bundle

pytest.importorskip("mnist1d", reason="MNIST-1D needs the demo extra")

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
SMALL = {"n_train": 60, "n_calibration": 25, "n_test": 33}


@pytest.fixture(scope="module")
def splits():
    return mnist1d_splits(3, **SMALL)


def test_shapes_and_dtypes(splits):
    for split, n in [(splits.train, 60), (splits.calibration, 25), (splits.test, 33)]:
        assert split.x.shape == (n, 1, 40)
        assert split.x.dtype == np.float32
        assert split.y.shape == (n,)
        assert split.y.dtype == np.int64
        assert set(np.unique(split.y)) <= set(range(10))
        assert np.isfinite(split.x).all()
    assert splits.seed == 3


def test_same_seed_same_arrays_other_seed_differs(splits):
    again = mnist1d_splits(3, **SMALL)
    for a, b in [(splits.train, again.train), (splits.test, again.test)]:
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    other = mnist1d_splits(4, **SMALL)
    assert not np.array_equal(splits.train.x, other.train.x)


def test_splits_are_disjoint(splits):
    rows = [tuple(r) for s in (splits.train, splits.calibration, splits.test) for r in s.x[:, 0]]
    assert len(set(rows)) == len(rows)


def test_global_random_state_is_restored():
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    want = (random.random(), np.random.random())  # noqa: NPY002
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    mnist1d_splits(1, n_train=10, n_calibration=10, n_test=10)
    assert (random.random(), np.random.random()) == want  # noqa: NPY002


def test_no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("mnist1d_splits must not open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert len(mnist1d_splits(5, n_train=10, n_calibration=10, n_test=10).test.y) == 10


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_train": 0}, "n_train"),
        ({"n_calibration": -1}, "n_calibration"),
        ({"n_test": 2.5}, "n_test"),
        ({"n_test": True}, "n_test"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments(kwargs, field):
    with pytest.raises(InputError, match=field):
        mnist1d_splits(**kwargs)


def test_missing_mnist1d(monkeypatch):
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(MissingExtraError, match=r"edgeadapt\[demo\]"):
        mnist1d_splits(0, n_train=10, n_calibration=10, n_test=10)


def test_extra_calibration_draw_is_deterministic_and_typed():
    a = mnist1d_calibration(30)
    b = mnist1d_calibration(30)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert a.x.shape == (30, 1, 40)
    assert a.x.dtype == np.float32
    assert a.y.dtype == np.int64
    assert not np.array_equal(a.x, mnist1d_calibration(30, seed=CALIBRATION_SEED + 1).x)
    with pytest.raises(InputError, match="n"):
        mnist1d_calibration(0)


def _rows(x: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in x.reshape(len(x), -1)}


def test_demo_calibration_holds_no_training_or_test_sample():
    """The samples the demo calibrates the shipped bundles on: none of them is one the
    bundles were trained on (their seed's full train split), nor a test sample."""
    splits = mnist1d_splits(DEFAULT_SEED)
    calib = calibration_samples(splits)
    assert len(calib.y) == DEMO_CALIBRATION
    np.testing.assert_array_equal(calib.x[:2500], splits.calibration.x)
    rows = _rows(calib.x)
    assert len(rows) == DEMO_CALIBRATION  # no sample twice
    assert not rows & _rows(splits.train.x)
    assert not rows & _rows(splits.test.x)
    # these are the splits the shipped bundles were trained on
    for name in ("mnist1d-resnet", "mnist1d-multiexit", "mnist1d-family"):
        training = load_bundle(BUNDLES / name).extra["training"]
        assert (training["seed"], training["train_samples"]) == (splits.seed, len(splits.train.y))


def test_calibration_samples_cut_to_n(splits):
    few = calibration_samples(splits, 10)
    np.testing.assert_array_equal(few.x, splits.calibration.x[:10])
    more = calibration_samples(splits, 40)
    np.testing.assert_array_equal(more.x[:25], splits.calibration.x)
    np.testing.assert_array_equal(more.x[25:], mnist1d_calibration(15).x)
