"""docs/cli.md is the CLI's own --help, rendered: regenerate it when a command changes."""

from pathlib import Path

from edgeadapt.clidoc import render

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def test_the_cli_reference_is_current():
    assert DOC.read_text(encoding="utf-8") == render(), (
        "docs/cli.md is stale: run `python -m edgeadapt.clidoc > docs/cli.md`"
    )


def test_every_command_is_in_the_reference():
    text = render()
    for name in ("demo", "export onnx", "export branches", "profile", "plan", "run", "bound"):
        assert f"## `edgeadapt {name}`" in text
