"""``export branches --workers N``: the candidate skip sets are scored in worker
processes; the bundle is byte for byte the one a single process writes (every subset,
and the greedy path with its sample), a killed worker is run again, candidates that
keep failing are one error naming the skip set, and nothing is written then."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import numpy as np
import onnx
import pytest

from edgeadapt.errors import InputError
from edgeadapt.exporters import _graph, branches
from edgeadapt.exporters.branches import export_branches
from edgeadapt.workers import ShardError
from tests.clirun import invoke
from tests.processes import worker_killer
from tests.test_export_branches import L, residual_cnn


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "rescnn.onnx"
    onnx.save(residual_cnn(), path)
    return path


def _calibration(tmp_path: Path, n: int) -> Path:
    """`n` inputs labelled by the full model itself."""
    x = np.random.default_rng(1).standard_normal((n, 1, L)).astype(np.float32)
    y = _graph.session(residual_cnn()).run(None, {"x": x})[0].argmax(axis=1)
    path = tmp_path / f"calib{n}.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture
def calibration(tmp_path):
    return _calibration(tmp_path, 300)


def _files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def _same_bundles(a: Path, b: Path) -> None:
    one, two = _files(a), _files(b)
    assert sorted(one) == sorted(two)
    for name in one:
        assert one[name] == two[name], name


def _candidates(monkeypatch) -> list[list[branches.Branch]]:
    """The candidates of each export from now on, in the order they were scored."""
    scored: list[list[branches.Branch]] = []
    pareto = branches.pareto

    def spy(candidates, max_branches):
        scored.append(list(candidates))
        return pareto(candidates, max_branches)

    monkeypatch.setattr(branches, "pareto", spy)
    return scored


def test_every_subset_in_workers_is_the_bundle_one_process_writes(
    tmp_path, source, calibration, monkeypatch
):
    scored = _candidates(monkeypatch)
    export_branches(source, tmp_path / "1", calibration=calibration, max_branches=4)
    seen: list[tuple[int, int]] = []
    export_branches(
        source,
        tmp_path / "2",
        calibration=calibration,
        max_branches=4,
        workers=2,
        progress=lambda d, t: seen.append((d, t)),
    )
    _same_bundles(tmp_path / "1", tmp_path / "2")
    assert scored[0] == scored[1]  # each candidate's FLOPs and accuracy, in order
    assert seen[-1] == (8, 8)  # every candidate reported
    assert sorted(seen) == seen


def test_the_greedy_path_in_workers_is_the_bundle_one_process_writes(
    tmp_path, source, calibration, monkeypatch
):
    # Three blocks walk the greedy path and a sample when fewer than three are exhaustive
    # (only the parent enumerates: the workers score what they are given).
    monkeypatch.setattr(branches, "EXHAUSTIVE_BLOCKS", 2)
    monkeypatch.setattr(branches, "SAMPLED_BRANCHES", 6)
    scored = _candidates(monkeypatch)
    one = export_branches(source, tmp_path / "1", calibration=calibration, seed=3)
    export_branches(source, tmp_path / "2", calibration=calibration, seed=3, workers=3)
    assert one.extra["branches"]["enumeration"].startswith("the greedy path")
    _same_bundles(tmp_path / "1", tmp_path / "2")
    assert scored[0] == scored[1]


def test_a_killed_worker_is_run_again(tmp_path, source):
    slow = _calibration(tmp_path, 2000)  # at batch 1 a candidate runs long enough to be killed
    export_branches(source, tmp_path / "1", calibration=slow, batch=1)
    progress, killed = worker_killer(every=False)
    export_branches(source, tmp_path / "2", calibration=slow, batch=1, workers=2, progress=progress)
    assert killed
    _same_bundles(tmp_path / "1", tmp_path / "2")


def test_candidates_failing_twice_are_one_error_naming_the_skip_set(tmp_path, source):
    slow = _calibration(tmp_path, 2000)
    progress, killed = worker_killer(every=True)
    out = tmp_path / "out"
    with pytest.raises(
        ShardError,
        match=r"scoring the branch that skips \[.*\] failed 2 times \(its worker was "
        r"killed by signal 9\); nothing was written",
    ):
        export_branches(source, out, calibration=slow, batch=1, workers=2, progress=progress)
    assert len(killed) >= 2
    assert not out.exists()
    assert multiprocessing.active_children() == []


def test_a_worker_refuses_a_source_that_changed(tmp_path, source, calibration):
    job = branches._ScoreJob(
        str(source), "0" * 64, (), branches.DataSpec(str(calibration)), 300, 10, 300, ((),)
    )
    with pytest.raises(InputError, match="the model changed since the export started"):
        branches._score_job(job, lambda done: None)


def test_a_loader_script_is_refused(tmp_path, source, calibration):
    script = tmp_path / "loader.py"
    script.write_text(
        f"import numpy as np\n\ndef load_data():\n    d = np.load({str(calibration)!r})\n"
        "    yield {'x': d['x']}, d['y']\n"
    )
    with pytest.raises(InputError, match=r"workers: .*a loader script"):
        export_branches(source, tmp_path / "b", calibration=script, workers=2)
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("bad", ["0", "257", "x"])
def test_bad_worker_counts_on_the_cli(tmp_path, source, calibration, bad):
    result = invoke(
        "export", "branches", source, "--calibration", calibration, "-o", tmp_path / "b",
        "--workers", bad,
    )  # fmt: skip
    assert result.exit_code == 2
    assert "--workers" in result.output
    assert not (tmp_path / "b").exists()


def test_workers_on_the_cli(tmp_path, source, calibration):
    result = invoke(
        "export", "branches", source, "--calibration", calibration, "-o", tmp_path / "b",
        "--workers", "2",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    export_branches(source, tmp_path / "1", calibration=calibration)
    _same_bundles(tmp_path / "1", tmp_path / "b")
