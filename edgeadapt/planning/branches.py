"""A branches bundle's two plans, and which one it keeps (`edgeadapt.planning.planner`).

AdaInf's execution branches can be run two ways without a budget:

- the **budget table** (``table``): the device's Pareto set of branches (measured cost
  against calibration accuracy); without a budget the most accurate branch answers
  alone, with one the table picks the branch;
- a **cascade** (``cascade``): the cheapest kept branch first, and the policy (a
  confidence threshold, a gate or agreement) decides per sample whether to run a deeper
  branch; each branch runs from the input, so a sample pays every branch run (the
  ensemble cost rule). It is planned as an ensemble's is: the same subset search, the
  same risk control (Learn then Test on the held-out split) and the same check against
  the measured static model. With a budget the cascade plan's table picks among its
  kept branches.

Both keep the promise (the table's answer without a budget is the reference branch
itself: no drop), so the plan keeps the one whose held-out expected cost is lower
(``auto``, ties to the table, whose budget table keeps every Pareto branch); a user may
force either (``edgeadapt plan --branches cascade|table``); both are planned either way.
The plan records both options' figures and why (`edgeadapt.formats.plan.BranchesChoice`).
"""

from __future__ import annotations

from edgeadapt.errors import InputError
from edgeadapt.formats.plan import BRANCH_CHOICES, BranchesChoice, BranchOption

__all__ = ["check_branch_choice", "keep_cheaper"]

_TOL = 1e-9


def check_branch_choice(asked: str) -> str:
    """`asked` if it is one of `BRANCH_CHOICES`, else an error naming the option."""
    if asked not in BRANCH_CHOICES:
        raise InputError(f"must be one of {list(BRANCH_CHOICES)}, got {asked!r}", field="branches")
    return asked


def _words(option: BranchOption, names: tuple[str, ...]) -> str:
    states = ", ".join(names[s] for s in option.states)
    return f"{option.cost_ms:.4g} ms at accuracy {option.accuracy:.2%} ({states})"


def keep_cheaper(
    asked: str,
    table: BranchOption,
    cascade: BranchOption,
    names: tuple[str, ...],
    note: str | None = None,
) -> BranchesChoice:
    """Which of `table` and `cascade` (their held-out figures) a plan keeps as
    `asked` (``auto``: the cheaper, ties to the table), and why in one line; `note` says
    why the cascade is the reference alone (its fallback), `names` are the bundle's
    states."""
    check_branch_choice(asked)
    table_words = f"the budget table's {_words(table, names)}, its most accurate branch alone"
    cascade_words = f"the {cascade.policy} cascade's {_words(cascade, names)}"
    if note:
        cascade_words += f" ({note})"
    if asked != "auto":
        why = f"the {asked} was asked for: {cascade_words} against {table_words}"
        return BranchesChoice(asked, asked, why, table, cascade)
    cheaper = cascade.cost_ms < table.cost_ms - _TOL * max(1.0, abs(table.cost_ms))
    run = "cascade" if cheaper else "table"
    verdict = "cheaper" if cheaper else "not cheaper"
    why = (
        f"the cascade is {verdict} at the promise: {cascade_words} against {table_words}; "
        f"the plan keeps the {run}"
    )
    return BranchesChoice(run, asked, why, table, cascade)
