"""docs/cli.md is the CLI's own --help, rendered: regenerate it when a command changes."""

import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"


def _render(cwd: Path) -> str:
    # In a fresh process: click fixes a command's help option names the first time any
    # context asks, so a test that built a bare context earlier could change the text.
    # Not from the checkout's folder, whose `edgeadapt/` would shadow the installed one.
    done = subprocess.run(
        [sys.executable, "-m", "edgeadapt.clidoc"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout


def test_the_cli_reference_is_current(tmp_path):
    assert DOC.read_text(encoding="utf-8") == _render(tmp_path), (
        "docs/cli.md is stale: run `python -m edgeadapt.clidoc > docs/cli.md`"
    )


def test_every_command_is_in_the_reference(tmp_path):
    text = _render(tmp_path)
    for name in ("demo", "export onnx", "export branches", "profile", "plan", "run", "bound"):
        assert f"## `edgeadapt {name}`" in text
    assert "-h, --help" in text
