"""Decision-kernel speed: the compiled kernel from Python vs the numpy reference.

For C in {10, 100, 1000} and B in {1, 64, 1024}: ns per row of a full `decide` call
(allocating its outputs), of `decide_into` (reused buffers, the cascade's hot path), of
the numpy reference (`edgeadapt.kernel_ref.decide`, same numerics) and of a plain numpy
softmax-max-threshold (what one would write by hand), with the ratios. Best of 7 runs,
measured in this process on this machine.
"""

from __future__ import annotations

import timeit

import numpy as np

from edgeadapt import kernel, kernel_ref


def plain_numpy(x: np.ndarray, threshold: float) -> tuple[np.ndarray, ...]:
    """Hand-written numpy: softmax in float32, max probability, mask, compaction."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    conf = p.max(axis=1)
    mask = conf >= threshold
    return p.argmax(axis=1), conf, mask, np.flatnonzero(~mask)


def ns_per_row(fn, batch: int) -> float:
    timer = timeit.Timer(fn)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=7, number=number)) / number / batch * 1e9


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"edgeadapt kernel {kernel.version()}, measure maxprob, threshold 0.5")
    head = (
        f"{'C':>5} {'B':>5} | {'decide':>9} {'into':>9} | {'numpy ref':>10} {'plain np':>9} |"
        f" {'ref/decide':>10} {'np/decide':>9} | {'decide call':>11}"
    )
    print(head)
    print("-" * len(head))
    for classes in (10, 100, 1000):
        for batch in (1, 64, 1024):
            x = (rng.standard_normal((batch, classes)) * 3).astype(np.float32)
            bufs = kernel.decide_buffers(batch)
            k = ns_per_row(lambda x=x: kernel.decide(x, 0.5), batch)
            ki = ns_per_row(lambda x=x, b=bufs: kernel.decide_into(x, 0.5, *b), batch)
            ref = ns_per_row(lambda x=x: kernel_ref.decide(x, 0.5), batch)
            plain = ns_per_row(lambda x=x: plain_numpy(x, 0.5), batch)
            print(
                f"{classes:>5} {batch:>5} | {k:>9.1f} {ki:>9.1f} | {ref:>10.1f} {plain:>9.1f} |"
                f" {ref / k:>9.1f}x {plain / k:>8.1f}x | {k * batch / 1000:>8.2f} us"
            )
    print("columns decide..plain np: ns per row; decide call: one whole decide() call")


if __name__ == "__main__":
    main()
