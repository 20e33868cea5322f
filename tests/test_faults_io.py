"""Fault cases of the readers and writers: every one a clear error naming the file
(never a traceback, a hang or a half-written file): strict JSON, non-regular files,
NUL bytes in paths, npz files that are .npy, truncated or claim huge shapes, full or
read-only disks (simulated with OSError, since tests run as root), stale temporaries
of killed exports and concurrent `export --force` into one folder."""

import errno
import json
import os
import re
import shutil
import signal
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeadapt.cli import cli
from edgeadapt.errors import InputError
from edgeadapt.formats.atomic import atomic_write_bytes, atomic_write_many
from edgeadapt.formats.bundle import BundleError, InputSpec, load_bundle, write_bundle
from edgeadapt.formats.evaluation import Evaluation
from edgeadapt.formats.jsonio import MAX_DEPTH, read_json
from edgeadapt.formats.npzio import ArraySpec, load_npz, save_npz
from edgeadapt.formats.plan import load_plan
from tests.device_inputs import edited_multiexit
from tests.models import family

ROOT = Path(__file__).resolve().parents[1]
MULTIEXIT = ROOT / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"


@pytest.fixture
def no_hang():
    """Fail, rather than hang, a test whose reader would block on a FIFO."""

    def alarm(*_):
        raise TimeoutError("the reader blocked")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------------ strict JSON

JSON_CASES = {
    "duplicate-key": (
        lambda b: b.replace(b'"kind":', b'"kind": "ensemble", "kind":', 1),
        "duplicate key 'kind'",
    ),
    "bom": (lambda b: b"\xef\xbb\xbf" + b, "byte order mark"),
    "deep": (
        lambda b: b.replace(
            b'"extra": {', b'"d": ' + b"[" * 200_000 + b"]" * 200_000 + b', "extra": {', 1
        ),
        f"nested deeper than {MAX_DEPTH}",
    ),
    "400-digits": (
        lambda b: b.replace(b'"num_classes": 10', b'"num_classes": ' + b"9" * 400, 1),
        "out of range",
    ),
    "23-digits": (
        lambda b: b.replace(b'"num_classes": 10', b'"num_classes": ' + b"1" * 23, 1),
        "out of range",
    ),
    "1e400": (
        lambda b: b.replace(b'"num_classes": 10', b'"num_classes": 1e400', 1),
        "out of range",
    ),
    "producer-not-object": (
        lambda b: b.replace(b'"producer": {', b'"producer": 3, "was": {', 1),
        "$.producer",
    ),
}


@pytest.mark.parametrize("case", JSON_CASES, ids=list(JSON_CASES))
def test_manifest_json_faults_are_clear_errors(tmp_path, case):
    edit, match = JSON_CASES[case]
    with pytest.raises(BundleError) as e:
        load_bundle(edited_multiexit(tmp_path, edit), verify=False)
    assert match in str(e.value)
    assert "manifest.json" in str(e.value)


def test_depth_limit_is_exact(tmp_path):
    p = tmp_path / "d.json"
    inner = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    p.write_text(json.dumps({"format": "f", "version": 1})[:-1] + f', "x": {inner}}}')
    assert read_json(p, fmt="f", versions=[1])["format"] == "f"
    p.write_text(json.dumps({"format": "f", "version": 1})[:-1] + f', "x": [{inner}]}}')
    with pytest.raises(InputError, match="nested deeper"):
        read_json(p, fmt="f", versions=[1])


def test_symlinked_manifest_is_refused(tmp_path):
    d = tmp_path / "b"
    shutil.copytree(MULTIEXIT, d)
    outside = tmp_path / "outside.json"
    (d / "manifest.json").rename(outside)
    (d / "manifest.json").symlink_to(outside)
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(d)


# ------------------------------------------------------------------ non-regular files and paths


def test_fifo_manifest_plan_and_input_are_refused_without_blocking(tmp_path, no_hang):
    d = tmp_path / "b"
    shutil.copytree(MULTIEXIT, d)
    (d / "manifest.json").unlink()
    os.mkfifo(d / "manifest.json")
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(d)
    os.mkfifo(tmp_path / "plan.json")
    with pytest.raises(InputError, match="not a regular file"):
        load_plan(tmp_path / "plan.json")
    os.mkfifo(tmp_path / "x.npy")
    result = CliRunner().invoke(
        cli, ["run", str(MULTIEXIT), "--input", str(tmp_path / "x.npy"), "--thresholds", "0.5"]
    )
    assert result.exit_code == 2, result.output
    assert "not a regular file" in result.output
    os.mkfifo(tmp_path / "d.npz")
    with pytest.raises(InputError, match="not a regular file"):
        load_npz(tmp_path / "d.npz", {"x": ArraySpec("f", 2)})


def test_nul_byte_in_a_path_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="NUL byte"):
        load_bundle(str(tmp_path / "a\0b"))
    with pytest.raises(InputError, match="NUL byte"):
        atomic_write_bytes(str(tmp_path / "a\0b.json"), b"{}")
    with pytest.raises(InputError, match="NUL byte"):
        load_plan(str(tmp_path / "p\0.json"))
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 40), np.float32))
    args = ["run", str(MULTIEXIT), "--input", str(x), "--thresholds", "0.5", "-o"]
    result = CliRunner().invoke(cli, [*args, str(tmp_path / "o\0.npz")])
    assert result.exit_code == 2, result.output
    assert "NUL byte" in result.output


# ------------------------------------------------------------------ npz


def test_npy_where_npz_expected(tmp_path):
    p = tmp_path / "d.npz"
    with p.open("wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(InputError, match=r"expected an \.npz archive, got a single \.npy array"):
        load_npz(p, {"x": ArraySpec("f", 1)})


def test_truncated_npz_is_reported_as_truncated(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, x=np.arange(1000.0), y=np.arange(1000))
    data = p.read_bytes()
    for cut in (len(data) // 2, len(data) - 30):
        p.write_bytes(data[:cut])
        with pytest.raises(InputError) as e:
            load_npz(p, {"x": ArraySpec("f", 1), "y": ArraySpec("i", 1)})
        assert "pickle" not in str(e.value)
        assert "npz" in str(e.value) or "truncated" in str(e.value)


def test_npz_member_in_an_unsupported_compression_method_is_a_clear_error(tmp_path):
    # zipfile raises NotImplementedError for a compression method it has no decoder for
    p = tmp_path / "d.npz"
    np.savez(p, x=np.arange(10.0))
    data = bytearray(p.read_bytes())
    for magic, at in ((b"PK\x03\x04", 8), (b"PK\x01\x02", 10)):  # local, central headers
        i = data.find(magic)
        data[i + at : i + at + 2] = (99).to_bytes(2, "little")
    p.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"d\.npz"):
        load_npz(p, {"x": ArraySpec("f", 1)})


def test_npz_member_claiming_a_huge_shape_allocates_nothing(tmp_path):
    p = tmp_path / "d.npz"
    header = {"descr": "<f4", "fortran_order": False, "shape": (10**12, 40)}
    buf = bytearray()
    import io

    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, header)
    buf += b.getvalue() + b"\0" * 64
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.npy", bytes(buf))
    with pytest.raises(InputError, match="corrupt or truncated array: shape"):
        load_npz(p, {"x": ArraySpec("f", 2)})


def test_npz_with_a_huge_header_is_refused(tmp_path):
    p = tmp_path / "d.npz"
    b = b"\x93NUMPY\x02\x00" + (200_000).to_bytes(4, "little") + b" " * 200_000
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("x.npy", b)
    with pytest.raises(InputError, match="x: corrupt or truncated"):
        load_npz(p, {"x": ArraySpec("f", 1)})


def test_negative_labels_and_float32_overflow_are_refused():
    pred = np.zeros((3, 2), np.int64)
    with pytest.raises(InputError, match="labels must be class indices >= 0"):
        Evaluation(np.array([0, -1, 2]), pred, np.array(["a", "b"]))
    conf = np.full((3, 2), 1e300)
    with pytest.raises(InputError, match="float32's range"):
        Evaluation(np.array([0, 1, 2]), pred, np.array(["a", "b"]), conf)


# ------------------------------------------------------------------ full and read-only disks


def _fail_fsync(monkeypatch, err: int, after: int = 0):
    real = os.fsync
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(err, os.strerror(err))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_atomic_write_on_a_full_or_read_only_disk(tmp_path, monkeypatch, err):
    target = tmp_path / "new" / "deeper" / "f.json"
    _fail_fsync(monkeypatch, err)
    with pytest.raises(InputError, match=os.strerror(err)):
        atomic_write_bytes(target, b"{}")
    assert list(tmp_path.iterdir()) == []  # neither temp files nor the folders it made


def test_several_files_commit_as_one_unit(tmp_path, monkeypatch):
    files = {tmp_path / f"r-{i}.png": b"png" for i in range(3)}
    files[tmp_path / "r.html"] = b"html"
    (tmp_path / "r.html").write_bytes(b"old")
    _fail_fsync(monkeypatch, errno.ENOSPC, after=3)  # the HTML, written last, fails
    with pytest.raises(InputError, match="No space left"):
        atomic_write_many(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.html"]
    assert (tmp_path / "r.html").read_bytes() == b"old"
    monkeypatch.undo()
    atomic_write_many(files)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r-0.png", "r-1.png", "r-2.png", "r.html"]


def _ensemble(out: Path, seed: int = 0, **kw):
    fam = family(seed)
    return write_bundle(
        out,
        kind="ensemble",
        input=InputSpec("x", ("batch", 1, 40)),
        num_classes=10,
        models=[fam["linear"], fam["cnn"]],
        state_names=["linear", "cnn"],
        producer={"exporter": "test"},
        **kw,
    )


def test_export_on_a_full_disk_leaves_the_old_bundle_and_no_temp(tmp_path, monkeypatch):
    out = tmp_path / "b"
    old = _ensemble(out)
    _fail_fsync(monkeypatch, errno.ENOSPC)
    with pytest.raises(BundleError, match="cannot write: No space left"):
        _ensemble(out, seed=1, force=True)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]
    assert load_bundle(out).manifest_sha256 == old.manifest_sha256


def test_run_output_on_a_full_disk(tmp_path, monkeypatch):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((2, 1, 40), np.float32))
    _fail_fsync(monkeypatch, errno.ENOSPC)
    args = ["run", str(MULTIEXIT), "--input", str(x), "--thresholds", "0.5", "-o"]
    result = CliRunner().invoke(cli, [*args, str(tmp_path / "o.npz")])
    assert result.exit_code == 2, result.output
    assert "o.npz: cannot write: No space left" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]


def test_save_npz_into_a_read_only_folder(tmp_path, monkeypatch):
    import tempfile

    def mkstemp(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    with pytest.raises(InputError, match="Read-only file system"):
        save_npz(tmp_path / "o.npz", x=np.zeros(2))


# ------------------------------------------------------------------ leftovers and races


def test_stale_temporaries_of_killed_exports_are_cleaned(tmp_path):
    pid = 4_000_000  # above any running pid here (pid_max is 4194304 at most)
    stale = tmp_path / f".edgeadapt-tmp-other-{pid}-abcd_123"
    stale.mkdir()
    (stale / "step0.onnx").write_bytes(b"x" * 100)
    keep = tmp_path / f".edgeadapt-tmp-live-{os.getpid()}-abcd_123"  # a writer still running
    keep.mkdir()
    _ensemble(tmp_path / "b")
    assert not stale.exists()
    assert keep.exists()


def test_concurrent_forced_exports_never_report_a_false_mismatch(tmp_path):
    out = tmp_path / "b"
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        try:
            for _ in range(4):
                b = _ensemble(out, seed=seed, force=True)
                assert b.verified
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s,)) for s in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert load_bundle(out).verified
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


# ------------------------------------------------------------------ manifest facts against the files

FACTS = {
    "num-classes": (b'"num_classes": 10', b'"num_classes": 12', "the manifest says [batch, 12]"),
    "input-shape": (b"40\n", b"41\n", "has 40 on axis 2, the manifest's shape 41"),
    "input-dtype": (b'"dtype": "float32"', b'"dtype": "float16"', "is not float16"),
    "huge-row": (b"40\n", b"1000000000000\n", "exceeds 2147483647"),
    "ansi-state-name": (b'"name": "exit0"', b'"name": "exit0\\u001b[31m"', "control characters"),
    "newline-state-name": (b'"name": "exit0"', b'"name": "exit0\\nfake"', "control characters"),
}


@pytest.mark.parametrize("case", FACTS, ids=list(FACTS))
def test_manifest_facts_are_checked_against_the_onnx_files(tmp_path, case):
    old, new, match = FACTS[case]
    d = edited_multiexit(tmp_path, lambda b: b.replace(old, new, 1))
    assert (d / "manifest.json").read_bytes() != (MULTIEXIT / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match=re.escape(match)):
        load_bundle(d)


def test_absurd_latencies_are_refused_by_the_profile_and_plan_readers(tmp_path):
    from edgeadapt.formats.profile import load_profile

    src = ROOT / "profiles" / "reference" / "mnist1d-multiexit-x86-ort-1t.json"
    p = tmp_path / "p.json"
    p.write_text(re.sub(r'"p50_ms": [0-9.e-]+', '"p50_ms": 1e308', src.read_text(), count=1))
    with pytest.raises(InputError, match=r"p50_ms: must be <= 1000000000000"):
        load_profile(p, check_device=False)


def test_evaluate_on_data_overflowing_float32_names_the_data_file(tmp_path):
    from edgeadapt.measure.evaluate import load_dataset

    p = tmp_path / "data.npz"
    x = np.zeros((4, 1, 40))
    x[2, 0, 5] = 1e300  # finite as float64, infinite as float32
    np.savez(p, x=x, y=np.arange(4))
    with pytest.raises(
        InputError, match=r"data\.npz: x: holds NaN or infinity in 1 row\(s\), first row 2"
    ):
        load_dataset(p, load_bundle(MULTIEXIT))


def test_the_demo_on_a_full_disk_leaves_no_empty_data_folder(tmp_path, monkeypatch):
    from edgeadapt.demo.pipeline import QuietUI, _data

    _fail_fsync(monkeypatch, errno.ENOSPC)
    with pytest.raises(InputError, match="No space left"):
        _data(tmp_path / "demo", QuietUI(), force=True)
    assert list(tmp_path.iterdir()) == []
