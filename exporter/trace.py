"""torch -> ONNX, once, through the dynamo exporter; the result stays in memory as onnx_ir."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from modelkiln.errors import ExportError, first_line
from modelkiln.exporter.specs import TaskSpec
from modelkiln.exporter.torch_onnx_fast import fast_torch_onnx

OPSET = 18


class OutputSelector:
    """Wraps a transformers model: named tensor inputs in, the spec's outputs out as a tuple.

    The forward signature lists the spec's input names explicitly, because torch.export maps
    dynamic shapes and ONNX input names from the signature.
    """

    def __new__(cls, model: Any, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> Any:
        import torch

        class _Selector(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.model = model

            def forward(self, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
                kwargs.update(zip(inputs, args, strict=False))
                result = self.model(**kwargs, return_dict=True)
                return tuple(result[name] for name in outputs)

        params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + [
            inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in inputs
        ]
        _Selector.forward.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return _Selector().eval()


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """torch.onnx prints progress and registry warnings; the CLI has its own progress."""
    loggers = [
        logging.getLogger(n) for n in ("torch.onnx", "torch._dynamo", "torch.export", "torch.fx")
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def root_cause(exc: BaseException) -> BaseException:
    seen = {id(exc)}
    while exc.__cause__ is not None and id(exc.__cause__) not in seen:
        exc = exc.__cause__
        seen.add(id(exc))
    return exc


def trace(module: Any, spec: TaskSpec, inputs: Mapping[str, np.ndarray], model_type: str) -> Any:
    """Trace `module` with `inputs` (at the spec's trace dims) and return an `onnx_ir.Model`."""
    import torch

    kwargs = {name: torch.from_numpy(np.ascontiguousarray(v)) for name, v in inputs.items()}
    dynamic = spec.dynamic_axes
    try:
        with quiet(), torch.no_grad(), fast_torch_onnx():
            program = torch.onnx.export(
                module,
                (),
                kwargs=kwargs,
                dynamo=True,
                optimize=False,
                opset_version=OPSET,
                dynamic_shapes=dynamic,
                output_names=list(spec.outputs),
                verbose=False,
            )
    except Exception as exc:
        root = root_cause(exc)
        raise ExportError(
            f"tracing {model_type} for task {spec.task} failed: {type(root).__name__}: "
            f"{first_line(root)} (run with --debug for the full torch error)"
        ) from exc
    if program is None:  # only the legacy exporter returns None
        raise ExportError(f"tracing {model_type} for task {spec.task} produced no ONNX program")
    model = program.model
    produced = [v.name for v in model.graph.outputs]
    if produced != list(spec.outputs):
        raise ExportError(
            f"tracing {model_type} for task {spec.task} produced outputs {produced}, "
            f"expected {list(spec.outputs)}"
        )
    return model
