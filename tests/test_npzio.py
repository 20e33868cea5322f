"""npz loading: no pickles, keys/dtypes/ranks checked with errors naming the key."""

import numpy as np
import pytest

from edgeadapt.errors import InputError
from edgeadapt.formats.npzio import ArraySpec, load_npz, npz_keys, save_npz

SPEC = {"x": ArraySpec("f", 2), "y": ArraySpec("i", 1), "w": ArraySpec("f", 1, optional=True)}


def test_round_trip(tmp_path):
    p = tmp_path / "d.npz"
    save_npz(p, x=np.zeros((3, 2), np.float32), y=np.arange(3))
    out = load_npz(p, SPEC)
    assert set(out) == {"x", "y"}
    assert out["x"].shape == (3, 2)


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((3, 2))}, "y: missing array"),
        ({"x": np.zeros(3), "y": np.arange(3)}, "x: expected 2 dimensions"),
        ({"x": np.zeros((3, 2)), "y": np.zeros(3)}, "y: dtype float64 not accepted"),
        ({"x": np.zeros((3, 2)), "y": np.array([1, "a"], dtype=object)}, "y: cannot load"),
    ],
)
def test_bad_arrays(tmp_path, arrays, match):
    p = tmp_path / "bad.npz"
    np.savez(p, **arrays)
    with pytest.raises(InputError, match=match):
        load_npz(p, SPEC)


def test_not_an_npz(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable"):
        load_npz(p, SPEC)
    with pytest.raises(InputError, match="file not found"):
        load_npz(tmp_path / "none.npz", SPEC)


def test_save_refuses_object_arrays(tmp_path):
    with pytest.raises(ValueError, match="object"):
        save_npz(tmp_path / "o.npz", a=np.array([None], dtype=object))
    assert not list(tmp_path.iterdir())


def test_a_single_npy_array_is_not_an_npz(tmp_path):
    p = tmp_path / "one.npy"
    np.save(p, np.zeros(3))
    with pytest.raises(InputError, match=r"one\.npy: expected an \.npz archive"):
        load_npz(p, SPEC)
    with pytest.raises(InputError, match=r"expected an \.npz archive"):
        npz_keys(p)


def test_keys_without_reading_arrays(tmp_path):
    p = tmp_path / "d.npz"
    save_npz(p, input_ids=np.zeros((2, 3), np.int64), y=np.arange(2))
    assert npz_keys(p) == {"input_ids", "y"}
    with pytest.raises(InputError, match="file not found"):
        npz_keys(tmp_path / "none.npz")
