"""`export quantize`: the shipped demo bundles at int8 / fp16 / bf16, calibrated on MNIST-1D."""

import json
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.data.mnist1d import mnist1d_splits
from edgeadapt.errors import InputError
from edgeadapt.exporters.quantize import QuantizeOptions, quantize_bundle
from edgeadapt.exporters.variants import export_variants
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.npzio import save_npz
from edgeadapt.measure.evaluate import evaluate_bundle
from tests.clirun import invoke

BUNDLES = Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles"
RESNET, FAMILY = BUNDLES / "mnist1d-resnet", BUNDLES / "mnist1d-family"
#: 500 calibration rows: 300 calibrate, the last 200 measure parity (heldout 0.4)
HELDOUT = 0.4


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    splits = mnist1d_splits()
    root = tmp_path_factory.mktemp("data")
    calib = root / "calib.npz"
    save_npz(calib, x=splits.calibration.x[:500], y=splits.calibration.y[:500])
    return calib, splits.test


@pytest.fixture(scope="module")
def int8(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("q") / "int8"
    return quantize_bundle(RESNET, out, data[0], QuantizeOptions(heldout=HELDOUT))


def test_int8_bundle_keeps_the_structure_and_records_its_source(int8):
    src = load_bundle(RESNET)
    got = load_bundle(int8.path)  # sha256, I/O and chain checks pass
    assert (got.kind, got.num_classes, got.inputs) == (src.kind, src.num_classes, src.inputs)
    assert [s.name for s in got.states] == [s.name for s in src.states]
    for a, b in zip(got.steps, src.steps, strict=True):
        assert (a.inputs, a.activation, a.logits) == (b.inputs, b.activation, b.logits)
        # the same Conv/Gemm FLOPs plus the Q/DQ ops' few per element
        assert b.flops < a.flops < 1.05 * b.flops
        assert b.stage_flops < a.stage_flops
        assert a.head_flops < 3 * b.head_flops
    record = got.extra["precision"]
    assert record["precision"] == "int8"
    assert record["method"] == "minmax"
    assert record["per_channel"] is True
    assert record["source_manifest_sha256"] == src.manifest_sha256
    assert got.producer["source_sha256"] == src.manifest_sha256
    assert record["calibration"]["samples"] == 500
    assert record["calibration"]["calibrated"] == 300
    assert record["parity"]["samples"] == 200


def test_a_variant_is_not_quantized_again(int8, data, tmp_path):
    with pytest.raises(InputError, match=r"already a precision variant \(int8\)") as e:
        quantize_bundle(int8, tmp_path / "again", data[0])
    assert e.value.field == "$.extra.precision"


def test_int8_agrees_with_fp32_state_by_state(int8, data):
    parity = int8.extra["precision"]["parity"]["states"]
    # measured 0.995, 0.995, 1.0, 1.0 on these 200 held-out rows
    assert all(s["agreement"] >= 0.98 for s in parity)
    assert all(abs(s["accuracy"] - s["fp32_accuracy"]) <= 0.02 for s in parity)
    # and on the test split, evaluated as any bundle
    test = data[1]
    x, y = test.x[:500], test.y[:500]
    ours = evaluate_bundle(int8, x, y).accuracies
    theirs = evaluate_bundle(load_bundle(RESNET), x, y).accuracies
    # measured differences of at most 0.004
    # measured: 0.974 against 0.976 at exit0, equal at the others
    assert np.all(np.abs(ours - theirs) <= 0.015)


def test_int8_ensemble_members(data, tmp_path):
    got = quantize_bundle(FAMILY, tmp_path / "f", data[0], QuantizeOptions(heldout=HELDOUT))
    assert got.kind == "ensemble"
    assert [s.name for s in got.states] == ["logistic", "mlp", "cnn"]
    parity = got.extra["precision"]["parity"]["states"]
    # measured 0.915 (the logistic member: 33% accurate, its logits near ties), 0.985
    # and 0.995
    floors = (0.87, 0.96, 0.97)
    assert all(s["agreement"] >= f for s, f in zip(parity, floors, strict=True))


def test_int8_bundle_profiles_and_runs(int8, data):
    from edgeadapt.cascade.model import AdaptiveModel
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle

    profile = profile_bundle(int8, "onnxruntime", TimingOptions(warmup=2, iters=30, overhead=False))
    assert len(profile.steps[1]) == len(int8.steps)  # batch 1, each step timed
    assert profile.whole_model is not None  # the QDQ steps compose into one model
    x = data[1].x[:8]
    with AdaptiveModel.load(int8, thresholds=0.9, threads=1) as model:
        pred = model.predict(x)
    assert pred.pred.shape == (8,)


def test_fp16_runs_on_onnxruntime_cpu_and_bf16_is_refused_by_name(data, tmp_path):
    # ORT 1.32's CPU provider runs the float16 graph (casting where it has no float16
    # kernel); it has no bfloat16 Conv, so bf16 is refused naming runtime, op and precision
    fp16 = quantize_bundle(
        RESNET, tmp_path / "h", data[0], QuantizeOptions(precision="fp16", heldout=HELDOUT)
    )
    assert fp16.extra["precision"]["precision"] == "fp16"
    # measured 1.0 at every state
    assert all(s["agreement"] >= 0.99 for s in fp16.extra["precision"]["parity"]["states"])
    with pytest.raises(InputError, match=r"onnxruntime cannot run Conv .* at bf16") as e:
        quantize_bundle(RESNET, tmp_path / "b", data[0], QuantizeOptions(precision="bf16"))
    assert e.value.source == str(RESNET / "step0.onnx")
    assert not (tmp_path / "b").exists()


def test_too_little_calibration_says_how_much_it_needs(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "small.npz"
    save_npz(
        path, x=rng.standard_normal((100, 1, 40)).astype(np.float32), y=rng.integers(0, 10, 100)
    )
    with pytest.raises(
        InputError, match=r"minmax calibration needs at least 100 .*125 in all, got 100"
    ):
        quantize_bundle(RESNET, tmp_path / "o", path)
    with pytest.raises(InputError, match=r"entropy calibration needs at least 1000 .*1250 in all"):
        quantize_bundle(RESNET, tmp_path / "o", path, QuantizeOptions(method="entropy"))
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"x": np.zeros((200, 1, 40), np.float32)}, r"\by\b"),
        ({"x": np.zeros((200, 40), np.float32), "y": np.zeros(200, np.int64)}, r"x"),
        ({"x": np.zeros((200, 1, 40), np.float32), "y": np.full(200, 10)}, r"y"),
    ],
    ids=["no-labels", "wrong-shape", "label-out-of-range"],
)
def test_bad_calibration_is_one_clear_error(tmp_path, arrays, match):
    path = tmp_path / "bad.npz"
    save_npz(path, **arrays)
    with pytest.raises(InputError, match=match) as e:
        quantize_bundle(RESNET, tmp_path / "o", path)
    assert str(path) in str(e.value)


def test_options_are_checked():
    with pytest.raises(InputError, match="precision"):
        QuantizeOptions(precision="int4")
    with pytest.raises(InputError, match="heldout"):
        QuantizeOptions(heldout=1.0)


def test_cli_json(data, tmp_path):
    out = tmp_path / "cli"
    r = invoke(
        "export", "quantize", FAMILY, "--calibration", data[0], "-o", out,
        "--heldout", HELDOUT, "--per-tensor", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    assert doc["kind"] == "ensemble"
    assert doc["verified"] is True
    assert doc["precision"]["precision"] == "int8"
    assert doc["precision"]["per_channel"] is False
    assert len(doc["precision"]["parity"]["states"]) == 3
    assert load_bundle(out).extra["precision"] == doc["precision"]
    r = invoke("export", "quantize", FAMILY, "--calibration", data[0], "-o", tmp_path / "e",
               "--method", "percentile")  # fmt: skip
    assert r.exit_code == 2
    assert "percentile calibration needs at least 1000" in r.output


def test_int8_branches_bundle(tmp_path):
    from edgeadapt.exporters import _graph
    from edgeadapt.exporters.branches import export_branches
    from tests.test_export_branches import residual_cnn

    x = np.random.default_rng(1).standard_normal((300, 1, 16)).astype(np.float32)
    y = _graph.session(residual_cnn()).run(None, {"x": x})[0].argmax(axis=1)
    save_npz(tmp_path / "c.npz", x=x, y=y)
    onnx_path = tmp_path / "rescnn.onnx"
    onnx_path.write_bytes(residual_cnn().SerializeToString())
    src = export_branches(onnx_path, tmp_path / "b", calibration=tmp_path / "c.npz", max_branches=3)
    got = quantize_bundle(src, tmp_path / "q", tmp_path / "c.npz")
    assert got.kind == "branches"
    assert [s.name for s in got.states] == [s.name for s in src.states]
    parity = got.extra["precision"]["parity"]["states"]
    assert parity[-1]["fp32_accuracy"] == 1.0  # labelled by the full model
    # measured 1.0, 0.983 and 1.0 on the 60 held-out rows
    assert all(s["agreement"] >= 0.95 for s in parity)


def test_bf16_runs_where_the_runtime_has_it(data, tmp_path):
    """OpenVINO runs the bfloat16 graph ONNX Runtime's CPU provider refuses."""
    pytest.importorskip("openvino")
    from edgeadapt.formats.presets import RuntimeConfig

    options = QuantizeOptions(
        precision="bf16", heldout=HELDOUT, runtime=RuntimeConfig("openvino", threads=1)
    )
    got = quantize_bundle(FAMILY, tmp_path / "bf", data[0], options)
    record = got.extra["precision"]
    assert record["precision"] == "bf16"
    assert record["runtime"]["runtime"] == "openvino"
    # measured 0.985 (the logistic member's near ties), 0.995 and 1.0
    assert all(s["agreement"] >= 0.96 for s in record["parity"]["states"])


def test_variants_of_quantized_bundles_are_named_by_precision(int8, tmp_path):
    both = export_variants([int8.path, RESNET], tmp_path / "both")
    assert both.chain_names[0] == "int8"  # the record's precision, not the record
    assert both.extra["chains"][0]["precision"] == int8.extra["precision"]
    assert "precision" not in both.extra["chains"][1]


def test_with_source_writes_the_variants_bundle(int8, data, tmp_path):
    out = tmp_path / "both"
    r = invoke(
        "export", "quantize", RESNET, "--calibration", data[0], "-o", out,
        "--heldout", HELDOUT, "--with-source", "--json",
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    doc = json.loads(r.output)
    both = load_bundle(out)
    src = load_bundle(RESNET)
    names = [s.name for s in src.states]
    assert [s.name for s in both.states] == [f"{n}@int8" for n in names] + [
        f"{n}@fp32" for n in names
    ]
    assert both.chain_names == ("int8",) * 4 + ("fp32",) * 4
    # what export variants writes of the int8 bundle and the source
    same = export_variants([int8.path, RESNET], tmp_path / "v", names=["int8", "fp32"])
    assert both.files == same.files
    record = both.extra["chains"][0]["precision"]
    assert doc["precision"] == record
    assert record["source_manifest_sha256"] == src.manifest_sha256
    assert both.extra["chains"][1]["source_manifest_sha256"] == src.manifest_sha256


def test_with_source_refuses_other_kinds_by_name(data, tmp_path):
    with pytest.raises(
        InputError, match="this one has kind ensemble: write the variant alone"
    ) as e:
        quantize_bundle(
            FAMILY, tmp_path / "o", data[0], QuantizeOptions(heldout=HELDOUT), with_source=True
        )
    assert e.value.field == "$.kind"
    r = invoke(
        "export", "quantize", FAMILY, "--calibration", data[0], "-o", tmp_path / "c",
        "--heldout", HELDOUT, "--with-source",
    )  # fmt: skip
    assert r.exit_code == 2
    assert "kind ensemble" in r.output
    assert not (tmp_path / "o").exists()
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_a_bundle_of_several_chains_is_refused_before_any_work(int8, data, tmp_path, precision):
    both = export_variants([int8.path, RESNET], tmp_path / "v", names=["int8", "fp32"])
    options = QuantizeOptions(precision=precision, heldout=HELDOUT)
    with pytest.raises(InputError, match=r"has several chains \(int8, fp32\)") as e:
        quantize_bundle(both, tmp_path / "o", data[0], options)
    assert e.value.field == "$.version"
    assert not (tmp_path / "o").exists()
