"""What every part of the OpenVINO backend shares: importing openvino without telemetry,
its messages in one line, compile settings and reported properties, ports by name.

openvino is imported inside `import_openvino` only: importing modelkiln, or loading an
artifact built for another backend, never imports it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from modelkiln.backends.registry import install_hint
from modelkiln.errors import BackendUnavailable, BuildError

if TYPE_CHECKING:
    import onnx_ir as ir

    from modelkiln.targets import ShapeRange

_telemetry_lock = threading.Lock()
_telemetry_depth = 0
_telemetry_saved: str | None = None


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """Keep OpenVINO's Python tools from sending usage telemetry on the user's behalf.

    Importing openvino and every `convert_model` call report to Google Analytics and write
    `~/intel/` (a client id, usage counts) unless the user opted out with
    `opt_in_out --opt_out`, which is global and permanent. The one scoped opt-out is the
    telemetry package's CI switch: the model conversion tools initialise it with
    `disable_in_ci=True`, and it then declines when `CI=true`. So `CI` is set for the
    duration of the block (nesting and threads share one setting) and restored afterwards;
    the user's own later conversions re-initialise telemetry with their own choice.
    """
    global _telemetry_depth, _telemetry_saved
    with _telemetry_lock:
        if _telemetry_depth == 0:
            _telemetry_saved = os.environ.get("CI")
            os.environ["CI"] = "true"
        _telemetry_depth += 1
    try:
        yield
    finally:
        with _telemetry_lock:
            _telemetry_depth -= 1
            if _telemetry_depth == 0:
                if _telemetry_saved is None:
                    os.environ.pop("CI", None)
                else:
                    os.environ["CI"] = _telemetry_saved


def import_openvino() -> Any:
    try:
        with no_telemetry():  # importing openvino sends an "import" event
            import openvino
    except ImportError:
        raise BackendUnavailable(f"openvino is not installed: {install_hint('openvino')}") from None
    return openvino


def ov_device(device: str) -> str:
    """Our device names are lower case ("cpu", "gpu.0"); OpenVINO's are upper case."""
    return device.upper()


def ov_message(exc: BaseException) -> str:
    """One useful line from an OpenVINO exception.

    Its messages start with "Exception from src/…/file.cpp:123:" lines (sometimes nested)
    before the actual reason, so the first line alone says nothing.
    """
    text = str(exc).replace("\x1b", "")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("Exception from ", "Check '")) or line.endswith(".cpp"):
            continue
        return line
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def compile_config(
    performance_hint: str, precision_hint: str, threads: int | None = None
) -> dict[str, Any]:
    """The properties every compile sets explicitly (also what the build records)."""
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": performance_hint,
        "INFERENCE_PRECISION_HINT": precision_hint,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def reported_properties(compiled: Any) -> dict[str, Any]:
    """What the compiled model reports back: a CPU without bf16 runs f32 whatever we ask."""

    def prop(name: str) -> Any:
        try:
            return compiled.get_property(name)
        except Exception:  # not every device reports every property
            return None

    precision = prop("INFERENCE_PRECISION_HINT")
    devices = prop("EXECUTION_DEVICES")
    return {
        "inference_precision": precision.to_string() if precision is not None else None,
        "performance_hint": str(prop("PERFORMANCE_HINT")) if prop("PERFORMANCE_HINT") else None,
        "num_streams": _int_or_none(prop("NUM_STREAMS")),
        "inference_num_threads": _int_or_none(prop("INFERENCE_NUM_THREADS")),
        "optimal_number_of_infer_requests": _int_or_none(prop("OPTIMAL_NUMBER_OF_INFER_REQUESTS")),
        "execution_devices": list(devices) if devices else None,
    }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def port_names(ports: Any, wanted: list[str], kind: str, where: str) -> dict[str, int]:
    """Map each manifest name to the index of the OpenVINO port carrying it.

    OpenVINO keeps ONNX tensor names as port names but may reorder or add aliases, so
    outputs are matched by name, never by position.
    """
    found: dict[str, int] = {}
    for index, port in enumerate(ports):
        for name in port.get_names():
            if name in wanted and name not in found:
                found[name] = index
    missing = [n for n in wanted if n not in found]
    if missing and kind == "output":
        have = sorted({n for p in ports for n in p.get_names()})
        raise BuildError(
            f"{where}: OpenVINO lost the output name(s) {', '.join(missing)} "
            f"(its outputs are named {', '.join(have) or 'nothing'})"
        )
    return found


def bounded_shapes(ov: Any, model: ir.Model, shapes: Mapping[str, ShapeRange]) -> dict[str, Any]:
    """An OpenVINO PartialShape per input with a dimension the target's [shapes] bounds.

    Dimensions are named as in the manifest (an unnamed one `<input>_dim<axis>`); bounded
    dimensions let the CPU plugin size its buffers and pick kernels for the range.
    """
    result = {}
    for value in model.graph.inputs:
        if value.shape is None or not value.name:
            continue
        dims, bounded = [], False
        for axis, dim in enumerate(value.shape):
            name = None if isinstance(dim, int) else str(dim.value or f"{value.name}_dim{axis}")
            if name is None:
                dims.append(ov.Dimension(dim))
            elif name in shapes:
                rng = shapes[name]
                dims.append(
                    ov.Dimension(rng.min) if rng.min == rng.max else ov.Dimension(rng.min, rng.max)
                )
                bounded = True
            else:
                dims.append(ov.Dimension())
        if bounded:
            result[value.name] = ov.PartialShape(dims)
    return result
