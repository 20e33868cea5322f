"""Peak memory of `evaluate` and `run` against the batch chosen from `--memory`, and the
per-sample estimate (`edgeadapt.data.memory`) against what the runtimes really hold.

For each ONNX classifier given (``[batch, C, H, W]`` float input, ``[batch, classes]``
logits; say torchvision exports at 224 px), or by default `edgeadapt.zoo`'s
EfficientNet-B0 and ResNet-18 at 224 px (needs the torch extra):

1. the estimate: `sample_bytes` of the model, and the peak RSS per sample that ONNX
   Runtime (and OpenVINO, when installed) really adds between batch 8 and batch 32,
   each measured in a fresh child process; the estimate must not be below them;
2. `edgeadapt evaluate` and `edgeadapt run` on `--samples` random images (a one-state
   bundle of the model), each in a fresh child process: peak RSS with the batch chosen
   from the default memory budget, and with ``--batch 256``.

A forward pass's peak RSS is its process's ``VmHWM`` (Linux; else ``ru_maxrss``); a
command's is its ``ru_maxrss``, read by a small wrapper process: ``ru_maxrss`` also
counts the RSS of the process it was forked from, so this script never forks them
itself.

    python bench/memory.py [MODEL.onnx ...] [--samples 1200]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from edgeadapt.data.budget import DEFAULT_MEMORY, format_bytes
from edgeadapt.data.memory import RUNTIME_FACTOR, live_bytes, sample_bytes
from edgeadapt.formats.bundle import InputSpec, write_bundle

#: Runs argv in a child and prints the child's peak RSS in KiB (the wrapper is small,
#: so the figure is the command's own).
_WRAP = (
    "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, "
    "text=True); sys.stderr.write(r.stderr[-2000:] if r.returncode else ''); "
    "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
)
#: One forward pass at batch B in a fresh process; prints its peak RSS in KiB.
_FORWARD = r"""
import resource, sys
import numpy as np
path, runtime, batch = sys.argv[1], sys.argv[2], int(sys.argv[3])
x = np.random.default_rng(0).standard_normal((batch, *map(int, sys.argv[4:]))).astype("f4")
if runtime == "onnxruntime":
    import onnxruntime as ort
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for _ in range(2):
        s.run(None, {s.get_inputs()[0].name: x})
else:
    import openvino as ov
    r = ov.Core().compile_model(path, "CPU").create_infer_request()
    for _ in range(2):
        r.infer({0: x})
# VmHWM is this program's own peak; ru_maxrss would also count the parent's RSS at fork
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")]
print(hwm[0].split()[1] if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss(argv: list[str]) -> float:
    """Peak RSS of the command `argv`, in MiB."""
    # away from a source checkout: `-m edgeadapt` would import its tree, not the package
    out = subprocess.run(
        [sys.executable, "-c", _WRAP, *argv],
        capture_output=True,
        text=True,
        check=True,
        cwd=tempfile.gettempdir(),
    )
    code, kib = out.stdout.split()
    if code != "0":
        raise RuntimeError(f"{argv[:3]} failed: {out.stderr}")
    return int(kib) / 1024


def forward_slope(path: Path, runtime: str, shape: tuple[int, ...]) -> float:
    """MiB a sample that one forward pass adds to the peak RSS, batch 8 to 32."""
    peaks = []
    for batch in (8, 32):
        argv = [sys.executable, "-c", _FORWARD, str(path), runtime, str(batch)]
        out = subprocess.run([*argv, *map(str, shape)], capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(out.stderr[-2000:])
        peaks.append(int(out.stdout.split()[-1]) / 1024)
    return (peaks[1] - peaks[0]) / 24


def zoo_models(tmp: Path) -> list[Path]:
    """zoo's EfficientNet-B0 and ResNet-18 (random weights) exported at 224 px."""
    from edgeadapt import zoo

    paths = []
    for name in ("efficientnet_b0", "resnet18"):
        m = zoo.get(name)
        paths.append(zoo.export(m, zoo.build(m), tmp / f"{name}.onnx"))
    return paths


def one_state_bundle(path: Path, out: Path) -> tuple[int, ...]:
    """The model as a bundle of one state; returns its per-sample input shape."""
    model = onnx.load(str(path))
    (inp,) = [
        i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}
    ]
    dims = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim[1:])
    classes = model.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    write_bundle(
        out,
        kind="ensemble",
        inputs=[InputSpec(inp.name, ("batch", *dims), "float32")],
        num_classes=classes,
        models=[model],
        state_names=["full"],
        producer={"exporter": "bench/memory.py", "source": path.name},
        force=True,
    )
    return dims


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="*", type=Path, help="ONNX classifiers [zoo models]")
    ap.add_argument("--samples", type=int, default=1200)
    args = ap.parse_args()
    try:
        import openvino  # noqa: F401

        runtimes = ["onnxruntime", "openvino"]
    except ImportError:
        runtimes = ["onnxruntime"]
    edgeadapt = [sys.executable, "-m", "edgeadapt"]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = args.models or zoo_models(tmp)
        print(f"budget {format_bytes(DEFAULT_MEMORY)}, runtime factor {RUNTIME_FACTOR}")
        for path in models:
            bundle = tmp / f"{path.stem}-bundle"
            dims = one_state_bundle(path, bundle)
            proto = onnx.load(str(path), load_external_data=False)
            live, _ = live_bytes(proto)
            estimate = sample_bytes([proto]) / 2**20
            print(
                f"\n{path.stem}: live set {live / 2**20:.1f} MiB a sample, estimate {estimate:.1f}"
            )
            for runtime in runtimes:
                slope = forward_slope(path, runtime, dims)
                print(
                    f"  {runtime:12s} measured {slope:5.1f} MiB a sample = "
                    f"{slope / (live / 2**20):.2f} x live set; estimate / measured "
                    f"{estimate / max(slope, 1e-9):.2f}"
                )
            data = tmp / "data.npz"
            rng = np.random.default_rng(0)
            x = rng.standard_normal((args.samples, *dims)).astype(np.float32)
            np.savez(data, x=x, y=np.arange(args.samples) % 10)
            del x
            common = ["--runtime", "onnxruntime", "--threads", "2"]
            for label, extra in (("chosen from --memory", []), ("--batch 256", ["--batch", "256"])):
                ev = peak_rss(
                    [
                        *edgeadapt,
                        "evaluate",
                        str(bundle),
                        "--data",
                        str(data),
                        "-o",
                        str(tmp / "ev.npz"),
                        *common,
                        *extra,
                    ]
                )
                run = peak_rss(
                    [
                        *edgeadapt,
                        "run",
                        str(bundle),
                        "--input",
                        str(data),
                        "--thresholds",
                        "0.5",
                        "-o",
                        str(tmp / "run.npz"),
                        *common,
                        *extra,
                    ]
                )
                print(f"  {label:22s} evaluate peak {ev:7.0f} MiB, run peak {run:7.0f} MiB")


if __name__ == "__main__":
    main()
