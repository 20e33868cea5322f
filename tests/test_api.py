"""The public API at the top of the package: every name resolves, importing is cheap."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import edgeadapt

MULTIEXIT = (
    Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"
)


@pytest.mark.parametrize("name", [n for n in edgeadapt.__all__ if n != "__version__"])
def test_every_public_name_resolves_to_its_module(name: str) -> None:
    value = getattr(edgeadapt, name)
    assert value.__module__.startswith("edgeadapt")
    assert name in dir(edgeadapt)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = edgeadapt.nope  # type: ignore[attr-defined]


def test_importing_the_package_loads_no_runtime_or_onnx(tmp_path) -> None:
    code = (
        "import sys, edgeadapt; "
        "print(sorted(m for m in ('onnx', 'onnxruntime', 'numpy', 'edgeadapt.cascade') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert out.stdout.strip() == "[]"


def test_the_readme_lines_run_a_bundle() -> None:
    bundle = edgeadapt.load_bundle(MULTIEXIT)
    x = np.zeros((3, *bundle.input.shape[1:]), dtype=np.float32)
    with edgeadapt.AdaptiveModel.load(bundle, thresholds=0.9) as model:
        out = model.predict(x)
    assert isinstance(out, edgeadapt.Prediction)
    assert out.pred.shape == (3,)
