"""Type stub of the compiled decision kernel (cpp/python/kernel_module.cpp)."""

import enum
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

def version() -> str: ...
def confidence(
    logits: npt.NDArray[np.float32], measure: str = "maxprob"
) -> npt.NDArray[np.float32]: ...
def all_finite(x: np.ndarray) -> bool: ...
def decide(
    logits: npt.NDArray[np.float32], threshold: float, measure: str = "maxprob"
) -> tuple[
    npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.bool_], npt.NDArray[np.int64]
]: ...
def decide_into(
    logits: npt.NDArray[np.float32],
    threshold: float,
    pred: npt.NDArray[np.int64],
    conf: npt.NDArray[np.float32],
    exit_mask: npt.NDArray[np.bool_],
    continue_idx: npt.NDArray[np.int64],
    measure: str = "maxprob",
) -> int: ...

class OneCall:
    def __init__(
        self,
        run: Callable[[dict[str, np.ndarray]], Mapping[str, np.ndarray]],
        input: str,
        dtype: np.dtype[Any],
        shape: Sequence[int],
        logits: str,
        classes: int,
        measure: str,
        *,
        policy: Policy,
        hop: int,
        state: int,
        result: type,
    ) -> None: ...
    def __call__(self, x: object) -> object: ...

class CascadeCall:
    def __init__(
        self,
        route: Sequence[Sequence[Any]],
        input: str,
        dtype: np.dtype[Any],
        shape: Sequence[int],
        classes: int,
        *,
        policy: Policy,
        result: type,
        hop_overhead_ms: float,
        costs_known: bool,
        last_alone: bool,
        gates: Sequence[Gate] | None = None,
    ) -> None: ...
    def __call__(self, x: object, budget_ms: object = None) -> object: ...
    @property
    def failed(self) -> Any: ...

class Gate:
    def __init__(self, weights: Sequence[float], bias: float) -> None: ...
    @property
    def weights(self) -> list[float]: ...
    @property
    def bias(self) -> float: ...

class Estimator:
    def __init__(self, weights: Sequence[float], bias: float) -> None: ...
    @property
    def weights(self) -> list[float]: ...
    @property
    def bias(self) -> float: ...

def schedule(
    logits: npt.NDArray[np.float32],
    estimators: Sequence[Estimator],
    thresholds: Sequence[float],
    costs_ms: Sequence[float],
    available_ms: float = ...,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32], npt.NDArray[np.int64]]: ...
def gate_decide(
    logits: npt.NDArray[np.float32],
    gate: Gate,
    threshold: float,
    history: npt.NDArray[np.int64],
    previous: npt.NDArray[np.float32],
) -> tuple[
    npt.NDArray[np.int64],
    npt.NDArray[np.float32],
    npt.NDArray[np.bool_],
    npt.NDArray[np.int64],
    npt.NDArray[np.int64],
    npt.NDArray[np.float32],
]: ...
def gate_decide_into(
    logits: npt.NDArray[np.float32],
    gate: Gate,
    threshold: float,
    position: int,
    history: npt.NDArray[np.int64],
    previous: npt.NDArray[np.float32],
    pred: npt.NDArray[np.int64],
    score: npt.NDArray[np.float32],
    exit_mask: npt.NDArray[np.bool_],
    continue_idx: npt.NDArray[np.int64],
) -> int: ...

class Action(enum.IntEnum):
    EXIT = 0
    CONTINUE = 1
    EXIT_BUDGET = 2

class Policy:
    def __init__(
        self,
        thresholds: Sequence[float],
        hop_costs_ms: Sequence[float],
        *,
        ewma: float = 0.2,
        measure: str = "maxprob",
        accuracies: Sequence[float] | None = None,
        cumulative: bool = True,
        quantile: float | None = None,
    ) -> None: ...
    @property
    def num_states(self) -> int: ...
    @property
    def measure(self) -> str: ...
    @property
    def ewma(self) -> float: ...
    @property
    def quantile(self) -> float | None: ...
    @property
    def cumulative(self) -> bool: ...
    @property
    def thresholds(self) -> list[float]: ...
    @property
    def costs_ms(self) -> list[float]: ...
    @property
    def accuracies(self) -> list[float] | None: ...
    def threshold(self, state: int) -> float: ...
    def predicted_ms(self, hop: int) -> float: ...
    def state_ms(self, state: int) -> float: ...
    def observe(self, hop: int, measured_ms: float) -> None: ...
    def decay(self, hop: int) -> None: ...
    def fits(self, next_hop: int, elapsed_ms: float, budget_ms: float | None = None) -> bool: ...
    def next(
        self, state: int, confidence: float, elapsed_ms: float, budget_ms: float | None = None
    ) -> Action: ...
    def lookup(self, budget_ms: float) -> int | None: ...
