"""References that an artifact is checked against: the PyTorch model, or an ONNX source file."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.compare import compare_outputs, summarize
from modelkiln.errors import CheckpointError, ExportError, first_line
from modelkiln.exporter.specs import TaskSpec, make_inputs

Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def torch_runner(module: Any, outputs: Sequence[str]) -> Runner:
    import torch

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        kwargs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in feeds.items()}
        try:
            with torch.inference_mode():
                result = module(**kwargs)
        except Exception as exc:
            raise ExportError(
                f"the PyTorch reference failed on generated inputs {_shapes(feeds)}: "
                f"{type(exc).__name__}: {first_line(exc)}"
            ) from exc
        if isinstance(result, torch.Tensor):
            result = (result,)
        return {name: t.detach().cpu().numpy() for name, t in zip(outputs, result, strict=True)}

    return run


def onnx_runner(path: Path) -> Runner:
    """The untouched source model in ONNX Runtime with graph optimizations off."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CheckpointError(f"onnxruntime cannot load {path}: {first_line(exc)}") from None
    names = [o.name for o in session.get_outputs()]

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            return dict(zip(names, session.run(names, dict(feeds)), strict=True))
        except Exception as exc:
            raise CheckpointError(
                f"{path} fails in onnxruntime on generated inputs {_shapes(feeds)}: "
                f"{first_line(exc)}"
            ) from None

    return run


def _shapes(feeds: Mapping[str, np.ndarray]) -> str:
    return ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())


def validate(
    reference: Runner,
    candidate: Runner,
    spec: TaskSpec,
    dims_list: Sequence[Mapping[str, int]] | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]]:
    """Compare candidate with reference on every shape.

    Returns the report and, per shape, (inputs, reference outputs) for golden.npz.
    """
    tolerance = spec.tolerance.to_json()
    checks = []
    samples = []
    for i, dims in enumerate(dims_list or spec.check_dims):
        feeds = make_inputs(spec, dims, seed=seed + i)
        expected = reference(feeds)
        actual = candidate(feeds)
        checks.append({"dims": dict(dims), "outputs": compare_outputs(expected, actual, tolerance)})
        samples.append((feeds, expected))
    return summarize(checks, tolerance), samples
