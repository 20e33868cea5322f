"""Text rendering shared by every command, the demo and the report: one table layout and
one way to print a number, so the same figure reads the same everywhere."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from edgeadapt.formats.plan import Plan

__all__ = ["num", "pct", "ratio", "saving", "static_verdict", "table", "thresholds_text"]


def table(
    headers: Sequence[str], rows: Sequence[Sequence[object]], left: Sequence[int] = (0,)
) -> str:
    """Columns padded to their widest cell, two spaces apart; the columns in `left` are
    left-aligned, the rest right-aligned (numbers line up). No trailing spaces."""
    cells = [[str(c) for c in headers], *([str(c) for c in r] for r in rows)]
    n = len(cells[0])
    for i, r in enumerate(cells[1:]):
        if len(r) != n:
            raise ValueError(f"row {i} has {len(r)} cells, the header {n}")
    widths = [max(len(r[i]) for r in cells) for i in range(n)]
    lines = (
        "  ".join(
            c.ljust(w) if i in left else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in cells
    )
    return "\n".join(line.rstrip() for line in lines)


def num(x: float | None, digits: int = 4) -> str:
    """`x` to `digits` significant digits; ``-`` for a missing or non-finite value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}g}" if abs(x) < 1e4 else f"{x:,.1f}"


def ratio(x: float | None) -> str:
    """A speedup or cost ratio as ``1.23x``; ``-`` when missing."""
    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}x"


def pct(x: float | None, digits: int = 1, *, signed: bool = False) -> str:
    """A fraction as a percentage (``0.931`` -> ``93.1%``; `signed`: ``+93.1%``, for a
    change); ``-`` when missing."""
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:+.{digits}f}%" if signed else f"{100 * x:.{digits}f}%"


def saving(share: float | None) -> str:
    """A share of a baseline's cost saved, in words (``saves 12.3%``; negative: ``costs
    4.5% more``); ``n/a`` when there is no baseline."""
    if share is None:
        return "n/a"
    if abs(share) < 0.0005:  # 0.0% either way: no saving, whatever the rounding error's sign
        return "saves 0.0%"
    return f"saves {pct(share)}" if share >= 0 else f"costs {pct(-share)} more"


def thresholds_text(plan: Plan) -> str:
    """``thresholds (maxprob): 0.2664, 0.6074`` (what they threshold, and their values),
    or for a plan of one state that it answers alone, or for a branches plan that runs its
    budget table that none are used."""
    if not plan.thresholds:
        return "thresholds: none (one state answers every input)"
    if not plan.walks:
        return "thresholds: none (the budget table picks the branch; no budget: the last)"
    on = {"gate": "gate scores", "agreement": "agreement shares"}.get(plan.policy, plan.measure)
    return f"thresholds ({on}): " + ", ".join(f"{t:.4f}" for t in plan.thresholds)


def static_verdict(plan: Plan, it: str = "it") -> str:
    """A plan against the measured static model (`it`) in a few words: ``beats it``,
    ``does NOT beat it``, ``is the static model`` (one state, the one the whole model
    stands for: no saving against itself) or ``not measured``."""
    if plan.static_ms is None:
        return "not measured"
    if plan.keeps_static:
        return "is the static model"
    return f"beats {it}" if plan.beats_static else f"does NOT beat {it}"
