"""`edgeadapt.data.inputs.BatchCheck`: the quick acceptance of a batch for a fixed list of
input specs, and its exact finiteness test."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.data.inputs import BatchCheck, _finite_test
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"


def _x(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 1, 40)).astype(np.float32)


def test_batch_check_accepts_what_check_batch_accepts():
    bundle = load_bundle(BUNDLES / "mnist1d-family")
    check = BatchCheck(bundle.inputs)
    x = _x(5)
    assert check.array(x) is x
    assert check(x)[bundle.input.name] is x
    # a float64 batch of the largest finite values (a sum would overflow): finite
    huge = np.full((1, 1, 40), np.finfo(np.float64).max)
    check64 = BatchCheck([_float64_spec(bundle)])
    assert check64.array(huge) is huge
    huge[0, 0, 7] = np.inf
    assert check64.array(huge) is None
    with pytest.raises(InputError, match="NaN or infinity"):
        check64(huge)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 3, 40, 255, 256, 257, 2000, 70000])
def test_the_finiteness_bit_test_agrees_with_numpy(dtype, size):
    rng = np.random.default_rng(size)
    info = np.finfo(dtype)
    special = np.array(
        [0.0, -0.0, info.max, -info.max, info.tiny, info.smallest_subnormal, -info.eps, 1.0],
        dtype=dtype,
    )
    test = _finite_test(np.dtype(dtype))
    for trial in range(30):
        x = rng.standard_normal(size).astype(dtype)
        x[rng.random(size) < 0.3] = rng.choice(special)
        if trial % 3:
            x[rng.integers(size)] = rng.choice(np.array([np.nan, np.inf, -np.inf], dtype=dtype))
        assert test(x) == bool(np.isfinite(x).all()), (trial, x)
        assert test(x.reshape(1, 1, size)) == bool(np.isfinite(x).all())


def _float64_spec(bundle):
    return replace(bundle.input, dtype="float64")


def test_batch_check_of_several_inputs_accepts_or_words_the_error_as_check_batch():
    from edgeadapt.data.inputs import check_batch
    from edgeadapt.formats.bundle import InputSpec

    specs = [
        InputSpec("input_ids", ("batch", 8), "int64"),
        InputSpec("features", ("batch", 4), "float32"),
    ]
    check = BatchCheck(specs)
    assert check.single is None
    ok = {"input_ids": np.zeros((3, 8), np.int64), "features": np.ones((3, 4), np.float32)}
    assert check(ok) is ok  # accepted as it is: nothing converted
    nan = {**ok, "features": np.where(np.eye(3, 4, dtype=bool), np.nan, 1).astype(np.float32)}
    bad = [
        {**ok, "input_ids": ok["input_ids"].astype(np.int32)},
        {**ok, "features": ok["features"][:2]},
        {"input_ids": ok["input_ids"]},
        {**ok, "extra": ok["features"]},
        nan,
        ok["features"],
    ]
    for x in bad:
        with pytest.raises(InputError) as want:
            check_batch(specs, x, source="input")
        with pytest.raises(InputError) as got:
            check(x)
        assert str(got.value) == str(want.value)


def test_a_mapping_for_a_one_input_bundle_is_accepted_as_it_is():
    bundle = load_bundle(BUNDLES / "mnist1d-family")
    check = BatchCheck(bundle.inputs)
    x = {bundle.input.name: _x(2)}
    assert check(x) is x
    view = {bundle.input.name: _x(4)[::2]}  # not contiguous: the complete check copies
    got = check(view)
    assert got is not view
    assert got[bundle.input.name].flags.c_contiguous
    np.testing.assert_array_equal(got[bundle.input.name], view[bundle.input.name])
