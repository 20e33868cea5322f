"""Pure-numpy reference of the decision kernel: the readable specification.

The C++ kernel (`cpp/include/edgeadapt/kernel.hpp`, exposed as `edgeadapt.kernel`)
computes exactly this, only faster. Per row of float32 logits x:

    t_i = x_i - max(x)                    (float32)
    e_i = exp_neg(t_i)                    (float32 polynomial below; 0 below -80)
    Z   = sum_i e_i                       (float64)
    maxprob = 1 / Z
    margin  = (1 - exp_neg(x_(2) - max(x))) / Z     x_(2): second-largest logit
    entropy = sum_i e_i t_i / Z - log Z   (negative entropy: higher = more confident)

each rounded once to float32. The prediction is the first index of the maximum. A row
holding NaN or +-Inf is invalid: prediction -1, confidence NaN, and it never exits.
A row exits when its confidence >= threshold (compared in float64).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: The confidence measures, in the order every module lists them (one definition).
MEASURES = ("maxprob", "margin", "entropy")

_F = np.float32
_LOG2E = _F(1.44269504088896341)
_LN2_HI = _F(0.693359375)
_LN2_LO = _F(-2.12194440e-4)
_CUTOFF = _F(-80.0)
_POLY = tuple(
    _F(c)
    for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2, 1.6666665459e-1)
)
_P5 = _F(5.0000001201e-1)


def exp_neg(t: np.ndarray) -> np.ndarray:
    """exp(t) for finite float32 t <= 0, as the kernel computes it (Cephes expf).

    Cody-Waite range reduction t = k ln2 + r with k = rint(t log2 e), a degree-6
    polynomial in r, then scaling by 2^k; terms below exp(-80) are 0.
    """
    t = np.asarray(t, dtype=_F)
    tc = np.maximum(t, _CUTOFF)
    k = np.rint(tc * _LOG2E)
    r = tc - k * _LN2_HI
    r = r - k * _LN2_LO
    p = _POLY[0]
    for c in (*_POLY[1:], _P5):
        p = p * r + c
    p = (p * (r * r) + r) + _F(1.0)
    e = np.ldexp(p, k.astype(np.int32))
    return np.where(t < _CUTOFF, _F(0.0), e).astype(_F)


def _check_logits(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits)
    if x.dtype != np.float32:
        raise TypeError(f"logits must have dtype float32, got {x.dtype}")
    if x.ndim != 2:
        raise ValueError(f"logits must be 2-D [batch, classes], got shape {x.shape}")
    if x.shape[0] < 1:
        raise ValueError("logits has an empty batch (shape[0] == 0)")
    if x.shape[1] < 2:
        raise ValueError(f"logits needs at least 2 classes, got shape[1] == {x.shape[1]}")
    return x


def predict_confidence(
    logits: np.ndarray, measure: str = "maxprob"
) -> tuple[np.ndarray, np.ndarray]:
    """(pred int64[B], conf float32[B]) of float32 logits [B, C]."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    x = _check_logits(logits)
    valid = np.isfinite(x).all(axis=1)
    xs = np.where(valid[:, None], x, _F(0.0))
    m = xs.max(axis=1)
    pred = xs.argmax(axis=1).astype(np.int64)
    with np.errstate(over="ignore", invalid="ignore"):
        t = (xs - m[:, None]).astype(_F)
    e = exp_neg(t)
    z = e.astype(np.float64).sum(axis=1)
    if measure == "maxprob":
        conf = 1.0 / z
    elif measure == "margin":
        rest = xs.copy()
        rest[np.arange(len(rest)), pred] = -np.inf
        with np.errstate(over="ignore", invalid="ignore"):
            second = (rest.max(axis=1) - m).astype(_F)
        conf = (1.0 - exp_neg(second).astype(np.float64)) / z
    else:
        tc = np.maximum(t, _CUTOFF).astype(np.float64)
        conf = (e.astype(np.float64) * tc).sum(axis=1) / z - np.log(z)
    conf32 = np.where(valid, conf, np.nan).astype(_F)
    return np.where(valid, pred, -1), conf32


def confidence(logits: np.ndarray, measure: str = "maxprob") -> np.ndarray:
    """Confidence per row: float32[B]; NaN for a row holding NaN or Inf."""
    return predict_confidence(logits, measure)[1]


def decide(
    logits: np.ndarray, threshold: float, measure: str = "maxprob"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(pred int64[B], conf float32[B], exit_mask bool[B], continue_idx int64[K])."""
    if math.isnan(threshold):
        raise ValueError("threshold must be a number, got NaN")
    pred, conf = predict_confidence(logits, measure)
    exit_mask = conf.astype(np.float64) >= threshold
    return pred, conf, exit_mask, np.flatnonzero(~exit_mask).astype(np.int64)


EXIT, CONTINUE, EXIT_BUDGET = 0, 1, 2


class Policy:
    """Reference of `edgeadapt.kernel.Policy` (same arguments, same answers)."""

    def __init__(
        self,
        thresholds: Sequence[float],
        hop_costs_ms: Sequence[float],
        *,
        ewma: float = 0.2,
        accuracies: Sequence[float] | None = None,
        cumulative: bool = True,
        quantile: float | None = None,
    ) -> None:
        if len(thresholds) != len(hop_costs_ms) - 1:
            raise ValueError("thresholds must hold one value per state but the last")
        self.thresholds = [float(v) for v in thresholds]
        self.costs_ms = [float(v) for v in hop_costs_ms]
        self.priors_ms = list(self.costs_ms)
        self.ewma = ewma
        self.accuracies = None if accuracies is None else [float(v) for v in accuracies]
        self.cumulative = cumulative
        if quantile is not None and not 0.0 < quantile < 1.0:
            raise ValueError("quantile must be in (0, 1)")
        self.quantile = quantile

    def observe(self, hop: int, measured_ms: float) -> None:
        """Mean (no quantile): cost <- (1 - ewma) * cost + ewma * measured. Quantile q:
        cost *= 1 + ewma * q above it, else cost *= 1 - ewma * (1 - q), which settles
        where P(measured <= cost) = q; a zero cost takes the mean's step."""
        c, q = self.costs_ms[hop], self.quantile
        if q is None or c <= 0.0:
            self.costs_ms[hop] = (1.0 - self.ewma) * c + self.ewma * measured_ms
        elif measured_ms > c:
            self.costs_ms[hop] = c * (1.0 + self.ewma * q)
        else:
            self.costs_ms[hop] = c * (1.0 - self.ewma * (1.0 - q))

    def decay(self, hop: int) -> None:
        """cost <- (1 - ewma) * cost + ewma * prior: a hop skipped for the budget drifts
        back toward its initial cost, so one slow run cannot lock it out for good."""
        prior = self.priors_ms[hop]
        self.costs_ms[hop] = (1.0 - self.ewma) * self.costs_ms[hop] + self.ewma * prior

    def state_ms(self, state: int) -> float:
        """Cost of reaching `state`: hops 0..state (cumulative) or hop `state` alone."""
        if not self.cumulative:
            return self.costs_ms[state]
        total = 0.0  # summed in order, as the kernel does
        for c in self.costs_ms[: state + 1]:
            total += c
        return total

    def next(
        self, state: int, confidence: float, elapsed_ms: float, budget_ms: float | None
    ) -> int:
        """EXIT at the last state or when confident; EXIT_BUDGET when the next hop overruns."""
        budget = math.inf if budget_ms is None else budget_ms
        if state == len(self.costs_ms) - 1 or confidence >= self.thresholds[state]:
            return EXIT
        if elapsed_ms + self.costs_ms[state + 1] > budget:
            return EXIT_BUDGET
        return CONTINUE

    def lookup(self, budget_ms: float) -> int | None:
        """Most accurate state whose cost fits (ties: cheaper); None when none fits."""
        return lookup(
            [self.state_ms(i) for i in range(len(self.costs_ms))], self.accuracies, budget_ms
        )


def lookup(
    state_ms: Sequence[float], accuracies: Sequence[float] | None, budget_ms: float
) -> int | None:
    """AdaInf's content-agnostic lookup, as `Policy::lookup` in the C++ kernel: the most
    accurate state whose cost (`state_ms[i]`, the cost of reaching state i) fits
    `budget_ms`, the cheaper one on a tie; None when none fits. Without `accuracies` a
    later state counts as more accurate."""
    best: int | None = None
    best_key = (-1.0, 0.0)
    for i, cost in enumerate(state_ms):
        if cost > budget_ms:
            continue
        acc = float(i) if accuracies is None else float(accuracies[i])
        if acc > best_key[0] or (acc == best_key[0] and cost < best_key[1]):
            best, best_key = i, (acc, float(cost))
    return best


# ---- learned exit gates -------------------------------------------------------------

#: The features a gate reads at kept state j, in the order of its weights.
GATE_FEATURES = ("maxprob", "margin", "entropy", "agreement", "previous")
_GATE_CLAMP = 80.0  # |z| past this rounds the float32 score to 0 or 1 (and exp(-z) stays finite)


def gate_score(
    maxprob: np.ndarray,
    margin: np.ndarray,
    entropy: np.ndarray,
    agreement: np.ndarray,
    previous: np.ndarray,
    weights: Sequence[float],
    bias: float,
) -> np.ndarray:
    """A gate's score per row, float32: the logistic of a linear model of its features.

    In float64, in this order (the kernel does the same, without FMA contraction):

        z = bias
        z = z + w[k] * f_k        for k = 0..4: maxprob, margin, entropy, agreement, previous
        z = clamp(z, -80, 80)     (NaN stays NaN)
        s = 1 / (1 + exp(-z))

    rounded once to float32. The confidences come in as float32 (as `predict_confidence`
    gives them) and are widened exactly; `agreement` (a share, float64) and `previous`
    (the previous gate's float32 score) likewise. A NaN feature gives a NaN score,
    which never exits.
    """
    w = [float(v) for v in weights]
    if len(w) != len(GATE_FEATURES):
        raise ValueError(f"a gate has {len(GATE_FEATURES)} weights, got {len(w)}")
    return _logistic((maxprob, margin, entropy, agreement, previous), w, bias)


def _logistic(features: Sequence[np.ndarray], weights: Sequence[float], bias: float) -> np.ndarray:
    """``sigmoid(bias + sum_k w_k f_k)`` per row, in float64 in that order, clamped and
    rounded once to float32 (the numerics of `gate_score`, which estimates share)."""
    z = np.full(np.shape(features[0]), float(bias), dtype=np.float64)
    for wk, fk in zip(weights, features, strict=True):
        z = z + float(wk) * np.asarray(fk, dtype=np.float64)
    z = np.clip(z, -_GATE_CLAMP, _GATE_CLAMP)
    return (1.0 / (1.0 + np.exp(-z))).astype(_F)


def agreement(pred: np.ndarray, history: np.ndarray) -> np.ndarray:
    """Share of the earlier exits' argmax (`history` ``[B, j]``) equal to `pred` ``[B]``;
    0 when there is none (j == 0). Counted in integers, divided once in float64."""
    pred = np.asarray(pred)
    history = np.asarray(history)
    if history.shape[1] == 0:
        return np.zeros(pred.shape[0], dtype=np.float64)
    agree = np.count_nonzero(history == pred[:, None], axis=1)
    return agree.astype(np.float64) / float(history.shape[1])


def gate_decide(
    logits: np.ndarray,
    weights: Sequence[float],
    bias: float,
    threshold: float,
    history: np.ndarray,
    previous: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The gate decision at kept state j = ``history.shape[1]`` for a batch of logits.

    `history` int64 ``[B, j]`` holds each row's argmax at the earlier kept exits,
    `previous` float32 ``[B]`` the previous gate's score (read only when j > 0).
    Returns (pred int64[B], score float32[B], exit_mask bool[B] = score >= threshold,
    continue_idx int64[K], history of the rows that continue ``[K, j + 1]`` (this
    state's argmax appended), their scores ``[K]``: the next gate's `previous`).
    """
    if math.isnan(threshold):
        raise ValueError("threshold must be a number, got NaN")
    x = _check_logits(logits)
    history = np.asarray(history, dtype=np.int64).reshape(x.shape[0], -1)
    pred, maxprob = predict_confidence(x, "maxprob")
    margin = predict_confidence(x, "margin")[1]
    entropy = predict_confidence(x, "entropy")[1]
    j = history.shape[1]
    prev = np.asarray(previous, dtype=_F) if j else np.zeros(x.shape[0], dtype=_F)
    score = gate_score(maxprob, margin, entropy, agreement(pred, history), prev, weights, bias)
    exit_mask = score.astype(np.float64) >= threshold
    keep = np.flatnonzero(~exit_mask).astype(np.int64)
    grown = np.concatenate([history, pred[:, None]], axis=1)
    return pred, score, exit_mask, keep, grown[keep], score[keep]


# ---- agreement ----------------------------------------------------------------------


def agreement_shares(pred: np.ndarray) -> np.ndarray:
    """The agreement policy's score of every kept state, float32 ``[B, S]``: at column j,
    the share of the earlier columns' predictions equal to column j's (counted in
    integers, divided once in float64, rounded once to float32); 0 at column 0 and for a
    row whose prediction at j is invalid (-1: logits holding NaN or Inf agree with
    nothing).

    The agreement policy exits at kept state j when this share is ``>= threshold[j]``
    (compared in float64), answering state j's prediction; the last kept state always
    answers. It reads predictions only, so it can be planned from predictions alone.
    """
    pred = np.asarray(pred)
    if pred.ndim != 2:
        raise ValueError(f"pred must be 2-D [batch, states], got shape {pred.shape}")
    out = np.zeros(pred.shape, dtype=_F)
    for j in range(1, pred.shape[1]):
        share = agreement(pred[:, j], pred[:, :j])
        out[:, j] = np.where(pred[:, j] >= 0, share, 0.0).astype(_F)
    return out


def agreement_decide(
    logits: np.ndarray, threshold: float, history: np.ndarray, measure: str = "maxprob"
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The agreement decision at kept state j = ``history.shape[1]`` for a batch of logits.

    `history` int64 ``[B, j]`` holds each row's prediction at the earlier kept states.
    Returns (pred int64[B] (-1 for an invalid row), share float32[B] (`agreement_shares`'
    column j), exit_mask bool[B] = share >= threshold, continue_idx int64[K], history of
    the rows that continue ``[K, j + 1]``, this state's prediction appended). `measure`
    only names the confidence the last state reports (`predict_confidence`).
    """
    if math.isnan(threshold):
        raise ValueError("threshold must be a number, got NaN")
    pred = predict_confidence(_check_logits(logits), measure)[0]
    history = np.asarray(history, dtype=np.int64).reshape(pred.shape[0], -1)
    grown = np.concatenate([history, pred[:, None]], axis=1)
    share = agreement_shares(grown)[:, -1]
    exit_mask = share.astype(np.float64) >= threshold
    keep = np.flatnonzero(~exit_mask).astype(np.int64)
    return pred, share, exit_mask, keep, grown[keep]


# ---- the content-aware scheduler (branches) -------------------------------------------

#: What the scheduler reads of the first kept branch's logits, in the order of each
#: estimator's weights (`predict_confidence`'s float32 values).
SCHEDULER_FEATURES = ("maxprob", "margin", "entropy")
#: A threshold no estimate reaches (scores lie in [0, 1]): that branch is never picked
#: by its estimate, only as the most accurate one that fits.
SCHEDULER_NEVER = 2.0


def scheduler_scores(
    logits: np.ndarray, weights: np.ndarray | Sequence[Sequence[float]], bias: Sequence[float]
) -> tuple[np.ndarray, np.ndarray]:
    """(pred int64[B], scores float32[B, E]) of the first branch's float32 logits [B, C]:
    estimator e's logistic estimate ``sigmoid(bias[e] + sum_k w[e, k] f_k)`` over the
    `SCHEDULER_FEATURES`, in float64 in that order, clamped and rounded once to float32
    exactly as `gate_score` does. An invalid row (NaN or Inf logits) scores NaN."""
    x = _check_logits(logits)
    pred, maxprob = predict_confidence(x, "maxprob")
    feats = (maxprob, predict_confidence(x, "margin")[1], predict_confidence(x, "entropy")[1])
    return pred, estimates(np.stack(feats, axis=1), weights, bias)


def estimates(
    features: np.ndarray, weights: np.ndarray | Sequence[Sequence[float]], bias: Sequence[float]
) -> np.ndarray:
    """The estimators' float32 scores ``[B, E]`` of float32 `features` ``[B, 3]``
    (`SCHEDULER_FEATURES` order; numerics in `scheduler_scores`)."""
    f = np.asarray(features, dtype=_F).astype(np.float64)
    w = np.asarray(weights, dtype=np.float64).reshape(-1, len(SCHEDULER_FEATURES))
    b = np.asarray(bias, dtype=np.float64)
    if b.shape != (w.shape[0],):
        raise ValueError(f"expected {w.shape[0]} biases (one per estimator), got {b.shape}")
    out = np.empty((f.shape[0], w.shape[0]), dtype=_F)
    columns = [f[:, k] for k in range(len(SCHEDULER_FEATURES))]
    for e in range(w.shape[0]):
        out[:, e] = _logistic(columns, w[e], b[e])
    return out


def scheduler_choice(
    scores: np.ndarray,
    thresholds: Sequence[float],
    costs_ms: Sequence[float],
    available_ms: float = math.inf,
) -> np.ndarray:
    """The kept branch the scheduler picks per row, int64[B], from its `scores` [B, E]
    (E = kept branches - 1), once the first branch has run:

    - position 0 (answer with the first branch) when ``scores[:, 0] >= thresholds[0]``;
    - else the cheapest position j in 1..E-1 whose estimate clears its threshold and
      whose tracked cost ``costs_ms[j]`` fits `available_ms` (what is left of the budget);
    - else the last position whose cost fits (the kept branches rise in cost and
      accuracy: the most accurate affordable one), position 0 when none fits.

    Scores compare in float64; a NaN score clears nothing. ``costs_ms`` holds one cost
    per kept branch (``costs_ms[0]``, the first branch's, is not read: it has run).
    Without a budget (`available_ms` inf) this is the threshold policy's
    `edgeadapt.planning.calibrate.exit_states` on the scores."""
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    c = np.asarray(costs_ms, dtype=np.float64)
    if math.isnan(available_ms) or np.isnan(t).any():
        raise ValueError("thresholds and available_ms must not be NaN")
    e = s.shape[1]
    if t.shape != (e,) or c.shape != (e + 1,):
        raise ValueError(f"expected {e} thresholds and {e + 1} costs, got {t.shape}, {c.shape}")
    fits = c <= available_ms
    fits[0] = True
    choice = np.zeros(s.shape[0], dtype=np.int64)
    affordable = np.flatnonzero(fits[1:])
    fallback = 0 if affordable.size == 0 else int(affordable[-1]) + 1
    if e == 0:
        return choice
    done = s[:, 0] >= t[0]
    for j in range(1, e):
        pick = ~done & (s[:, j] >= t[j]) & bool(fits[j])
        choice[pick] = j
        done |= pick
    choice[~done] = fallback
    return choice


def scheduler_decide(
    logits: np.ndarray,
    weights: np.ndarray | Sequence[Sequence[float]],
    bias: Sequence[float],
    thresholds: Sequence[float],
    costs_ms: Sequence[float],
    available_ms: float = math.inf,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(pred int64[B], scores float32[B, E], choice int64[B]): `scheduler_scores` on the
    first branch's logits, then `scheduler_choice`."""
    pred, scores = scheduler_scores(logits, weights, bias)
    return pred, scores, scheduler_choice(scores, thresholds, costs_ms, available_ms)


def table_first(
    costs_ms: Sequence[float], first: int, table_slot: int, budget_ms: float, hop_ms: float
) -> bool:
    """Whether a scheduler plan under `budget_ms` runs its budget table's pick (kept
    position `table_slot`, `lookup`'s) alone rather than the scheduler: when the budget
    cannot pay the branch at kept position `first` (the one the scheduler always runs)
    followed by that pick (each with the per-hop overhead `hop_ms`), every choice the
    scheduler has is a less accurate branch than the table's, or its first alone.
    `costs_ms` holds each kept branch's tracked cost."""
    return budget_ms - 2.0 * hop_ms - costs_ms[first] < costs_ms[table_slot]
