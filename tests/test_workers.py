"""edgeadapt.measure.shards: ``evaluate --workers N`` splits the data into shards of
whole batches run by worker processes; the evaluation is the one a single process
writes, a killed worker's shard is run again, a shard that keeps failing is one error
naming its samples, and nothing is written then."""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.data.sources import DataSpec, open_source
from edgeadapt.errors import InputError
from edgeadapt.formats.bundle import InputSpec, load_bundle
from edgeadapt.formats.evaluation import load_evaluation
from edgeadapt.formats.presets import RuntimeConfig
from edgeadapt.measure.evaluate import evaluate_to_file
from edgeadapt.measure.shards import (
    ShardError,
    ShardJob,
    check_workers,
    evaluate_shard,
    load_checked,
    plan_shards,
    run_local,
    worker_config,
)
from tests.clirun import invoke
from tests.processes import worker_killer

KEYS = ("labels", "pred", "conf", "conf_margin", "conf_entropy")


def _same(a, b):
    for key in KEYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert a.names == b.names
    assert a.data == b.data
    assert a.bundle == b.bundle


def _evaluate(bundle, data, out, *extra):
    result = invoke("evaluate", bundle, "--data", data, "-o", out, "--json", *extra)
    assert result.exit_code == 0, result.output
    return load_evaluation(out), result


def test_shards_are_whole_batches_covering_the_data():
    assert plan_shards(40, 8, 3) == [(0, 16), (16, 32), (32, 40)]
    assert plan_shards(40, 8, 2) == [(0, 24), (24, 40)]
    assert plan_shards(5, 8, 4) == [(0, 5)]  # one batch: one shard
    for rows, batch, workers in [(1, 1, 1), (1000, 7, 6), (64, 64, 2), (65, 64, 2)]:
        shards = plan_shards(rows, batch, workers)
        assert shards[0][0] == 0
        assert shards[-1][1] == rows
        assert all(a[1] == b[0] for a, b in itertools.pairwise(shards))
        assert all((hi - lo) % batch == 0 for lo, hi in shards[:-1])
        assert len(shards) == min(workers, -(-rows // batch))


def test_threads_are_split_among_the_workers():
    assert worker_config(RuntimeConfig(threads=4), 2).threads == 2
    assert worker_config(RuntimeConfig(threads=3), 2).threads == 1
    assert worker_config(RuntimeConfig(threads=1), 4).threads == 1
    assert worker_config(RuntimeConfig(), 1).threads == os.cpu_count()
    assert worker_config(RuntimeConfig(), 2, cpus=6).threads == 3
    assert worker_config(RuntimeConfig("openvino", threads=8), 3).threads == 2
    assert worker_config(RuntimeConfig("tensorrt"), 2).threads is None  # it has none


def test_an_npz_in_workers_equals_one_process(multiexit_copy, mnist1d_npz, tmp_path):
    one, _ = _evaluate(multiexit_copy, mnist1d_npz, tmp_path / "1.npz", "--batch", 8)
    three, result = _evaluate(
        multiexit_copy, mnist1d_npz, tmp_path / "3.npz", "--batch", 8, "--workers", 3
    )
    _same(one, three)
    assert json.loads(result.stdout)["workers"] == 3
    assert "3 worker processes" in result.stderr


def test_workers_import_the_parents_package_past_a_shadowing_folder(
    multiexit_copy, mnist1d_npz, tmp_path, monkeypatch
):
    """A folder first on sys.path that holds another `edgeadapt/` (a source checkout)
    is not what the spawned workers import: they take the parent's package."""
    shadow = tmp_path / "shadow" / "edgeadapt"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('the shadowing edgeadapt')\n")
    monkeypatch.syspath_prepend(str(shadow.parent))
    one = evaluate_to_file(multiexit_copy, mnist1d_npz, output=tmp_path / "1.npz", batch=8)
    two = evaluate_to_file(
        multiexit_copy, mnist1d_npz, output=tmp_path / "2.npz", batch=8, workers=2
    )
    _same(load_evaluation(one.path), load_evaluation(two.path))


def test_an_image_folder_in_workers_equals_one_process(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    from edgeadapt.exporters.family import export_family
    from tests.test_images import SIDE, _classifier

    folder = tmp_path / "images"
    rng = np.random.default_rng(1)
    for name in ("a", "b", "c", "d"):
        (folder / name).mkdir(parents=True)
        for i in range(12):
            pixels = rng.integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i:02d}.png")
    models = [_classifier(tmp_path / "s.onnx", 1, False), _classifier(tmp_path / "b.onnx", 2, True)]
    bundle = export_family(models, tmp_path / "bundle").path
    one, _ = _evaluate(bundle, folder, tmp_path / "1.npz", "--batch", 5)
    two, _ = _evaluate(bundle, folder, tmp_path / "2.npz", "--batch", 5, "--workers", 2)
    _same(one, two)
    assert two.data["kind"] == "images"
    assert two.data["samples"] == 48

    (folder / "d" / "11.png").write_bytes(b"\x89PNG but not really")  # in the last shard
    result = invoke("evaluate", bundle, "--data", folder, "--batch", 5, "--workers", 2)
    assert result.exit_code == 2, result.output
    assert "11.png: not a readable image" in result.output
    assert "Traceback" not in result.output


@pytest.fixture
def many(tmp_path) -> Path:
    """2,000 samples: at batch 1 a shard runs long enough to be killed while it runs."""
    rng = np.random.default_rng(5)
    path = tmp_path / "many.npz"
    np.savez(
        path, x=rng.standard_normal((2000, 1, 40)).astype(np.float32), y=rng.integers(0, 10, 2000)
    )
    return path


def test_a_killed_worker_is_run_again_on_its_shard(multiexit_copy, many, tmp_path):
    one = evaluate_to_file(multiexit_copy, many, output=tmp_path / "1.npz", batch=1, threads=1)
    progress, killed = worker_killer(every=False)
    two = evaluate_to_file(
        multiexit_copy,
        many,
        output=tmp_path / "2.npz",
        batch=1,
        threads=2,
        workers=2,
        progress=progress,
    )
    assert killed
    assert "tried again: samples" in (two.workers_note or "")
    assert "killed by signal 9" in (two.workers_note or "")
    _same(load_evaluation(one.path), load_evaluation(two.path))


def test_a_shard_that_fails_twice_is_one_error_and_nothing_is_written(
    multiexit_copy, many, tmp_path
):
    progress, killed = worker_killer(every=True)
    out = tmp_path / "out" / "ev.npz"
    out.parent.mkdir()
    with pytest.raises(
        ShardError,
        match=r"samples \d+\.\.\d+ failed 2 times \(its worker was "
        r"killed by signal 9\); nothing was written",
    ):
        evaluate_to_file(
            multiexit_copy, many, output=out, batch=1, threads=2, workers=2, progress=progress
        )
    assert len(killed) >= 2
    assert list(out.parent.iterdir()) == []
    assert multiprocessing.active_children() == []


def _loader(tmp_path, npz, rows=7, bad_at=None):
    """A loader script yielding the samples of `npz` in batches of `rows` (a label of
    10, outside the classes, at sample `bad_at`)."""
    script = tmp_path / "loader.py"
    script.write_text(
        "import numpy as np\n\n"
        "def load_data():\n"
        f"    d = np.load({str(npz)!r})\n"
        "    y = d['y'].copy()\n"
        + (f"    y[{bad_at}] = 10\n" if bad_at is not None else "")
        + f"    for lo in range(0, len(y), {rows}):\n"
        f"        yield {{'x': d['x'][lo:lo + {rows}]}}, y[lo:lo + {rows}]\n"
    )
    return script


def test_a_loader_script_is_dealt_to_the_workers(multiexit_copy, mnist1d_npz, tmp_path):
    # the script's batches of 7 are re-batched to 8, read here, dealt to the workers
    script = _loader(tmp_path, mnist1d_npz)
    one, _ = _evaluate(multiexit_copy, script, tmp_path / "1.npz", "--batch", 8)
    got, result = _evaluate(
        multiexit_copy, script, tmp_path / "2.npz", "--batch", 8, "--workers", 2
    )
    _same(one, got)
    assert "2 worker processes, the batches of the script dealt" in result.stderr
    assert multiprocessing.active_children() == []


def test_a_loader_scripts_bad_label_in_workers_is_the_error_one_process_gives(
    multiexit_copy, mnist1d_npz, tmp_path
):
    script = _loader(tmp_path, mnist1d_npz, bad_at=30)
    out = tmp_path / "ev.npz"
    one = invoke("evaluate", multiexit_copy, "--data", script, "--batch", 8, "-o", out)
    two = invoke(
        "evaluate", multiexit_copy, "--data", script, "--batch", 8, "--workers", 2, "-o", out
    )
    assert one.exit_code == two.exit_code == 2
    assert "sample 30: label 10" in one.output
    assert one.output == two.output
    assert not out.exists()
    assert multiprocessing.active_children() == []


def test_bad_labels_are_found_before_any_worker(multiexit_copy, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((8, 1, 40), np.float32), y=np.array([0] * 7 + [10]))
    result = invoke("evaluate", multiexit_copy, "--data", path, "--workers", 2)
    assert result.exit_code == 2, result.output
    assert f"{path}: y: class indices must lie in 0..9 (the 10 classes), got 0..10" in result.output


def test_a_worker_refuses_a_bundle_that_changed(multiexit_copy, mnist1d_npz):
    bundle = load_bundle(multiexit_copy)
    with pytest.raises(InputError, match="the bundle changed since the run started"):
        load_checked(str(multiexit_copy), "0" * 64)
    assert load_checked(str(multiexit_copy), bundle.manifest_sha256) == bundle
    job = ShardJob(
        str(multiexit_copy),
        bundle.manifest_sha256,
        DataSpec(mnist1d_npz),
        RuntimeConfig(threads=1),
        8,
        16,
        40,
    )
    shard = evaluate_shard(job, bundle)
    whole = evaluate_shard(replace(job, start=0), bundle)
    for key in ("labels", "pred"):
        np.testing.assert_array_equal(getattr(shard, key), getattr(whole, key)[16:])
    with pytest.raises(InputError, match="holds 40 samples, 41 when the run started"):
        evaluate_shard(replace(job, stop=41), bundle)


@pytest.mark.parametrize("bad", [0, -1, 257, 1.5, True, "2"])
def test_bad_worker_counts(bad):
    with pytest.raises(InputError, match=r"workers: must be an integer in 1\.\.256"):
        check_workers(bad)


@pytest.mark.parametrize("form", ["npz", "compressed", "npy", "fortran"])
def test_a_range_of_rows_reads_as_the_whole_does(tmp_path, form):
    x = np.random.default_rng(2).standard_normal((23, 1, 40)).astype(np.float32)
    path = tmp_path / ("d.npy" if form in ("npy", "fortran") else "d.npz")
    if form == "compressed":
        np.savez_compressed(path, x=x)
    elif form == "npz":
        np.savez(path, x=x)
    else:
        np.save(path, np.asfortranarray(x) if form == "fortran" else x)
    inputs = open_source(path, [InputSpec("x", ("batch", 1, 40), "float32")])
    got = list(inputs.batches(4, start=8, stop=21))
    assert [lo for lo, _ in got] == [8, 12, 16, 20]
    np.testing.assert_array_equal(np.concatenate([f["x"] for _, f in got]), x[8:21])
    with pytest.raises(InputError, match=r"start: must be below stop \(21\), got 21"):
        list(inputs.batches(4, start=21, stop=21))
    with pytest.raises(InputError, match=r"stop: must be an integer row in 0\.\.23, got 24"):
        list(inputs.batches(4, stop=24))


def test_ray_missing_names_the_extra(multiexit_copy, mnist1d_npz, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as when not installed
    out = multiexit_copy / "ev.npz"
    result = invoke("evaluate", multiexit_copy, "--data", mnist1d_npz, "--ray", "-o", out)
    assert result.exit_code == 2, result.output
    assert (
        "--ray (work on a Ray cluster) needs the 'ray' package: pip install 'edgeadapt[ray]'"
        in result.output
    )
    assert not out.exists()


def test_a_worker_that_raises_is_run_again_then_named(multiexit_copy, mnist1d_npz):
    bundle = load_bundle(multiexit_copy)
    # a job no caller makes (no runtime configuration): the worker raises AttributeError,
    # an unexpected error, on every try
    job = ShardJob(
        str(multiexit_copy), bundle.manifest_sha256, DataSpec(mnist1d_npz), None, 8, 8, 40
    )
    with pytest.raises(ShardError) as caught:
        run_local([job], 1)
    message = str(caught.value)
    assert message.startswith(
        "samples 8..39 failed 2 times (its worker raised AttributeError: 'NoneType' object "
        "has no attribute 'runtime'); nothing was written\nTraceback"
    )
