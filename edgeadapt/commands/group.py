"""The CLI's command group: it remembers which (sub)command ran, so an error that names
a parameter is shown as that command's own flag."""

from __future__ import annotations

import click

from edgeadapt.errors import InputError

__all__ = ["CommandGroup", "as_flag", "usage_error"]

_RAN = "edgeadapt.command"


class CommandGroup(click.Group):
    """A group that records the subcommand it runs in the context's shared `meta`, so
    an error from a nested command (``export onnx``) maps to that command's flags."""

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            ctx.meta[_RAN] = cmd
        return name, cmd, rest


def as_flag(error: InputError, ctx: click.Context) -> InputError:
    """`error` with a source that names a parameter of the command that ran shown as the
    command's own flag (``cuts`` -> ``--cut``) or argument (``bundle`` -> ``BUNDLE``)."""
    command = ctx.meta.get(_RAN)
    if command is None or error.source is None:
        return error
    for param in command.params:
        if param.name == error.source:
            if isinstance(param, click.Option):
                return error.renamed(max(param.opts, key=len))
            return error.renamed(param.human_readable_name)
    return error


def _flag(param: click.Parameter) -> str:
    """How a parameter is spelt on the command line: its longest flag, or its metavar."""
    if isinstance(param, click.Option):
        return max(param.opts, key=len)
    return param.human_readable_name


def usage_error(error: click.UsageError) -> str:
    """Click's usage error as one line: ``--flag: why`` for a value its type refuses,
    click's own sentence (``Missing option '--data'.``) otherwise, and where to look."""
    param = getattr(error, "param", None)
    if type(error) is click.BadParameter and param is not None:
        text = f"{_flag(param)}: {error.message}"
    else:
        text = error.format_message()
    command = error.ctx.command_path if error.ctx is not None else "edgeadapt"
    return f"{text} (see {command} --help)"
