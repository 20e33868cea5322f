"""Device presets: the shipped files, validation on read, merging with explicit choices."""

import datetime
import importlib
import inspect
import itertools
import json
from importlib import resources
from pathlib import Path

import pytest

from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from edgeadapt.formats.presets import (
    AS_EXPORTED,
    MAX_THREADS,
    Preset,
    RuntimeConfig,
    inherit_runtime,
    load_preset,
    preset_names,
    reference_profiles,
)
from edgeadapt.formats.profile import MIN_SAMPLES, load_profile, state_costs
from edgeadapt.measure.profiler import TimingOptions, profile_bundle

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ("jetson-orin-trt-fp16", "x86-openvino", "x86-ort-1t", "x86-ort-2t")
RUNTIME_CLASSES = {
    "onnxruntime": ("edgeadapt.runtimes.onnxruntime", "OnnxRuntime"),
    "openvino": ("edgeadapt.runtimes.openvino", "OpenVinoRuntime"),
    "tensorrt": ("edgeadapt.runtimes.tensorrt", "TensorRtRuntime"),
}


def test_shipped_presets_are_installed_with_the_package():
    assert set(SHIPPED) <= set(preset_names())
    folder = resources.files("edgeadapt.profiles").joinpath("presets")
    installed = sorted(p.name for p in folder.iterdir() if p.name.endswith(".json"))
    in_repo = sorted(p.name for p in (ROOT / "profiles" / "presets").glob("*.json"))
    assert installed == in_repo


@pytest.mark.parametrize("name", preset_names())
def test_each_shipped_preset_fits_its_runtime(name):
    preset = load_preset(name)
    assert preset.name == name  # the file name is the preset's name
    assert preset.description
    config = RuntimeConfig.resolve(preset)
    runtime, options = config.runtime, config.backend_options()
    assert runtime == preset.runtime
    module, cls = RUNTIME_CLASSES[runtime]
    # the backend module imports its package lazily, so this runs without the backend
    signature = inspect.signature(getattr(importlib.import_module(module), cls))
    signature.bind(**options)  # raises TypeError on an option the runtime does not take


def test_x86_presets_say_what_they_run():
    one, two, ov = (load_preset(n) for n in ("x86-ort-1t", "x86-ort-2t", "x86-openvino"))
    assert (one.runtime, one.threads, one.precision) == ("onnxruntime", 1, AS_EXPORTED)
    assert (two.runtime, two.threads) == ("onnxruntime", 2)
    assert (ov.runtime, ov.threads, ov.precision) == ("openvino", 1, "fp32")
    trt = load_preset("jetson-orin-trt-fp16")
    assert (trt.runtime, trt.threads, trt.precision) == ("tensorrt", None, "fp16")


def test_unknown_name_lists_the_shipped_presets():
    with pytest.raises(InputError, match=r"unknown device preset 'nope'.*x86-ort-1t"):
        load_preset("nope")


GOOD = {
    "format": "edgeadapt-device-preset",
    "version": 1,
    "name": "my-board",
    "description": "a board",
    "runtime": "onnxruntime",
    "precision": "as-exported",
    "threads": 3,
    "options": {"spin": False},
}


def write(tmp_path, doc, text=None):
    path = tmp_path / "preset.json"
    path.write_text(text if text is not None else json.dumps(doc))
    return path


def test_a_preset_file_by_path(tmp_path):
    preset = load_preset(write(tmp_path, GOOD))
    assert preset == Preset(
        "my-board", "a board", "onnxruntime", "as-exported", 3, {"spin": False}, preset.source
    )
    assert preset.source == str(tmp_path / "preset.json")
    assert load_preset(str(tmp_path / "preset.json")) == preset


@pytest.mark.parametrize(
    ("change", "where", "message"),
    [
        ({"format": "edgeadapt-profile"}, "$.format", "expected format"),
        ({"version": 9}, "$.version", "unsupported version"),
        ({"runtime": None}, "$.runtime", "expected str"),
        ({"runtime": "tflite"}, "$.runtime", "unknown runtime 'tflite'"),
        ({"name": "My Board"}, "$.name", "lowercase"),
        ({"precision": ""}, "$.precision", "must not be empty"),
        ({"threads": 0}, "$.threads", "must be an integer in 1..1024"),
        ({"threads": 1025}, "$.threads", "must be an integer in 1..1024"),
        ({"threads": "2"}, "$.threads", "expected int or NoneType"),
        ({"threads": True}, "$.threads", "expected int or NoneType"),
        ({"options": []}, "$.options", "expected dict"),
        ({"options": {"spin": [1]}}, "$.options.spin", "JSON scalar"),
        ({"options": {"threads": 2}}, "$.options", "top level"),
    ],
)
def test_bad_preset_names_file_and_field(tmp_path, change, where, message):
    path = write(tmp_path, {**GOOD, **change})
    with pytest.raises(InputError, match=message) as e:
        load_preset(path)
    assert e.value.source == str(path)
    assert e.value.field == where


def test_missing_field_and_broken_json_name_the_file(tmp_path):
    doc = {k: v for k, v in GOOD.items() if k != "precision"}
    with pytest.raises(InputError, match=r"preset.json: \$\.precision: missing required"):
        load_preset(write(tmp_path, doc))
    with pytest.raises(InputError, match="invalid JSON"):
        load_preset(write(tmp_path, None, text='{"format": '))
    with pytest.raises(InputError, match="file not found"):
        load_preset(tmp_path / "absent.json")


def resolved(preset, **choices):
    config = RuntimeConfig.resolve(preset, **choices)
    return config.runtime, config.backend_options()


def test_resolve_explicit_choices_win():
    preset = load_preset("x86-ort-2t")
    assert resolved(preset) == (
        "onnxruntime",
        {"device": "cpu", "spin": False, "optimization": "all", "threads": 2},
    )
    _, options = resolved(preset, threads=1, options={"spin": True})
    assert options["threads"] == 1
    assert options["spin"] is True
    ov = load_preset("x86-openvino")
    assert resolved(ov)[1]["precision"] == "fp32"
    assert resolved(ov, precision="bf16")[1]["precision"] == "bf16"
    with pytest.raises(InputError, match="is for runtime 'onnxruntime', not 'openvino'") as e:
        RuntimeConfig.resolve(preset, runtime="openvino")
    assert e.value.field == "$.runtime"


def test_resolve_without_a_preset_keeps_the_old_defaults():
    assert resolved(None) == ("onnxruntime", {"threads": 1})
    assert resolved(None, runtime="openvino") == ("openvino", {"threads": 1})
    assert resolved(None, runtime="tensorrt", precision="fp16") == (
        "tensorrt",
        {"precision": "fp16"},
    )
    assert resolved(None, threads=4) == ("onnxruntime", {"threads": 4})


def test_a_runtime_config_names_its_preset_and_round_trips_through_json():
    config = RuntimeConfig.resolve(load_preset("x86-openvino"), threads=2)
    assert (config.runtime, config.preset, config.precision, config.threads) == (
        "openvino",
        "x86-openvino",
        "fp32",
        2,
    )
    assert config.options == {"device": "CPU", "hint": "LATENCY"}
    doc = json.loads(json.dumps(config.to_json()))
    assert set(doc) == {"runtime", "preset", "precision", "threads", "options"}
    assert RuntimeConfig.from_json(doc, "plan.json") == config
    # backend options as a runtime takes them, and back
    back = RuntimeConfig.from_backend_options("openvino", config.backend_options())
    assert back.backend_options() == config.backend_options()
    assert back.preset is None


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"runtime": "tflite"}, r"\$\.runtime\.runtime"),
        ({"threads": 0}, r"\$\.runtime\.threads"),
        ({"threads": "2"}, r"\$\.runtime\.threads"),
        ({"precision": ""}, r"\$\.runtime\.precision"),
        ({"options": {"threads": 2}}, r"\$\.runtime\.options"),
        ({"options": {"spin": [1]}}, r"\$\.runtime\.options\.spin"),
    ],
)
def test_a_bad_runtime_config_names_the_file_and_field(change, where):
    doc = {**RuntimeConfig(threads=1).to_json(), **change}
    with pytest.raises(InputError, match=rf"plan\.json: {where}"):
        RuntimeConfig.from_json(doc, "plan.json", "$.runtime")


def test_inherit_keeps_the_recorded_config_unless_overridden():
    recorded = RuntimeConfig.resolve(load_preset("x86-ort-2t"))
    same = inherit_runtime(recorded)
    assert same.config == recorded
    assert same.note is None
    # the same backend settings however they are spelled are not an override
    spelled = RuntimeConfig.from_backend_options("onnxruntime", recorded.backend_options())
    assert inherit_runtime(recorded, runtime=spelled) == same
    assert inherit_runtime(recorded, threads=2) == same
    fewer = inherit_runtime(recorded, threads=1)
    assert fewer.config.threads == 1
    assert fewer.config.options == recorded.options  # only the threads change
    assert fewer.note is not None
    assert "threads 1 (plan: 2)" in fewer.note
    other = inherit_runtime(recorded, runtime="openvino", what="profile")
    assert other.config == RuntimeConfig("openvino")  # the recorded options are ORT's
    assert other.note is not None
    assert "runtime openvino (profile: onnxruntime)" in other.note
    preset = inherit_runtime(recorded, preset="x86-ort-1t")
    assert (preset.config.preset, preset.config.threads) == ("x86-ort-1t", 1)


def test_inherit_without_a_recorded_config_keeps_the_runtime_defaults():
    assert inherit_runtime(None) == inherit_runtime(None, runtime="onnxruntime")
    assert inherit_runtime(None).config.backend_options() == {}
    assert inherit_runtime(None).note is None
    assert inherit_runtime(None, threads=3).config.backend_options() == {"threads": 3}
    with pytest.raises(InputError, match=r"must be an integer in 1\.\.1024") as e:
        inherit_runtime(None, threads=0)
    assert e.value.source == "threads"


@pytest.mark.parametrize("threads", [0, -3, 1025, 10_000, True, 2.0])
def test_threads_are_bounded_wherever_they_are_given(threads):
    """Past the bound ONNX Runtime fails to create its threads and hangs; the native
    runner allows 1..1024 too."""
    from edgeadapt.runtimes import get_runtime

    with pytest.raises(InputError, match=r"threads: must be an integer in 1\.\.1024"):
        RuntimeConfig("onnxruntime", threads=threads)
    with pytest.raises(InputError, match=r"threads: must be an integer in 1\.\.1024"):
        get_runtime("onnxruntime", threads=threads)
    with pytest.raises(InputError, match=r"threads: must be an integer in 1\.\.1024"):
        inherit_runtime(None, threads=threads)
    assert RuntimeConfig("onnxruntime", threads=MAX_THREADS).threads == MAX_THREADS


@pytest.fixture(scope="module")
def multiexit():
    return load_bundle(ROOT / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit")


def test_profile_with_a_preset_records_it(multiexit):
    prof = profile_bundle(
        multiexit, preset="x86-ort-2t", timing=TimingOptions(warmup=1, iters=MIN_SAMPLES)
    )
    assert prof.settings["preset"] == "x86-ort-2t"
    assert prof.settings["threads"] == 2
    assert prof.settings["options"] == {"device": "cpu", "spin": False, "optimization": "all"}
    assert prof.device["runtime"]["spin"] is False
    assert prof.device["runtime"]["threads"] == 2
    over = profile_bundle(
        multiexit, preset="x86-ort-2t", threads=1, timing=TimingOptions(warmup=1, iters=MIN_SAMPLES)
    )
    assert over.device["runtime"]["threads"] == 1


def test_profile_refuses_a_preset_its_runtime_rejects(multiexit, tmp_path):
    path = write(tmp_path, {**GOOD, "options": {"bogus": 1}})
    with pytest.raises(InputError, match=r"does not fit runtime 'onnxruntime'.*bogus") as e:
        profile_bundle(multiexit, preset=path, timing=TimingOptions(iters=MIN_SAMPLES))
    assert e.value.source == str(path)
    assert e.value.field == "$.options"


REFERENCE = {"x86-ort-1t": "onnxruntime", "x86-ort-2t": "onnxruntime", "x86-openvino": "openvino"}


def test_reference_profiles_are_shipped_for_each_x86_preset():
    names = {p.name for p in reference_profiles()}
    assert {f"mnist1d-multiexit-{preset}.json" for preset in REFERENCE} <= names
    in_repo = {p.name for p in (ROOT / "profiles" / "reference").glob("*.json")}
    assert names == in_repo


@pytest.mark.parametrize("path", reference_profiles(), ids=lambda p: p.stem)
def test_reference_profile_fits_the_shipped_bundle(path, multiexit):
    """Accepted for the shipped bundle (manifest sha256 matches) wherever the test runs;
    it states where (fingerprint) and when (measured_at) it was measured."""
    prof = load_profile(path, multiexit, check_device=False)
    preset = prof.settings["preset"]
    assert path.name == f"mnist1d-multiexit-{preset}.json"
    assert prof.device["runtime"]["backend"] == REFERENCE[preset]
    assert prof.device["runtime"]["threads"] == load_preset(preset).threads
    assert prof.device["device_id"]
    assert prof.device["cpu"]
    assert prof.device["cores"]["logical"] >= 1
    assert prof.device["runtime"]["version"]
    assert datetime.datetime.fromisoformat(prof.measured_at).tzinfo is not None
    assert prof.batches == (1, 8)
    assert min(s.n for b in prof.batches for s in prof.step_stats(b)) >= 1000
    assert prof.noisy == bool(prof.noise_reasons)
    costs = state_costs(prof, multiexit)
    assert all(b > a for a, b in itertools.pairwise([0.0, *costs]))  # cascade sums rise
