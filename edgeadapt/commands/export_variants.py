"""`edgeadapt export variants A B ... -o BUNDLE` (same-structure early-exit bundles, such
as one model's exits at several precisions -> one bundle of several chains; see
`edgeadapt.exporters.variants`), a subcommand of `export` (added there).

`edgeadapt.exporters.variants` is imported in the command: `edgeadapt --help` imports
every command module.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgeadapt.commands.bundles import export_options, show_written
from edgeadapt.commands.options import BUNDLE_DIR


@click.command("variants")
@click.argument(
    "bundles",
    metavar="BUNDLES...",
    nargs=-1,
    required=True,
    type=BUNDLE_DIR,
)
@click.option(
    "--name",
    "names",
    multiple=True,
    help="Chain name for each bundle, in the order given (default: each bundle's "
    "extra.precision, else its folder's name); states are named STATE@CHAIN.",
)
@export_options()
def export_variants_cmd(
    bundles: tuple[Path, ...],
    output: Path,
    names: tuple[str, ...],
    force: bool,
    as_json: bool,
) -> None:
    """Combine same-structure early-exit BUNDLES (the same exits at several precisions)
    into one bundle whose states are every (exit, variant) pair.

    Each bundle becomes a chain of steps; the chains keep the order given, and a plan's
    cascade walks states in that order, so give the reference (usually fp32) last: a
    plan may then run cheaper variants' exits before it. The bundles must have the same
    inputs, classes, state names and step input/output names. The bundle is written as
    manifest version 3, which older readers refuse.
    """
    from edgeadapt.exporters.variants import export_variants

    bundle = export_variants(bundles, output, names=names or None, force=force)
    show_written(bundle, output, as_json)
