"""The batch from a memory budget (`edgeadapt.data.memory`, `edgeadapt.data.budget`):
sizes read and written, the live-set estimate on graphs built here, the choice, the
estimate against what ONNX Runtime really holds, and the commands saying what they
chose."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.data.budget import DEFAULT_MEMORY, MAX_AUTO_BATCH, format_bytes, parse_bytes
from edgeadapt.data.memory import (
    RUNTIME_FACTOR,
    BatchChoice,
    _sizes,
    bundle_sample_bytes,
    choose_batch,
    live_bytes,
    sample_bytes,
)
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import load_bundle
from tests.clirun import invoke
from tests.conftest import MULTIEXIT


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1GiB", 1 << 30),
        ("512MiB", 512 << 20),
        ("512 mib", 512 << 20),
        ("1.5G", 1_500_000_000),
        ("800MB", 800_000_000),
        ("64k", 64_000),
        ("2000000000", 2_000_000_000),
        (4096, 4096),
    ],
)
def test_sizes_are_read_in_either_unit(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("text", ["", "x", "1e9", "-1GiB", "0", "1 PiB", "9" * 400, "1GiB!"])
def test_a_bad_size_names_the_option(text):
    with pytest.raises(InputError, match=r"^memory: "):
        parse_bytes(text)


@given(st.integers(1, 1 << 50))
def test_a_written_size_reads_back_within_its_rounding(n):
    text = format_bytes(n).replace(" ", "")
    assert abs(parse_bytes(text) - n) <= max(n * 5e-3, 1)


def _chain(nodes, inputs, outputs, inits=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _f(name, *dims):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", *dims])


def test_the_live_set_follows_each_tensor_to_its_last_reader():
    """x[8] -> a = Relu(x) [8] -> b = Concat(a, a) [16] -> c = Add(b, b) [16] ->
    d = Slice(c) [4]: the largest set alive at once is b and c in Add (32 floats), not
    all five tensors (52)."""
    starts = numpy_helper.from_array(np.array([0], np.int64), "s")
    ends = numpy_helper.from_array(np.array([4], np.int64), "e")
    axes = numpy_helper.from_array(np.array([1], np.int64), "ax")
    model = _chain(
        [
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Concat", ["a", "a"], ["b"], axis=1),
            helper.make_node("Add", ["b", "b"], ["c"]),
            helper.make_node("Slice", ["c", "s", "e", "ax"], ["d"]),
        ],
        [_f("x", 8)],
        [_f("d", 4)],
        [starts, ends, axes],
    )
    peak, ends_bytes = live_bytes(model)
    assert peak == 4 * (16 + 16)
    assert ends_bytes == 4 * (8 + 4)
    assert sample_bytes([model]) == RUNTIME_FACTOR * peak + ends_bytes
    held = live_bytes(model, keep=["b"])  # a fetched tensor lives to the end
    assert held == (4 * (16 + 16 + 4), 4 * (8 + 4 + 16))


def test_a_tensor_of_unknown_shape_counts_as_its_largest_input():
    """A Reshape to a computed shape leaves inference without the size after the batch:
    the tensor then counts as large as what it was made from (here x, a and r are alive
    at once in the Reshape: 3 x 30 floats; r counted as nothing would give 2 x 30)."""
    model = _chain(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Relu", ["x"], ["a"]),
            helper.make_node("Reshape", ["a", "shape"], ["r"]),
            helper.make_node("Add", ["r", "x"], ["y"]),
        ],
        [_f("x", 6, 5)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    assert _sizes(model)["r"] is None
    peak, _ = live_bytes(model)
    assert peak == 3 * 4 * 30


def test_a_bundle_is_estimated_over_its_steps():
    """Each step is its own session, whose arena stays at its peak: the live sets add."""
    bundle = load_bundle(MULTIEXIT)
    models = [onnx.load(str(s.path)) for s in bundle.steps]
    sets = [live_bytes(m) for m in models]
    assert bundle_sample_bytes(bundle) == sample_bytes(models)
    assert bundle_sample_bytes(bundle) == RUNTIME_FACTOR * sum(p for p, _ in sets) + sum(
        e for _, e in sets
    )


def _never() -> int:
    raise AssertionError("the estimate is not needed when the batch is given")


@given(per=st.integers(1, 1 << 40), memory=st.integers(1, 1 << 42))
def test_the_batch_is_the_most_the_budget_holds(per, memory):
    choice = choose_batch(lambda: per, memory=memory)
    assert 1 <= choice.batch <= MAX_AUTO_BATCH
    assert not choice.given
    if choice.batch > 1:
        assert choice.batch * per <= memory
    if choice.batch < MAX_AUTO_BATCH:
        assert (choice.batch + 1) * per > memory
    assert BatchChoice.from_json(json.loads(json.dumps(choice.to_json()))) == choice


def test_a_given_batch_wins_and_is_bounded():
    assert choose_batch(_never, batch=7, memory="1k") == BatchChoice(7, True)
    assert choose_batch(lambda: 1 << 20).memory == DEFAULT_MEMORY
    for bad in (0, -1, 1 << 21, True, 2.0):
        with pytest.raises(InputError, match=r"^batch_size: must"):
            choose_batch(_never, batch=bad, source="batch_size")
    with pytest.raises(InputError, match=r"^memory: "):
        choose_batch(lambda: 1, memory="lots")


def test_the_note_says_what_was_chosen():
    assert BatchChoice(7, True).note == "batch 7 (given)"
    assert choose_batch(lambda: 3 << 20, memory="1GiB").note == (
        "batch 256 (the most chosen): about 3 MiB a sample within a 1 GiB memory budget"
    )
    assert choose_batch(lambda: 10 << 20, memory="1GiB").note == (
        "batch 102: about 10 MiB a sample within a 1 GiB memory budget"
    )
    assert choose_batch(lambda: 2 << 30, memory="1GiB").note == (
        "batch 1: one sample is estimated at 2 GiB, over the memory budget of 1 GiB (--memory)"
    )


#: One forward pass of the ONNX model at argv[1] at batch argv[2] in a fresh process;
#: prints the peak RSS in KiB.
_FORWARD = """
import resource, sys
import numpy as np
import onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).standard_normal((int(sys.argv[2]), 16, 48, 48)).astype("f4")
for _ in range(2):
    s.run(None, {"x": x})
# VmHWM is this program's own peak; ru_maxrss would also count the parent's RSS at fork
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(hwm[0].split()[1] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _conv_net(depth: int, dense: bool) -> onnx.ModelProto:
    """Convolutions on [B, 16, 48, 48]: a plain chain, or each layer's output
    concatenated to its input as in a DenseNet (growing live sets)."""
    rng = np.random.default_rng(0)
    nodes, inits, x, channels = [], [], "x", 16
    for i in range(depth):
        w = numpy_helper.from_array(
            (rng.standard_normal((16, channels, 3, 3)) * 0.05).astype(np.float32), f"w{i}"
        )
        inits.append(w)
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        if dense:
            nodes.append(helper.make_node("Concat", [x, f"r{i}"], [f"d{i}"], axis=1))
            x, channels = f"d{i}", channels + 16
        else:
            x = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [x], ["p"]))
    nodes.append(helper.make_node("Flatten", ["p"], ["logits"]))
    return _chain(nodes, [_f("x", 16, 48, 48)], [_f("logits", channels)], inits)


@pytest.mark.slow
@pytest.mark.parametrize("dense", [False, True], ids=["chain", "dense"])
def test_the_estimate_covers_what_onnx_runtime_holds(tmp_path, dense):
    """Peak RSS per sample of a forward pass, batch 16 to 64, each in a fresh process,
    is at most the estimate (the budget's promise)."""
    model = _conv_net(4, dense)
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    peaks = []
    for batch in (16, 64):
        out = subprocess.run(
            [sys.executable, "-c", _FORWARD, str(path), str(batch)],
            capture_output=True,
            text=True,
            check=True,
        )
        peaks.append(int(out.stdout.split()[-1]) * 1024)
    measured = (peaks[1] - peaks[0]) / 48
    live, _ = live_bytes(model)
    assert measured > live / 2  # the measurement sees the activations at all
    assert measured <= sample_bytes([model]), (measured, live)


def test_evaluate_and_run_say_the_batch_they_chose(multiexit_copy, tmp_path):
    x = np.zeros((30, 1, 40), np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=np.zeros(30, np.int64))
    per = bundle_sample_bytes(load_bundle(multiexit_copy))
    memory = 7 * per + 1
    ev = invoke(
        "evaluate", multiexit_copy, "--data", tmp_path / "d.npz", "--memory", memory, "--json"
    )
    assert ev.exit_code == 0, ev.output
    assert json.loads(ev.stdout)["batch"] == {
        "batch": 7,
        "given": False,
        "bytes_per_sample": per,
        "memory": memory,
    }
    run = invoke("run", multiexit_copy, "--input", tmp_path / "d.npz", "--thresholds", "0.5",
                 "--memory", memory)  # fmt: skip
    assert run.exit_code == 0, run.output
    assert "30 samples" in run.stdout
    assert "(5 batch(es))" in run.stdout
    assert run.stderr.startswith("note: batch 7: about ")
    given = invoke("run", multiexit_copy, "--input", tmp_path / "d.npz", "--thresholds", "0.5",
                   "--memory", "1", "--batch", "30")  # fmt: skip
    assert given.exit_code == 0, given.output
    assert "note: batch 30 (given)" in given.stderr
    bad = invoke("evaluate", multiexit_copy, "--data", tmp_path / "d.npz", "--memory", "lots")
    assert bad.exit_code == 2
    assert bad.output.startswith("error: --memory: expected a size such as 1GiB")
