"""`edgeadapt cmake-dir`: where the installed kernel's CMake package lives."""

from __future__ import annotations

import click

from edgeadapt.kernel import cmake_dir


@click.command("cmake-dir")
def cmake_dir_command() -> None:
    """Print the directory to pass to CMake as edgeadapt_DIR (find_package(edgeadapt))."""
    click.echo(str(cmake_dir()))


COMMANDS = [cmake_dir_command]
