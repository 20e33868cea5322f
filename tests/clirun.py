"""The edgeadapt CLI run in-process for the command tests."""

from __future__ import annotations

from click.testing import CliRunner, Result

from edgeadapt.cli import cli


def invoke(*args: object) -> Result:
    """``edgeadapt ARGS...`` through click's CliRunner (each argument ``str()``-ed), its
    exit code and output kept for the test to check."""
    return CliRunner().invoke(cli, [str(a) for a in args])
