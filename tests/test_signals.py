"""A writer stopped by SIGTERM or SIGINT leaves no temp file or folder, in every command
that writes: the signal is raised while the first temp file is being synced (the moment
a killed writer leaves one behind), and the folder it writes into must hold no
``*.tmp``, no ``.edgeadapt-tmp-*`` and no file of the command's own afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgeadapt.formats.atomic import (
    TMP_PREFIX,
    Terminated,
    atomic_write_bytes,
    remove_temps,
    signals_as_exceptions,
)
from edgeadapt.formats.evaluation import save_evaluation
from edgeadapt.formats.profile import save_profile
from tests.clirun import invoke
from tests.conftest import MULTIEXIT

FAMILY = MULTIEXIT.parent / "mnist1d-family"
SIGNALS = {"SIGTERM": (signal.SIGTERM, 128 + signal.SIGTERM), "SIGINT": (signal.SIGINT, 1)}


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The multi-exit bundle with a short profile and an evaluation of it, a labelled
    set, inputs, a prediction CSV."""
    import shutil

    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.measure.evaluate import evaluate_bundle
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle

    root = tmp_path_factory.mktemp("made")
    bundle_dir = Path(
        shutil.copytree(MULTIEXIT, root / "b", ignore=shutil.ignore_patterns("profiles", "*.npz"))
    )
    bundle = load_bundle(bundle_dir)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 1, 40)).astype(np.float32)
    y = rng.integers(0, 10, 200)
    np.savez(root / "data.npz", x=x, y=y)
    save_profile(
        root / "profile.json", profile_bundle(bundle, timing=TimingOptions(warmup=1, iters=10))
    )
    save_evaluation(root / "eval.npz", evaluate_bundle(bundle, x, y))
    (root / "a.csv").write_text("file,predicted,truth\n1.png,1,1\n2.png,0,1\n")
    return {"root": root, "bundle": bundle_dir}


def _commands(m: dict[str, Path], out: Path) -> dict[str, list[object]]:
    root, b = m["root"], m["bundle"]
    common = ["--profile", root / "profile.json", "--evaluation", root / "eval.npz"]
    return {
        "export": [
            "export",
            "family",
            FAMILY / "model0.onnx",
            FAMILY / "model1.onnx",
            "-o",
            out / "bundle",
        ],
        "profile": ["profile", b, "--iters", 10, "--warmup", 0, "--no-whole", "-o", out / "p.json"],
        "evaluate": ["evaluate", b, "--data", root / "data.npz", "-o", out / "e.npz"],
        "plan": ["plan", b, *common, "-o", out / "plan.json"],
        "report": ["report", b, *common, "-o", out / "r.html"],
        "run": ["run", b, "--input", root / "data.npz", "--thresholds", 0.9, "-o", out / "run.npz"],
        "import-predictions": ["import-predictions", root / "a.csv", "-o", out / "i.npz"],
    }


WRITERS = ["export", "profile", "evaluate", "plan", "report", "run", "import-predictions"]


def _leftovers(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.name.endswith(".tmp") or TMP_PREFIX in p.name)


def _stop_at_first_sync(monkeypatch: pytest.MonkeyPatch, signum: int) -> list[int]:
    """os.fsync raises `signum` at this process right after its first call."""
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        real(fd)
        calls.append(fd)
        if len(calls) == 1:
            signal.raise_signal(signum)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.mark.parametrize("name", list(SIGNALS))
@pytest.mark.parametrize("writer", WRITERS)
def test_a_stopped_writer_leaves_nothing(made, tmp_path, monkeypatch, writer, name):
    if writer == "report":
        pytest.importorskip("matplotlib", reason="the report needs the plot extra")
    signum, code = SIGNALS[name]
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the profiler's temp folders
    before = set(tmp_path.iterdir())
    calls = _stop_at_first_sync(monkeypatch, signum)
    result = invoke(*_commands(made, out)[writer])
    assert calls, f"{writer} synced nothing: the signal was never raised"
    assert result.exit_code == code, result.output
    assert _leftovers(tmp_path) == []
    assert list(out.iterdir()) == []  # neither the target nor a part of it
    assert set(tmp_path.iterdir()) == before
    if name == "SIGTERM":
        assert "error: terminated by SIGTERM" in result.output


def test_the_demo_stopped_while_writing_leaves_nothing(tmp_path, monkeypatch):
    calls = _stop_at_first_sync(monkeypatch, signal.SIGTERM)
    out = tmp_path / "demo"
    result = invoke("demo", "-o", out, "--samples", 20, "--min-seconds", 0.01)
    assert calls
    assert result.exit_code == 128 + signal.SIGTERM, result.output
    assert _leftovers(tmp_path) == []


def test_sigterm_outside_a_write_leaves_the_previous_handler(tmp_path):
    """The CLI's SIGTERM handler lasts as long as the command."""
    before = signal.getsignal(signal.SIGTERM)
    invoke("import-predictions", tmp_path / "missing.csv", "-o", tmp_path / "x.npz")
    assert signal.getsignal(signal.SIGTERM) is before


def test_temps_still_registered_when_sigterm_ends_a_block_are_removed(tmp_path):
    """The registry catches a temp its writer had no chance to remove."""
    from edgeadapt.formats import atomic

    stray = tmp_path / ".f.bin.x.tmp"
    stray.write_bytes(b"part")
    atomic._TEMPS.add(stray)  # as _write_temp registers it
    with pytest.raises(Terminated), signals_as_exceptions():
        signal.raise_signal(signal.SIGTERM)
    assert list(tmp_path.iterdir()) == []
    assert remove_temps() == []


def test_a_sigterm_while_a_file_is_synced_removes_its_temp(tmp_path, monkeypatch):
    _stop_at_first_sync(monkeypatch, signal.SIGTERM)
    with pytest.raises(Terminated), signals_as_exceptions():
        atomic_write_bytes(tmp_path / "f.bin", b"data")
    assert list(tmp_path.iterdir()) == []


def test_a_real_sigterm_during_the_report_leaves_no_png(made, tmp_path):
    """The campaign's case, in a process of its own: SIGTERM from outside while the
    report's PNGs are being written."""
    pytest.importorskip("matplotlib", reason="the report needs the plot extra")
    root, b = made["root"], made["bundle"]
    script = (
        "import os, signal, sys\n"
        "real = os.fsync\n"
        "def fsync(fd):\n"
        "    real(fd)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "os.fsync = fsync\n"
        "from edgeadapt.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    args = ["report", b, "--profile", root / "profile.json", "--evaluation", root / "eval.npz"]
    done = subprocess.run(
        [sys.executable, "-c", script, *map(str, args), "-o", str(tmp_path / "r.html")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=root,  # not the checkout: `-c` puts the cwd first on sys.path
    )
    assert done.returncode == 128 + signal.SIGTERM, done.stderr
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_a_signal_after_openvino_runtimes_come_and_go_is_still_caught(tmp_path):
    """Each OpenVINO Core's CPU plugin swaps the thread's alternate signal stack; Cores
    freed out of order left it unmapped, and the next Ctrl-C or SIGTERM crashed the
    process (exit -11) instead of raising. The runtime shares one Core per process."""
    pytest.importorskip("openvino", reason="needs the openvino extra")
    script = (
        "import gc, signal\n"
        "from edgeadapt.runtimes import get_runtime\n"
        "first, second = get_runtime('openvino'), get_runtime('openvino')\n"
        "del first\n"
        "gc.collect()\n"
        "del second\n"
        "gc.collect()\n"
        "try:\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "except KeyboardInterrupt:\n"
        "    print('caught')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert (done.returncode, done.stdout.strip()) == (0, "caught"), done.stderr
