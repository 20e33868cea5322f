"""Bundle format: round trip, verification, and every fault ending in a clear error."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeadapt.exporters.onnx import export_onnx
from edgeadapt.formats.bundle import (
    BundleError,
    InputSpec,
    Step,
    load_bundle,
    verify_bundle,
    write_bundle,
)
from tests.models import family, multi_exit_cnn
from tests.multi_input import MASKED_INPUTS, masked_steps

CUTS = ["conv1_relu", "conv2_relu"]
HEADS = {"conv1_relu": "exit0", "conv2_relu": "exit1"}
SPEC = InputSpec("x", ("batch", 1, 40))


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(multi_exit_cnn(), path)
    return path


@pytest.fixture
def bundle_dir(tmp_path, source):
    out = tmp_path / "bundle"
    export_onnx(source, out, cuts=CUTS, heads=HEADS)
    return out


def _manifest(d):
    return json.loads((d / "manifest.json").read_text())


def _write_manifest(d, doc):
    (d / "manifest.json").write_text(json.dumps(doc))


def _ensemble(out, seed=0, **kw):
    fam = family(seed)
    return write_bundle(
        out,
        kind="ensemble",
        input=SPEC,
        num_classes=10,
        models=[fam["linear"], fam["cnn"]],
        state_names=["linear", "cnn"],
        producer={"exporter": "test"},
        **kw,
    )


def test_round_trip_early_exit(bundle_dir):
    b = load_bundle(bundle_dir)
    assert b.verified
    assert b.kind == "early-exit"
    assert b.num_classes == 10
    assert b.input == SPEC
    assert [s.name for s in b.states] == ["exit0", "exit1", "exit2"]
    assert b.states[2].files == ("step0.onnx", "step1.onnx", "step2.onnx")
    assert b.flops == list(np.cumsum(b.step_flops))
    assert b.flops == sorted(b.flops)
    assert all(
        s + h == f for s, h, f in zip(b.stage_flops, b.head_flops, b.step_flops, strict=True)
    )
    assert b.head_flops[0] == 8 * 40 + 2 * 10 * 8 + 10
    assert b.steps[1].inputs == ("conv1_relu",)
    assert b.steps[0].activation == "conv1_relu"
    assert b.steps[2].activation is None
    assert b.producer["exporter"] == "edgeadapt.exporters.onnx"
    assert len(b.manifest_sha256) == 64
    assert load_bundle(bundle_dir / "manifest.json").manifest_sha256 == b.manifest_sha256


def test_round_trip_ensemble(tmp_path):
    b = _ensemble(tmp_path / "fam")
    assert b.kind == "ensemble"
    assert [s.name for s in b.states] == ["linear", "cnn"]
    assert b.states[1].files == ("model1.onnx",)
    assert b.flops == b.step_flops
    assert all(s.inputs == ("x",) and s.activation is None for s in b.steps)


def test_tampered_file_is_refused(bundle_dir):
    step = bundle_dir / "step1.onnx"
    step.write_bytes(step.read_bytes() + b"\0")
    with pytest.raises(BundleError, match=r"sha256 mismatch for 'step1.onnx'"):
        load_bundle(bundle_dir)
    unverified = load_bundle(bundle_dir, verify=False)
    assert not unverified.verified
    with pytest.raises(BundleError, match="altered"):
        verify_bundle(unverified)


def test_missing_file_is_refused(bundle_dir):
    (bundle_dir / "step2.onnx").unlink()
    with pytest.raises(BundleError, match=r"\$\.files\.step2\.onnx.*missing"):
        load_bundle(bundle_dir, verify=False)


@pytest.mark.parametrize(
    ("bad", "message"),
    [("../step0.onnx", r"leaves the bundle \('\.\.'\)"), ("/etc/passwd", "absolute path")],
)
def test_paths_leaving_the_bundle_are_refused(bundle_dir, bad, message):
    doc = _manifest(bundle_dir)
    doc["states"][0]["file"] = bad
    _write_manifest(bundle_dir, doc)
    with pytest.raises(BundleError, match=message) as e:
        load_bundle(bundle_dir)
    assert "$.states[0].file" in str(e.value)


def test_symlink_out_of_the_bundle_is_refused(tmp_path, bundle_dir):
    outside = tmp_path / "outside.onnx"
    outside.write_bytes((bundle_dir / "step0.onnx").read_bytes())
    (bundle_dir / "step0.onnx").unlink()
    (bundle_dir / "step0.onnx").symlink_to(outside)
    with pytest.raises(BundleError, match="symlink"):
        load_bundle(bundle_dir)


def test_external_data_escaping_the_bundle_is_refused(bundle_dir):
    path = bundle_dir / "step0.onnx"
    model = onnx.load(path)
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = onnx.TensorProto.EXTERNAL
    entry = t.external_data.add()
    entry.key, entry.value = "location", "../secret.bin"
    path.write_bytes(model.SerializeToString())
    doc = _manifest(bundle_dir)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    doc["files"]["step0.onnx"] = doc["states"][0]["sha256"] = digest
    _write_manifest(bundle_dir, doc)
    with pytest.raises(BundleError, match=r"external data.*leaves the bundle|leaves the bundle"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(version=4), r"\$\.version: unsupported version 4"),
        (lambda d: d.update(version=3), r"\$\.version: version 3 is a bundle of several chains"),
        (lambda d: d.update(format="other"), r"\$\.format"),
        (lambda d: d.update(kind="tree"), r"\$\.kind: must be one of"),
        (lambda d: d.update(num_classes=True), r"\$\.num_classes: expected int"),
        (
            lambda d: d["inputs"][0].update(shape=[1, 1, 40]),
            r"\$\.inputs\[0\]\.shape: the first axis must be 'batch'",
        ),
        (lambda d: d.update(inputs=[]), r"\$\.inputs: a bundle needs at least one input"),
        (
            lambda d: d.update(inputs=[d["inputs"][0], d["inputs"][0]]),
            r"\$\.inputs\[1\]\.name: duplicate input name 'x'",
        ),
        (
            lambda d: d["states"][1].update(inputs=["x", "exit0_other"]),
            r"\$\.states\[1\]\.inputs.*do not chain",
        ),
        (lambda d: d["states"][1].update(flops=-1), r"\$\.states\[1\]\.flops: must be >= 0"),
        (lambda d: d["states"][2].update(activation="a"), r"\$\.states\[2\]\.activation"),
        (lambda d: d.update(states=[]), r"\$\.states: a bundle needs at least one state"),
        (lambda d: d["states"][0].update(sha256="0" * 64), r"\$\.states\[0\]\.sha256"),
    ],
)
def test_manifest_schema_errors_name_the_json_path(bundle_dir, edit, message):
    doc = _manifest(bundle_dir)
    edit(doc)
    _write_manifest(bundle_dir, doc)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_dir)


def test_nan_in_manifest_is_refused(bundle_dir):
    text = (bundle_dir / "manifest.json").read_text()
    (bundle_dir / "manifest.json").write_text(
        text.replace('"num_classes": 10', '"num_classes": NaN')
    )
    with pytest.raises(BundleError, match="NaN is not allowed"):
        load_bundle(bundle_dir)


def test_manifest_io_names_must_match_the_onnx_file(bundle_dir):
    doc = _manifest(bundle_dir)
    doc["states"][2]["logits"] = "other"
    _write_manifest(bundle_dir, doc)
    with pytest.raises(BundleError, match=r"step2.onnx.*the manifest says"):
        load_bundle(bundle_dir)


def test_different_bundle_is_refused_unless_forced(tmp_path):
    out = tmp_path / "fam"
    first = _ensemble(out, seed=0)
    assert _ensemble(out, seed=0).manifest_sha256 == first.manifest_sha256  # same: no-op
    with pytest.raises(BundleError, match="already holds a different bundle"):
        _ensemble(out, seed=1)
    assert load_bundle(out).manifest_sha256 == first.manifest_sha256
    replaced = _ensemble(out, seed=1, force=True)
    assert replaced.manifest_sha256 != first.manifest_sha256
    assert [p.name for p in tmp_path.iterdir()] == ["fam"]  # no temp dirs left


def test_directory_that_is_not_a_bundle_is_never_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(BundleError, match="not an edgeadapt bundle"):
        _ensemble(out, force=True)
    assert (out / "notes.txt").read_text() == "keep me"


def test_interrupted_writer_leaves_previous_bundle(tmp_path, monkeypatch):
    out = tmp_path / "fam"
    first = _ensemble(out, seed=0)
    import edgeadapt.formats.bundle as bundle_mod

    calls = []
    real = bundle_mod._save_model

    def boom(model, path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(model, path)

    monkeypatch.setattr(bundle_mod, "_save_model", boom)
    with pytest.raises(KeyboardInterrupt):
        _ensemble(out, seed=1, force=True)
    assert load_bundle(out).manifest_sha256 == first.manifest_sha256
    assert [p.name for p in tmp_path.iterdir()] == ["fam"]


def test_killed_writer_leaves_previous_bundle(tmp_path):
    out = tmp_path / "fam"
    first = _ensemble(out, seed=0)
    script = textwrap.dedent(
        f"""
        import os, signal, sys
        sys.path.append({str(Path(__file__).resolve().parent.parent)!r})  # after the install
        import edgeadapt.formats.bundle as b
        from tests.test_bundle import _ensemble
        real = b._save_model
        def save_then_die(model, path):
            real(model, path)
            os.kill(os.getpid(), signal.SIGKILL)
        b._save_model = save_then_die
        _ensemble({str(out)!r}, seed=1, force=True)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, check=False)
    assert proc.returncode == -9
    assert load_bundle(out).manifest_sha256 == first.manifest_sha256
    leftovers = [p for p in tmp_path.iterdir() if p.name != "fam"]
    assert len(leftovers) == 1  # the dead writer's temp dir, beside the bundle
    _ensemble(out, seed=2, force=True)  # the next writer removes it
    assert [p.name for p in tmp_path.iterdir()] == ["fam"]


def test_write_refuses_steps_that_do_not_chain(tmp_path):
    fam = family()
    with pytest.raises(BundleError, match="do not chain"):
        write_bundle(
            tmp_path / "b",
            kind="early-exit",
            input=InputSpec("input", ("batch", 1, 40)),
            num_classes=10,
            steps=[Step(fam["linear"], logits="y")],
            producer={"exporter": "test"},
        )
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"num_classes": 5}, "have 10 classes, the bundle 5"),
        ({"input": InputSpec("x", (1, 1, 40))}, "shape"),
        ({"extra": {"e": float("nan")}}, "non-finite"),
    ],
)
def test_write_refuses_wrong_class_count_and_bad_spec(tmp_path, changes, match):
    args = {
        "kind": "ensemble",
        "input": SPEC,
        "num_classes": 10,
        "models": [family()["linear"]],
        "producer": {},
    }
    with pytest.raises(BundleError, match=match):
        write_bundle(tmp_path / "b", **(args | changes))
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left


def test_large_steps_use_external_data_inside_the_bundle(tmp_path, monkeypatch):
    import edgeadapt.formats.bundle as bundle_mod

    monkeypatch.setattr(bundle_mod, "EXTERNAL_DATA_THRESHOLD", 100)
    b = _ensemble(tmp_path / "fam")
    assert sorted(b.files) == ["model0.onnx", "model0.onnx.data", "model1.onnx", "model1.onnx.data"]
    assert b.verified
    os.remove(tmp_path / "fam" / "model1.onnx.data")
    with pytest.raises(BundleError, match="missing"):
        load_bundle(tmp_path / "fam")


def test_multi_input_bundle_round_trip(tmp_path):
    b = write_bundle(
        tmp_path / "b",
        kind="early-exit",
        inputs=MASKED_INPUTS,
        num_classes=10,
        steps=masked_steps(),
        producer={"exporter": "test"},
    )
    assert b.inputs == tuple(MASKED_INPUTS)
    assert b.input_names == ("ids", "mask")
    assert b.steps[1].inputs == ("act", "mask")
    doc = _manifest(tmp_path / "b")
    assert doc["version"] == 2
    assert [i["name"] for i in doc["inputs"]] == ["ids", "mask"]
    with pytest.raises(BundleError, match=r"2 inputs \(ids, mask\); use `inputs`"):
        _ = b.input


def test_multi_input_step_reading_an_unknown_tensor_is_refused(tmp_path):
    with pytest.raises(BundleError, match="do not chain"):
        write_bundle(
            tmp_path / "b",
            kind="early-exit",
            inputs=MASKED_INPUTS[:1],
            num_classes=10,
            steps=masked_steps(),
            producer={"exporter": "test"},
        )
    assert not (tmp_path / "b").exists()
    with pytest.raises(BundleError, match="exactly one of `input` and `inputs`"):
        write_bundle(
            tmp_path / "c",
            kind="early-exit",
            input=MASKED_INPUTS[0],
            inputs=MASKED_INPUTS,
            num_classes=10,
            steps=masked_steps(),
            producer={},
        )


def test_version_1_manifest_with_one_input_still_loads(bundle_dir):
    doc = _manifest(bundle_dir)
    doc["version"] = 1
    doc["input"] = doc.pop("inputs")[0]
    _write_manifest(bundle_dir, doc)
    b = load_bundle(bundle_dir)
    assert b.inputs == (SPEC,)
    assert b.input == SPEC
