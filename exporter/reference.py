"""References that an artifact is checked against: the PyTorch model, or an ONNX source file."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.compare import Tolerance, compare_outputs, summarize
from modelkiln.errors import CheckpointError, ExportError, first_line
from modelkiln.exporter.specs import TaskSpec, make_inputs
from modelkiln.golden import GoldenSample
from modelkiln.tensors import Runner


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
    opts.log_severity_level = 4
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


def reference_samples(
    reference: Runner,
    spec: TaskSpec,
    dims_list: Sequence[Mapping[str, int]] | None = None,
    seed: int = 0,
) -> list[GoldenSample]:
    """(inputs, reference outputs) for each shape; these become golden.npz."""
    samples = []
    for i, dims in enumerate(dims_list or spec.check_dims):
        feeds = make_inputs(spec, dims, seed=seed + i)
        samples.append((feeds, reference(feeds)))
    return samples


def compare_samples(
    samples: Sequence[GoldenSample],
    candidate: Runner,
    tolerance: Tolerance,
    dims_list: Sequence[Mapping[str, int]],
) -> dict[str, Any]:
    """Run the candidate on every sample and report every output of every shape;
    `dims_list` names each sample's dimension sizes for the report."""
    limits = tolerance.to_json()
    checks = []
    for (feeds, expected), dims in zip(samples, dims_list, strict=True):
        outputs = compare_outputs(expected, candidate(feeds), limits)
        checks.append({"dims": dict(dims), "outputs": outputs})
    return summarize(checks, limits)
