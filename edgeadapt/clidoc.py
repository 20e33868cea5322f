"""The CLI reference (`docs/cli.md`), rendered from the commands' own ``--help``.

    python -m edgeadapt.clidoc > docs/cli.md

A test renders it again and compares, so the reference cannot drift from the CLI.
"""

from __future__ import annotations

import click

from edgeadapt.cli import cli

_WIDTH = 100


def _walk(cmd: click.Command, ctx: click.Context) -> list[tuple[click.Context, click.Command]]:
    """Every command below `cmd`, each with a context chained to its parent's, as the
    CLI itself builds them (so `-h/--help` and the usage line read as a user sees them)."""
    found = [(ctx, cmd)]
    if isinstance(cmd, click.Group):
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                sub_ctx = click.Context(sub, parent=ctx, info_name=name, **sub.context_settings)
                found += _walk(sub, sub_ctx)
    return found


def render() -> str:
    """Markdown: a table of every command, then each one's --help text verbatim."""
    root = click.Context(
        cli,
        info_name="edgeadapt",
        terminal_width=_WIDTH,
        max_content_width=_WIDTH,
        **cli.context_settings,
    )
    commands = _walk(cli, root)
    lines = [
        "# Command-line reference",
        "",
        "Generated from each command's `--help` by `python -m edgeadapt.clidoc`; a test",
        "checks it is current. Every command takes `-h/--help`.",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for ctx, cmd in commands[1:]:
        lines.append(f"| `{ctx.command_path}` | {cmd.get_short_help_str(limit=_WIDTH)} |")
    for ctx, cmd in commands:
        lines += ["", f"## `{ctx.command_path}`", "", "```", cmd.get_help(ctx).rstrip(), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
