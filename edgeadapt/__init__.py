"""edgeadapt: compiled edge-deployment toolchain for adaptive inference.

The pipeline, one sub-package per stage:

- `edgeadapt.exporters` turn a model into a bundle of states (per-exit ONNX steps);
- `edgeadapt.formats` are the files (bundle, profile, evaluation, plan) and their readers;
- `edgeadapt.data` feeds a bundle its inputs; `edgeadapt.measure` profiles and
  evaluates it on the device;
- `edgeadapt.oracle` bounds what any adaptive policy could save there;
- `edgeadapt.planning` picks the states and the exit policy, with a promise;
- `edgeadapt.cascade` runs the plan under the C++ decision kernel (`edgeadapt.kernel`);
- `edgeadapt.runtimes` are the backends; `edgeadapt.commands` the CLI.

The names most users need are importable from here (``edgeadapt.AdaptiveModel``,
``edgeadapt.load_bundle``, ...). They load on first use, so ``import edgeadapt`` stays
as cheap as the CLI needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from edgeadapt._version import __version__

#: public name -> the module that defines it
_PUBLIC = {
    "AdaptiveModel": "edgeadapt.cascade.model",
    "Prediction": "edgeadapt.cascade.model",
    "Bundle": "edgeadapt.formats.bundle",
    "load_bundle": "edgeadapt.formats.bundle",
    "Profile": "edgeadapt.formats.profile",
    "load_profile": "edgeadapt.formats.profile",
    "state_costs": "edgeadapt.formats.profile",
    "Evaluation": "edgeadapt.formats.evaluation",
    "load_evaluation": "edgeadapt.formats.evaluation",
    "Plan": "edgeadapt.formats.plan",
    "load_plan": "edgeadapt.formats.plan",
    "save_plan": "edgeadapt.formats.plan",
    "RuntimeConfig": "edgeadapt.formats.presets",
    "profile_bundle": "edgeadapt.measure.profiler",
    "TimingOptions": "edgeadapt.measure.profiler",
    "evaluate_bundle": "edgeadapt.measure.evaluate",
    "exact_oracle": "edgeadapt.oracle.equations",
    "bound_summary": "edgeadapt.oracle.equations",
    "make_plan": "edgeadapt.planning.planner",
    "plan_bundle": "edgeadapt.planning.planner",
    "PlanCosts": "edgeadapt.planning.planner",
    "PlanOptions": "edgeadapt.planning.planner",
    "get_runtime": "edgeadapt.runtimes",
    "EdgeadaptError": "edgeadapt.errors",
    "InputError": "edgeadapt.errors",
}

__all__ = [
    "AdaptiveModel",
    "Bundle",
    "EdgeadaptError",
    "Evaluation",
    "InputError",
    "Plan",
    "PlanCosts",
    "PlanOptions",
    "Prediction",
    "Profile",
    "RuntimeConfig",
    "TimingOptions",
    "__version__",
    "bound_summary",
    "evaluate_bundle",
    "exact_oracle",
    "get_runtime",
    "load_bundle",
    "load_evaluation",
    "load_plan",
    "load_profile",
    "make_plan",
    "plan_bundle",
    "profile_bundle",
    "save_plan",
    "state_costs",
]

if TYPE_CHECKING:
    from edgeadapt.cascade.model import AdaptiveModel, Prediction
    from edgeadapt.errors import EdgeadaptError, InputError
    from edgeadapt.formats.bundle import Bundle, load_bundle
    from edgeadapt.formats.evaluation import Evaluation, load_evaluation
    from edgeadapt.formats.plan import Plan, load_plan, save_plan
    from edgeadapt.formats.presets import RuntimeConfig
    from edgeadapt.formats.profile import Profile, load_profile, state_costs
    from edgeadapt.measure.evaluate import evaluate_bundle
    from edgeadapt.measure.profiler import TimingOptions, profile_bundle
    from edgeadapt.oracle.equations import bound_summary, exact_oracle
    from edgeadapt.planning.planner import PlanCosts, PlanOptions, make_plan, plan_bundle
    from edgeadapt.runtimes import get_runtime


def __getattr__(name: str) -> Any:
    """Load a public name's module on first use (PEP 562)."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'edgeadapt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
