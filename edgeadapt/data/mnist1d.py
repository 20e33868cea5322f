"""MNIST-1D, generated locally and deterministically, split for train / calibration / test.

The demo, the examples and the accuracy tests all draw their data from here, so the
same seed always gives the same arrays on every machine. `mnist1d.data.make_dataset`
builds the signals from templates (no download); only `get_dataset` would fetch a file,
and it is never called.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from edgeadapt.errors import InputError, MissingExtraError

NUM_CLASSES = 10
SIGNAL_LENGTH = 40
#: The seed the shipped demo bundles were trained with (their test split is disjoint
#: from their training split only for this seed).
DEFAULT_SEED = 42
#: The seed of the extra calibration draw (`mnist1d_calibration`): a generation of its
#: own, so none of its samples is one the shipped bundles were trained on.
CALIBRATION_SEED = 4242
#: Calibration samples the demo plans on: the 2,500 of `mnist1d_splits` and an extra
#: draw (`calibration_samples`).
DEMO_CALIBRATION = 10_000


@dataclass(frozen=True)
class Split:
    """One labelled split: `x` float32 `[N, 1, 40]`, `y` int64 `[N]`."""

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class MNIST1DSplits:
    """The three disjoint splits drawn from one generated data set."""

    train: Split
    calibration: Split
    test: Split
    seed: int


def mnist1d_splits(
    seed: int = DEFAULT_SEED,
    *,
    n_train: int = 4000,
    n_calibration: int = 2500,
    n_test: int = 2500,
) -> MNIST1DSplits:
    """Generate MNIST-1D with `seed` and cut it into train, calibration and test splits.

    The training size is MNIST-1D's published one (4000); 2500 calibration and 2500
    test samples put the standard error of a 94% accuracy near 0.5 points. The global `random` and
    `numpy.random` states that `mnist1d` seeds are restored afterwards.
    """
    for name, n in (("n_train", n_train), ("n_calibration", n_calibration), ("n_test", n_test)):
        _check_count(n, name)
    total = n_train + n_calibration + n_test
    x, y = _generate(seed, total)
    bounds = np.cumsum([n_train, n_calibration])
    xs, ys = np.split(x, bounds), np.split(y, bounds)
    return MNIST1DSplits(
        train=Split(xs[0], ys[0]),
        calibration=Split(xs[1], ys[1]),
        test=Split(xs[2], ys[2]),
        seed=seed,
    )


def mnist1d_calibration(n: int, seed: int = CALIBRATION_SEED) -> Split:
    """`n` more calibration samples: MNIST-1D generated anew with `seed`.

    A risk-controlled promise is worth as much as its testing split is large (at a
    0.5-point promise, 1,250 samples tolerate about two losses), and the calibration
    split of `mnist1d_splits` cannot grow without changing the training split the
    shipped bundles were trained on. A separate generation draws from the same
    distribution (same templates and transforms) with other randomness, so it adds
    exchangeable samples none of which is a training sample (tests check it).
    """
    _check_count(n, "n")
    x, y = _generate(seed, n)
    return Split(x, y)


def calibration_samples(splits: MNIST1DSplits, n: int = DEMO_CALIBRATION) -> Split:
    """`n` calibration samples: the calibration split of `splits`, then as many samples
    of `mnist1d_calibration` as it takes (none when the split holds `n` already; it is
    cut to `n` when it holds more)."""
    _check_count(n, "n")
    own = splits.calibration
    if n <= len(own.y):
        return Split(own.x[:n], own.y[:n])
    extra = mnist1d_calibration(n - len(own.y))
    return Split(np.concatenate([own.x, extra.x]), np.concatenate([own.y, extra.y]))


def _check_count(n: object, name: str) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InputError(f"must be a positive integer, got {n!r}", field=name)


def _generate(seed: int, total: int) -> tuple[np.ndarray, np.ndarray]:
    """The first `total` samples of MNIST-1D generated with `seed`: x ``[total, 1, 40]``."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise InputError(f"must be a non-negative integer, got {seed!r}", field="seed")
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise MissingExtraError("mnist1d", "demo", "the MNIST-1D data set") from e

    args = get_dataset_args()
    # make_dataset draws num_samples // 10 signals per class; round up, then trim.
    args.num_samples = -(-total // NUM_CLASSES) * NUM_CLASSES
    args.train_split = 1.0
    args.seed = seed

    # mnist1d seeds the legacy global generators; restore them for the caller.
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002

    x = np.asarray(data["x"], dtype=np.float32)[:total, None, :]
    y = np.asarray(data["y"], dtype=np.int64)[:total]
    return x, y
