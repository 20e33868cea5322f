"""Import timm beside a torchvision whose compiled ops do not load.

timm imports torchvision's Python parts (transforms, `FrozenBatchNorm2d`), never its
compiled detection ops. A torchvision wheel built against CUDA torch cannot load its
``_C`` extension beside a CPU-only torch of the same version (it links
``libtorch_cuda``); torchvision then carries on without its ops (``_has_ops()`` is
False), except for two fake-tensor registrations (``torchvision::nms`` and ``qnms``)
that need the ops' schemas and fail with ``operator torchvision::nms does not exist``.

`import_timm` imports torchvision as it is; only on that failure does it declare those
two schemas (without kernels: calling ``nms`` still fails, as it would without the
extension) and import it again. With a torchvision that matches the installed torch
(the ordinary install, e.g. both from the CPU wheel index) the first import works and
nothing is declared.
"""

from __future__ import annotations

import sys
from types import ModuleType

#: The ops torchvision registers fake kernels for without checking that its extension loaded.
_SCHEMAS = {
    "torchvision::nms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "torchvision::qnms": "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}


def _declare_missing_ops() -> None:
    import torch

    for name, schema in _SCHEMAS.items():
        namespace, op = name.split("::")
        if not hasattr(getattr(torch.ops, namespace), op):
            torch.library.define(name, schema)


def import_timm() -> ModuleType:
    """timm, with torchvision imported as described in the module docstring."""
    try:
        import torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        _declare_missing_ops()
        import torchvision  # noqa: F401
    import timm

    return timm
