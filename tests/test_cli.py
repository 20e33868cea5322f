"""The CLI shell: version, help, and the one-line error contract."""

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


def test_unknown_command_exits_2():
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2
