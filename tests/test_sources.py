"""edgeadapt.data.sources: loader scripts as data for evaluate, run and export calibration
(the same results as the npz they hold), their batches re-cut, streamed, and their faults
named (the script, the batch, the sample; the user's traceback once)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeadapt.data.sources import DataSpec, ScriptInputs, open_source
from edgeadapt.errors import InputError, UserCodeError
from edgeadapt.formats.bundle import InputSpec, load_bundle
from edgeadapt.formats.evaluation import load_evaluation
from tests.clirun import invoke
from tests.models import multi_exit_cnn

SPECS = [InputSpec("x", ("batch", 1, 40), "float32")]


def _script(tmp_path: Path, body: str, name: str = "loader.py") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def _npz_loader(tmp_path: Path, npz: Path, *, sizes: str = "[7, 1, 13, 19]") -> Path:
    """A loader yielding the npz's samples as float64 in uneven batches, with labels."""
    return _script(
        tmp_path,
        f"""
        import numpy as np

        def load_data():
            d = np.load({str(npz)!r})
            lo = 0
            for n in {sizes}:
                yield {{"x": d["x"][lo:lo + n].astype(np.float64)}}, d["y"][lo:lo + n]
                lo += n
        """,
    )


def _same(a, b):
    for key in ("labels", "pred", "conf", "conf_margin", "conf_entropy"):
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


def test_evaluate_on_a_loader_script_equals_the_npz(multiexit_copy, mnist1d_npz, tmp_path):
    script = _npz_loader(tmp_path, mnist1d_npz)
    got = {}
    for name, data in (("npz", mnist1d_npz), ("script", f"{script}:load_data"), ("bare", script)):
        out = tmp_path / f"{name}.npz"
        result = invoke(
            "evaluate", multiexit_copy, "--data", data, "--batch", 16, "-o", out, "--json"
        )
        assert result.exit_code == 0, result.output
        got[name] = load_evaluation(out)
    _same(got["npz"], got["script"])
    _same(got["npz"], got["bare"])
    assert got["npz"].data == {"kind": "npz", "path": str(mnist1d_npz), "samples": 40}
    assert got["script"].data == {
        "kind": "script",
        "path": str(script),
        "samples": 40,
        "function": "load_data",
    }
    doc = json.loads(result.output)
    assert doc["casts"] == [
        f"{script}:load_data: x: float64 read as float32, the model's input dtype"
    ]


def test_run_on_a_loader_script_equals_the_npz(multiexit_copy, mnist1d_npz, tmp_path):
    script = _npz_loader(tmp_path, mnist1d_npz)
    answers = []
    for data in (mnist1d_npz, script):
        result = invoke(
            "run", multiexit_copy, "--input", data, "--thresholds", "0.3", "--batch", 8, "--json"
        )
        assert result.exit_code == 0, result.output
        doc = json.loads(result.output)
        answers.append((doc["pred"], doc["exit_state"], doc["conf"]))
    assert answers[0] == answers[1]
    assert len(answers[0][0]) == 40


def test_run_takes_a_loader_without_labels(multiexit_copy, mnist1d_npz, tmp_path):
    script = _script(
        tmp_path,
        f"""
        import numpy as np

        def unlabelled():
            x = np.load({str(mnist1d_npz)!r})["x"]
            yield x[:25]
            yield x[25:]
        """,
    )
    want = invoke("run", multiexit_copy, "--input", mnist1d_npz, "--thresholds", "0.3", "--json")
    got = invoke(
        "run", multiexit_copy, "--input", f"{script}:unlabelled", "--thresholds", "0.3", "--json"
    )
    assert got.exit_code == 0, got.output
    assert json.loads(got.output)["pred"] == json.loads(want.output)["pred"]
    result = invoke("evaluate", multiexit_copy, "--data", f"{script}:unlabelled")
    assert result.exit_code == 2
    assert "unlabelled: batch 0: no labels" in result.output


def test_export_calibration_from_a_loader_script_equals_the_npz(mnist1d_npz, tmp_path):
    model = tmp_path / "net.onnx"
    onnx.save(multi_exit_cnn(), model)
    script = _npz_loader(tmp_path, mnist1d_npz)
    digests = []
    for name, data in (("npz", mnist1d_npz), ("script", script)):
        out = tmp_path / name
        result = invoke(
            "export", "onnx", model, "--cut", "conv1_relu", "--cut", "conv2_relu",
            "--logits", "logits", "--calibration", data, "--batch-size", 16, "-o", out, "--json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        digests.append(load_bundle(out).files)
    assert digests[0] == digests[1]  # the same heads, byte for byte


def test_batches_are_recut_to_the_size_asked(tmp_path):
    script = _script(
        tmp_path,
        """
        import numpy as np

        def batches():
            lo = 0
            for n in (3, 5, 1, 7):
                yield {"x": np.arange(lo, lo + n, dtype=np.float32)[:, None, None] * np.ones((1, 1, 40), np.float32)}
                lo += n
        """,
    )
    inputs = open_source(f"{script}:batches", SPECS)
    assert isinstance(inputs, ScriptInputs)
    assert inputs.rows is None  # known once read through
    got = list(inputs.batches(4))
    assert [lo for lo, _ in got] == [0, 4, 8, 12]
    assert [f["x"].shape[0] for _, f in got] == [4, 4, 4, 4]
    np.testing.assert_array_equal(np.concatenate([f["x"][:, 0, 0] for _, f in got]), np.arange(16))
    assert inputs.rows == 16
    assert [f["x"].shape[0] for _, f in inputs.batches(5)] == [5, 5, 5, 1]


def test_a_script_is_read_a_batch_at_a_time(tmp_path):
    """Streaming: the first batch of 4 needs two yields of 3, not the endless rest."""
    script = _script(
        tmp_path,
        """
        import numpy as np

        pulled = []

        def load_data():
            while True:
                pulled.append(3)
                yield {"x": np.zeros((3, 1, 40), np.float32)}
        """,
    )
    inputs = open_source(script, SPECS)
    lo, feeds = next(inputs.batches(4))
    assert (lo, feeds["x"].shape[0]) == (0, 4)
    assert inputs._function.__globals__["pulled"] == [3, 3]


def test_calibration_reads_a_script_twice_and_needs_the_same_samples(tmp_path):
    from edgeadapt.exporters._calib import open_calibration

    script = _script(
        tmp_path,
        """
        import numpy as np

        calls = []

        def load_data():
            calls.append(1)
            n = 6 if len(calls) == 1 else 5
            yield {"x": np.zeros((n, 1, 40), np.float32)}, np.zeros(n, np.int64)
        """,
    )
    calib = open_calibration(script, SPECS, 10)
    assert calib.n == 6  # counted by a first pass
    with pytest.raises(InputError, match=r"yielded 5 samples on this pass, 6 on the one before"):
        list(calib.batches(4))


def test_a_recipe_with_arrays_is_refused(mnist1d_npz):
    from edgeadapt.data.images import Recipe

    with pytest.raises(InputError, match=r"recipe: .*image folders"):
        open_source(DataSpec(mnist1d_npz, Recipe(resize=8)), SPECS)


def test_other_files_say_what_data_may_be(tmp_path):
    path = tmp_path / "data.txt"
    path.write_text("hello")
    with pytest.raises(InputError, match=r"loader script FILE\.py\[:FUNCTION\]"):
        open_source(path, SPECS)


# ------------------------------------------------------------------ faults


def _evaluate(bundle, script):
    return invoke("evaluate", bundle, "--data", script, "--batch", 4)


def test_a_loader_that_raises_shows_its_traceback_once(multiexit_copy, tmp_path):
    script = _script(
        tmp_path,
        """
        import numpy as np

        def load_data():
            yield {"x": np.zeros((4, 1, 40), np.float32)}, np.zeros(4, int)
            raise ValueError("the disk is gone")
        """,
    )
    result = _evaluate(multiexit_copy, script)
    assert result.exit_code == 2, result.output
    out = result.output
    assert out.count("Traceback (most recent call last)") == 1
    assert out.count("ValueError: the disk is gone") == 2  # its traceback's line, then ours
    assert f'File "{script}", line 6, in load_data' in out
    assert "edgeadapt/data/sources.py" not in out  # the user's frames only
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"error: {script}:load_data raised at batch 1: ValueError:")


def test_a_loader_that_fails_to_import(multiexit_copy, tmp_path):
    script = _script(tmp_path, "import numpy\nvalue = 1 / 0\n")
    result = _evaluate(multiexit_copy, script)
    assert result.exit_code == 2
    assert "ZeroDivisionError: division by zero" in result.output
    assert f"error: {script}:load_data failed to import: ZeroDivisionError" in result.output


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            'yield {"z": np.zeros((4, 1, 40), np.float32)}, np.zeros(4, int)',
            r"batch 0: the inputs do not match the bundle's \(x\): missing \['x'\], unexpected \['z'\]",
        ),
        (
            'yield {"x": np.zeros((4, 1, 40), np.float32)}, np.zeros(4, int)\n'
            '    yield {"x": np.zeros((4, 1, 41), np.float32)}, np.zeros(4, int)',
            r"batch 1: x: expected shape \[B, 1, 40\], got \[4, 1, 41\]",
        ),
        (
            'yield {"x": np.zeros((4, 1, 40), np.int64)}, np.zeros(4, int)',
            r"batch 0: x: expected dtype float32, got int64",
        ),
        (
            'yield {"x": np.zeros((4, 1, 40), np.float32)}, np.zeros(4, int)\n'
            '    yield {"x": np.zeros((4, 1, 40), np.float32)}, np.array([0, 1, 10, 2])',
            r"batch 1: labels: sample 6: label 10 outside the 10 classes \(0\.\.9\)",
        ),
        (
            'yield {"x": np.zeros((4, 1, 40), np.float32)}',
            r"batch 0: no labels: yield \(feeds, labels\)",
        ),
        (
            'yield {"x": np.zeros((4, 1, 40), np.float32)}, np.zeros(3, int)',
            r"batch 0: labels: expected integer labels \[4\], got int64 \[3\]",
        ),
        ("yield [np.zeros((4, 1, 40), np.float32)]", r"batch 0: expected a dict"),
        ("return\n    yield", r"load_data: yielded no samples"),
    ],
)
def test_bad_batches_name_the_script_and_the_batch(multiexit_copy, tmp_path, body, message):
    script = _script(tmp_path, f"import numpy as np\n\ndef load_data():\n    {body}\n")
    result = _evaluate(multiexit_copy, script)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"error: {script}:load_data")
    assert re.search(message, error), error


def test_a_missing_script_or_function(multiexit_copy, tmp_path):
    result = _evaluate(multiexit_copy, tmp_path / "none.py")
    assert result.exit_code == 2
    assert "file not found" in result.output
    script = _script(tmp_path, "def other():\n    return []\n")
    result = _evaluate(multiexit_copy, f"{script}:nothing")
    assert result.exit_code == 2
    assert f"{script} has no function 'nothing'" in result.output
    result = _evaluate(multiexit_copy, f"{script}:other")
    assert result.exit_code == 2
    assert "yielded no samples" in result.output


def test_a_function_returning_no_iterable(tmp_path):
    script = _script(tmp_path, "def load_data():\n    return 3\n")
    with pytest.raises(InputError, match="returned int, not an iterable of batches"):
        list(open_source(script, SPECS).batches(2))


def test_the_user_error_keeps_its_traceback(tmp_path):
    script = _script(tmp_path, "def load_data():\n    raise KeyError('k')\n")
    with pytest.raises(UserCodeError) as caught:
        list(open_source(script, SPECS).batches(2))
    assert "raise KeyError('k')" in caught.value.user_traceback
    assert "raised when called: KeyError" in str(caught.value)


def test_evaluate_bundle_leaves_a_script_to_evaluate_to_file(multiexit_copy, mnist1d_npz, tmp_path):
    from edgeadapt.measure.evaluate import evaluate_bundle

    bundle = load_bundle(multiexit_copy)
    inputs = open_source(_npz_loader(tmp_path, mnist1d_npz), bundle.inputs)
    with pytest.raises(InputError, match="labels come with its batches"):
        evaluate_bundle(bundle, inputs, np.zeros(40, np.int64))
