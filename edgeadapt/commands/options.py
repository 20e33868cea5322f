"""The options every command spells the same way, and the one parameter layer they share.

``-o/--output`` is where a command writes its file or folder, ``--json`` prints one JSON
object on stdout instead of text, ``--runtime`` and ``--threads`` choose the backend and
its threads, ``--batch`` and ``--memory`` the rows per runtime call or the memory budget
they are chosen from. A command states its own help for ``--output`` (what is written, where by
default) and for the files it reads (``file_option``: ``--profile``, ``--evaluation``,
``--plan``, ``--input`` ..., one path type everywhere); the rest read the same in every
``--help``.

Every value is checked while click parses it, before a command runs, so that a bad one
is click's usage error (exit 2) and never a traceback: a file read must be a regular file
(`INPUT_FILE`, the check of `edgeadapt.formats.jsonio.check_regular`: a FIFO would block
on open), a bundle an existing folder (`BUNDLE_DIR`), an output no FIFO, device or
folder where a file goes (`output_path`); integers lie in stated ranges (`integer`,
at most `INT_MAX`), floats are finite (`number`); a required option has no default
(click's own ``required`` then holds).

`edgeadapt.data.sources`, `edgeadapt.data.images` and `edgeadapt.raytasks` are
imported where they are used: at the top they would add about 25 ms to
`edgeadapt --help`, which imports every command module.
"""

from __future__ import annotations

import functools
import math
import os
import stat
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from edgeadapt.data.budget import (
    DEFAULT_MEMORY,
    MAX_AUTO_BATCH,
    MAX_BATCH,
    format_bytes,
    parse_bytes,
)
from edgeadapt.errors import EdgeadaptError, InputError
from edgeadapt.formats.atomic import check_path
from edgeadapt.formats.bundle import MANIFEST
from edgeadapt.formats.jsonio import check_regular, dumps
from edgeadapt.formats.presets import MAX_THREADS, MAX_WORKERS
from edgeadapt.runtimes import runtime_names

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "BUNDLE_DIR",
    "BUNDLE_OR_MODEL",
    "DATA_SOURCE",
    "INPUT_FILE",
    "INT_MAX",
    "RECIPE",
    "Bytes",
    "RayAddress",
    "batch_option",
    "bundle_argument",
    "data_option",
    "echo_json",
    "echo_note",
    "file_option",
    "integer",
    "json_option",
    "memory_option",
    "number",
    "output_option",
    "output_path",
    "ray_option",
    "recipe_options",
    "runtime_option",
    "seed_option",
    "threads_option",
    "workers_option",
]

#: The largest integer an option takes unless it states a smaller bound (int32's).
INT_MAX = 2**31 - 1


class InputFile(click.ParamType):
    """A file the command reads: present, regular (not a FIFO, device or folder), its
    path without a NUL byte; converted to a `Path`."""

    name = "file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        try:
            return check_regular(value)
        except InputError as e:
            self.fail(f"{os.fspath(value)!r}: {e.message}", param, ctx)


class InputDir(click.ParamType):
    """A bundle the command reads: its folder (or its ``manifest.json``, as `load_bundle`
    takes it), present; converted to a `Path`."""

    name = "directory"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        try:
            path = check_path(value)
        except InputError as e:
            self.fail(e.message, param, ctx)
        if not path.is_dir() and not (path.name == MANIFEST and path.is_file()):
            why = "no such bundle directory" if not path.exists() else "not a bundle directory"
            self.fail(f"{os.fspath(value)!r}: {why}", param, ctx)
        return path


class BundleOrModel(click.ParamType):
    """A bundle folder (as `InputDir` takes it) or, for the commands that also read one,
    an ONNX model file (as `InputFile` takes it)."""

    name = "path"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        try:
            path = check_path(value)
        except InputError as e:
            self.fail(e.message, param, ctx)
        if not path.exists():
            self.fail(f"{os.fspath(value)!r}: no such bundle directory or model file", param, ctx)
        if path.is_dir() or path.name == MANIFEST:
            return BUNDLE_DIR.convert(value, param, ctx)
        return INPUT_FILE.convert(value, param, ctx)


class OutputPath(click.ParamType):
    """Where a command writes a file (or with `folder`, a folder): its path without a NUL
    byte and, when something is there already, the same kind of thing (a regular file, or
    a folder), never a FIFO or a device that a write would replace."""

    def __init__(self, folder: bool = False) -> None:
        self.folder = folder
        self.name = "directory" if folder else "file"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Path:
        try:
            path = check_path(value)
        except InputError as e:
            self.fail(e.message, param, ctx)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return path
        except OSError as e:
            self.fail(f"{os.fspath(value)!r}: {e.strerror or e}", param, ctx)
        ok = stat.S_ISDIR(mode) if self.folder else stat.S_ISREG(mode)
        if not ok:
            want = "a folder" if self.folder else "a regular file"
            self.fail(f"{os.fspath(value)!r} exists and is not {want}", param, ctx)
        return path


class FiniteFloat(click.FloatRange):
    """A float in a range that is also finite: click's range lets NaN through."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        got = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(got):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return super().convert(got, param, ctx)


#: A file read (see `InputFile`).
class DataSource(click.ParamType):
    """Data a command reads (`edgeadapt.data.sources`): an .npz/.npy or a CSV list (a
    regular file), a folder of images, or a loader script ``FILE.py[:FUNCTION]``; checked
    to exist (`check_source`), converted to a `Path` (a script: the text given)."""

    name = "data"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> str | Path:
        from edgeadapt.data.sources import check_source

        try:
            return check_source(value)
        except InputError as e:
            self.fail(f"{os.fspath(value)!r}: {e.message}", param, ctx)


class RecipeType(click.ParamType):
    """An image preprocessing recipe: a preset's name or a JSON file
    (`edgeadapt.data.images.load_recipe`), read while parsing; converted to a `Recipe`."""

    name = "recipe"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from edgeadapt.data.images import Recipe, load_recipe

        if isinstance(value, Recipe):
            return value
        try:
            return load_recipe(value)
        except InputError as e:
            where = f"{e.source}: {e.field}: " if e.field else ""
            self.fail(f"{where}{e.message}", param, ctx)


INPUT_FILE = InputFile()
DATA_SOURCE = DataSource()
RECIPE = RecipeType()
#: A bundle folder or an ONNX model read (see `BundleOrModel`).
BUNDLE_OR_MODEL = BundleOrModel()
#: A bundle folder read (see `InputDir`).
BUNDLE_DIR = InputDir()


def output_path(folder: bool = False) -> OutputPath:
    """The type of a path a command writes (see `OutputPath`)."""
    return OutputPath(folder)


def integer(minimum: int = 0, maximum: int = INT_MAX) -> click.IntRange:
    """An integer in ``minimum..maximum``."""
    return click.IntRange(min=minimum, max=maximum)


def number(
    minimum: float = 0.0,
    maximum: float | None = None,
    *,
    min_open: bool = False,
    max_open: bool = False,
) -> FiniteFloat:
    """A finite float in the range (open or closed at each end)."""
    return FiniteFloat(min=minimum, max=maximum, min_open=min_open, max_open=max_open)


def bundle_argument(name: str = "bundle", **kwargs: Any) -> Callable[[F], F]:
    """``BUNDLE``: the bundle folder a command reads (parameter `name`)."""
    kwargs.setdefault("metavar", "BUNDLE" if kwargs.get("required", True) else "[BUNDLE]")
    return click.argument(name, type=BUNDLE_DIR, **kwargs)


class _Option(click.Option):
    """An option some of whose spellings (`hidden_opts`, older names) still work but are
    left out of ``--help`` and of error messages."""

    def __init__(self, *args: Any, hidden_opts: tuple[str, ...] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hidden_opts = hidden_opts

    def _shown(self) -> list[str]:
        return [o for o in self.opts if o not in self.hidden_opts]

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        every, self.opts = self.opts, self._shown()
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts = every

    def get_error_hint(self, ctx: click.Context | None) -> str:
        return " / ".join(f"'{o}'" for o in self._shown())


def output_option(
    help: str,
    *,
    dir_okay: bool = False,
    required: bool = False,
    default: Path | None = None,
    old_spelling: str | None = None,
) -> Callable[[F], F]:
    """``-o/--output PATH`` (parameter ``output``, a `Path`; `old_spelling`, e.g.
    ``--out``, works too but is not shown)."""
    hidden = () if old_spelling is None else (old_spelling,)
    return click.option(
        "-o",
        "--output",
        *hidden,
        "output",
        cls=_Option,
        hidden_opts=hidden,
        type=output_path(dir_okay),
        required=required,
        help=help,
        **({} if default is None else {"default": default, "show_default": True}),
    )


def file_option(
    flag: str, help: str, *, param: str | None = None, required: bool = False
) -> Callable[[F], F]:
    """``FLAG FILE``, a file the command reads (`INPUT_FILE`; parameter `param`, by
    default the flag's name). It has no default value, so that click enforces
    `required` (an explicit ``default=None`` satisfies click's check)."""
    names = [flag] if param is None else [flag, param]
    return click.option(*names, type=INPUT_FILE, required=required, help=help)


def data_option(
    flag: str, help: str, *, param: str | None = None, required: bool = False
) -> Callable[[F], F]:
    """``FLAG DATA``, data the command reads (`DATA_SOURCE`): `help` says what it holds;
    the sources every data option takes are added to it."""
    names = [flag] if param is None else [flag, param]
    return click.option(
        *names,
        type=DATA_SOURCE,
        metavar="DATA",
        required=required,
        help=f"{help} Also a loader script FILE.py[:FUNCTION] (default function load_data), "
        "a folder of images in class subfolders or a CSV of path,label lines (see --recipe).",
    )


def _floats(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[float, ...] | None:
    """``0.485,0.456,0.406``: 1 or 3 finite numbers, comma-separated (``--std``: each > 0)."""
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
    if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
        raise click.BadParameter(f"expected 1 or 3 finite numbers, got {value!r}")
    if param.name == "std" and min(values) <= 0:
        raise click.BadParameter(f"expected numbers > 0, got {value!r}")
    return values


def recipe_options() -> Callable[[F], F]:
    """``--recipe``, ``--resize``, ``--crop``, ``--mean``, ``--std``, ``--layout``: how
    images become the model's input (`edgeadapt.data.images.Recipe`), handed to the
    command as one parameter ``recipe`` (a `Recipe`, or None when none is given)."""
    side = integer(1, 65_536)
    decorators = [
        click.option(
            "--recipe",
            type=RECIPE,
            metavar="PRESET|FILE.json",
            help="Images: the preprocessing, a preset (imagenet: resize 256, crop 224, "
            "ImageNet mean and std, NCHW) or a JSON file of the fields below; the options "
            "below change it. [no resize, crop to the input, mean 0, std 1, NCHW]",
        ),
        click.option("--resize", type=side, help="Images: resize the shorter side to this."),
        click.option(
            "--crop", type=side, help="Images: centre crop side (the model input's size)."
        ),
        click.option(
            "--mean",
            callback=_floats,
            metavar="M[,M,M]",
            help="Images: per-channel mean, subtracted from pixels scaled to [0, 1].",
        ),
        click.option("--std", callback=_floats, metavar="S[,S,S]", help="Images: per-channel std."),
        click.option(
            "--layout", type=click.Choice(["NCHW", "NHWC"]), help="Images: the input's layout."
        ),
    ]

    def apply(f: F) -> F:
        @functools.wraps(f)
        def command(*args: Any, **kwargs: Any) -> Any:
            from edgeadapt.data.images import make_recipe

            fields = {k: kwargs.pop(k) for k in ("resize", "crop", "mean", "std", "layout")}
            kwargs["recipe"] = make_recipe(kwargs.pop("recipe"), **fields)
            return f(*args, **kwargs)

        wrapped: Any = command
        for decorate in reversed(decorators):
            wrapped = decorate(wrapped)
        return wrapped

    return apply


def batch_option(help: str, *, flag: str = "--batch", param: str = "batch") -> Callable[[F], F]:
    """``--batch N`` (1 <= N <= `MAX_BATCH`): rows per runtime call; unset, the command
    chooses it from ``--memory`` (`memory_option`) and says what it chose."""
    return click.option(
        flag,
        param,
        type=integer(1, MAX_BATCH),
        default=None,
        help=f"{help} [the most --memory holds, at most {MAX_AUTO_BATCH}]",
    )


class Bytes(click.ParamType):
    """A size such as ``512MiB`` or ``2GB`` read by `parse_bytes`, as bytes."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_bytes(value)
        except InputError as e:
            self.fail(e.message, param, ctx)


def memory_option() -> Callable[[F], F]:
    """``--memory SIZE`` (parameter ``memory``, bytes): the budget the batch is chosen
    from (`edgeadapt.data.memory.choose_batch`)."""
    return click.option(
        "--memory",
        type=Bytes(),
        metavar="SIZE",
        default=None,
        help="Memory for one batch's inputs and activations (the weights come on top), "
        "e.g. 512MiB or 2GB: the batch is the most it holds by an estimate from the "
        f"model's tensor shapes, unless the batch is given. [{format_bytes(DEFAULT_MEMORY)}]",
    )


def seed_option(help: str) -> Callable[[F], F]:
    """``--seed N`` (0..2^32 - 1, default 0): a seed of numpy's generator."""
    return click.option(
        "--seed", type=integer(0, 2**32 - 1), default=0, show_default=True, help=help
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
        type=click.Choice(runtime_names()),
        default=default,
        show_default=default is not None,
        help=help or "Backend: onnxruntime, openvino or tensorrt.",
    )


def threads_option(default: int | None = None, help: str | None = None) -> Callable[[F], F]:
    """``--threads N`` (1 <= N <= `MAX_THREADS`)."""
    return click.option(
        "--threads",
        type=integer(1, MAX_THREADS),
        default=default,
        show_default=default is not None,
        help=help or "Threads the runtime may use.",
    )


def workers_option(help: str) -> Callable[[F], F]:
    """``--workers N`` (1 <= N <= `MAX_WORKERS`; parameter ``workers``, None unset):
    worker processes, or with `ray_option` Ray tasks."""
    return click.option("--workers", type=integer(1, MAX_WORKERS), default=None, help=help)


class RayAddress(click.ParamType):
    """A Ray cluster's address as ``--ray`` takes it (`edgeadapt.raytasks`:
    ``HOST:PORT``, ``ray://HOST:PORT``, ``auto``, or ``local``, given by ``--ray`` alone)."""

    name = "address"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        from edgeadapt.raytasks import check_address

        try:
            return check_address(value)
        except InputError as e:
            self.fail(e.message, param, ctx)


def ray_option(help: str) -> Callable[[F], F]:
    """``--ray [ADDRESS]`` (parameter ``ray``): run on the Ray cluster at ADDRESS, or
    alone on a local cluster (``local``); None unset."""
    return click.option(
        "--ray",
        type=RayAddress(),
        is_flag=False,
        flag_value="local",
        default=None,
        metavar="[ADDRESS]",
        help=help,
    )


def echo_note(note: str | Sequence[str] | None) -> None:
    """Print `note` (e.g. that the runtime differs from the one a profile or plan was
    measured under, or the batch chosen), or each of several, as ``note: ...`` on stderr,
    so that ``--json`` output stays one object; nothing when it is None."""
    for line in [note] if isinstance(note, str) else note or ():
        click.echo(f"note: {line}", err=True)


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
