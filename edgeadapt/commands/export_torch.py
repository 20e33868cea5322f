"""`edgeadapt export torch --factory MODULE:FUNCTION -o BUNDLE` (PyTorch model -> bundle).

The subcommand is added to the `export` group of `edgeadapt.commands.export`; the CLI
imports every module of `edgeadapt.commands` (this one after `export`), so it needs no
top-level entry of its own.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from edgeadapt.commands.export import (
    bundle_summary,
    export,
    force_option,
    json_option,
    output_option,
    parity_atol_option,
    parity_rtol_option,
)
from edgeadapt.errors import InputError

#: Registered on the `export` group above, so nothing is top-level here.
COMMANDS: list[click.Command] = []


def load_factory(spec: str) -> Any:
    """The callable named by ``package.module:function`` or ``path/to/file.py:function``.

    A dotted module is imported with the current directory on `sys.path`, as a user
    running the command from their project expects.
    """
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise InputError(
            f"expected MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}", field="--factory"
        )
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise InputError("file not found", source=path, field="--factory")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or module_spec.loader is None:
                raise InputError("not a loadable Python file", source=path, field="--factory")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(where)
    except InputError:
        raise
    except Exception as e:  # whatever the user's module raises on import
        raise InputError(
            f"cannot import {where!r}: {type(e).__name__}: {e}", field="--factory"
        ) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"{where!r} has no callable {name!r}", field="--factory")
    return factory


def export_from_factory(factory: Any, out: Path, *, force: bool, **kwargs: Any) -> Any:
    """Call `factory()` and export what it returns:

    - ``(stages, heads, example_input)``: an early-exit bundle;
    - ``(model, example_input)`` with ``model.stages`` and ``model.heads``: the same;
    - ``([model, ...], example_input)``: an ensemble bundle of a model family.

    `kwargs` (``parity_rtol``, ``parity_atol``, ...) go to the exporter.
    """
    from edgeadapt.exporters.torch import export_torch, export_torch_family, export_torch_model

    made = factory()
    if isinstance(made, tuple) and len(made) == 3:
        stages, heads, example = made
        return export_torch(stages, heads, example, out, force=force, **kwargs)
    if isinstance(made, tuple) and len(made) == 2:
        model, example = made
        if isinstance(model, Sequence):
            return export_torch_family(model, example, out, force=force, **kwargs)
        return export_torch_model(model, example, out, force=force, **kwargs)
    raise InputError(
        "the factory must return (stages, heads, example_input), (model, example_input) "
        f"or ([models], example_input); got {type(made).__name__}",
        field="--factory",
    )


@export.command("torch")
@click.option(
    "--factory",
    required=True,
    metavar="MODULE:FUNCTION",
    help="Python callable returning (stages, heads, example_input), (model, example_input) "
    "for a model with .stages/.heads, or ([models], example_input) for a family.",
)
@parity_rtol_option
@parity_atol_option
@output_option
@force_option
@json_option
def export_torch_cmd(
    factory: str, parity_rtol: float, parity_atol: float, out: Path, force: bool, as_json: bool
) -> None:
    """Export a PyTorch multi-exit model (or model family) built by --factory."""
    bundle = export_from_factory(
        load_factory(factory), out, force=force, parity_rtol=parity_rtol, parity_atol=parity_atol
    )
    summary = bundle_summary(bundle)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
        return
    click.echo(f"wrote {out} ({summary['kind']}, {len(summary['states'])} states)")
    for s in summary["states"]:
        click.echo(f"  {s['name']:<12} {s['flops']:>12,} FLOPs  {s['params']:>10,} params")
    parity = bundle.extra["parity"]["max_abs_error"]
    click.echo(f"  parity with torch: max abs error {parity:.2g} (batches 1 and 7)")
