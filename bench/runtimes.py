"""Per-call overhead of each runtime at batch 1 on a tiny step (x[1,16] -> act[1,32],
logits[1,10]: the compute is a few hundred FLOPs, so the time is the call itself), and,
for ONNX Runtime, the same calls at batch 64 on a wide step (a 2 MB activation) where
copying outputs is no longer free.

Compares, in one process and with rounds interleaved so background load hits every row
alike: the backend library called directly, our sessions on their plain path, and on
their fast path with and without input checks. Prints median and best-round microseconds
per call and the ratio to ONNX Runtime's own `InferenceSession.run`.

    python bench/runtimes.py [--calls 2000] [--rounds 15]
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path
from time import perf_counter_ns

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeadapt.runtimes import available_runtimes, get_runtime


def tiny_step(path: Path, hidden: int = 32) -> Path:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["act"]),
        helper.make_node("MatMul", ["act", "w2"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [
            helper.make_tensor_value_info("act", TensorProto.FLOAT, ["batch", hidden]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10]),
        ],
        initializer=[
            numpy_helper.from_array(rng.standard_normal((16, hidden)).astype(np.float32), "w1"),
            numpy_helper.from_array(rng.standard_normal((hidden, 10)).astype(np.float32), "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def ort_candidates(step: Path, x: np.ndarray) -> dict[str, Callable[[], object]]:
    """ONNX Runtime called directly, and through our sessions."""
    import onnxruntime as ort

    rows: dict[str, Callable[[], object]] = {}
    feeds = {"x": x}

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    raw = ort.InferenceSession(str(step), so, providers=["CPUExecutionProvider"])
    binding = raw.io_binding()
    binding.bind_output("act")
    binding.bind_output("logits")

    def iobinding() -> object:
        binding.bind_cpu_input("x", x)
        raw.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()

    rows["onnxruntime  InferenceSession.run (baseline)"] = lambda: raw.run(None, feeds)
    rows["onnxruntime  IOBinding, copy outputs"] = iobinding
    plain = get_runtime("onnxruntime", threads=1, fast=False).load(step)
    fast = get_runtime("onnxruntime", threads=1).load(step)
    rows["onnxruntime  Session.run plain, checked"] = lambda: plain.run(feeds)
    rows["onnxruntime  Session.run fast, checked"] = lambda: fast.run(feeds)
    rows["onnxruntime  Session.run fast, check=False"] = lambda: fast.run(feeds, check=False)
    return rows


def candidates(step: Path, x: np.ndarray) -> dict[str, Callable[[], object]]:
    """Every way to call the step that this machine supports, by row label."""
    rows = ort_candidates(step, x)
    feeds = {"x": x}
    reasons = available_runtimes()
    if reasons["openvino"] is None:
        import openvino as ov

        compiled = ov.Core().compile_model(
            str(step), "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": 1}
        )
        request = compiled.create_infer_request()
        rows["openvino     InferRequest.infer (copying)"] = lambda: request.infer(feeds)
        ov_plain = get_runtime("openvino", threads=1, fast=False).load(step)
        ov_fast = get_runtime("openvino", threads=1).load(step)
        rows["openvino     Session.run plain, checked"] = lambda: ov_plain.run(feeds)
        rows["openvino     Session.run fast, checked"] = lambda: ov_fast.run(feeds)
        rows["openvino     Session.run fast, check=False"] = lambda: ov_fast.run(feeds, check=False)
    else:
        print(f"openvino skipped: {reasons['openvino']}")

    if reasons["tensorrt"] is None:
        trt = get_runtime("tensorrt", max_batch=64).load(step)
        rows["tensorrt     Session.run, checked"] = lambda: trt.run(feeds)
        rows["tensorrt     Session.run, check=False"] = lambda: trt.run(feeds, check=False)
    else:
        print(f"tensorrt skipped: {reasons['tensorrt']}")
    return rows


def measure(rows: dict[str, Callable[[], object]], calls: int, rounds: int) -> dict[str, list]:
    """Microseconds per call, one entry per round; rounds interleave the rows."""
    for call in rows.values():
        for _ in range(calls // 4):
            call()
    times: dict[str, list] = {label: [] for label in rows}
    for _ in range(rounds):
        for label, call in rows.items():
            start = perf_counter_ns()
            for _ in range(calls):
                call()
            times[label].append((perf_counter_ns() - start) / calls / 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per round")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        step = tiny_step(Path(tmp) / "tiny.onnx")
        x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
        report(
            "tiny step, batch 1",
            measure(candidates(step, x), args.calls, args.rounds),
            args,
        )
        wide = tiny_step(Path(tmp) / "wide.onnx", hidden=8192)
        x = np.random.default_rng(2).standard_normal((64, 16)).astype(np.float32)
        calls = max(args.calls // 20, 10)
        report(
            "wide step (act 64 x 8192 fp32 = 2 MB), batch 64",
            measure(ort_candidates(wide, x), calls, args.rounds),
            args,
        )


def report(title: str, times: dict[str, list], args: argparse.Namespace) -> None:
    base = float(np.median(next(iter(times.values()))))
    print(f"\n{title}, 1 thread, {args.rounds} interleaved rounds (us per call)")
    print(f"{'backend      call':48s} {'median':>8s} {'best':>8s} {'vs base':>8s}")
    for label, t in times.items():
        med = float(np.median(t))
        print(f"{label:48s} {med:8.2f} {min(t):8.2f} {med / base:7.2f}x")


if __name__ == "__main__":
    main()
