"""ResNet-18 through export, profile, evaluate, bound, plan and run.

    python examples/resnet18.py [--tiny] [--out DIR] [--threads N] [--runtime openvino]

A thin wrapper of `zoo_pipeline.py --model resnet18` (see there: random weights, synthetic
data labelled by the whole model, every CLI command printed before it runs).
"""

import sys

from zoo_pipeline import main

if __name__ == "__main__":
    raise SystemExit(main(["--model", "resnet18", *sys.argv[1:]]))
