"""A small BERT-style classifier (random weights from a config: 4 layers, hidden 256,
4 heads, sequence 128; inputs input_ids and attention_mask) through export, profile,
evaluate, bound, plan and run.

    python examples/bert_classifier.py [--tiny] [--out DIR] [--threads N] [--runtime openvino]

A thin wrapper of `zoo_pipeline.py --model bert_small` (see there: random weights, synthetic
data labelled by the whole model, every CLI command printed before it runs).
"""

import sys

from zoo_pipeline import main

if __name__ == "__main__":
    raise SystemExit(main(["--model", "bert_small", *sys.argv[1:]]))
