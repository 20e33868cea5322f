"""The bad-input campaign's cases that were tracebacks, hangs or silent acceptances, kept
as a table: each must now end in exit code 2 with one ``error:`` line saying what is
wrong (or, where the input is valid, run)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.formats.digest import file_sha256
from tests.clirun import invoke
from tests.conftest import MULTIEXIT


def _residual(path: Path, opset: int) -> Path:
    """x [B, 4] -> MatMul -> Relu -> Add x -> MatMul -> logits [B, 3]: one skippable block."""
    weights = [
        numpy_helper.from_array(np.eye(4, dtype=np.float32), "w"),
        numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Add", ["x", "r"], ["s"], name="block"),
        helper.make_node("MatMul", ["s", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["B", 3])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), path)
    return path


def _calibration(path: Path, classes: int) -> Path:
    rng = np.random.default_rng(0)
    np.savez(path, x=rng.random((20, 4)).astype(np.float32), y=np.arange(20) % classes)
    return path


def _branches(root: Path, opset: int, classes: int) -> list[object]:
    """`export branches` of the residual model at `opset` on labels of `classes` classes
    (the model has 3)."""
    model, calibration = _residual(root / "m.onnx", opset), _calibration(root / "c.npz", classes)
    return ["export", "branches", model, "--calibration", calibration, "-o", root / "b"]


def _huge_initializer_bundle(root: Path) -> Path:
    """The multi-exit bundle whose step 0 holds an unused initializer declaring 2^40
    elements (and no data), re-hashed: ONNX Runtime drops it."""
    d = Path(
        shutil.copytree(
            MULTIEXIT, root / "huge", ignore=shutil.ignore_patterns("profiles", "*.npz")
        )
    )
    step = d / "step0.onnx"
    model = onnx.load(step)
    t = TensorProto(name="unused", data_type=TensorProto.FLOAT, dims=[2**40])
    model.graph.initializer.append(t)
    onnx.save(model, step)
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"]["step0.onnx"] = file_sha256(step)
    manifest["states"][0]["sha256"] = manifest["files"]["step0.onnx"]
    (d / "manifest.json").write_text(json.dumps(manifest))
    return d


def _plan_with_threads(root: Path, threads: int) -> Path:
    from edgeadapt.formats.bundle import load_bundle
    from edgeadapt.formats.plan import plan_to_doc
    from tests.plans import runner_plan

    doc = plan_to_doc(runner_plan(load_bundle(MULTIEXIT), [0, 3], [0.5], [0.1, 1.0]))
    doc["runtime"] = {
        "runtime": "onnxruntime",
        "preset": None,
        "precision": "as-exported",
        "threads": threads,
        "options": {},
    }
    (root / "plan.json").write_text(json.dumps(doc))
    return root / "plan.json"


def _data(root: Path) -> Path:
    rng = np.random.default_rng(0)
    np.savez(root / "d.npz", x=rng.standard_normal((8, 1, 40)).astype(np.float32), y=np.arange(8))
    return root / "d.npz"


def _fifo(root: Path) -> Path:
    os.mkfifo(root / "m.onnx")
    return root / "m.onnx"


Case = Callable[[Path], list[object]]
REFUSED: dict[str, tuple[Case, str]] = {
    "export branches without --calibration": (
        lambda t: ["export", "branches", _residual(t / "m.onnx", 17), "-o", t / "b"],
        "Missing option '--calibration'",
    ),
    "evaluate without --data": (lambda t: ["evaluate", MULTIEXIT], "Missing option '--data'"),
    "run without --input": (
        lambda t: ["run", MULTIEXIT, "--thresholds", 0.5],
        "Missing option '--input'",
    ),
    "plan without --profile": (
        lambda t: ["plan", MULTIEXIT, "--evaluation", _data(t)],
        "Missing option '--profile'",
    ),
    "plan without --evaluation": (
        lambda t: ["plan", MULTIEXIT, "--profile", _data(t)],
        "Missing option '--evaluation'",
    ),
    "subset with nothing": (lambda t: ["subset"], "Missing option '--table'"),
    "plan --seed -5": (
        lambda t: [
            "plan",
            MULTIEXIT,
            "--profile",
            _data(t),
            "--evaluation",
            _data(t),
            "--seed",
            -5,
        ],
        "--seed: -5 is not in the range",
    ),
    "profile --threads 10000": (
        lambda t: ["profile", MULTIEXIT, "--threads", 10000, "-o", t / "p.json"],
        "--threads: 10000 is not in the range 1<=x<=1024",
    ),
    "evaluate --threads 10000": (
        lambda t: ["evaluate", MULTIEXIT, "--data", _data(t), "--threads", 10000],
        "--threads: 10000 is not in the range 1<=x<=1024",
    ),
    "run --threads 10000": (
        lambda t: ["run", MULTIEXIT, "--input", _data(t), "--thresholds", 0.5, "--threads", 10000],
        "--threads: 10000 is not in the range 1<=x<=1024",
    ),
    "run --plan whose runtime.threads is 100000": (
        lambda t: ["run", MULTIEXIT, "--input", _data(t), "--plan", _plan_with_threads(t, 100_000)],
        "plan.json: $.runtime.threads: must be an integer in 1..1024, got 100000",
    ),
    "profile --whole FIFO": (
        lambda t: ["profile", MULTIEXIT, "--whole", _fifo(t), "-o", t / "p.json"],
        "m.onnx': not a regular file",
    ),
    "export branches on opset 999": (
        lambda t: _branches(t, opset=999, classes=3),
        "m.onnx: opset_import: imports ONNX opset 999",
    ),
    "export onnx on opset 999": (
        lambda t: [
            "export",
            "onnx",
            _residual(t / "m.onnx", 999),
            "--cut",
            "r",
            "--calibration",
            _calibration(t / "c.npz", 3),
            "-o",
            t / "b",
        ],
        "m.onnx: opset_import: imports ONNX opset 999",
    ),
    "export family on opset 999": (
        lambda t: [
            "export",
            "family",
            _residual(t / "m.onnx", 999),
            _residual(t / "n.onnx", 17),
            "-o",
            t / "b",
        ],
        "m.onnx: opset_import: imports ONNX opset 999",
    ),
    "export branches on a label equal to the class count": (
        lambda t: _branches(t, opset=17, classes=4),
        "c.npz: y: class indices must lie in 0..2 (the 3 classes of the model's logits), got 0..3",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_campaign_case_is_one_clear_error(case, tmp_path):
    make, message = REFUSED[case]
    result = invoke(*make(tmp_path))
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert message in errors[0]
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["profile", "{b}", "--iters", 10, "--warmup", 0, "-o", "{t}/p.json"],
        ["profile", "{b}", "--iters", 10, "--warmup", 0, "--no-whole", "-o", "{t}/p.json"],
        ["evaluate", "{b}", "--data", "{d}", "-o", "{t}/e.npz"],
        ["run", "{b}", "--input", "{d}", "--thresholds", 0.5],
        ["inspect", "{b}"],
    ],
    ids=["profile", "profile --no-whole", "evaluate", "run", "inspect"],
)
def test_a_bundle_with_a_huge_unused_initializer_is_accepted_everywhere(command, tmp_path):
    """docs/formats.md sets no limit on a step's initializers, and ONNX Runtime drops an
    unused one: profile (which composes the whole model and measures the cascade's
    overhead) accepts it as every other command does."""
    fill = {"b": _huge_initializer_bundle(tmp_path), "d": _data(tmp_path), "t": tmp_path}
    result = invoke(*(str(part).format(**fill) for part in command))
    assert result.exit_code == 0, result.output
