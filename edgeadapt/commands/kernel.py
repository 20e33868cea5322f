"""`edgeadapt cmake-dir`: where the installed kernel's CMake package lives."""

from __future__ import annotations

from pathlib import Path

import click

from edgeadapt.errors import EdgeadaptError


def cmake_dir() -> Path:
    """Directory holding edgeadaptConfig.cmake (pass it as -Dedgeadapt_DIR=...).

    The wheel installs include/, lib/ and share/cmake/edgeadapt/ next to the compiled
    module, so the module's location finds them in regular and editable installs alike.
    """
    from edgeadapt import _kernel

    path = Path(_kernel.__file__).resolve().parent / "share" / "cmake" / "edgeadapt"
    if not (path / "edgeadaptConfig.cmake").is_file():
        raise EdgeadaptError(f"no edgeadaptConfig.cmake under {path}: reinstall edgeadapt")
    return path


@click.command("cmake-dir")
def cmake_dir_command() -> None:
    """Print the directory to pass to CMake as edgeadapt_DIR (find_package(edgeadapt))."""
    click.echo(str(cmake_dir()))


COMMANDS = [cmake_dir_command]
