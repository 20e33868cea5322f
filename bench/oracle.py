"""Oracle engine speed against its targets, with same-process baselines.

1. Exact oracle + every alpha_i on 1,000,000 samples x 16 states (target < 1 s),
   against a hand-written numpy baseline (``np.where(correct, cost, inf).min``, then
   alpha_i by one boolean reduction per state).
2. Exact best subset, N = 16, k = 4, from a 100,000-sample matrix (target < 2 s),
   against brute force (eq. 4/5 on each of the C(16, 4) = 1820 subsets).
3. alpha = 1 best subsets, N = 200, every k (target < 1 s); and N = 16 against brute
   force over every subset that keeps the top state.

The correctness matrix is realistic rather than independent: a per-sample difficulty
decides which states are right (nested, as in one model family) and 15% of entries
are flipped. Best of 3 runs; figures are for this machine.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import numpy as np

from edgeadapt.oracle.equations import bound_alpha1, exact_oracle
from edgeadapt.oracle.subset import best_subset_exact, subset_curve_alpha1


def best_of(fn: Callable[[], object], runs: int = 3) -> float:
    return min(timed(fn)[0] for _ in range(runs))


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def matrix(n: int, s: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    acc = np.linspace(0.55, 0.85, s)
    correct = rng.random(n)[:, None] < acc[None, :]
    correct ^= rng.random((n, s)) < 0.15
    return correct, np.geomspace(0.4, 40.0, s)


def baseline_oracle(correct: np.ndarray, cost: np.ndarray) -> tuple[float, list[float]]:
    per_sample = np.where(correct, cost, np.inf).min(axis=1)
    hit = np.isfinite(per_sample)
    r = float(np.where(hit, per_sample, cost[0]).mean())
    wrong = ~correct
    alphas = []
    for i in range(1, cost.size):
        wrong_i = wrong[:, i]
        alphas.append(float(wrong[wrong_i, :i].all(axis=1).mean()))
    return r, alphas


def brute_subset(correct: np.ndarray, cost: np.ndarray, k: int) -> tuple[int, ...]:
    best, chosen = (-1.0, 0.0), ()
    for t in itertools.combinations(range(cost.size), k):
        res = exact_oracle(correct[:, list(t)], cost[list(t)])
        if (res.a_oracle, -res.r_oracle) > best:
            best, chosen = (res.a_oracle, -res.r_oracle), t
    return chosen


def main() -> None:
    correct, cost = matrix(1_000_000, 16)
    ours = best_of(lambda: exact_oracle(correct, cost))
    res = exact_oracle(correct, cost)
    base, (r_base, a_base) = timed(lambda: baseline_oracle(correct, cost))
    assert abs(r_base - res.r_oracle) < 1e-9
    assert np.allclose(a_base, res.alphas)
    print(
        f"exact oracle + alphas, 1,000,000 x 16: {ours:.3f} s (target < 1 s); "
        f"numpy baseline {base:.3f} s, {base / ours:.1f}x slower"
    )

    correct, cost = matrix(100_000, 16, seed=1)
    ours = best_of(lambda: best_subset_exact(correct, cost, 4))
    base, brute = timed(lambda: brute_subset(correct, cost, 4))
    assert brute == best_subset_exact(correct, cost, 4).states
    print(
        f"exact best subset N=16 k=4, 100,000 samples: {ours:.3f} s (target < 2 s); "
        f"brute force {base:.3f} s, {base / ours:.1f}x slower"
    )

    rng = np.random.default_rng(2)
    r200, a200 = np.sort(rng.random(200) * 100), np.sort(rng.random(200))
    ours = best_of(lambda: subset_curve_alpha1(r200, a200))
    print(f"alpha=1 best subsets N=200, every k: {ours:.3f} s (target < 1 s)")
    r16, a16 = r200[::12][:16], a200[::12][:16]

    def brute16() -> list[float]:
        top = 15
        return [
            min(
                bound_alpha1(r16[[*rest, top]], a16[[*rest, top]]).r_oracle
                for rest in itertools.combinations(range(top), k - 1)
            )
            for k in range(1, 17)
        ]

    ours = best_of(lambda: subset_curve_alpha1(r16, a16))
    base, brute = timed(brute16)
    assert np.allclose(brute, [c.r_oracle for c in subset_curve_alpha1(r16, a16)])
    print(
        f"alpha=1 best subsets N=16, every k: {ours * 1e3:.2f} ms; "
        f"brute force {base:.3f} s, {base / ours:.0f}x slower"
    )


if __name__ == "__main__":
    main()
