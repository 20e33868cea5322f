"""`edgeadapt.data.batches`: inputs read a batch at a time from .npy/.npz files.

Every malformed file is one `InputError` naming the file (and the array), through every
way in: `run` and `evaluate` on the command line (one ``error:`` line, exit 2, no
traceback), `run_to_file`, `evaluate_to_file`, export calibration and `open_inputs`.
Data that is unusual but sound (unaligned version-3 data, Fortran order, big-endian,
float64, deflated members) reads as the plain array does.
"""

from __future__ import annotations

import io
import json
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgeadapt.data.batches import array_inputs, open_inputs, read_batch
from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.exporters._calib import open_calibration
from edgeadapt.formats.bundle import InputSpec, load_bundle
from edgeadapt.measure.evaluate import evaluate_bundle, evaluate_to_file
from tests.clirun import invoke
from tests.conftest import MULTIEXIT
from tests.test_fuzz import FUZZ
from tests.test_fuzz import _mutate as mutate
from tests.test_fuzz import edits as EDITS
from tests.tiny import tiny_bundle, tiny_inputs

SPEC = [InputSpec("x", ("batch", 1, 40), "float32")]
ROWS = 6


def _data(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 1, 40)).astype(np.float32)


def npy_bytes(
    descr: object = "<f4",
    shape: tuple[int, ...] = (ROWS, 1, 40),
    data: bytes | None = None,
    *,
    version: int = 1,
    fortran: bool = False,
    pad: int | None = None,
) -> bytes:
    """An .npy written by hand: any header, version, padding (data offset) and data."""
    header = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    prefix = 10 if version == 1 else 12
    if pad is None:  # numpy's own: data aligned to 64 bytes
        pad = -(prefix + len(header) + 1) % 64
    text = (header + " " * pad + "\n").encode("latin1")
    size = struct.pack("<H", len(text)) if version == 1 else struct.pack("<I", len(text))
    if data is None:
        data = _data().tobytes()
    return b"\x93NUMPY" + bytes([version, 0]) + size + text + data


def npz_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members.items():
            z.writestr(f"{name}.npy", data)
    return buf.getvalue()


def _labels() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.arange(ROWS) % 10)
    return buf.getvalue()


def _good_npz() -> bytes:
    return npz_bytes({"x": npy_bytes(), "y": _labels()})


def _flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0xFF
    return bytes(b)


#: (id, the .npy's bytes, what the error says)
NPY_CASES = [
    ("negative-shape", npy_bytes(shape=(-6, 1, 40)), "negative dimension"),
    ("huge-shape", npy_bytes(shape=(10**13, 1, 40)), "needs 1600000000000000 bytes"),
    ("beyond-int64", npy_bytes(shape=(10**21, 1, 40)), "corrupt or truncated array"),
    ("truncated-data", npy_bytes()[:200], "corrupt or truncated array"),
    ("bad-descr", npy_bytes(descr="zz"), "not a valid dtype"),
    ("object", npy_bytes(descr="|O"), "object arrays are not accepted"),
    ("structured", npy_bytes(descr=[("a", "<f4")]), "structured dtype"),
    ("version-4", npy_bytes(version=4), "unsupported .npy format version"),
    ("header-cut", npy_bytes()[:30], "corrupt or truncated array"),
    ("int-for-float", npy_bytes(descr="<i8", data=np.zeros(ROWS * 40, "i8").tobytes()), "int64"),
    ("rank", npy_bytes(shape=(ROWS, 40)), "expected 3 dimensions"),
    ("shape", npy_bytes(shape=(ROWS, 2, 20)), r"expected shape [B, 1, 40]"),
    ("no-rows", npy_bytes(shape=(0, 1, 40), data=b""), "empty batch"),
    ("garbage", b"garbage, not an array", "not a readable .npy or .npz file"),
    ("nan", npy_bytes(data=np.full((ROWS, 1, 40), np.nan, "f4").tobytes()), "NaN"),
]

#: (id, the .npz's bytes, the array named, what the error says)
NPZ_CASES = [
    ("truncated-zip", _good_npz()[: len(_good_npz()) // 2], None, "not a readable .npz file"),
    ("zip-cut-at-end", _good_npz()[:-30], None, "not a readable .npz file"),
    ("bad-crc", _flip(_good_npz(), 200), "x", "Bad CRC-32"),
    (
        "deflate-corrupt",
        _flip(npz_bytes({"x": npy_bytes(), "y": _labels()}, zipfile.ZIP_DEFLATED), 120),
        "x",
        "corrupt or truncated array",
    ),
    (
        "negative-shape",
        npz_bytes({"x": npy_bytes(shape=(-6, 1, 40)), "y": _labels()}),
        "x",
        "negative dimension",
    ),
    (
        "huge-shape",
        npz_bytes({"x": npy_bytes(shape=(10**13, 1, 40)), "y": _labels()}),
        "x",
        "needs 1600000000000000 bytes",
    ),
    (
        "object",
        npz_bytes({"x": npy_bytes(descr="|O"), "y": _labels()}),
        "x",
        "object arrays are not accepted",
    ),
    (
        "member-cut",
        npz_bytes({"x": npy_bytes()[:300], "y": _labels()}),
        "x",
        "corrupt or truncated array",
    ),
    ("labels-missing", npz_bytes({"x": npy_bytes()}), "y", "missing array"),
    (
        "labels-negative-shape",
        npz_bytes({"x": npy_bytes(), "y": npy_bytes(descr="<i8", shape=(-1,), data=b"")}),
        "y",
        "negative dimension",
    ),
    ("input-missing", npz_bytes({"z": npy_bytes(), "y": _labels()}), "x", "missing array"),
]


def _read_all(path: Path, size: int = 4) -> list[dict[str, np.ndarray]]:
    return [b for _, b in open_inputs(path, SPEC).batches(size)]


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _one_error_line(args: list[str], path: Path, field: str | None, match: str) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"error: {path}: "), lines[0]
    if field is not None:
        assert lines[0].startswith(f"error: {path}: {field}: "), lines[0]
    assert match in lines[0], lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("data", "match"), [c[1:] for c in NPY_CASES], ids=[c[0] for c in NPY_CASES]
)
def test_a_malformed_npy_is_one_error_naming_the_file(tmp_path, data, match):
    from edgeadapt.cascade.run import run_to_file

    path = _write(tmp_path, "in.npy", data)
    with pytest.raises(InputError) as e:
        _read_all(path)
    assert str(e.value).startswith(f"{path}: ")
    assert match in str(e.value)
    with pytest.raises(InputError, match="^" + str(path)):
        run_to_file(MULTIEXIT, path, thresholds=0.5)
    args = ["run", MULTIEXIT, "--input", path, "--thresholds", "0.5", "--batch", "4"]
    _one_error_line(args, path, None, match)


@pytest.mark.parametrize(
    ("data", "field", "match"), [c[1:] for c in NPZ_CASES], ids=[c[0] for c in NPZ_CASES]
)
def test_a_malformed_npz_is_one_error_naming_the_file_and_array(
    tmp_path, multiexit_copy, data, field, match
):
    path = _write(tmp_path, "d.npz", data)
    where = f"{path}: {field}: " if field else f"{path}: "

    def refused(call):
        with pytest.raises(InputError) as e:
            call()
        assert str(e.value).startswith(where), str(e.value)
        assert match in str(e.value)

    refused(lambda: evaluate_to_file(multiexit_copy, path, output=tmp_path / "e.npz"))
    refused(lambda: [b for c in [open_calibration(path, SPEC, 10)] for b in c.batches(4)])
    args = ["evaluate", multiexit_copy, "--data", path, "-o", tmp_path / "e.npz"]
    _one_error_line(args, path, field, match)
    assert not (tmp_path / "e.npz").exists()
    if field != "y":  # run reads no labels
        args = ["run", MULTIEXIT, "--input", path, "--thresholds", "0.5", "--batch", "4"]
        _one_error_line(args, path, field, match)


@pytest.mark.parametrize(
    "write",
    [
        lambda x: npy_bytes(data=x.tobytes(), version=3, pad=1),  # data at an odd offset
        lambda x: npy_bytes(data=x.tobytes(), version=1, pad=2),
        lambda x: npy_bytes(data=x.astype(">f4").tobytes(), descr=">f4"),
        lambda x: npy_bytes(data=x.tobytes(order="F"), fortran=True),
        lambda x: npy_bytes(data=x.astype(np.float64).tobytes(), descr="<f8"),
    ],
    ids=["unaligned-v3", "unaligned-v1", "big-endian", "fortran", "float64"],
)
def test_sound_but_unusual_arrays_read_as_the_plain_one(tmp_path, write):
    x = _data()
    path = _write(tmp_path, "in.npy", write(x))
    for size in (1, 4, ROWS):
        got = np.concatenate([b["x"] for _, b in open_inputs(path, SPEC).batches(size)])
        assert got.dtype == np.float32
        assert got.flags.c_contiguous
        assert got.flags.aligned
        np.testing.assert_array_equal(got, x)
    npz = _write(tmp_path, "in.npz", npz_bytes({"x": write(x)}, zipfile.ZIP_DEFLATED))
    np.testing.assert_array_equal(read_batch(npz, SPEC)["x"], x)
    for source in (path, npz):  # a shard of the rows, as a worker reads it
        shard = open_inputs(source, SPEC).batches(3, start=2, stop=ROWS - 1)
        np.testing.assert_array_equal(np.concatenate([b["x"] for _, b in shard]), x[2 : ROWS - 1])


def test_unaligned_arrays_are_accepted_by_the_api():
    from edgeadapt.cascade.model import AdaptiveModel

    x = _data()
    raw = np.frombuffer(b"\0" + x.tobytes(), dtype=np.uint8)[1:]
    unaligned = raw.view(np.float32).reshape(x.shape)
    assert not unaligned.flags.aligned
    with AdaptiveModel.load(MULTIEXIT, thresholds=0.5) as m:
        np.testing.assert_array_equal(m.predict(unaligned).pred, m.predict(x).pred)


def test_float64_is_read_as_float32_by_evaluate_and_run_alike(tmp_path, multiexit_copy):
    x = _data(40)
    y = np.arange(40) % 10
    np.savez(tmp_path / "f64.npz", x=x.astype(np.float64), y=y)
    np.savez(tmp_path / "f32.npz", x=x, y=y)
    outputs = {}
    for name in ("f64", "f32"):
        data = tmp_path / f"{name}.npz"
        ev = invoke("evaluate", multiexit_copy, "--data", data, "-o", tmp_path / f"e{name}.npz")
        run = invoke("run", multiexit_copy, "--input", data, "--thresholds", "0.5", "--json")
        assert ev.exit_code == run.exit_code == 0, ev.output + run.output
        cast = f"note: {data}: x: float64 read as float32, the model's input dtype"
        assert (cast in ev.stderr) == (name == "f64")  # run --json says it in the JSON
        doc = json.loads(run.stdout)
        outputs[name] = (np.load(tmp_path / f"e{name}.npz")["pred"], doc)
        assert doc["casts"] == ([cast.removeprefix("note: ")] if name == "f64" else [])
    np.testing.assert_array_equal(outputs["f64"][0], outputs["f32"][0])
    for key in ("pred", "exit_state", "conf"):
        assert outputs["f64"][1][key] == outputs["f32"][1][key]
    bundle = load_bundle(multiexit_copy)
    a = evaluate_bundle(bundle, x.astype(np.float64), y)  # the API reads arrays alike
    np.testing.assert_array_equal(a.pred, outputs["f32"][0])


def test_evaluate_reads_a_file_a_batch_at_a_time(tmp_path):
    """20k rows of 256 floats (20 MB) evaluated 500 at a time: the Python heap peaks at
    the per-sample results (and their saved copy) plus about one batch, far below the
    file (the bound grows with the rows only by the results)."""
    rows, features = 20_000, 256
    bundle = tiny_bundle(tmp_path / "b", features=features)
    path = tmp_path / "d.npz"
    np.savez(path, x=tiny_inputs(rows, features=features), y=np.arange(rows) % 3)
    results = rows * (len(bundle.states) * (8 + 3 * 4 + 1) + 8)
    tracemalloc.start()
    try:
        done = evaluate_to_file(bundle, path, output=tmp_path / "e.npz", batch=500)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert done.evaluation.labels.shape == (rows,)
    assert done.batch is not None
    assert done.batch.given
    bound = 3 * results + 2 * 500 * features * 4 + 2**20
    assert peak < bound, (peak, results)
    assert bound < rows * features * 4 / 3


def test_errors_in_a_later_batch_name_the_absolute_row(tmp_path):
    x = _data(600)
    x[517, 0, 3] = np.inf
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InputError, match=r"x\.npy: x: holds NaN or infinity .* first row 517$"):
        _read_all(tmp_path / "x.npy", 256)
    with pytest.raises(InputError, match=r"^input: x: holds NaN or infinity .* first row 517$"):
        list(array_inputs(SPEC, x).batches(100))


def test_inputs_of_a_multi_input_model_need_the_same_rows(tmp_path):
    specs = [InputSpec("ids", ("batch", 4), "int64"), InputSpec("mask", ("batch", 4), "int64")]
    np.savez(tmp_path / "d.npz", ids=np.zeros((3, 4), np.int32), mask=np.ones((2, 4), np.int64))
    with pytest.raises(InputError, match=r"d\.npz: mask: has 2 rows, 'ids' has 3"):
        open_inputs(tmp_path / "d.npz", specs)
    np.save(tmp_path / "one.npy", np.zeros((3, 4), np.int64))
    with pytest.raises(InputError, match=r"one\.npy: the bundle has 2 inputs"):
        open_inputs(tmp_path / "one.npy", specs)
    ids = np.full((3, 4), 2**40)
    np.savez(tmp_path / "big.npz", ids=ids, mask=np.ones((3, 4), np.int64))
    got = read_batch(tmp_path / "big.npz", specs)  # int64 data for int64 inputs
    np.testing.assert_array_equal(got["ids"], ids)
    specs32 = [InputSpec("ids", ("batch", 4), "int32"), specs[1]]
    with pytest.raises(InputError, match=r"big\.npz: ids: values .* do not fit .* int32"):
        read_batch(tmp_path / "big.npz", specs32)


# ------------------------------------------------------------------ fuzzing

DESCRS = ["<f4", "<f8", ">f4", "<f2", "<i8", "|b1", "|O", "<U3", "|V4", "<c8", [("a", "<f4")]]


def _consume(read) -> list[np.ndarray] | None:
    """The arrays `read()` gives, or None when it refuses with an `EdgeadaptError`."""
    try:
        return read()
    except EdgeadaptError:
        return None


@FUZZ
@given(
    version=st.integers(1, 4),
    shape=st.one_of(
        st.just((ROWS, 1, 40)),
        st.lists(st.integers(-3, 10**13), min_size=0, max_size=4).map(tuple),
    ),
    descr=st.sampled_from(DESCRS),
    fortran=st.booleans(),
    pad=st.integers(0, 70),
    cut=st.integers(-2000, 100),
    size=st.integers(1, 8),
    member=st.sampled_from([None, zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]),
)
def test_an_array_with_any_header_reads_as_numpy_does_or_is_refused(
    tmp_path, version, shape, descr, fortran, pad, cut, size, member
):
    """Any header (version, shape, dtype, order, padding before the data) over data cut
    short or run long, alone or as an npz member: the reader refuses it with an
    `EdgeadaptError`, or gives what numpy reads from the same bytes, as float32."""
    data = _data().astype(np.float64).tobytes()
    data = data[:cut] if cut < 0 else data + b"\0" * cut
    raw = npy_bytes(descr, shape, data, version=version, fortran=fortran, pad=pad)
    if member is None:
        path = _write(tmp_path, "in.npy", raw)
    else:
        path = _write(tmp_path, "in.npz", npz_bytes({"x": raw}, member))
    got = _consume(lambda: _read_all(path, size))
    if got is None:
        return
    want = np.load(io.BytesIO(raw), allow_pickle=False)
    np.testing.assert_array_equal(np.concatenate([b["x"] for b in got]), want.astype(np.float32))


@FUZZ
@given(ops=EDITS, compression=st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
def test_mutated_input_files_read_or_are_refused(tmp_path, multiexit_copy, ops, compression):
    """Byte edits of a labelled npz (stored or deflated) and of an .npy: `run`'s and
    `evaluate`'s reader and export calibration return or refuse with an
    `EdgeadaptError`, nothing else."""
    npz = npz_bytes({"x": npy_bytes(), "y": _labels()}, compression)
    path = _write(tmp_path, "d.npz", mutate(npz, ops))
    _consume(lambda: _read_all(path))
    _consume(lambda: list(open_calibration(path, SPEC, 10).batches(4)))
    npy = _write(tmp_path, "x.npy", mutate(npy_bytes(), ops))
    _consume(lambda: _read_all(npy))
