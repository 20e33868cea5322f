"""MobileNet-V3-small through export, profile, evaluate, bound, plan and run.

    python examples/mobilenet_v3.py [--tiny] [--out DIR] [--threads N] [--runtime openvino]

A thin wrapper of `zoo_pipeline.py --model mobilenet_v3_small` (see there: random weights, synthetic
data labelled by the whole model, every CLI command printed before it runs).
"""

import sys

from zoo_pipeline import main

if __name__ == "__main__":
    raise SystemExit(main(["--model", "mobilenet_v3_small", *sys.argv[1:]]))
