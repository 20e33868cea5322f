"""Profiler benchmark: is `edgeadapt profile` repeatable, and does an independent timer agree?

For the shipped demo bundle at batch 1, on the presets ``x86-ort-1t`` (ONNX Runtime CPU,
1 thread) and ``x86-openvino`` (OpenVINO CPU, 1 thread):

(a) repeatability: the bundle is profiled twice in this process (other timers run in
    between); per step, p50 of the second run / p50 of the first (target: within 10 %).
(b) independent timers: per step, the profiler's p50 against the median of loops
    written differently, all with `timeit` (time.perf_counter, one call per sample):
    - ``same call``: around the very call the profiler times (the edgeadapt runtime
      session's ``run``): checks the timing method alone;
    - ``bare``: around ``InferenceSession.run`` of a session built here with ONNX
      Runtime's own API, or ``InferRequest.infer`` of a model compiled here with
      OpenVINO's: the backend without edgeadapt's session wrapper;
    - for OpenVINO also its `benchmark_app` (sync-API median of the request's own
      latency, timed inside OpenVINO's C++; same model with its dynamic batch, same
      config: LATENCY hint, 1 thread, f32).
    Target: within 15 %. Each timer runs the step on the real activation of the previous
    step. The gap between ``same call`` and ``bare`` is edgeadapt's session wrapper,
    the gap to `benchmark_app` also the Python call into OpenVINO: the profile includes
    both on purpose, as a Python cascade pays them on every step.

Every figure is measured here, now; ratios compare runs made in this one process.

    python bench/profiler.py [--iters 2000] [--warmup 200] [--no-benchmark-app]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.formats.bundle import Bundle, load_bundle
from edgeadapt.formats.presets import RuntimeConfig, load_preset
from edgeadapt.formats.profile import Profile
from edgeadapt.measure.profiler import TimingOptions, profile_bundle

BUNDLE = (
    Path(__file__).resolve().parents[1] / "edgeadapt" / "demo" / "bundles" / "mnist1d-multiexit"
)
PRESETS = ("x86-ort-1t", "x86-openvino")
REPEAT_TARGET = 0.10
TIMER_TARGET = 0.15


def _activations(bundle: Bundle) -> list[dict[str, np.ndarray]]:
    """Each step's feeds at batch 1: a random input, then the real activations."""
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    tensors = {bundle.input.name: rng.standard_normal((1, 1, 40)).astype(np.float32)}
    feeds = []
    for step in bundle.steps:
        sess = ort.InferenceSession(str(step.path), providers=["CPUExecutionProvider"])
        feeds.append({name: tensors[name] for name in step.inputs})
        names = [o.name for o in sess.get_outputs()]
        tensors.update(zip(names, sess.run(names, feeds[-1]), strict=True))
    return feeds


def _median_us(call: Callable[[], Any], warmup: int, iters: int) -> float:
    """Median of `iters` single calls timed by `timeit` (after `warmup` calls), in us."""
    timer = timeit.Timer(call)
    timer.timeit(number=warmup)
    return 1e6 * float(np.median(timer.repeat(repeat=iters, number=1)))


def _same_call(bundle: Bundle, runtime: str, options: dict[str, Any], warmup: int, iters: int):
    """The profiler's own call (the edgeadapt session's `run`), timed by `timeit`."""
    from edgeadapt.runtimes import get_runtime

    rt = get_runtime(runtime, **options)
    out = []
    for step, feeds in zip(bundle.steps, _activations(bundle), strict=True):
        with rt.load(step.path) as session:
            out.append(_median_us(lambda s=session, f=feeds: s.run(f, check=False), warmup, iters))
    return out


def _ort_loop(bundle: Bundle, options: dict[str, Any], warmup: int, iters: int) -> list[float]:
    """Bare `InferenceSession.run`, sessions configured with ORT's own API."""
    import onnxruntime as ort

    out = []
    for step, feeds in zip(bundle.steps, _activations(bundle), strict=True):
        so = ort.SessionOptions()
        so.intra_op_num_threads = options["threads"]
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        spin = "1" if options.get("spin", False) else "0"  # the runtime's default
        so.add_session_config_entry("session.intra_op.allow_spinning", spin)
        so.add_session_config_entry("session.inter_op.allow_spinning", spin)
        sess = ort.InferenceSession(str(step.path), so, providers=["CPUExecutionProvider"])
        out.append(_median_us(lambda s=sess, f=feeds: s.run(None, f), warmup, iters))
    return out


def _ov_config(options: dict[str, Any]) -> dict[str, Any]:
    precision = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}[options.get("precision", "fp32")]
    return {
        "PERFORMANCE_HINT": options.get("hint", "LATENCY"),
        "INFERENCE_NUM_THREADS": options["threads"],
        "INFERENCE_PRECISION_HINT": precision,
    }


def _ov_loop(bundle: Bundle, options: dict[str, Any], warmup: int, iters: int) -> list[float]:
    """Bare `InferRequest.infer` on the request's own input tensor, compiled here."""
    import openvino as ov

    core = ov.Core()
    out = []
    for step, feeds in zip(bundle.steps, _activations(bundle), strict=True):
        # compiled as the runtime compiles it: the batch dimension stays dynamic
        request = core.compile_model(str(step.path), "CPU", _ov_config(options))
        request = request.create_infer_request()
        for i, array in enumerate(feeds.values()):
            tensor = request.get_input_tensor(i)
            tensor.shape = array.shape
            tensor.data[...] = array
        out.append(_median_us(request.infer, warmup, iters))
    return out


def _benchmark_app(bundle: Bundle, options: dict[str, Any], iters: int) -> list[float] | None:
    """OpenVINO's benchmark_app median latency per step (sync API), or None without it."""
    app = shutil.which("benchmark_app") or str(Path(sys.executable).parent / "benchmark_app")
    if not Path(app).exists():
        return None
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "config.json"
        config.write_text(json.dumps({"CPU": _ov_config(options)}))
        for step, feeds in zip(bundle.steps, _activations(bundle), strict=True):
            shape = ",".join(f"{n}[{','.join(map(str, a.shape))}]" for n, a in feeds.items())
            cmd = [app, "-m", str(step.path), "-d", "CPU", "-api", "sync", "-niter", str(iters)]
            # -data_shape keeps the model's dynamic batch, as the runtime compiles it
            cmd += ["-data_shape", shape, "-load_config", str(config)]
            text = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
            m = re.search(r"Median:\s+([\d.]+)\s+(ms|us)", text)
            if m is None:
                raise RuntimeError(f"no median latency in benchmark_app's output:\n{text}")
            out.append(float(m.group(1)) * (1000.0 if m.group(2) == "ms" else 1.0))
    return out


def _p50_us(profile: Profile) -> list[float]:
    return [1e3 * s.p50 for s in profile.step_stats(1)]


def _worst(ratios: list[float]) -> float:
    return max(abs(r - 1.0) for r in ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iters", type=int, default=2000, help="timed calls per step and timer")
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--no-benchmark-app", action="store_true")
    args = ap.parse_args()
    bundle = load_bundle(BUNDLE)
    print(f"bundle {BUNDLE.name}, batch 1, {args.iters} timed calls per step and timer (us)")
    summary = []
    for name in PRESETS:
        preset = load_preset(name)
        config = RuntimeConfig.resolve(preset)
        runtime, options = config.runtime, config.backend_options()

        def profile(preset_name: str = name) -> Profile:
            return profile_bundle(
                bundle,
                preset=preset_name,
                timing=TimingOptions(warmup=args.warmup, iters=args.iters),
            )

        first = profile()
        timers = {"same call": _same_call(bundle, runtime, options, args.warmup, args.iters)}
        if runtime == "openvino":
            timers["bare infer"] = _ov_loop(bundle, options, args.warmup, args.iters)
            if not args.no_benchmark_app:
                app = _benchmark_app(bundle, options, args.iters)
                if app is not None:
                    timers["benchmark_app"] = app
        else:
            timers["bare run"] = _ort_loop(bundle, options, args.warmup, args.iters)
        second = profile()
        p1, p2 = _p50_us(first), _p50_us(second)
        repeat = [b / a for a, b in zip(p1, p2, strict=True)]
        print(f"\n{name} ({runtime}, {options.get('threads')} thread): p50 us, ratios run1/timer")
        head = f"{'step':<5}{'run1':>8}{'run2':>8}{'run2/run1':>10}"
        head += "".join(f"{t:>14}{'ratio':>7}" for t in timers)
        print(head)
        for j in range(len(p1)):
            row = f"{j:<5}{p1[j]:8.1f}{p2[j]:8.1f}{repeat[j]:10.3f}"
            row += "".join(f"{v[j]:14.1f}{p1[j] / v[j]:7.3f}" for v in timers.values())
            print(row)
        for label, prof in (("run1", first), ("run2", second)):
            if prof.noisy:
                print(f"{label} noisy: " + "; ".join(prof.noise_reasons))
        summary.append((name, "repeatability run2/run1", _worst(repeat), REPEAT_TARGET))
        for timer, values in timers.items():
            ratios = [a / b for a, b in zip(p1, values, strict=True)]
            summary.append((name, f"profiler vs {timer}", _worst(ratios), TIMER_TARGET))

    print("\nworst step per check (|ratio - 1|) against its target")
    for name, check, worst, target in summary:
        verdict = "met" if worst <= target else "MISSED"
        print(f"{name:<14}{check:<28}{100 * worst:6.1f} %  target {100 * target:.0f} %  {verdict}")


if __name__ == "__main__":
    main()
