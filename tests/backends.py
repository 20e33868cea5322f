"""The CPU runtimes a test runs on: ONNX Runtime always, OpenVINO where it is installed
(skipped with the reason otherwise)."""

import pytest

from edgeadapt.runtimes import available_runtimes

#: Skips a test (or one parameter) where OpenVINO cannot be imported.
NEEDS_OPENVINO = pytest.mark.skipif(
    available_runtimes()["openvino"] is not None, reason="openvino is not installed"
)
#: ``@pytest.mark.parametrize("runtime", CPU_RUNTIMES)``
CPU_RUNTIMES = ["onnxruntime", pytest.param("openvino", marks=NEEDS_OPENVINO)]
