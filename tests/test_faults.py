"""Fault cases that once crashed or answered wrongly: steps whose outputs lose the
batch axis or carry logits of the wrong dtype or rank, and inputs too large for one
batch. Each ends in a clear error naming the step file and output, or in bounded memory."""

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgeadapt.cascade.model import AdaptiveModel
from edgeadapt.cascade.run import MAX_BATCH, predict_batches
from edgeadapt.cli import cli
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import BundleError, load_bundle
from edgeadapt.measure.evaluate import evaluate_bundle
from tests.tiny import BAD, UNLISTED, tiny_bundle, tiny_inputs, with_unlisted_data

MULTIEXIT = (
    Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"
)
MESSAGE = {
    "act-one-row": "output 'a0': has shape [1, 4] for an input of",
    "logits-one-row": "output 'l0': has shape [1, 3] for an input of",
    "logits-float64": "logits are float64",
    "logits-int64": "logits are int64",
    "logits-rank3": "expected float32",
}


# what verification (load_bundle) says of the faults it can see in the graph's declarations
VERIFY = {
    "logits-float64": "logits 'l0' are not float32",
    "logits-int64": "logits 'l0' are not float32",
}


@pytest.fixture(scope="module", params=BAD)
def bad_bundle(request, tmp_path_factory):
    return request.param, tiny_bundle(tmp_path_factory.mktemp(request.param) / "b", request.param)


def test_the_sound_tiny_bundle_runs_and_compacts(tmp_path):
    b = tiny_bundle(tmp_path / "b")
    with AdaptiveModel.load(b, thresholds=0.6) as m:
        out = m.predict(tiny_inputs(64))
    assert set(out.exit_state.tolist()) == {0, 1}  # some rows continue: compaction ran


@pytest.mark.parametrize("rows", [1, 64])
def test_cascade_refuses_bad_step_outputs(bad_bundle, rows):
    bad, b = bad_bundle
    with AdaptiveModel.load(b, thresholds=0.6) as m:
        if bad.endswith("one-row") and rows == 1:  # one row in, one row out: nothing wrong
            assert m.predict(tiny_inputs(rows)).pred.shape == (1,)
            return
        with pytest.raises(InputError, match=r"step0\.onnx: output") as e:
            m.predict(tiny_inputs(rows))
    assert MESSAGE[bad] in str(e.value)


def test_warm_up_refuses_bad_logits(bad_bundle):
    bad, b = bad_bundle
    if bad in ("act-one-row", "logits-one-row"):
        pytest.skip("one warm-up row cannot tell a fixed batch of 1")
    with pytest.raises(InputError, match=MESSAGE[bad]):
        AdaptiveModel.load(b, thresholds=0.6, warmup=1)


def test_evaluate_refuses_bad_step_outputs(bad_bundle):
    bad, b = bad_bundle
    x = tiny_inputs(40)
    y = np.arange(40) % 3
    with pytest.raises(InputError, match=r"step0\.onnx: output") as e:
        evaluate_bundle(b, x, y, batch=16)
    assert MESSAGE[bad] in str(e.value)


def test_run_command_refuses_bad_step_outputs(bad_bundle, tmp_path):
    bad, b = bad_bundle
    path = tmp_path / "x.npy"
    np.save(path, tiny_inputs(20))
    result = CliRunner().invoke(
        cli, ["run", str(b.path), "--input", str(path), "--thresholds", "0.6"]
    )
    assert result.exit_code == 2, result.output
    assert VERIFY.get(bad, MESSAGE[bad]) in result.output
    assert "Traceback" not in result.output


def test_verify_refuses_what_the_graph_declares(bad_bundle):
    bad, b = bad_bundle
    if bad not in VERIFY:
        assert load_bundle(b.path).verified  # declared [batch, ...] float32: runtime checks
        return
    with pytest.raises(BundleError, match=VERIFY[bad]):
        load_bundle(b.path)


def test_run_on_a_large_input_keeps_memory_flat(tmp_path):
    """20k rows of 256 floats (20 MB) memory-mapped, 256 rows a batch: the Python heap
    peaks at the per-row answers plus a few batches, far below the input's size (the
    bound grows with the rows only by the answers, so it holds for 200k rows too)."""
    rows, features = 20_000, 256
    b = tiny_bundle(tmp_path / "b", features=features)
    path = tmp_path / "x.npy"
    big = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, features))
    big[:] = tiny_inputs(rows, features=features)
    big.flush()
    del big
    x = np.load(path, mmap_mode="r", allow_pickle=False)
    answers = rows * (8 + 8 + 4 + 1)
    with AdaptiveModel.load(b, thresholds=0.6) as m:
        tracemalloc.start()
        try:
            out, latency = predict_batches(m, x, 256)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert set(out["exit_state"].tolist()) == {0, 1}
    assert latency["batches"] == -(-rows // 256)
    assert latency["rows"][0] == rows
    assert peak < answers + 2**20, (peak, answers, x.nbytes)
    assert answers + 2**20 < x.nbytes / 10


def test_predict_batches_names_the_absolute_row_and_bounds_the_batch(tmp_path):
    x = np.zeros((600, 1, 40), dtype=np.float32)
    x[517, 0, 3] = np.nan
    with AdaptiveModel.load(MULTIEXIT, thresholds=0.9) as m:
        with pytest.raises(InputError, match=r"data\.npy: holds NaN or infinity, first in row 517"):
            predict_batches(m, x, 256, source="data.npy")
        with pytest.raises(InputError, match=r"^batch: must lie in"):
            predict_batches(m, x, MAX_BATCH + 1)
        with pytest.raises(InputError, match="expected dtype float32"):
            predict_batches(m, x.astype(np.float64), 256)


def test_run_command_batches_by_default(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((600, 1, 40), dtype=np.float32))
    args = ["run", str(MULTIEXIT), "--input", str(path), "--thresholds", "2", "-o"]
    result = CliRunner().invoke(cli, [*args, str(tmp_path / "o.npz")])
    assert result.exit_code == 0, result.output
    assert "600 samples" in result.output
    assert "3 batch(es)" in result.output
    big = CliRunner().invoke(cli, [*args[:-1], "--batch", str(MAX_BATCH + 1)])
    assert big.exit_code == 2
    assert "--batch" in big.output


@pytest.mark.parametrize("where", UNLISTED)
def test_verify_refuses_external_data_the_manifest_does_not_list(tmp_path, where):
    d = with_unlisted_data(tiny_bundle(tmp_path / "b").path, where)
    assert load_bundle(d, verify=False).steps[1].file == "step1.onnx"  # the schema holds
    with pytest.raises(BundleError, match=r"references external data 'evil\.bin'"):
        load_bundle(d)
