"""Peak memory of `edgeadapt evaluate` on data it streams, never holding the data set.

1. MNIST-1D from a loader script (``FILE.py:load_data``) that yields `--samples`
   samples (default 1,000,000) in batches, cycling through 10,000 generated ones
   (generating a million would take ~13 minutes here; the evaluator's memory is the
   same), on the shipped multi-exit demo bundle: 4 states, per-sample results kept.
2. A folder of `--images` JPEGs (default 10,000) of 256 px in 10 class subfolders,
   made here, read with the ImageNet recipe (resize 256, crop 224) by a one-state
   bundle of a small 224 px CNN.

Each command runs in a fresh child process and its peak RSS is its ``ru_maxrss``, read
by the small wrapper of `bench/memory.py`. Targets (issue #25): < 1 GB and < 2 GB.

    python bench/streaming.py [--samples 1000000] [--images 10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import one_state_bundle, peak_rss

BUNDLE = Path(__file__).resolve().parents[1] / "edgeadapt/demo/bundles/mnist1d-multiexit"

LOADER = """
import numpy as np
from edgeadapt.data.mnist1d import mnist1d_calibration

def load_data():
    pool = mnist1d_calibration(10_000, seed=11)
    batch, left = 1000, {samples}
    while left:
        lo = (left * 7919) % (len(pool.y) - batch)
        n = min(batch, left)
        yield {{"x": pool.x[lo:lo + n]}}, pool.y[lo:lo + n]
        left -= n
"""


def small_cnn(path: Path, classes: int = 10) -> None:
    """x [B, 3, 224, 224] -> Conv 7x7/4 -> Relu -> GlobalAveragePool -> Gemm: logits."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((16, 3, 7, 7)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((16, classes)).astype(np.float32), "fc"),
        numpy_helper.from_array(np.zeros(classes, np.float32), "b"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], strides=[4, 4], pads=[3, 3, 3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("Gemm", ["f", "fc", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def image_folder(root: Path, n: int, classes: int = 10) -> None:
    """`n` smooth 256 px JPEGs (a gradient and a tint per image) in class subfolders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 256, dtype=np.float32)
    base = (ramp[:, None] + ramp[None, :]) / 2
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
        pixels = (base[:, :, None] * tint).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=85)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=1_000_000)
    ap.add_argument("--images", type=int, default=10_000)
    args = ap.parse_args()
    edgeadapt = [sys.executable, "-m", "edgeadapt"]
    common = ["--runtime", "onnxruntime", "--threads", "2"]
    with tempfile.TemporaryDirectory(prefix="edgeadapt-streaming-") as d:
        tmp = Path(d)
        script = tmp / "mnist_stream.py"
        script.write_text(LOADER.format(samples=args.samples))
        start = time.perf_counter()
        mib = peak_rss(
            [*edgeadapt, "evaluate", str(BUNDLE), "--data", f"{script}:load_data",
             "-o", str(tmp / "ev.npz"), *common]
        )  # fmt: skip
        seconds = time.perf_counter() - start
        print(
            f"MNIST-1D, {args.samples:,} samples from a loader script, {BUNDLE.name} "
            f"(4 states): evaluate peak RSS {mib:.0f} MiB, {seconds:.0f} s"
        )
        folder = tmp / "images"
        start = time.perf_counter()
        image_folder(folder, args.images)
        made = time.perf_counter() - start
        small_cnn(tmp / "cnn.onnx")
        one_state_bundle(tmp / "cnn.onnx", tmp / "cnn-bundle")
        start = time.perf_counter()
        mib = peak_rss(
            [*edgeadapt, "evaluate", str(tmp / "cnn-bundle"), "--data", str(folder),
             "--recipe", "imagenet", "-o", str(tmp / "ev-images.npz"), *common]
        )  # fmt: skip
        seconds = time.perf_counter() - start
        print(
            f"{args.images:,} JPEGs of 256 px (made in {made:.0f} s), ImageNet recipe, "
            f"224 px CNN: evaluate peak RSS {mib:.0f} MiB, {seconds:.0f} s"
        )


if __name__ == "__main__":
    main()
