"""The main job, end to end on MNIST-1D: `run_demo` (and `edgeadapt demo`).

Profile the shipped bundles on this device, evaluate every state, compute the oracle
bounds, plan, run the plan on the test split next to the static model, and write the
report. `edgeadapt.demo.train` (needs torch) retrains the shipped bundles from the seed.
"""

from edgeadapt.demo.pipeline import (
    DEFAULT_OUT,
    UI,
    BundleResult,
    DemoResult,
    QuietUI,
    run_demo,
)

__all__ = ["DEFAULT_OUT", "UI", "BundleResult", "DemoResult", "QuietUI", "run_demo"]
