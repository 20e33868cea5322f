"""The `edgeadapt` command line: a thin layer that parses, calls the Python API, prints.

Each module in `edgeadapt.commands` defines its click commands and lists them in a
module-level ``COMMANDS``; they are discovered here, so adding a command never touches
this file. Command modules import the pipeline modules (and through them onnxruntime or
torch) inside the command function where the top would slow `edgeadapt --help`; each
module's docstring says which.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import warnings
from collections.abc import Callable
from typing import Any

import click

import edgeadapt.commands as pkg
from edgeadapt._version import __version__
from edgeadapt.commands.group import CommandGroup, as_flag, usage_error
from edgeadapt.errors import EdgeadaptError, InputError, UserCodeError
from edgeadapt.formats.atomic import Terminated, signals_as_exceptions
from edgeadapt.formats.identity import UncheckedWarning


def _discover() -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for cmd in getattr(module, "COMMANDS", ()):
            if cmd.name in found:
                raise RuntimeError(f"command {cmd.name!r} is defined twice")
            found[cmd.name] = cmd
    return found


def _notes(show: Callable[..., None]) -> Callable[..., None]:
    """A `warnings.showwarning` that prints each distinct `UncheckedWarning` once as a
    ``note:`` line on stderr and hands other warnings to `show`."""
    shown: set[str] = set()

    def note(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
        if not issubclass(category, UncheckedWarning):
            show(message, category, *args, **kwargs)
        elif str(message) not in shown:
            shown.add(str(message))
            click.echo(f"note: {message}", err=True)

    return note


class _Group(CommandGroup):
    """Lists the discovered commands; turns click's usage errors, EdgeadaptError and
    OSError into a one-line error, exit 2, SIGTERM into an exception that writers clean up
    after (exit 143), and a file that cannot be checked to be of its bundle
    (`UncheckedWarning`) into one note."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_discover())

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _discover().get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UncheckedWarning)
            warnings.showwarning = _notes(warnings.showwarning)
            try:
                with signals_as_exceptions():  # SIGTERM: writers clean up, as on SIGINT
                    return self._invoke(ctx)
            except Terminated as e:
                click.echo(f"error: {e}; no file was left half-written", err=True)
                ctx.exit(128 + e.signum)

    def _invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:  # a missing option, a value its type refuses
            click.echo(f"error: {usage_error(e)}", err=True)
            ctx.exit(2)
        except InputError as e:
            click.echo(f"error: {as_flag(e, ctx)}", err=True)
            ctx.exit(2)
        except EdgeadaptError as e:
            if isinstance(e, UserCodeError):  # the user's own traceback, once, then ours
                click.echo(e.user_traceback, err=True, nl=False)
            click.echo(f"error: {e}", err=True)
            ctx.exit(2)
        except ValueError as e:  # click's Path type stats the value: os.stat refuses NUL
            if "null byte" not in str(e):
                raise
            click.echo("error: a path must not contain a NUL byte", err=True)
            ctx.exit(2)
        except OSError as e:  # a full disk, a read-only folder: what failed, not a traceback
            where = f"{e.filename}: " if e.filename else ""
            click.echo(f"error: {where}{e.strerror or e}", err=True)
            ctx.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeadapt")
def cli() -> None:
    """edgeadapt: adaptive inference for the edge.

    Export a model into states of rising cost (a bundle), measure what each state
    costs on this device (profile), score every state on labelled data (evaluate),
    compute how much any adaptive policy could save (bound, subset), pick states and
    thresholds (plan), run the result under a latency budget (run) and see it all
    (report).

    Try `edgeadapt demo`: the whole pipeline on MNIST-1D, on this machine.
    Every command has --help; most take --json.
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="edgeadapt", standalone_mode=True)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
