"""Train the MNIST-1D demo models and export the bundles shipped in `edgeadapt/demo/bundles`.

    python examples/train_mnist1d.py [--out DIR] [--seed 42] [--force]

A thin wrapper: the training code is `edgeadapt.demo.train` (also behind
``edgeadapt demo --retrain``). Needs the ``torch`` and ``demo`` extras.
"""

from edgeadapt.demo.train import main

if __name__ == "__main__":
    main()
