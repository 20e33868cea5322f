"""The options every command spells the same way, declared once.

``-o/--output`` is where a command writes its file or folder, ``--json`` prints one JSON
object on stdout instead of text, ``--runtime`` and ``--threads`` choose the backend and
its threads. A command states its own help for ``--output`` (what is written, where by
default) and for the files it reads (``file_option``: ``--profile``, ``--evaluation``,
``--plan``, ``--input`` ..., one path type everywhere); the rest read the same in every
``--help``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgeadapt.errors import EdgeadaptError
from edgeadapt.formats.jsonio import dumps

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "batch_option",
    "echo_json",
    "echo_note",
    "file_option",
    "json_option",
    "output_option",
    "runtime_option",
    "threads_option",
]


def output_option(help: str, *, dir_okay: bool = False, required: bool = False) -> Callable[[F], F]:
    """``-o/--output PATH`` (parameter ``output``, a `Path`)."""
    return click.option(
        "-o",
        "--output",
        "output",
        type=click.Path(dir_okay=dir_okay, file_okay=not dir_okay, path_type=Path),
        required=required,
        help=help,
    )


def file_option(
    flag: str,
    help: str,
    *,
    param: str | None = None,
    required: bool = False,
    exists: bool = False,
) -> Callable[[F], F]:
    """``FLAG PATH``, a file the command reads (a `Path`; parameter `param`, by default
    the flag's name). With `exists`, click refuses a missing file before the command runs;
    without it, the library names the missing file in its own error."""
    names = [flag] if param is None else [flag, param]
    return click.option(
        *names,
        type=click.Path(dir_okay=False, exists=exists, path_type=Path),
        required=required,
        default=None,
        help=help,
    )


def batch_option(help: str, *, most: int | None = None) -> Callable[[F], F]:
    """``--batch N`` (1 <= N <= `most`, default 256): rows per runtime call."""
    return click.option(
        "--batch",
        type=click.IntRange(min=1, max=most),
        default=256,
        show_default=True,
        help=help,
    )


def json_option(help: str = "Print one JSON object instead of text.") -> Callable[[F], F]:
    """``--json`` (parameter ``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def runtime_option(
    default: str | None = "onnxruntime", help: str | None = None
) -> Callable[[F], F]:
    """``--runtime NAME``: onnxruntime, openvino or tensorrt."""
    return click.option(
        "--runtime",
        default=default,
        show_default=default is not None,
        help=help or "Backend: onnxruntime, openvino or tensorrt.",
    )


def threads_option(default: int | None = None, help: str | None = None) -> Callable[[F], F]:
    """``--threads N`` (N >= 1)."""
    return click.option(
        "--threads",
        type=click.IntRange(min=1),
        default=default,
        show_default=default is not None,
        help=help or "Threads the runtime may use.",
    )


def echo_note(note: str | None) -> None:
    """Print `note` (e.g. that the runtime differs from the one a profile or plan was
    measured under) as ``note: ...`` on stderr, so that ``--json`` output stays one object;
    nothing when it is None."""
    if note is not None:
        click.echo(f"note: {note}", err=True)


def echo_json(doc: Any, what: str = "the result") -> None:
    """Print `doc` as strict JSON. A NaN or infinity is refused with a one-line error
    naming where it is (exit 2), never printed as ``NaN``, which JSON readers reject."""
    found = _non_finite(doc)
    if found is not None:
        where, value = found
        raise EdgeadaptError(
            f"cannot print {what} as JSON: {where} is {value}, not a finite number"
        )
    click.echo(dumps(doc), nl=False)


def _non_finite(doc: Any, where: str = "$") -> tuple[str, float] | None:
    """(JSON path, value) of the first NaN or infinity in `doc`, or None."""
    if isinstance(doc, float) and not math.isfinite(doc):
        return where, doc
    if isinstance(doc, dict):
        items: Any = ((f"{where}.{k}", v) for k, v in doc.items())
    elif isinstance(doc, list | tuple):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(doc))
    else:
        return None
    for path, value in items:
        found = _non_finite(value, path)
        if found is not None:
            return found
    return None
