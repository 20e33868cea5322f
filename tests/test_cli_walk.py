"""Every command of the CLI, found by walking the click tree (a new command is covered
without touching this file), is invoked with each required parameter missing and with
each parameter given bad values of its type; each invocation must end in exit code 2
with one ``error:`` line naming the parameter, never a traceback.

Values are checked while click parses them (`edgeadapt.commands.options`), so the other
parameters only need placeholders of the right kind: nothing runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from edgeadapt.cli import cli
from edgeadapt.commands.options import (
    BundleOrModel,
    Bytes,
    DataSource,
    FiniteFloat,
    InputDir,
    InputFile,
    OutputPath,
    RayAddress,
    RecipeType,
)

#: Text parameters checked while parsing, with values each must refuse.
BAD_TEXT: dict[str, list[str]] = {
    "thresholds": ["abc", "0.5,", "nan", "0.5,inf", "1e309", ""],
    "device": ["no-such-preset", "missing.json"],
    "batch": ["0", "1,1", "x", "70000", ""],
    "heads": ["no-equals-sign", "=out", "cut="],
    "sources": ["{missing}", "{fifo}", "{folder}", "name={fifo}", "a\0b"],
    "mean": ["x", "0.5,", "nan", "", "1,2"],
    "std": ["x", "0", "0.5,inf", "1,2,-3"],
}
#: Text parameters whose values only the model or the runtime can judge (tensor and node
#: names, state names, a Python factory, a runtime's precision): the commands' own tests
#: cover their errors.
FREE_TEXT = {
    "cuts", "logits", "mask", "names", "blocks", "keep", "factory", "precision", "reference",
}  # fmt: skip


def _commands(group: click.Group = cli, path: tuple[str, ...] = ()) -> Iterator[tuple]:
    ctx = click.Context(group, **cli.context_settings)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


COMMANDS = list(_commands())
PARAMS = [
    (path, p)
    for path, cmd in COMMANDS
    for p in cmd.params
    if not (isinstance(p, click.Option) and (p.is_flag or p.name == "help"))
]
REQUIRED = [(path, p) for path, p in PARAMS if p.required]


def _id(item: tuple) -> str:
    path, param = item
    return " ".join(path) + ":" + (param.name or "?")


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A regular file, a folder, a FIFO and a missing path."""
    root = tmp_path_factory.mktemp("walk")
    (root / "file.npz").write_bytes(b"placeholder")
    (root / "folder").mkdir()
    os.mkfifo(root / "fifo")
    return {
        "file": str(root / "file.npz"),
        "folder": str(root / "folder"),
        "fifo": str(root / "fifo"),
        "missing": str(root / "missing.npz"),
        "out": str(root / "out" / "new"),
    }


def _good(param: click.Parameter, places: dict[str, str]) -> str:
    """A value the parameter's type accepts."""
    t = param.type
    if isinstance(t, (InputFile, DataSource)):
        return places["file"]
    if isinstance(t, RecipeType):
        return "imagenet"
    if isinstance(t, (InputDir, BundleOrModel)):
        return places["folder"]
    if isinstance(t, OutputPath):
        return places["out"]
    if isinstance(t, click.Choice):
        return str(t.choices[0])
    if isinstance(t, click.IntRange):
        return str(max(1, t.min or 0))
    if isinstance(t, click.FloatRange):
        return str(0.5 if t.max is None else (t.min + t.max) / 2)
    if param.name == "heads":
        return "a=b"
    if param.name == "sources":
        return places["file"]
    return "1"


def _bad(param: click.Parameter, places: dict[str, str]) -> list[str]:
    """Values the parameter must refuse, by its type."""
    t = param.type
    if isinstance(t, InputFile):
        return [places["fifo"], places["folder"], places["missing"], "a\0b"]
    if isinstance(t, DataSource):  # a folder is images
        return [places["fifo"], places["missing"], "a\0b", places["missing"] + ".py:f"]
    if isinstance(t, RecipeType):
        return ["no-such-preset", places["missing"], places["fifo"], "missing.json"]
    if isinstance(t, InputDir):
        return [places["file"], places["fifo"], places["missing"], "a\0b"]
    if isinstance(t, BundleOrModel):
        return [places["fifo"], places["missing"], "a\0b"]
    if isinstance(t, OutputPath):
        return [places["fifo"], places["file" if t.folder else "folder"], "a\0b"]
    if isinstance(t, click.Choice):
        return ["no-such-choice"]
    if isinstance(t, click.IntRange):
        return ["-5", str(10**30), "nan", "1.5"]
    if isinstance(t, FiniteFloat):
        high = [] if t.max is None else [str(2 * t.max + 1)]
        return ["nan", "inf", "-inf", "1e309", "-5", *high]
    if isinstance(t, Bytes):
        return ["0", "-1MiB", "lots", "2PiB", "nan", "1e3GB"]
    if isinstance(t, RayAddress):
        return ["host", "host:0", "host:65536", ":6379", "ray://host", "host:x"]
    assert t == click.STRING, f"{param.name}: declare its type in edgeadapt.commands.options"
    assert param.name in BAD_TEXT, f"{param.name}: add its bad values to BAD_TEXT or FREE_TEXT"
    return [v.format(**places) for v in BAD_TEXT[param.name]]


def _args(
    cmd: click.Command, places: dict[str, str], skip: click.Parameter
) -> tuple[list[str], list[str]]:
    """(positional arguments, options) giving every required parameter but `skip`."""
    positional, options = [], []
    for p in cmd.params:
        if p is skip or not p.required:
            continue
        if isinstance(p, click.Argument):
            positional.append(_good(p, places))
        else:
            options += [max(p.opts, key=len), _good(p, places)]
    return positional, options


def _invoke(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(cli, args)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{args}: traceback\n{result.output}"
    )
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def _one_error(output: str) -> str:
    lines = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, output
    return lines[0]


def test_the_walk_finds_every_command():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"export onnx", "export branches", "evaluate", "run", "plan", "subset"} <= names
    assert len(PARAMS) > 50


@pytest.mark.parametrize("item", REQUIRED, ids=_id)
def test_a_missing_required_parameter_is_one_error(item, places):
    path, param = item
    cmd = next(c for p, c in COMMANDS if p == path)
    positional, options = _args(cmd, places, param)
    code, output = _invoke([*path, *options, *positional])
    assert code == 2, output
    line = _one_error(output)
    assert "Missing" in line, line
    spelled = param.opts if isinstance(param, click.Option) else [param.human_readable_name]
    assert any(s in line for s in spelled), line


def test_free_text_names_real_parameters():
    """FREE_TEXT (left out of the walk below) holds only parameters the CLI has."""
    assert {p.name for _, p in PARAMS} >= FREE_TEXT


@pytest.mark.parametrize("item", [i for i in PARAMS if i[1].name not in FREE_TEXT], ids=_id)
def test_every_bad_value_is_one_error_naming_the_parameter(item, places):
    path, param = item
    cmd = next(c for p, c in COMMANDS if p == path)
    for bad in _bad(param, places):
        positional, options = _args(cmd, places, param)
        if isinstance(param, click.Argument):
            args = [*path, *options, *positional, bad]
        else:
            args = [*path, max(param.opts, key=len), bad, *options, *positional]
        code, output = _invoke(args)
        assert code == 2, f"{args}: exit {code}\n{output}"
        line = _one_error(output)
        spelled = param.opts if isinstance(param, click.Option) else [param.human_readable_name]
        assert any(s in line for s in spelled), f"{args}: {line}"


def test_numbers_are_bounded_and_finite():
    """Every number option has a range (click's would let NaN, inf or 10^30 through)."""
    for path, param in PARAMS:
        t = param.type
        assert t not in (click.INT, click.FLOAT), f"{' '.join(path)} {param.name}: unbounded"
        if isinstance(t, click.FloatRange):
            assert isinstance(t, FiniteFloat), f"{' '.join(path)} {param.name}: NaN passes"
        if isinstance(t, click.IntRange):
            assert t.max is not None, f"{' '.join(path)} {param.name}: unbounded"


def test_plan_refuses_a_negative_seed(tmp_path):
    code, output = _invoke(["plan", str(tmp_path), "--seed", "-5"])
    assert code == 2
    assert "--seed" in _one_error(output)


def test_paths_that_are_not_files_are_refused_before_they_are_opened(places):
    """A FIFO given as --whole would block profile forever when opened."""
    code, output = _invoke(["profile", places["folder"], "--whole", places["fifo"]])
    assert code == 2
    assert "not a regular file" in _one_error(output)


def test_help_of_every_command_runs():
    for cmd_path, _ in COMMANDS:
        code, output = _invoke([*cmd_path, "--help"])
        assert code == 0, output
        assert "Usage:" in output
