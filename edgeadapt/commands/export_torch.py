"""`edgeadapt export torch --factory MODULE:FUNCTION -o BUNDLE` (PyTorch model -> bundle),
a subcommand of `export` (added there).

`edgeadapt.exporters.torch` is imported in the command: at the top it would add about 5 ms
to `edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgeadapt.commands.bundles import export_options, show_written


@click.command("torch")
@click.option(
    "--factory",
    required=True,
    metavar="MODULE:FUNCTION",
    help="Python callable returning (stages, heads, example_input), (model, example_input) "
    "for a model with .stages/.heads, or ([models], example_input) for a family.",
)
@export_options(parity=True)
def export_torch_cmd(
    factory: str, parity_rtol: float, parity_atol: float, output: Path, force: bool, as_json: bool
) -> None:
    """Export a PyTorch multi-exit model (or model family) built by --factory."""
    from edgeadapt.exporters.torch import TorchExportOptions, export_from_factory

    options = TorchExportOptions(parity_rtol=parity_rtol, parity_atol=parity_atol, force=force)
    bundle = export_from_factory(factory, output, options)
    show_written(bundle, output, as_json)
    if not as_json:
        parity = bundle.extra["parity"]["max_abs_error"]
        click.echo(f"  parity with torch: max abs error {parity:.2g} (batches 1 and 7)")
