"""``export onnx --workers N``: the calibration batches are dealt to worker processes
that load the model once and return each batch's pooled features; the parent folds them
in batch order, so the bundle is byte for byte the one a single process writes (an npz,
a masked two-input text model, a loader script). A killed worker's batch is run again;
a batch that keeps failing is one error naming its samples, and nothing is written.
`edgeadapt.workers.deal_processes` itself: results in order, a bounded window, errors."""

from __future__ import annotations

import multiprocessing
import os
import signal
from multiprocessing.context import SpawnProcess
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeadapt.data.mnist1d import mnist1d_splits
from edgeadapt.errors import InputError
from edgeadapt.exporters import _calibwork
from edgeadapt.exporters.heads import HeadFitter
from edgeadapt.exporters.onnx import export_onnx
from edgeadapt.formats.npzio import save_npz
from edgeadapt.workers import PER_WORKER, ShardError, deal_processes
from tests import dealt
from tests.clirun import invoke
from tests.models import multi_exit_cnn
from tests.processes import worker_killer

CUTS = ["conv1_relu", "conv2_relu"]


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "net.onnx"
    onnx.save(multi_exit_cnn(), path)
    return path


@pytest.fixture(scope="module")
def calibration(tmp_path_factory):
    """1000 MNIST-1D samples: 16 batches of 64 (the last of 40), more than the window."""
    splits = mnist1d_splits(7, n_train=1000, n_calibration=1, n_test=1)
    path = tmp_path_factory.mktemp("calib") / "calib.npz"
    save_npz(path, x=splits.train.x, y=splits.train.y)
    return path


def files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def same_bundles(a: Path, b: Path) -> None:
    one, two = files(a), files(b)
    assert sorted(one) == sorted(two)
    for name in one:
        assert one[name] == two[name], name


def _export(source, out, calibration, **kw):
    return export_onnx(
        source, out, cuts=CUTS, logits="logits", calibration=calibration, batch_size=64, **kw
    )


def test_sums_per_shard_are_not_one_process_sums(calibration):
    # Why the workers add nothing up: the same features folded in two shards and added
    # differ from one pass in the last bits, so the byte-identity below can fail.
    x = np.load(calibration)["x"].reshape(1000, -1).astype(np.float64)
    y = np.load(calibration)["y"]
    held = np.zeros(1000, bool)
    one = HeadFitter(10, "flatten", held)
    halves = [HeadFitter(10, "flatten", held[:512]), HeadFitter(10, "flatten", held[512:])]
    for lo in range(0, 1000, 64):
        one.add(x[lo : lo + 64], y[lo : lo + 64])
        halves[lo >= 512].add(x[lo : lo + 64], y[lo : lo + 64])
    merged = halves[0]._gram + halves[1]._gram
    assert not np.array_equal(one._gram, merged)
    np.testing.assert_allclose(one._gram, merged, rtol=1e-12)


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_write_the_bundle_one_process_writes(tmp_path, source, calibration, workers):
    one = _export(source, tmp_path / "1", calibration)
    seen: list[tuple[str, int, int]] = []
    _export(
        source,
        tmp_path / "n",
        calibration,
        workers=workers,
        progress=lambda label, done, total: seen.append((label, done, total)),
    )
    same_bundles(tmp_path / "1", tmp_path / "n")
    assert [h["kind"] for h in one.extra["heads"]] == ["trained-linear"] * 2
    assert [s[0] for s in seen].count("calibration forward pass") == 16
    assert seen[-1][1] == seen[-1][2]
    assert multiprocessing.active_children() == []


def test_a_loader_script_in_workers_writes_the_same_bundle(tmp_path, source, calibration):
    script = tmp_path / "loader.py"
    script.write_text(
        "import numpy as np\n\n"
        "def load_data():\n"
        f"    d = np.load({str(calibration)!r})\n"
        "    for lo in range(0, 1000, 100):\n"
        "        yield {'x': d['x'][lo:lo + 100]}, d['y'][lo:lo + 100]\n"
    )
    _export(source, tmp_path / "1", calibration)
    _export(source, tmp_path / "2", script, workers=2)
    same_bundles(tmp_path / "1", tmp_path / "2")


def test_a_two_input_masked_model_in_workers(tmp_path):
    torch = pytest.importorskip("torch", reason="the test graph is exported from torch")
    from tests import graphs

    ids, mask = graphs.text_inputs(4)
    names = ["input_ids", "attention_mask"]
    path = graphs.export_legacy(
        graphs.text_encoder(),
        (torch.from_numpy(ids), torch.from_numpy(mask)),
        names,
        tmp_path / "text.onnx",
    )
    ids, mask = graphs.text_inputs(150, seed=1)
    y = np.random.default_rng(0).integers(0, graphs.TEXT_CLASSES, 150)
    save_npz(tmp_path / "c.npz", input_ids=ids, attention_mask=mask, y=y)
    cuts = graphs.tensor_names(path, "LayerNormalization")[1::2][:1]
    kw = {"cuts": cuts, "calibration": tmp_path / "c.npz", "pool": "mean", "batch_size": 16}
    one = export_onnx(path, tmp_path / "1", **kw)
    export_onnx(path, tmp_path / "2", workers=2, **kw)
    assert one.extra["heads"][0]["mask"] == "attention_mask"
    same_bundles(tmp_path / "1", tmp_path / "2")


def _killer(every: bool):
    kill, killed = worker_killer(every)
    return (lambda label, done, total: kill(done, total)), killed


def test_a_killed_worker_is_replaced_and_its_batch_run_again(tmp_path, source, calibration):
    _export(source, tmp_path / "1", calibration)
    progress, killed = _killer(every=False)
    _export(source, tmp_path / "2", calibration, workers=2, progress=progress)
    assert killed
    same_bundles(tmp_path / "1", tmp_path / "2")


def test_a_batch_failing_twice_is_one_error_and_nothing_is_written(
    tmp_path, source, calibration, monkeypatch
):
    # every worker is killed as soon as it starts: a batch fails on both tries (which of
    # the first two batches is charged twice first is a race between the two workers)
    started = SpawnProcess.start
    killed: list[int] = []

    def start_and_kill(self):
        started(self)
        os.kill(self.pid, signal.SIGKILL)
        killed.append(self.pid)

    monkeypatch.setattr(SpawnProcess, "start", start_and_kill)
    out = tmp_path / "out"
    with pytest.raises(
        ShardError,
        match=r"calibration samples (0\.\.63|64\.\.127) failed 2 times \(its worker was killed by "
        r"signal 9\); nothing was written",
    ):
        _export(source, out, calibration, workers=2)
    assert len(killed) >= 2
    assert not out.exists()
    assert multiprocessing.active_children() == []


def test_a_worker_refuses_a_model_that_changed(tmp_path, source):
    (tmp_path / "reference.onnx").write_bytes(source.read_bytes())
    heads = _calibwork.HeadInputs(None, {"conv1_relu": "flatten"}, {}, {})
    setup = _calibwork.Setup(
        str(source), str(tmp_path), {"reference.onnx": "0" * 64}, "reference.onnx", ("c",), heads
    )
    with pytest.raises(InputError, match="not the export's \\(sha256 differs\\)") as caught:
        _calibwork._init(setup)
    assert str(source) in str(caught.value)


def test_the_cli_takes_workers(tmp_path, source, calibration):
    result = invoke(
        "export", "onnx", source, "--cut", CUTS[0], "--cut", CUTS[1], "--logits", "logits",
        "--calibration", calibration, "--batch-size", 64, "--workers", 2, "-o", tmp_path / "b",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    _export(source, tmp_path / "1", calibration)
    same_bundles(tmp_path / "1", tmp_path / "b")


@pytest.mark.parametrize("bad", ["0", "257", "x"])
def test_bad_worker_counts_on_the_cli(tmp_path, source, calibration, bad):
    result = invoke(
        "export", "onnx", source, "--cut", CUTS[0], "--calibration", calibration,
        "--workers", bad, "-o", tmp_path / "b",
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--workers" in result.output
    assert not (tmp_path / "b").exists()


# ------------------------------------------------------------------ deal_processes


@pytest.fixture
def dealt_importable(monkeypatch):
    """The folder that holds tests/ first on sys.path, which spawned workers take from
    this process: they import `tests.dealt` by name (pytest makes `tests` importable in
    this process only), and `edgeadapt.workers` keeps the installed package first."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1]))


@pytest.mark.usefixtures("dealt_importable")
def test_results_come_in_order_from_every_worker_and_the_window_holds():
    taken: list[int] = []
    given = 0

    def items():
        for i in range(60):
            taken.append(i)
            assert len(taken) - given <= 2 * PER_WORKER * 3  # the window
            yield i

    pids = set()
    for i, (value, pid) in enumerate(
        deal_processes(5, items(), 3, dealt.init, dealt.work, dealt.where)
    ):
        assert value == 5 * i
        pids.add(pid)
        given += 1
    assert given == 60
    assert len(pids) == 3
    assert multiprocessing.active_children() == []


@pytest.mark.usefixtures("dealt_importable")
def test_an_edgeadapt_error_in_set_up_or_work_is_raised_as_it_is():
    with pytest.raises(InputError, match="a negative factor"):
        list(deal_processes(-1, range(5), 2, dealt.init, dealt.work, dealt.where))
    with pytest.raises(InputError, match="item 1013 is bad"):
        list(deal_processes(1, [*range(10), 1013, 11], 2, dealt.init, dealt.work, dealt.where))
    assert multiprocessing.active_children() == []


@pytest.mark.usefixtures("dealt_importable")
def test_an_item_whose_worker_dies_twice_is_named():
    with pytest.raises(
        ShardError, match=r"item -1 failed 2 times \(its worker exited with code 3\)"
    ):
        list(deal_processes(1, [0, 1, -1, 2], 2, dealt.init, dealt.work, dealt.where))
    assert multiprocessing.active_children() == []


@pytest.mark.usefixtures("dealt_importable")
def test_an_error_of_the_items_stops_the_workers():
    def items():
        yield 1
        yield 2
        raise InputError("the loader broke", source="loader.py")

    with pytest.raises(InputError, match="the loader broke"):
        list(deal_processes(1, items(), 2, dealt.init, dealt.work, dealt.where))
    assert multiprocessing.active_children() == []
