"""The CLI shell: version, help, and the one-line error contract."""

import subprocess
import sys

from click.testing import CliRunner

from edgeadapt import __version__
from edgeadapt.cli import cli


def test_version_matches_package_and_kernel():
    from edgeadapt import _kernel

    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output
    assert _kernel.version() == __version__


def test_help_lists_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    assert "adaptive inference" in result.output


#: what `edgeadapt --help` must not import: the optional packages, and the pipeline
#: modules the command modules import lazily to keep it fast (their module docstrings)
NOT_AT_HELP = (
    "torch",
    "torchvision",
    "transformers",
    "onnxruntime",
    "openvino",
    "tensorrt",
    "ray",
    "PIL",
    "matplotlib",
    "mnist1d",
    "onnxscript",
    "timm",
    "edgeadapt.cascade.run",
    "edgeadapt.data.sources",
    "edgeadapt.demo",
    "edgeadapt.exporters.onnx",
    "edgeadapt.measure.evaluate",
    "edgeadapt.measure.profiler",
    "edgeadapt.report",
)


def test_help_imports_no_optional_package_or_lazy_pipeline_module(tmp_path):
    code = (
        "import sys\n"
        "from edgeadapt.cli import main\n"
        "try:\n    main(['--help'])\n"
        "except SystemExit:\n    pass\n"
        f"print(sorted(m for m in {NOT_AT_HELP!r} if m in sys.modules), file=sys.stderr)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path
    )
    assert "adaptive inference" in out.stdout
    assert out.stderr.strip() == "[]"


def test_unknown_command_exits_2():
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2


def test_input_errors_keep_their_parts_when_renamed():
    from edgeadapt.errors import InputError

    e = InputError("too big", source="batch", field="$.x").renamed("--batch")
    assert str(e) == "--batch: $.x: too big"
    assert (e.message, e.source, e.field) == ("too big", "--batch", "$.x")


def test_json_output_refuses_non_finite_numbers_by_path():
    import click
    import pytest

    from edgeadapt.commands.options import echo_json
    from edgeadapt.errors import EdgeadaptError

    @click.command()
    def show() -> None:
        echo_json({"ok": 1.0, "rows": [{"cost": float("nan")}]}, what="the rows")

    result = CliRunner().invoke(show)
    assert isinstance(result.exception, EdgeadaptError)
    assert "cannot print the rows as JSON: $.rows[0].cost is nan" in str(result.exception)
    assert result.output == ""
    with pytest.raises(EdgeadaptError, match=r"\$\.x is inf"):
        echo_json({"x": float("inf")})
