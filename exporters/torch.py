"""PyTorch exporter: a multi-exit network (stages + exit heads) or a model family -> a bundle.

Each step is stage i followed by head i, traced into one ONNX graph with the
TorchScript exporter (`torch.onnx.export(..., dynamo=False)`: fast, no onnxscript, and
it folds BatchNorm into the preceding convolution in eval mode). Step i reads the
model inputs (i = 0) or ``activation{i-1}`` plus the model inputs its stage and head
name in their ``forward`` (a transformer's ``attention_mask``), and outputs
``activation{i}`` and ``logits{i}``; the last step outputs logits only. The batch axis
is dynamic.

A trace that torch flags (`TracerWarning`: data-dependent control flow, Python values
baked in) or an exporter fallback is an error, not a warning: such a graph may compute
something else on other inputs. Before anything is written, every state of the ONNX
bundle is run on ONNX Runtime on random inputs of batch 1 and 7 and compared with the
torch model (tolerance ``max(parity_atol, parity_rtol * max |logit|)``, by default
rtol 1e-3 and atol 1e-5); the worst absolute error goes into the manifest. States are
named ``exit0`` .. ``exit{N-1}`` as the ONNX exporter names them.

torch is an optional extra (``pip install 'edgeadapt[torch]'``); it is imported on
first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from edgeadapt.errors import InputError, MissingExtraError
from edgeadapt.exporters import _graph
from edgeadapt.formats.bundle import BATCH, DTYPES, Bundle, InputSpec, Step, write_bundle
from edgeadapt.graph.flops import count_flops

if TYPE_CHECKING:
    import torch

DEFAULT_OPSET = 17
#: Deprecation notices the TorchScript exporter always emits; anything else is kept.
_KNOWN_NOTICES = (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed. Please remove usage of this function",
)


def _torch() -> Any:
    try:
        import torch
    except ImportError as e:
        raise MissingExtraError("torch", "torch", "the PyTorch exporter") from e
    return torch


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def model_sha256(modules: Sequence[torch.nn.Module]) -> str:
    """A hash of the modules' parameters and buffers (names, dtypes, shapes, values)."""
    h = hashlib.sha256()
    for k, m in enumerate(modules):
        for name, t in m.state_dict().items():
            arr = t.detach().cpu().contiguous().numpy()
            h.update(f"{k}.{name}:{arr.dtype}:{arr.shape};".encode())
            h.update(arr.tobytes())
    return h.hexdigest()


def _raise_on_trace_warnings(caught: list[warnings.WarningMessage], where: str) -> None:
    """TracerWarnings and exporter fallbacks are errors; other warnings are re-issued."""
    torch = _torch()
    for w in caught:
        text = str(w.message)
        if issubclass(w.category, torch.jit.TracerWarning) or "fallback" in text.lower():
            raise InputError(
                f"the trace may not match the model on other inputs ({w.category.__name__}: "
                f"{text.strip()}); make the forward pass free of data-dependent Python "
                "control flow and tensor-to-Python conversions",
                field=where,
            )
        if issubclass(w.category, DeprecationWarning) and text.startswith(_KNOWN_NOTICES):
            continue
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _drop_identities(model: onnx.ModelProto) -> None:
    """Remove Identity nodes that only alias an initializer (left by the tracer)."""
    g = model.graph
    alias = {t.name: t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    kept = []
    for node in g.node:
        if node.op_type == "Identity" and node.input[0] in alias and node.output[0] not in outputs:
            alias[node.output[0]] = alias[node.input[0]]
            continue
        kept.append(node)
    for node in kept:
        for k, name in enumerate(node.input):
            if name in alias:
                node.input[k] = alias[name]
    del g.node[:]
    g.node.extend(kept)


def _trace(
    module: torch.nn.Module,
    args: Sequence[torch.Tensor],
    input_names: Sequence[str],
    outputs: Sequence[str],
    opset: int,
    where: str,
) -> onnx.ModelProto:
    """Trace `module` on `args` into an ONNX model with a dynamic batch axis everywhere."""
    torch = _torch()
    buf = io.BytesIO()
    axes = {n: {0: BATCH} for n in (*input_names, *outputs)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            torch.onnx.export(
                module,
                tuple(args),
                buf,
                dynamo=False,
                opset_version=opset,
                input_names=list(input_names),
                output_names=list(outputs),
                dynamic_axes=axes,
                do_constant_folding=True,
                training=torch.onnx.TrainingMode.EVAL,
            )
        except Exception as e:  # torch raises many types for unsupported ops
            raise InputError(f"torch.onnx.export failed: {e}", field=where) from None
    _raise_on_trace_warnings(caught, where)
    model = onnx.load_from_string(buf.getvalue())
    _drop_identities(model)
    return _graph.infer(model, where)


def _aux_inputs(module: Any, names: Sequence[str], where: str) -> list[str]:
    """The model inputs a stage or head reads besides the activation: the parameters
    of its ``forward`` after the first, named as model inputs."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return []
    out = []
    for p in params[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if p.name in names:
            out.append(p.name)
        elif p.default is p.empty:
            raise InputError(
                f"forward parameter {p.name!r} is neither the activation nor a model input "
                f"(inputs: {list(names)})",
                field=where,
            )
    return out


def _step_module(
    stage: torch.nn.Module,
    head: torch.nn.Module,
    first: bool,
    names: Sequence[str],
    stage_aux: Sequence[str],
    head_aux: Sequence[str],
) -> torch.nn.Module:
    """Stage then head as one module returning (activation, logits). It takes the model
    inputs `names` (`first`) or the activation followed by `names`; the stage gets all
    model inputs (`first`) or the activation and `stage_aux`, the head the activation
    and `head_aux`."""

    class _Step(_torch().nn.Module):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.stage, self.head = stage, head

        def forward(self, *args: Any) -> tuple[Any, Any]:
            if first:
                env = dict(zip(names, args, strict=True))
                z = self.stage(*args)
            else:
                env = dict(zip(names, args[1:], strict=True))
                z = self.stage(args[0], *[env[n] for n in stage_aux])
            return z, self.head(z, *[env[n] for n in head_aux])

    return _Step().eval()


def _strip_output(model: onnx.ModelProto, name: str) -> None:
    keep = [o for o in model.graph.output if o.name != name]
    del model.graph.output[:]
    model.graph.output.extend(keep)


@contextlib.contextmanager
def _eval_mode(modules: Sequence[torch.nn.Module]) -> Iterator[None]:
    """Put the modules in eval mode without gradients; restore every submodule's own
    mode afterwards (a container's ``train()`` would set all its children alike)."""
    torch = _torch()
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for sub, mode in modes:
            sub.training = mode


def _check_modules(modules: Sequence[Any], what: str) -> None:
    torch = _torch()
    for k, m in enumerate(modules):
        if not isinstance(m, torch.nn.Module):
            raise InputError(
                f"expected a torch.nn.Module, got {type(m).__name__}", field=f"{what}[{k}]"
            )


def _check_example(x: Any, input_name: str) -> tuple[list[InputSpec], list[Any]]:
    """The model inputs: one tensor (named `input_name`) or a dict of named tensors,
    each with a leading batch axis."""
    torch = _torch()
    items = list(x.items()) if isinstance(x, dict) else [(input_name, x)]
    if not items:
        raise InputError("expected at least one input tensor", source="example_input")
    specs, tensors = [], []
    for name, t in items:
        where = "example_input" if not isinstance(x, dict) else f"example_input[{name!r}]"
        if not isinstance(name, str) or not name:
            raise InputError(f"input names must be non-empty strings, got {name!r}", field=where)
        if not isinstance(t, torch.Tensor) or t.ndim < 1 or t.shape[0] < 1:
            raise InputError("expected a tensor with a leading batch axis", field=where)
        if _dtype_name(t) not in DTYPES:
            raise InputError(f"unsupported dtype {t.dtype} (supported: {DTYPES})", field=where)
        specs.append(InputSpec(name, (BATCH, *(int(d) for d in t.shape[1:])), _dtype_name(t)))
        tensors.append(t.detach())
    return specs, tensors


def _parity(
    sessions: Sequence[Any],
    feeds: Callable[[int, list[np.ndarray], dict[str, np.ndarray]], dict[str, np.ndarray]],
    reference: Callable[[list[torch.Tensor]], list[torch.Tensor]],
    examples: Sequence[dict[str, np.ndarray]],
    outputs: Sequence[Sequence[str]],
    rtol: float,
    atol: float,
) -> list[float]:
    """Run each session (in chain order) on the `examples` feeds; compare state logits
    with `reference` (called under `_eval_mode`). Returns the worst absolute error per
    state; raises past the tolerance ``max(atol, rtol * max |logit|)``."""
    torch = _torch()
    worst = [0.0] * len(sessions)
    for example in examples:
        tensors = [torch.from_numpy(v) for v in example.values()]
        want = [t.detach().cpu().numpy() for t in reference(tensors)]
        batch = len(next(iter(example.values())))
        previous: list[np.ndarray] = []
        for i, sess in enumerate(sessions):
            try:
                previous = sess.run(list(outputs[i]), feeds(i, previous, example))
            except Exception as e:  # onnxruntime raises its own exception types
                raise InputError(
                    f"ONNX Runtime cannot run step {i} at batch {batch}: "
                    f"{str(e).strip().splitlines()[0]} (does the model fix its batch size?)",
                    field=f"steps[{i}]",
                ) from None
            err, ok = _graph.worst_error(previous[-1], want[i], rtol, atol)
            worst[i] = max(worst[i], err)
            if not ok:
                tol = _graph.tolerance(want[i], rtol, atol)
                raise InputError(
                    f"parity check failed: state {i} differs from the torch model on a batch "
                    f"of {batch} (max abs error {err:.3g}; tolerance {tol:.3g} = max(atol "
                    f"{atol:g}, rtol {rtol:g} x max |logit| {float(np.max(np.abs(want[i]))):.3g})"
                    "; raise parity_rtol/parity_atol to accept it)"
                )
    return worst


@dataclass(frozen=True)
class _Aux:
    """The model inputs each stage, head and step reads beside the activation."""

    stage: list[list[str]]
    head: list[list[str]]
    step: list[list[str]]


def _aux(stages: Sequence[Any], heads: Sequence[Any], names: list[str]) -> _Aux:
    """Read from each module's ``forward`` which model inputs it takes after the
    activation; step 0 reads every input."""
    stage_aux = [[]] + [_aux_inputs(m, names, f"stages[{k}]") for k, m in enumerate(stages[1:], 1)]
    head_aux = [_aux_inputs(m, names, f"heads[{k}]") for k, m in enumerate(heads)]
    step_aux = [
        names if i == 0 else [n for n in names if n in {*stage_aux[i], *head_aux[i]}]
        for i in range(len(stages))
    ]
    return _Aux(stage_aux, head_aux, step_aux)


def _trace_steps(
    stages: Sequence[Any],
    heads: Sequence[Any],
    names: list[str],
    tensors: list[Any],
    aux: _Aux,
    opset: int,
) -> list[Step]:
    """Trace each (stage, head) pair into one step, feeding each the previous stage's
    output on the example."""
    steps: list[Step] = []
    a: Any = None
    for i, (stage, head) in enumerate(zip(stages, heads, strict=True)):
        last = i == len(stages) - 1
        act, logits = f"activation{i}", f"logits{i}"
        env = dict(zip(names, tensors, strict=True))
        if i == 0:
            args, in_names = list(tensors), list(names)
        else:
            args = [a, *[env[n] for n in aux.step[i]]]
            in_names = [f"activation{i - 1}", *aux.step[i]]
        module = _step_module(stage, head, i == 0, aux.step[i], aux.stage[i], aux.head[i])
        model = _trace(module, args, in_names, (act, logits), opset, f"steps[{i}]")
        if last:
            _strip_output(model, act)
        steps.append(Step(model, logits=logits, activation=None if last else act, head_input=act))
        a = stage(*args)
    return steps


def _check_steps(
    stages: Sequence[Any],
    heads: Sequence[Any],
    steps: list[Step],
    specs: Sequence[InputSpec],
    names: list[str],
    tensors: list[Any],
    aux: _Aux,
    rtol: float,
    atol: float,
) -> tuple[list[float], int]:
    """Compare the chained steps with the torch modules; return each state's worst
    error and the class count."""

    def reference(xs: list[Any]) -> list[Any]:
        env = dict(zip(names, xs, strict=True))
        out, h = [], None
        for k, (stage, head) in enumerate(zip(stages, heads, strict=True)):
            h = stage(*xs) if k == 0 else stage(h, *[env[n] for n in aux.stage[k]])
            out.append(head(h, *[env[n] for n in aux.head[k]]))
        return out

    def feeds(
        i: int, previous: list[np.ndarray], example: dict[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        if i == 0:
            return dict(example)
        return {f"activation{i - 1}": previous[0], **{n: example[n] for n in aux.step[i]}}

    sessions = [_graph.session(s.model) for s in steps]
    outputs = [[n for n in (s.activation, s.logits) if n] for s in steps]
    examples = _graph.example_feeds(steps[0].model, specs)
    worst = _parity(sessions, feeds, reference, examples, outputs, rtol, atol)
    num_classes = int(reference([t[:1] for t in tensors])[-1].shape[-1])
    return worst, num_classes


@dataclass(frozen=True)
class TorchExportOptions:
    """How `export_torch` and `export_torch_family` export: the name of a one-tensor
    example's input (`input_name`), the ONNX `opset` (>= `DEFAULT_OPSET`), what is merged
    into the manifest's ``extra``, the tolerances the ONNX steps must match torch within
    (`parity_rtol`, `parity_atol`) and whether an existing `out_dir` is replaced
    (`force`)."""

    input_name: str = "x"
    opset: int = DEFAULT_OPSET
    extra: dict[str, Any] | None = None
    parity_rtol: float = _graph.RTOL
    parity_atol: float = _graph.ATOL
    force: bool = False


def _write(
    out_dir: str | os.PathLike[str],
    options: TorchExportOptions,
    modules: Sequence[Any],
    worst: list[float],
    **bundle: Any,
) -> Bundle:
    """`write_bundle` of the traced `bundle` (kind, inputs, classes, steps or models,
    state names) with the exporter's producer record and the parity `worst` reached."""
    torch = _torch()
    rtol, atol = options.parity_rtol, options.parity_atol
    return write_bundle(
        out_dir,
        producer={
            "exporter": "edgeadapt.exporters.torch",
            "torch": torch.__version__,
            "opset": options.opset,
            "source_sha256": model_sha256(modules),
        },
        extra={**(options.extra or {}), "parity": _parity_record(worst, rtol, atol)},
        force=options.force,
        **bundle,
    )


def _check_opset(opset: int) -> None:
    if opset < DEFAULT_OPSET:
        raise InputError(f"must be >= {DEFAULT_OPSET}, got {opset}", source="opset")


def export_torch(
    stages: Sequence[torch.nn.Module],
    heads: Sequence[torch.nn.Module],
    example_input: torch.Tensor | dict[str, torch.Tensor],
    out_dir: str | os.PathLike[str],
    *,
    state_names: Sequence[str] | None = None,
    options: TorchExportOptions | None = None,
) -> Bundle:
    """Export a multi-exit network as an early-exit bundle in `out_dir`, as `options`
    say (`TorchExportOptions`, default its defaults).

    State i runs `stages[0..i]` and then `heads[i]`; head i maps stage i's output to
    ``[batch, classes]`` logits. `example_input` fixes the per-sample shapes and dtypes
    (its batch size does not matter): one tensor (the input ``options.input_name``) or
    a dict of named tensors for a model with several inputs (``{"input_ids": ...,
    "attention_mask": ...}``). Stage 0 is called with every input in that order; a
    later stage or a head is called with the activation and then the model inputs its
    ``forward`` names after it (``def forward(self, h, attention_mask)``), which its
    step then reads.
    """
    _torch()  # without torch, fail first and name the extra to install
    options = options or TorchExportOptions()
    stages, heads = list(stages), list(heads)
    if not stages or len(stages) != len(heads):
        raise InputError(f"need as many heads as stages (>= 1), got {len(stages)} and {len(heads)}")
    _check_modules(stages, "stages")
    _check_modules(heads, "heads")
    _check_opset(options.opset)
    specs, tensors = _check_example(example_input, options.input_name)
    names = [s.name for s in specs]
    aux = _aux(stages, heads, names)
    rtol, atol = options.parity_rtol, options.parity_atol
    with _eval_mode([*stages, *heads]):
        steps = _trace_steps(stages, heads, names, tensors, aux, options.opset)
        worst, num_classes = _check_steps(
            stages, heads, steps, specs, names, tensors, aux, rtol, atol
        )
    return _write(
        out_dir,
        options,
        [*stages, *heads],
        worst,
        kind="early-exit",
        inputs=specs,
        num_classes=num_classes,
        steps=steps,
        state_names=state_names or [f"exit{i}" for i in range(len(steps))],
    )


def export_torch_model(
    model: torch.nn.Module,
    example_input: torch.Tensor,
    out_dir: str | os.PathLike[str],
    *,
    state_names: Sequence[str] | None = None,
    options: TorchExportOptions | None = None,
) -> Bundle:
    """`export_torch` for a model exposing ``stages`` and ``heads`` (e.g. ModuleLists)."""
    if not hasattr(model, "stages") or not hasattr(model, "heads"):
        raise InputError(
            f"{type(model).__name__} has no `stages` and `heads`; call export_torch with them"
        )
    stages, heads = getattr(model, "stages"), getattr(model, "heads")  # noqa: B009
    return export_torch(
        stages, heads, example_input, out_dir, state_names=state_names, options=options
    )


def _trace_family(
    models: list[Any], names: list[str], tensors: list[Any], inputs: list[str], opset: int
) -> tuple[list[Any], list[onnx.ModelProto], list[str]]:
    """Trace every model; return the models, their ONNX graphs and their names ordered
    by FLOPs, cheapest first (ties keep the given order)."""
    onnx_models = [
        _trace(m, tensors, inputs, ("logits",), opset, f"models[{k}]") for k, m in enumerate(models)
    ]
    order = sorted(range(len(models)), key=lambda k: count_flops(onnx_models[k]).flops)
    return [models[k] for k in order], [onnx_models[k] for k in order], [names[k] for k in order]


def export_torch_family(
    models: Sequence[torch.nn.Module],
    example_input: torch.Tensor | dict[str, torch.Tensor],
    out_dir: str | os.PathLike[str],
    *,
    state_names: Sequence[str] | None = None,
    options: TorchExportOptions | None = None,
) -> Bundle:
    """Export independent classifiers (a model family) as an ensemble bundle, as
    `options` say (`TorchExportOptions`, default its defaults).

    Every model maps the input to ``[batch, classes]`` logits. States are ordered by
    FLOPs, cheapest first (ties keep the given order); `state_names` follow the given
    order of `models` (default ``model0``, ``model1``, ...).
    """
    _torch()  # without torch, fail first and name the extra to install
    options = options or TorchExportOptions()
    models = list(models)
    if len(models) < 2:
        raise InputError(f"a family needs at least two models, got {len(models)}")
    _check_modules(models, "models")
    names = (
        list(state_names) if state_names is not None else [f"model{k}" for k in range(len(models))]
    )
    if len(names) != len(models):
        raise InputError(f"{len(names)} names for {len(models)} models", source="state_names")
    _check_opset(options.opset)
    specs, tensors = _check_example(example_input, options.input_name)
    inputs = [s.name for s in specs]
    with _eval_mode(models):
        models, onnx_models, names = _trace_family(models, names, tensors, inputs, options.opset)
        worst = _parity(
            [_graph.session(m) for m in onnx_models],
            lambda i, previous, example: dict(example),
            lambda xs: [m(*xs) for m in models],
            _graph.example_feeds(onnx_models[0], specs),
            [["logits"]] * len(models),
            options.parity_rtol,
            options.parity_atol,
        )
        classes = {int(m(*[t[:1] for t in tensors]).shape[-1]) for m in models}
    if len(classes) != 1:
        raise InputError(f"the models disagree on the class count: {sorted(classes)}")
    return _write(
        out_dir,
        options,
        models,
        worst,
        kind="ensemble",
        inputs=specs,
        num_classes=classes.pop(),
        models=onnx_models,
        state_names=names,
    )


def load_factory(spec: str) -> Callable[[], Any]:
    """The callable named by ``package.module:function`` or ``path/to/file.py:function``.

    A dotted module is imported with the current directory on `sys.path`, as a user
    running the command from their project expects. Errors name the parameter
    ``factory``.
    """
    where, sep, name = spec.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise InputError(
            f"expected MODULE:FUNCTION or FILE.py:FUNCTION, got {spec!r}", source="factory"
        )
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise InputError(f"file not found: {path}", source="factory")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            if module_spec is None or module_spec.loader is None:
                raise InputError(f"not a loadable Python file: {path}", source="factory")
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path:
                sys.path.insert(0, "")
            module = importlib.import_module(where)
    except InputError:
        raise
    except Exception as e:  # whatever the user's module raises on import
        raise InputError(
            f"cannot import {where!r}: {type(e).__name__}: {e}", source="factory"
        ) from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise InputError(f"{where!r} has no callable {name!r}", source="factory")
    return factory


def export_from_factory(
    factory: str | Callable[[], Any],
    out_dir: str | os.PathLike[str],
    options: TorchExportOptions | None = None,
) -> Bundle:
    """Call `factory()` (a callable, or a spec for `load_factory`) and export what it
    returns, as `options` say:

    - ``(stages, heads, example_input)``: an early-exit bundle (`export_torch`);
    - ``(model, example_input)`` with ``model.stages`` and ``model.heads``: the same
      (`export_torch_model`);
    - ``([model, ...], example_input)``: an ensemble bundle of a model family
      (`export_torch_family`).
    """
    build = load_factory(factory) if isinstance(factory, str) else factory
    made = build()
    if isinstance(made, tuple) and len(made) == 3:
        stages, heads, example = made
        return export_torch(stages, heads, example, out_dir, options=options)
    if isinstance(made, tuple) and len(made) == 2:
        model, example = made
        if isinstance(model, Sequence):
            return export_torch_family(model, example, out_dir, options=options)
        return export_torch_model(model, example, out_dir, options=options)
    raise InputError(
        "the factory must return (stages, heads, example_input), (model, example_input) "
        f"or ([models], example_input); got {type(made).__name__}",
        source="factory",
    )


def _parity_record(worst: list[float], rtol: float, atol: float) -> dict[str, Any]:
    return {
        "max_abs_error": max(worst),
        "per_state": worst,
        "rtol": rtol,
        "atol": atol,
        "batches": [1, 7],
    }
