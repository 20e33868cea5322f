"""edgeadapt.measure.raywork: ``evaluate --ray`` runs the shards as Ray tasks on a local
cluster started by the test (2 CPUs); the evaluation is the one a single process
writes, the bundle is shipped by content and verified, and an address that does not
answer is an error naming it. `edgeadapt.raytasks` for the exporters: ``export onnx
--ray`` (calibration batches dealt to actors, a killed actor started again) and
``export branches --ray`` write the bundle one process writes, byte for byte; the
latter's tasks read no path (the model and the batches shipped by content, checked by
their sha256), so it takes a loader script too."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.data.sources import DataSpec
from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.bundle import MANIFEST, load_bundle
from edgeadapt.formats.evaluation import load_evaluation
from edgeadapt.measure import raywork
from edgeadapt.measure.evaluate import evaluate_to_file
from tests.clirun import invoke

ray = pytest.importorskip(
    "ray", reason="ray is not installed (the ray extra: pip install 'edgeadapt[ray]')"
)

KEYS = ("labels", "pred", "conf", "conf_margin", "conf_entropy")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_address_that_does_not_answer_is_named(multiexit_copy, mnist1d_npz, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # whatever ran before
    address = f"127.0.0.1:{_closed_port()}"
    result = invoke("evaluate", multiexit_copy, "--data", mnist1d_npz, "--ray", address)
    assert result.exit_code == 2, result.output
    assert f"error: the Ray cluster at {address} does not answer within 10 s" in result.output


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs for the module's tests, started from a scratch
    folder: Ray puts the driver's folder first on its workers' sys.path, which here
    would be the source checkout's `edgeadapt/`, not the installed package."""
    here = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("ray"))
    try:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    finally:
        os.chdir(here)
    yield
    ray.shutdown()


def test_ray_tasks_equal_one_process(cluster, multiexit_copy, mnist1d_npz, tmp_path):
    one = evaluate_to_file(multiexit_copy, mnist1d_npz, output=tmp_path / "1.npz", batch=8)
    result = invoke(
        "evaluate", multiexit_copy, "--data", mnist1d_npz, "--batch", 8, "--ray",
        "--workers", 3, "-o", tmp_path / "ray.npz", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["workers"] == 3
    assert "3 Ray tasks on a local Ray cluster, 1 runtime thread each" in result.stderr
    a, b = load_evaluation(one.path), load_evaluation(tmp_path / "ray.npz")
    for key in KEYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert a.data == b.data
    assert a.bundle == b.bundle


def test_without_workers_ray_takes_the_cluster_cpus(cluster, multiexit_copy, mnist1d_npz):
    done = evaluate_to_file(multiexit_copy, mnist1d_npz, batch=8, ray="local")
    assert done.workers == 2


def test_bad_data_in_a_task_is_the_error_it_is(cluster, multiexit_copy, tmp_path):
    path = tmp_path / "nan.npz"
    x = np.zeros((40, 1, 40), np.float32)
    x[37, 0, 5] = np.nan  # in the last shard
    np.savez(path, x=x, y=np.zeros(40, np.int64))
    out = tmp_path / "ev.npz"
    with pytest.raises(InputError, match=r"row 37") as caught:
        evaluate_to_file(multiexit_copy, path, output=out, batch=8, workers=2, ray="local")
    assert str(path) in str(caught.value)
    assert not out.exists()


def test_the_bundle_is_shipped_by_content_and_verified(multiexit_copy, monkeypatch):
    monkeypatch.setattr(raywork, "_LOADED", {})
    bundle = load_bundle(multiexit_copy)
    files = raywork.bundle_files(bundle)
    assert set(files) == {MANIFEST, *bundle.files}
    assert hashlib.sha256(files[MANIFEST]).hexdigest() == bundle.manifest_sha256
    with pytest.raises(InputError, match="the shipped bundle's manifest sha256 is"):
        raywork._materialize(files, "0" * 64)
    step = next(iter(bundle.files))
    tampered = {**files, step: files[step] + b"\0"}
    with pytest.raises(EdgeadaptError, match=f"sha256 mismatch for '{step}'"):
        raywork._materialize(tampered, bundle.manifest_sha256)
    loaded = raywork._materialize(files, bundle.manifest_sha256)
    assert loaded.manifest_sha256 == bundle.manifest_sha256
    assert loaded.path != bundle.path
    assert raywork._materialize(files, bundle.manifest_sha256) is loaded  # once a process


def test_a_task_that_raises_twice_is_named(cluster, multiexit_copy, mnist1d_npz):
    from edgeadapt.measure.shards import ShardError, ShardJob

    bundle = load_bundle(multiexit_copy)
    # a job no caller makes (no runtime configuration): the task raises AttributeError,
    # an unexpected error, on both tries
    job = ShardJob(
        str(multiexit_copy), bundle.manifest_sha256, DataSpec(mnist1d_npz), None, 8, 0, 40
    )
    with pytest.raises(ShardError, match=r"samples 0\.\.39 failed 2 times on Ray \("):
        raywork.run_ray([job], bundle)


def _kill_a_running_task(stop) -> int | None:
    """SIGKILL the first Ray worker process seen running a shard (its process title is
    ``ray::_job_task`` while it does: `raytasks.run_ray_jobs`); its pid, or None when `stop()` came first."""
    while not stop():
        for path in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                title = path.read_bytes()
            except OSError:
                continue
            if title.startswith(b"ray::_job_task"):
                pid = int(path.parent.name)
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.02)
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's workers in /proc (Linux)")
def test_a_killed_ray_worker_is_run_again_on_its_shard(cluster, multiexit_copy, tmp_path):
    rng = np.random.default_rng(5)
    data = tmp_path / "many.npz"
    x = rng.standard_normal((4000, 1, 40)).astype(np.float32)
    np.savez(data, x=x, y=rng.integers(0, 10, 4000))
    one = evaluate_to_file(multiexit_copy, data, output=tmp_path / "1.npz", batch=1)
    done: dict[str, object] = {}

    def evaluate() -> None:
        done["run"] = evaluate_to_file(
            multiexit_copy, data, output=tmp_path / "ray.npz", batch=1, workers=2, ray="local"
        )

    thread = threading.Thread(target=evaluate)
    thread.start()
    killed = _kill_a_running_task(lambda: not thread.is_alive())
    thread.join()
    assert killed is not None
    assert "run" in done  # Ray ran the killed shard again (max_retries=1)
    a, b = load_evaluation(one.path), load_evaluation(tmp_path / "ray.npz")
    for key in KEYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)


# ------------------------------------------------------------------ the exporters on Ray


@pytest.fixture(scope="module")
def net_calibration(tmp_path_factory):
    """The multi-exit CNN and 600 MNIST-1D samples (10 batches of 64, the last of 24)."""
    import onnx

    from edgeadapt.data.mnist1d import mnist1d_splits
    from edgeadapt.formats.npzio import save_npz
    from tests.models import multi_exit_cnn

    folder = tmp_path_factory.mktemp("net")
    onnx.save(multi_exit_cnn(), folder / "net.onnx")
    splits = mnist1d_splits(7, n_train=600, n_calibration=1, n_test=1)
    save_npz(folder / "calib.npz", x=splits.train.x, y=splits.train.y)
    return folder / "net.onnx", folder / "calib.npz"


def _export_onnx(net_calibration, out, **kw):
    from edgeadapt.exporters.onnx import export_onnx

    net, calib = net_calibration
    cuts = ["conv1_relu", "conv2_relu"]
    kw = {"batch_size": 64, **kw}
    return export_onnx(net, out, cuts=cuts, logits="logits", calibration=calib, **kw)


def test_export_onnx_on_ray_writes_the_bundle_one_process_writes(
    cluster, net_calibration, tmp_path
):
    from tests.test_calib_workers import same_bundles

    net, calib = net_calibration
    _export_onnx(net_calibration, tmp_path / "1")
    _export_onnx(net_calibration, tmp_path / "2", workers=2)
    result = invoke(
        "export", "onnx", net, "--cut", "conv1_relu", "--cut", "conv2_relu", "--logits",
        "logits", "--calibration", calib, "--batch-size", 64, "--ray", "-o", tmp_path / "r",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    same_bundles(tmp_path / "1", tmp_path / "2")
    same_bundles(tmp_path / "1", tmp_path / "r")


def _kill_an_actor(title: bytes, stop) -> int | None:
    """SIGKILL the first process seen whose title starts with `title`; its pid, or None
    when `stop()` came first."""
    while not stop():
        for path in Path("/proc").glob("[0-9]*/cmdline"):
            try:
                seen = path.read_bytes()
            except OSError:
                continue
            if seen.startswith(title):
                pid = int(path.parent.name)
                os.kill(pid, signal.SIGKILL)
                return pid
        time.sleep(0.01)
    return None


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's workers in /proc (Linux)")
def test_a_killed_calibration_actor_is_started_again(cluster, tmp_path):
    import onnx

    from edgeadapt.formats.npzio import save_npz
    from tests.models import multi_exit_cnn
    from tests.test_calib_workers import same_bundles

    onnx.save(multi_exit_cnn(), tmp_path / "net.onnx")
    rng = np.random.default_rng(2)
    save_npz(
        tmp_path / "c.npz",
        x=rng.standard_normal((3000, 1, 40)).astype(np.float32),
        y=rng.integers(0, 10, 3000),
    )
    net_calibration = (tmp_path / "net.onnx", tmp_path / "c.npz")
    _export_onnx(net_calibration, tmp_path / "1", batch_size=4)
    done: dict[str, object] = {}

    def export() -> None:
        done["bundle"] = _export_onnx(net_calibration, tmp_path / "r", batch_size=4, ray="local")

    thread = threading.Thread(target=export)
    thread.start()
    killed = _kill_an_actor(b"ray::_Dealer.run", lambda: not thread.is_alive())
    thread.join()
    assert killed is not None
    assert "bundle" in done  # Ray started the actor again and ran its batches again
    same_bundles(tmp_path / "1", tmp_path / "r")


def test_export_branches_on_ray_writes_the_bundle_one_process_writes(cluster, tmp_path):
    import onnx

    from edgeadapt.exporters.branches import export_branches
    from tests.test_branches_workers import _calibration
    from tests.test_calib_workers import same_bundles
    from tests.test_export_branches import residual_cnn

    onnx.save(residual_cnn(), tmp_path / "rescnn.onnx")
    calib = _calibration(tmp_path, 300)
    export_branches(tmp_path / "rescnn.onnx", tmp_path / "1", calibration=calib, max_branches=4)
    seen: list[tuple[int, int]] = []
    result = invoke(
        "export", "branches", tmp_path / "rescnn.onnx", "--calibration", calib,
        "--max-branches", 4, "--ray", "-o", tmp_path / "r",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    export_branches(
        tmp_path / "rescnn.onnx",
        tmp_path / "w",
        calibration=calib,
        max_branches=4,
        workers=3,
        ray="local",
        progress=lambda d, t: seen.append((d, t)),
    )
    same_bundles(tmp_path / "1", tmp_path / "r")
    same_bundles(tmp_path / "1", tmp_path / "w")
    assert seen[-1] == (8, 8)


@pytest.mark.parametrize("external", [False, True], ids=["inline", "external-weights"])
def test_export_branches_on_ray_reads_no_path(cluster, tmp_path, monkeypatch, external):
    """The model (and its external weights file) and the calibration set are moved away
    once the export has shipped them, before any task runs: the tasks score from the
    object store alone."""
    import onnx

    from edgeadapt.exporters import branches
    from tests.test_branches_workers import _calibration
    from tests.test_calib_workers import same_bundles
    from tests.test_export_branches import residual_cnn

    weights = {"save_as_external_data": True, "location": "w.data", "size_threshold": 0}
    onnx.save(residual_cnn(), tmp_path / "rescnn.onnx", **(weights if external else {}))
    assert (tmp_path / "w.data").is_file() == external
    calib = _calibration(tmp_path, 300)
    branches.export_branches(
        tmp_path / "rescnn.onnx", tmp_path / "1", calibration=calib, max_branches=4
    )
    run_ray_jobs = branches.run_ray_jobs
    moved: list[Path] = []

    def after_shipping(jobs, work, progress):
        assert all(job.shipped is not None for job in jobs)
        if not moved:
            for path in (tmp_path / "rescnn.onnx", calib, tmp_path / "w.data"):
                if path.exists():
                    path.rename(path.with_suffix(".gone"))
                moved.append(path)
        return run_ray_jobs(jobs, work, progress)

    monkeypatch.setattr(branches, "run_ray_jobs", after_shipping)
    branches.export_branches(
        tmp_path / "rescnn.onnx",
        tmp_path / "r",
        calibration=calib,
        max_branches=4,
        workers=2,
        ray="local",
    )
    assert moved
    assert not any(path.exists() for path in moved)
    same_bundles(tmp_path / "1", tmp_path / "r")


def test_export_branches_on_ray_takes_a_loader_script(cluster, tmp_path):
    import onnx

    from edgeadapt.exporters.branches import export_branches
    from tests.test_branches_workers import _calibration
    from tests.test_calib_workers import same_bundles
    from tests.test_export_branches import residual_cnn
    from tests.test_workers import _loader

    onnx.save(residual_cnn(), tmp_path / "rescnn.onnx")
    script = _loader(tmp_path, _calibration(tmp_path, 300), rows=7)
    net = tmp_path / "rescnn.onnx"
    export_branches(net, tmp_path / "1", calibration=script, max_branches=4, batch=16)
    result = invoke(
        "export", "branches", net, "--calibration", script, "--max-branches", 4,
        "--batch", 16, "--ray", "--workers", 2, "-o", tmp_path / "r",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    same_bundles(tmp_path / "1", tmp_path / "r")


def test_a_branches_worker_scores_shipped_content_and_checks_it(cluster, tmp_path, monkeypatch):
    import onnx

    from edgeadapt.data.sources import DataSpec
    from edgeadapt.exporters import _graph, branches
    from edgeadapt.exporters._calib import open_calibration
    from tests.test_branches_workers import _calibration
    from tests.test_export_branches import residual_cnn

    monkeypatch.setattr(branches, "_LOADED", {})
    onnx.save(residual_cnn(), tmp_path / "rescnn.onnx")
    model = branches._prepared(tmp_path / "rescnn.onnx")
    found = branches.find_blocks(model)
    calib = open_calibration(_calibration(tmp_path, 300), [_graph.input_spec(model, "m")], 10)
    shipped = branches._ship(model, calib, 64)
    sets = ((), (found[0].add,))
    job = branches._ScoreJob(
        str(tmp_path / "absent.onnx"), "", tuple(b.add for b in found),
        DataSpec(str(tmp_path / "absent.npz")), 300, 10, 64, sets, shipped,
    )  # fmt: skip
    want = branches._scorer(model, found, lambda: calib.batches(64), 300, "m", None)(sets)
    assert branches._score_job(job, lambda done: None) == want
    assert len(branches._LOADED) == 1  # fetched and checked once for this process

    monkeypatch.setattr(branches, "_LOADED", {})
    other = replace(shipped, model=ray.put(b"not the model"))
    with pytest.raises(InputError, match="the model shipped to a Ray worker is not the export"):
        branches._score_job(replace(job, shipped=other), lambda done: None)
    batches = list(calib.batches(64))
    batches[0][0]["x"][0, 0, 0] += 1.0
    other = replace(shipped, data=ray.put(batches))
    with pytest.raises(InputError, match=r"absent\.npz: the calibration batches shipped"):
        branches._score_job(replace(job, shipped=other), lambda done: None)
    assert branches._LOADED == {}


def test_export_onnx_names_an_address_that_does_not_answer(net_calibration, tmp_path, monkeypatch):
    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # whatever ran before
    net, calib = net_calibration
    address = f"127.0.0.1:{_closed_port()}"
    result = invoke(
        "export", "onnx", net, "--cut", "conv1_relu", "--logits", "logits",
        "--calibration", calib, "--ray", address, "-o", tmp_path / "b",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert f"error: the Ray cluster at {address} does not answer within 10 s" in result.output
    assert not (tmp_path / "b").exists()


def test_a_loader_script_is_dealt_to_ray_actors(cluster, multiexit_copy, mnist1d_npz, tmp_path):
    from tests.test_workers import _loader

    script = _loader(tmp_path, mnist1d_npz)
    one = evaluate_to_file(multiexit_copy, script, output=tmp_path / "1.npz", batch=8)
    done = evaluate_to_file(
        multiexit_copy, script, output=tmp_path / "r.npz", batch=8, workers=2, ray="local"
    )
    assert (
        done.workers_note == "2 Ray actors on a local Ray cluster, the batches of the script dealt"
    )
    a, b = load_evaluation(one.path), load_evaluation(tmp_path / "r.npz")
    for key in KEYS:
        np.testing.assert_array_equal(getattr(a, key), getattr(b, key), err_msg=key)
    assert a.data == b.data


def test_an_error_of_a_dealt_item_is_raised_as_it_is(cluster):
    """An item that raises an edgeadapt error while others are still with the actors is
    that error (the actors stopped), not one of Ray's about stopping them."""
    from ray import cloudpickle

    from edgeadapt.raytasks import deal_ray
    from tests import dealt

    cloudpickle.register_pickle_by_value(dealt)  # the actors cannot import tests/
    try:
        with pytest.raises(InputError, match="item 1013 is bad"):
            list(
                deal_ray(
                    1, [*range(6), 1013, *range(7, 12)], 2, dealt.init, dealt.work, dealt.where
                )
            )
    finally:
        cloudpickle.unregister_pickle_by_value(dealt)
