"""The CLI reference (`docs/cli.md`), rendered from the commands' own ``--help``.

    python -m edgeadapt.clidoc > docs/cli.md

A test renders it again and compares, so the reference cannot drift from the CLI.
"""

from __future__ import annotations

import click

from edgeadapt.cli import cli

_WIDTH = 100


def _help(cmd: click.Command, path: list[str]) -> str:
    ctx = click.Context(
        cmd, info_name=" ".join(path), terminal_width=_WIDTH, max_content_width=_WIDTH
    )
    return cmd.get_help(ctx)


def _walk(cmd: click.Command, path: list[str]) -> list[tuple[list[str], click.Command]]:
    found = [(path, cmd)]
    if isinstance(cmd, click.Group):
        ctx = click.Context(cmd, info_name=" ".join(path))
        for name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                found += _walk(sub, [*path, name])
    return found


def render() -> str:
    """Markdown: a table of every command, then each one's --help text verbatim."""
    commands = _walk(cli, ["edgeadapt"])
    lines = [
        "# Command-line reference",
        "",
        "Generated from each command's `--help` by `python -m edgeadapt.clidoc`; a test",
        "checks it is current. Every command takes `-h/--help`.",
        "",
        "| command | what it does |",
        "| --- | --- |",
    ]
    for path, cmd in commands[1:]:
        lines.append(f"| `{' '.join(path)}` | {cmd.get_short_help_str(limit=_WIDTH)} |")
    for path, cmd in commands:
        lines += ["", f"## `{' '.join(path)}`", "", "```", _help(cmd, path).rstrip(), "```"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
