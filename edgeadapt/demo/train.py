"""Train the MNIST-1D demo models and export the bundles shipped in `edgeadapt/demo/bundles`.

    python examples/train_mnist1d.py [--out DIR] [--seed 42] [--force]
    edgeadapt demo --retrain           # trains into the demo's output directory

The training code lives in the package so that ``edgeadapt demo --retrain`` works from
an installed wheel; ``examples/train_mnist1d.py`` is a thin wrapper around `main`.

Three bundles, reproduced exactly from the seed (fixed thread count, deterministic
kernels, seeded data order):

- ``mnist1d-resnet`` (early-exit, the demo's lead): `ResidualMultiExit`, a residual 1D
  CNN of `RESNET_WIDTH` channels with an exit head (pooling and a linear layer) after
  each of its four identity residual blocks, every exit trained with the backbone on
  the sum of the exits' losses. Each block does about 8 MFLOPs per sample, so its
  compute, not the runtime's per-call cost, dominates at batch 1, and its first exit is
  already right on most inputs: the case where an adaptive plan pays.
- ``mnist1d-multiexit`` (early-exit): a 1D CNN of four stages, each ending in an exit
  head (global average pooling + linear). The backbone is trained end to end through
  the last exit only; exits 0-2 are linear probes trained on detached activations, so
  early exits see features built for the final task and the exits span a real accuracy
  range (the bundle the tests, benchmarks and native runner examples use).
- ``mnist1d-family`` (ensemble): logistic regression, an MLP and a small CNN, the
  model family of the adaptive-oracle paper.

`residual_cnn` (a stem, identity residual blocks, pooling, linear) is the network whose
skip sets the execution-branches benchmark and test export; `train_residual_cnn` and
`export_onnx_model` train it and write its ONNX file.

Needs the ``torch`` and ``demo`` extras. Prints test accuracy per state and, as a check
of the design, each step's ONNX Runtime latency at batch 1 on one thread.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgeadapt.data.mnist1d import (
    DEFAULT_SEED,
    NUM_CLASSES,
    SIGNAL_LENGTH,
    MNIST1DSplits,
    Split,
    mnist1d_splits,
)
from edgeadapt.errors import InputError
from edgeadapt.exporters.torch import TorchExportOptions, export_torch_family, export_torch_model
from edgeadapt.formats.bundle import Bundle, load_bundle

DEFAULT_OUT = Path(__file__).resolve().parent / "bundles"
RESNET = "mnist1d-resnet"
MULTIEXIT = "mnist1d-multiexit"
FAMILY = "mnist1d-family"
#: Channels of the shipped residual network (`ResidualMultiExit`).
RESNET_WIDTH = 128
#: Fixed so that the trained weights (and so the bundles' bytes) do not depend on the machine.
THREADS = 2
WIDTH = 96
BATCH_SIZE = 128


def _conv(c_in: int, c_out: int, k: int) -> list[nn.Module]:
    return [nn.Conv1d(c_in, c_out, k, padding=k // 2, bias=False), nn.BatchNorm1d(c_out), nn.ReLU()]


def _head(channels: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(channels, NUM_CLASSES))


class MultiExitCNN(nn.Module):
    """Four stages of rising receptive field (3, 7, 16 and 34 samples), an exit after each.

    Stage 0 is a kernel-3 convolution followed by pointwise convolutions, so exit 0
    sees only local shape; later stages widen the view by convolution and pooling.
    Each stage does 4-7 MFLOPs per sample, so that a step's compute, not the
    runtime's per-call cost, dominates at batch 1.
    """

    def __init__(self, width: int = WIDTH) -> None:
        super().__init__()
        c, c2 = width, 2 * width
        self.stages = nn.ModuleList(
            [
                nn.Sequential(*_conv(1, c2, 3), *_conv(c2, c2, 1), *_conv(c2, c, 1)),
                nn.Sequential(*_conv(c, c, 3), *_conv(c, c, 3)),
                nn.Sequential(nn.MaxPool1d(2), *_conv(c, c2, 3), *_conv(c2, c2, 3)),
                nn.Sequential(nn.MaxPool1d(2), *_conv(c2, c2, 3), *_conv(c2, c2, 3)),
            ]
        )
        self.heads = nn.ModuleList([_head(c), _head(c), _head(c2), _head(c2)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit; exits before the last read detached activations."""
        out = []
        last = len(self.stages) - 1
        for i, (stage, head) in enumerate(zip(self.stages, self.heads, strict=True)):
            x = stage(x)
            out.append(head(x if i == last else x.detach()))
        return out


def family_models() -> dict[str, nn.Module]:
    """Logistic regression, an MLP and the MNIST-1D reference CNN (3 strided convs)."""
    n = SIGNAL_LENGTH
    return {
        "logistic": nn.Sequential(nn.Flatten(), nn.Linear(n, NUM_CLASSES)),
        "mlp": nn.Sequential(
            nn.Flatten(),
            nn.Linear(n, 100),
            nn.ReLU(),
            nn.Linear(100, 100),
            nn.ReLU(),
            nn.Linear(100, NUM_CLASSES),
        ),
        "cnn": nn.Sequential(
            nn.Conv1d(1, 25, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(25, 25, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(25, 25, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(25 * 5, NUM_CLASSES),
        ),
    }


class ResidualBlock(nn.Module):
    """An identity residual block: two kernel-3 convolutions with BatchNorm, added to the
    input, then ReLU (the shape the branches exporter can skip)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv1d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm1d(c),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, padding=1, bias=False),
            nn.BatchNorm1d(c),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


def residual_cnn(width: int = 64, blocks: int = 4) -> nn.Sequential:
    """A residual 1D CNN for MNIST-1D: a kernel-5 stem, `blocks` identity residual blocks
    of `width` channels, global average pooling and a linear layer."""
    return nn.Sequential(
        nn.Conv1d(1, width, 5, padding=2),
        nn.ReLU(),
        *[ResidualBlock(width) for _ in range(blocks)],
        nn.AdaptiveAvgPool1d(1),
        nn.Flatten(),
        nn.Linear(width, NUM_CLASSES),
    )


class ResidualMultiExit(nn.Module):
    """`residual_cnn`'s stem and identity residual blocks with an exit head (pooling and
    a linear layer) after each block: a ResNet-style early-exit network, every exit
    trained with the backbone (`train_residual_multiexit`)."""

    def __init__(self, width: int = 64, blocks: int = 4) -> None:
        super().__init__()
        stem = [nn.Conv1d(1, width, 5, padding=2), nn.ReLU()]
        self.stages = nn.ModuleList(
            [nn.Sequential(*stem, ResidualBlock(width))]
            + [nn.Sequential(ResidualBlock(width)) for _ in range(blocks - 1)]
        )
        self.heads = nn.ModuleList([_head(width) for _ in range(blocks)])

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit."""
        out = []
        for stage, head in zip(self.stages, self.heads, strict=True):
            x = stage(x)
            out.append(head(x))
        return out


def train_residual_multiexit(
    data: Split, *, width: int = 64, epochs: int = 8, seed: int = 0
) -> ResidualMultiExit:
    """`ResidualMultiExit(width)` trained on `data` on the sum of its exits' losses
    (`train`, lr 3e-3, seeded), in eval mode."""
    torch.manual_seed(seed)
    model = ResidualMultiExit(width)
    train(model, data, _sum_of_losses, epochs=epochs, lr=3e-3, seed=seed)
    return model


def train_residual_cnn(
    data: Split, *, width: int = 64, epochs: int = 12, seed: int = 0
) -> nn.Sequential:
    """`residual_cnn(width)` trained on `data` with Adam (lr 3e-3, batches of 128, torch
    seeded with `seed`), in eval mode."""
    torch.manual_seed(seed)
    model = residual_cnn(width)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def export_onnx_model(model: nn.Module, example: np.ndarray, path: str | Path) -> Path:
    """`model` as one ONNX file at `path` (torch's TorchScript exporter): input ``x``,
    output ``logits``, a dynamic batch axis; `example` gives the input's shape."""
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (torch.from_numpy(example[:1]),),
            str(path),
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return Path(path)


def train(
    model: nn.Module,
    data: Split,
    loss_of: Callable[[Any, torch.Tensor], torch.Tensor],
    *,
    epochs: int,
    lr: float,
    seed: int,
) -> None:
    """AdamW with a one-cycle schedule over shuffled mini-batches, seeded order."""
    x, y = torch.from_numpy(data.x), torch.from_numpy(data.y)
    per_epoch = len(y) // BATCH_SIZE
    opt = torch.optim.AdamW(model.parameters(), lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * per_epoch)
    order = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=order)
        for b in range(per_epoch):
            idx = perm[b * BATCH_SIZE : (b + 1) * BATCH_SIZE]
            loss = loss_of(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def _sum_of_losses(outs: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the exits, in exit order."""
    loss = F.cross_entropy(outs[0], y)
    for o in outs[1:]:
        loss = loss + F.cross_entropy(o, y)
    return loss


def _accuracy(logits: torch.Tensor, y: np.ndarray) -> float:
    return float((logits.argmax(1).numpy() == y).mean())


def step_latency_us(bundle: Bundle, repeats: int = 300) -> list[float]:
    """p50 latency of each step at batch 1 on ONNX Runtime CPU, one thread (a quick check)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    x = np.zeros((1, *(int(d) for d in bundle.input.shape[1:])), dtype=bundle.input.dtype)
    out: list[float] = []
    previous: list[np.ndarray] = []
    for step in bundle.steps:
        sess = ort.InferenceSession(str(step.path), opts, providers=["CPUExecutionProvider"])
        feed = {n: (x if n == bundle.input.name else previous[0]) for n in step.inputs}
        names = [n for n in (step.activation, step.logits) if n]
        for _ in range(30):
            sess.run(names, feed)
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            previous = sess.run(names, feed)
            times.append(time.perf_counter() - t)
        out.append(float(np.median(times)) * 1e6)
    return out


@dataclass(frozen=True)
class _Run:
    """What every model's training shares: the data, where the bundles go, the log."""

    splits: MNIST1DSplits
    out_dir: Path
    seed: int
    force: bool
    log: Callable[[str], None]

    @property
    def example(self) -> torch.Tensor:
        return torch.from_numpy(self.splits.train.x[:1])

    @property
    def info(self) -> dict[str, int]:
        """The manifest's ``extra.training``."""
        return {"seed": self.seed, "train_samples": len(self.splits.train.y), "threads": THREADS}

    def accuracies(self, model: nn.Module) -> list[float]:
        """Test accuracy of each of `model`'s exits."""
        with torch.no_grad():
            return [
                _accuracy(o, self.splits.test.y)
                for o in model(torch.from_numpy(self.splits.test.x))
            ]


def _train_resnet(run: _Run) -> Bundle:
    t = time.perf_counter()
    model = train_residual_multiexit(run.splits.train, width=RESNET_WIDTH, seed=run.seed)
    run.log(
        f"residual multi-exit CNN trained in {time.perf_counter() - t:.0f} s; test accuracy "
        "per exit: " + ", ".join(f"{a:.2%}" for a in run.accuracies(model))
    )
    extra = {"training": run.info}
    options = TorchExportOptions(extra=extra, force=run.force)
    return export_torch_model(model, run.example, run.out_dir / RESNET, options=options)


def _train_multiexit(run: _Run) -> Bundle:
    torch.manual_seed(run.seed)
    model = MultiExitCNN()
    t = time.perf_counter()
    train(model, run.splits.train, _sum_of_losses, epochs=8, lr=3e-3, seed=run.seed)
    run.log(
        f"multi-exit CNN trained in {time.perf_counter() - t:.0f} s; test accuracy per exit: "
        + ", ".join(f"{a:.2%}" for a in run.accuracies(model))
    )
    extra = {"training": run.info}
    options = TorchExportOptions(extra=extra, force=run.force)
    return export_torch_model(model, run.example, run.out_dir / MULTIEXIT, options=options)


def _train_family(run: _Run) -> Bundle:
    torch.manual_seed(run.seed)
    members = family_models()
    t = time.perf_counter()
    test = run.splits.test
    for name, m in members.items():
        train(m, run.splits.train, F.cross_entropy, epochs=100, lr=1e-2, seed=run.seed)
        with torch.no_grad():
            run.log(f"  {name}: test accuracy {_accuracy(m(torch.from_numpy(test.x)), test.y):.2%}")
    run.log(f"family trained in {time.perf_counter() - t:.0f} s")
    return export_torch_family(
        list(members.values()),
        run.example,
        run.out_dir / FAMILY,
        state_names=list(members),
        options=TorchExportOptions(extra={"training": run.info}, force=run.force),
    )


#: How each shipped bundle is trained, by name.
TRAINERS: dict[str, Callable[[_Run], Bundle]] = {
    RESNET: _train_resnet,
    MULTIEXIT: _train_multiexit,
    FAMILY: _train_family,
}


def train_and_export(
    out_dir: str | Path = DEFAULT_OUT,
    *,
    names: Sequence[str] = tuple(TRAINERS),
    seed: int = DEFAULT_SEED,
    force: bool = False,
    log: Callable[[str], None] = print,
) -> dict[str, Bundle]:
    """Train the demo models `names` (default: all three, `TRAINERS`) from `seed` and
    write their bundles under `out_dir`. Each model starts from a freshly seeded
    generator, so each bundle's bytes depend on the seed alone, not on which others are
    trained or in what order."""
    unknown = [n for n in names if n not in TRAINERS]
    if unknown:
        raise InputError(f"unknown demo bundles {unknown}; known: {list(TRAINERS)}", field="names")
    torch.set_num_threads(THREADS)
    torch.use_deterministic_algorithms(True)
    t0 = time.perf_counter()
    splits = mnist1d_splits(seed)
    log(
        f"data: {len(splits.train.y)} train / {len(splits.calibration.y)} calibration / "
        f"{len(splits.test.y)} test samples ({time.perf_counter() - t0:.1f} s)"
    )
    run = _Run(splits, Path(out_dir), seed, force, log)
    return {name: TRAINERS[name](run) for name in names}


def _print_bundle(name: str, bundle: Bundle, log: Callable[[str], None]) -> None:
    size = sum((bundle.path / f).stat().st_size for f in bundle.files)
    lat = step_latency_us(bundle)
    log(
        f"{name}: {bundle.kind}, {size / 1e6:.2f} MB, parity max abs error "
        f"{bundle.extra['parity']['max_abs_error']:.2g}"
    )
    for st, step, us in zip(bundle.states, bundle.steps, lat, strict=True):
        log(
            f"  {st.name:<9} step {step.flops / 1e6:6.2f} MFLOPs  {step.params:>7,} params  "
            f"p50 {us:6.1f} us (ORT CPU, batch 1, 1 thread)"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="directory for the bundles")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--force", action="store_true", help="replace different bundles")
    args = parser.parse_args(argv)
    bundles = train_and_export(args.out, seed=args.seed, force=args.force)
    for name, b in bundles.items():
        _print_bundle(name, load_bundle(b.path), print)


if __name__ == "__main__":
    main()
