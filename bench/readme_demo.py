"""Measure the README's demo excerpt and plot anew on this machine, and write them in.

Runs the main job (`edgeadapt.demo.run_demo`, every artefact rebuilt: ``--force``), then
replaces the block between ``<!-- demo:begin -->`` and ``<!-- demo:end -->`` in
README.md with what it printed for the lead bundle (whole), the other bundles' plan and
run lines, and a summary of the figures, and copies the lead bundle's accuracy-cost plot
to docs/demo-accuracy-cost.png. Prints the new block. ``--check`` writes nothing.

    python bench/readme_demo.py [--out DIR] [--check]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from edgeadapt.commands.demo import CliUI, heading, render_bundle
from edgeadapt.demo import DEFAULT_OUT, BundleResult, DemoResult, run_demo
from edgeadapt.render import pct, ratio

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PLOT = ROOT / "docs" / "demo-accuracy-cost.png"
BLOCK = re.compile(r"(<!-- demo:begin -->\n).*?(<!-- demo:end -->)", re.DOTALL)


def short(b: BundleResult) -> str:
    """A bundle's heading, plan and run lines: what the excerpt keeps of the others."""
    keep = ("== ", "plan: keep", "  expected cost", "  speedup", "  (one state kept")
    lines = render_bundle(b).splitlines()
    return "\n".join(line for line in lines if line.startswith(keep))


def summary(result: DemoResult, load: str) -> str:
    """The excerpt's figures in one paragraph; `load` says how busy the machine was."""
    lead, *others = result.bundles
    plan, run = lead.plan.plan, lead.run
    said = [
        f"On this machine the plan for {lead.name} keeps {', '.join(plan.state_names)} "
        f"and runs {ratio(run.speedup)} faster than the static model, measured at batch 1 "
        f"on the {run.samples} test samples ({ratio(run.predicted_speedup)} predicted by "
        f"the profile), at an accuracy drop of {100 * run.drop:.2f} points; it closes "
        f"{pct(run.gap_closure)} of the gap to the oracle on the test split.",
    ]
    for b in others:
        if b.plan.plan.keeps_static:
            r = b.run
            said.append(
                f"For {b.name} the plan is the static model, run as one plain model behind "
                f"one native call: p50 {1000 * r.p50_ms:.1f} us against the bare model's "
                f"{1000 * r.static_p50_ms:.1f} us (the means of calls this short follow the "
                f"machine's noise: {ratio(r.speedup)})."
            )
        else:
            said.append(
                f"For {b.name} the plan keeps {', '.join(b.plan.plan.state_names)} "
                f"({ratio(b.run.speedup)} measured)."
            )
    return " ".join(said) + f" The whole demo took {result.seconds:.0f} s ({load})."


def block(result: DemoResult, load: str) -> str:
    """The README's demo block: the excerpt (the demo's files shown under its default
    directory), the plot and the summary."""
    lead, *others = result.bundles
    printed = "\n\n".join(
        [f"$ edgeadapt demo\n{heading(result)}", render_bundle(lead), *(short(b) for b in others)]
    ).replace(str(result.out), str(DEFAULT_OUT))
    return (
        f"Output on this machine (excerpt; `python bench/readme_demo.py` measures it anew "
        f"and writes it here):\n\n```\n{printed}\n```\n\n"
        f"![Accuracy against measured cost of {lead.name}: the states, the bounds with the "
        "opportunity area, the exact oracle, the threshold sweep, the plan and the static "
        f"model](docs/demo-accuracy-cost.png)\n\n{summary(result, load)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="the demo's directory (default: temp)")
    ap.add_argument("--check", action="store_true", help="print the block, write nothing")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="edgeadapt-readme-") as tmp:
        out = args.out or Path(tmp)
        before = os.getloadavg()[0]
        result = run_demo(out, force=True, ui=CliUI(show=True))
        load = f"load average {before:.1f} before, {os.getloadavg()[0]:.1f} after"
        text = block(result, load)
        print(text)
        if args.check:
            return 0
        readme = README.read_text()
        if not BLOCK.search(readme):
            print(f"error: {README}: no <!-- demo:begin --> ... <!-- demo:end --> block")
            return 2
        README.write_text(BLOCK.sub(lambda m: m[1] + text + m[2], readme))
        shutil.copyfile(result.bundles[0].report.with_name("report-accuracy-cost.png"), PLOT)
    print(f"wrote {README} and {PLOT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
