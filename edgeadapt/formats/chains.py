"""Chains: the cost model of a bundle's states, and what a cascade over kept states pays.

Every state belongs to a **chain** of steps that share activations: an early-exit bundle
of one precision is one chain (state i = steps 0..i), each ensemble member or branch is
a chain of its own, and a precision-variant bundle (manifest version 3) holds one chain
per precision, each a contiguous run of states in bundle order. A state's cost ``R_i``
is its chain's cumulative cost up to it (what running it alone from the model inputs
pays). A cascade over kept states runs each chain's steps once, from where it last
stopped, so a sample that stops at kept state j pays, summed over chains, the cost of
the deepest kept state of that chain at or before j (`paid_costs`). On one chain this is
``R_j`` (the early-exit rule); with every state its own chain, the sum of the kept
states' costs up to j (the ensemble rule).

A chain layout is one chain index per state (`Chains`); `layout` gives a bundle kind's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Chains", "Layout", "chain_costs", "chain_starts", "kept_costs", "layout", "paid_costs"]

#: One chain index per state, in bundle order.
Chains = tuple[int, ...]
#: How a cascade's costs add up: a bundle kind (its `layout`) or the chains themselves.
Layout = str | Chains


def layout(kind: str, n_states: int, declared: Sequence[int] = ()) -> Chains:
    """The chains of a bundle of `kind` with `n_states` states: an early-exit bundle's
    `declared` chains (one per state; none given: one chain), else each state its own
    (ensemble members and branches)."""
    if kind != "early-exit":
        return tuple(range(n_states))
    if declared:
        if len(declared) != n_states:
            raise ValueError(f"{len(declared)} chain indices for {n_states} states")
        return tuple(int(c) for c in declared)
    return (0,) * n_states


def paid_costs(
    state_costs: Sequence[float] | np.ndarray, kept: Sequence[int], chains: Chains
) -> np.ndarray:
    """What a sample stopping at each kept state pays in a cascade over the `kept` states
    (bundle indices, in cascade order): for each chain, the cost ``R`` of its deepest
    kept state at or before it, summed (module docstring)."""
    costs = np.asarray(state_costs, dtype=np.float64)
    deepest: dict[int, float] = {}
    out = np.empty(len(kept), dtype=np.float64)
    for j, s in enumerate(kept):
        deepest[chains[s]] = float(costs[s])
        out[j] = sum(deepest.values())
    return out


def kept_costs(
    state_costs: Sequence[float] | np.ndarray, kept: Sequence[int], how: Layout
) -> np.ndarray:
    """What a sample stopping at each kept state pays under `how` (a bundle kind or its
    chains): the chain rule (`paid_costs`), except that branches are not cascaded (a
    branch plan runs one branch, which pays its own cost alone)."""
    costs = np.asarray(state_costs, dtype=np.float64)
    if how == "branches":
        return costs[list(kept)]
    chains = how if isinstance(how, tuple) else layout(how, len(costs))
    return paid_costs(costs, kept, chains)


def chain_costs(step_costs: Sequence[float] | np.ndarray, chains: Chains) -> np.ndarray:
    """Each state's ``R_i`` from its step's own cost: the cumulative cost of its chain's
    steps up to it (chains contiguous in bundle order, as every layout is)."""
    steps = np.asarray(step_costs, dtype=np.float64)
    out = np.empty(len(steps), dtype=np.float64)
    total, previous = 0.0, None
    for i, (c, cost) in enumerate(zip(chains, steps, strict=True)):
        total = (total if c == previous else 0.0) + float(cost)
        out[i], previous = total, c
    return out


def chain_starts(chains: Chains) -> tuple[int, ...]:
    """For each state, the index of the first state of its chain (the step that reads
    the model inputs)."""
    starts: list[int] = []
    for i, c in enumerate(chains):
        starts.append(starts[-1] if i and chains[i - 1] == c else i)
    return tuple(starts)
