"""OpenVINO's own route from a model to a compiled one, without modelkiln's passes: the
yardstick `kiln bench --vs-openvino` measures an OpenVINO artifact against."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.backends.openvino.common import import_openvino, no_telemetry, reported_properties
from modelkiln.errors import UserInputError
from modelkiln.tensors import Runner


def convert_direct(model: Any, example: Mapping[str, np.ndarray], threads: int) -> Any:
    """`ov.convert_model` of a torch module (or an ONNX file's path) compiled for the CPU
    with OpenVINO's defaults except `threads`, as its users do without modelkiln: the
    compiled model. No telemetry is sent."""
    ov = import_openvino()
    # torch.jit tracing inside convert_model warns about every data-dependent branch.
    with no_telemetry(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if isinstance(model, str | Path):
            converted = ov.convert_model(str(model))
        else:
            import torch

            torch_example = {
                k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.items()
            }
            with torch.no_grad():
                converted = ov.convert_model(model, example_input=torch_example)
    return ov.Core().compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": threads})


def direct_runner(
    compiled: Any, example: Mapping[str, np.ndarray], outputs: Sequence[str], what: str
) -> tuple[Runner, dict[str, Any]]:
    """A runner over `convert_direct`'s model whose outputs are named `outputs` (in the
    module's output order), and what the compiled model reports; `what` names the
    conversion in the refusal of a model that lost an input."""
    names = {name for port in compiled.inputs for name in port.get_names()}
    missing = sorted(set(example) - names)
    if missing:
        raise UserInputError(
            f"{what} has no input(s) {', '.join(missing)} (it has {', '.join(sorted(names))})"
        )
    ov = import_openvino()
    request = compiled.create_infer_request()

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(outputs)}

    info = {"openvino": ov.get_version(), "compiled": reported_properties(compiled)}
    return run, info
