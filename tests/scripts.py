"""Import a benchmark or example script (a file outside any package) for a test."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def script_module(relpath: str, name: str) -> Iterator[ModuleType]:
    """The file `relpath` (from the repository root) imported as module `name`, in
    ``sys.modules`` while the block runs (dataclasses look their module up there) and
    removed after it, so that the next test imports it afresh."""
    spec = importlib.util.spec_from_file_location(name, ROOT / relpath)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
