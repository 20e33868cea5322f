"""A standard architecture through the whole edgeadapt pipeline, with the CLI commands.

    python examples/zoo_pipeline.py --model resnet18            # or mobilenet_v3_small,
    python examples/zoo_pipeline.py --model bert_small --tiny   # efficientnet_b0, vit_tiny

Builds the model from `edgeadapt.zoo` (torchvision/timm/Hugging Face layouts written in
torch.nn, **random weights**, BatchNorm statistics re-estimated on random data), exports
it to ONNX with torch, writes a synthetic calibration set and a synthetic test set, then
runs the commands a user types: `export onnx` with cuts and trained exit heads,
`inspect`, `profile`, `evaluate`, `bound`, `plan` and `run`. Each command is printed
before it runs.

The data are random inputs labelled with the whole model's own top-1 class (teacher
labels): accuracies read as agreement with the whole model, not as accuracy on any real
task, and with random weights the exits agree with it only loosely. A random transformer
often answers one class for every input; then the labels are uniformly random instead
(`--labels` chooses), and every state is at chance level. The point is the
pipeline and the measured costs, which do not depend on the weights. With a trained
model and real data the same commands apply unchanged (docs/bring-your-own-model.md).

Needs the `torch` extra. `--tiny` uses the reduced graphs of the tests (seconds);
full size takes a few minutes on a small CPU (mostly the calibration forward pass and
the profile).
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from edgeadapt import zoo


def _edgeadapt() -> list[str]:
    """The installed `edgeadapt` command. Not ``python -m edgeadapt``: that puts the current
    folder first on sys.path, so run from a source checkout it would import the checkout's
    `edgeadapt/` instead of the installed package (which also holds its data files)."""
    script = Path(sys.executable).with_name("edgeadapt")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "edgeadapt"]


def _cli(args: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Print `edgeadapt ARGS` as a user would type it, run it, echo its output."""
    print(f"\n$ edgeadapt {shlex.join(args)}", flush=True)
    done = subprocess.run([*_edgeadapt(), *args], text=True, capture_output=True, check=False)
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    if check and done.returncode != 0:
        raise SystemExit(f"`edgeadapt {args[0]}` failed (exit {done.returncode}); see above")
    return done


def _has_option(command: list[str], option: str) -> bool:
    """Whether `edgeadapt COMMAND --help` lists `option` (options newer than the install
    are left out rather than failing)."""
    done = subprocess.run(
        [*_edgeadapt(), *command, "--help"],
        text=True,
        capture_output=True,
        check=False,
    )
    return option in done.stdout


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    m = zoo.get(args.model, tiny=args.tiny)
    out = args.out or Path(f"zoo-{m.name}{'-tiny' if args.tiny else ''}")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    print(f"== {m.description}")
    print("random weights (not trained); BatchNorm statistics re-estimated on random data")
    source = _build(m, args.seed, out)
    _write_data(m, args, out, source)
    _commands(m, args, out, source)
    print(f"\ndone in {time.perf_counter() - start:.0f} s; files under {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=zoo.names(), default="resnet18")
    p.add_argument("--tiny", action="store_true", help="the reduced graph (seconds, not minutes)")
    p.add_argument("--out", type=Path, default=None, help="work directory [zoo-<model>]")
    p.add_argument("--calibration", type=int, default=512, help="calibration samples")
    p.add_argument("--test", type=int, default=1200, help="test samples (evaluate, plan, run)")
    p.add_argument(
        "--labels",
        choices=("auto", "teacher", "random"),
        default="auto",
        help="teacher: the whole model's top-1; random: uniform; auto: teacher unless the "
        "model answers a single class",
    )
    p.add_argument("--runtime", default="onnxruntime", help="backend to profile and run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    return p


def _build(m: zoo.ZooModel, seed: int, out: Path) -> Path:
    """The zoo model `m` built (random weights) and exported to ONNX under `out`."""
    t0 = time.perf_counter()
    net = zoo.build(m, seed=seed)
    source = zoo.export(m, net, out / "model.onnx")
    params = sum(p.numel() for p in net.parameters())
    print(
        f"built and exported {source} ({params:,} parameters) in {time.perf_counter() - t0:.1f} s"
    )
    inputs = ", ".join(
        f"{i.name} {i.dtype}[batch, {', '.join(map(str, i.shape))}]" for i in m.inputs
    )
    print(f"  inputs: {inputs}; output: {zoo.LOGITS} [batch, {m.num_classes}]")

    return source


def _write_data(m: zoo.ZooModel, args: argparse.Namespace, out: Path, source: Path) -> None:
    """The synthetic calibration and test sets under `out`, labelled as `args.labels`
    says (the whole model's own answers, or random classes)."""
    t0 = time.perf_counter()
    sets = {}
    for name, n, seed in (
        ("calib", args.calibration, args.seed + 100),
        ("test", args.test, args.seed + 200),
    ):
        data = zoo.random_inputs(m, n, seed=seed)
        sets[name] = (data, zoo.teacher_labels(source, data))
    labels = args.labels
    distinct = len(np.unique(sets["calib"][1]))
    if labels == "auto":
        # A randomly initialised transformer often answers one class for every input;
        # teacher labels then make every state 100% right and the plan trivial.
        labels = "teacher" if distinct >= 2 else "random"
    rng = np.random.default_rng(args.seed + 300)
    for name, (data, y) in sets.items():
        if labels == "random":
            y = rng.integers(0, m.num_classes, size=len(y))
        zoo.write_data(out / f"{name}.npz", data, y)
        if name == "test" and len(m.inputs) == 1:  # `run --input` also takes an array
            np.save(out / "test-x.npy", data[m.inputs[0].name])
    what = {
        "teacher": "the whole model's own top-1 class (accuracy = agreement with it)",
        "random": "uniformly random classes (accuracy is chance level for every state)",
    }[labels]
    print(
        f"synthetic data: {out / 'calib.npz'} ({args.calibration}), {out / 'test.npz'} "
        f"({args.test}), written in {time.perf_counter() - t0:.1f} s; labels: {what}"
    )
    if args.labels == "auto" and labels == "random":
        print(f"  (the whole model answers {distinct} class(es) on the calibration inputs)")


def _commands(m: zoo.ZooModel, args: argparse.Namespace, out: Path, source: Path) -> None:
    """Every edgeadapt command of the pipeline on the exported model, as printed."""
    cuts = zoo.cut_tensors(source, m.cuts)
    print("\ncuts (module -> tensor in the ONNX graph):")
    for module, tensor in zip(m.cuts, cuts, strict=True):
        print(f"  {module:<18} {tensor}")

    bundle = out / "bundle"
    export = ["export", "onnx", str(source), *(a for c in cuts for a in ("--cut", c))]
    calib = ["--calibration", str(out / "calib.npz"), "--pool", m.pool]
    _cli([*export, *calib, "-o", str(bundle), "--force"])
    _cli(["inspect", str(bundle)])

    profile = out / f"profile-{args.runtime}-{args.threads}t.json"
    prof = ["profile", str(bundle), "--runtime", args.runtime, "--threads", str(args.threads)]
    prof += ["--batch", "1", "--min-seconds", "0.3", "-o", str(profile)]
    if _has_option(["profile"], "--whole"):  # time the original model as the static baseline
        prof += ["--whole", str(source)]
    _cli(prof)
    evaluation = out / "evaluation.npz"
    test = ["--data", str(out / "test.npz"), "--runtime", args.runtime]
    _cli(["evaluate", str(bundle), *test, "-o", str(evaluation)])
    files = ["--profile", str(profile), "--evaluation", str(evaluation)]
    _cli(["bound", str(bundle), *files, "--envelope"])
    plan = out / "plan.json"
    _cli(["plan", str(bundle), *files, "-o", str(plan)])
    run_input = out / "test-x.npy" if len(m.inputs) == 1 else out / "test.npz"
    run = ["run", str(bundle), "--plan", str(plan), "--input", str(run_input)]
    _cli([*run, "--runtime", args.runtime, "-o", str(out / "run.npz")])


if __name__ == "__main__":
    raise SystemExit(main())
