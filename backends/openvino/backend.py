"""OpenVINO backend: the ONNX model from our passes, saved as OpenVINO IR (`model.xml`/`.bin`).

Build converts the same portable ONNX model the ONNX Runtime backend ships (never the torch
module), saves it as IR with an explicit fp16-weight-compression choice and compiles it once
to check it and record what the device makes of the target's precision. Load compiles with
`PERFORMANCE_HINT` and an explicit `INFERENCE_PRECISION_HINT` from the target: OpenVINO would
otherwise pick bf16 on CPUs that support it and silently change the numerics.

Neither importing openvino nor converting a model sends OpenVINO's usage telemetry
(`common.no_telemetry`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkiln.backends.base import BuildRequest
from modelkiln.backends.openvino.common import (
    bounded_shapes,
    compile_config,
    import_openvino,
    no_telemetry,
    ov_device,
    ov_message,
    port_names,
    reported_properties,
)
from modelkiln.backends.openvino.layer_roles import ROLES, layers_by_role
from modelkiln.backends.openvino.quantize import import_nncf, keep_float, quantize
from modelkiln.backends.openvino.session import OpenVinoSession
from modelkiln.backends.target_checks import (
    check_device,
    check_options,
    check_precision,
    option_choice,
    option_flag,
)
from modelkiln.errors import BackendUnavailable, BuildError, UserInputError
from modelkiln.manifest import BackendSection
from modelkiln.precision.names import Precision

if TYPE_CHECKING:
    import numpy as np
    import onnx_ir as ir

    from modelkiln.artifact import Artifact
    from modelkiln.targets import Target

XML_FILE = "model.xml"
BIN_FILE = "model.bin"
OPTIONS = {
    "performance_hint",
    "compress_to_fp16",
    "smooth_quant",
    "float_layers",
    "float_precision",
}
# What the float parts of a quantized model compute in (`float_precision`): f32 by default;
# bf16 where the CPU has it (AMX / AVX512-BF16), which a CPU without runs as f32.
FLOAT_PRECISIONS = ("f32", "bf16")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
# Our precisions, in the order `--precision auto` tries them -> the INFERENCE_PRECISION_HINT
# each compiles with. Quantized models keep f32 for what stays floating point unless the
# target's `float_precision` asks for bf16 (which changes those numerics too).
PRECISION_HINTS = {
    Precision.FP32: "f32",
    Precision.BF16: "bf16",
    Precision.INT8_WEIGHTS: "f32",
    Precision.INT8_STATIC: "f32",
    Precision.INT4_WEIGHTS: "f32",
}


class OpenVinoBackend:
    name = "openvino"
    precisions = tuple(PRECISION_HINTS)
    calibrated = frozenset({Precision.INT8_STATIC})

    def __init__(self) -> None:
        # NNCF-quantized models by (model, precision, calibration): the mixed-precision
        # search builds one model many times with different nodes kept float.
        self._quantized: dict[
            tuple[int, str, int, tuple[str, ...]], tuple[Any, dict[str, Any]]
        ] = {}

    def check(self, target: Target) -> None:
        ov = import_openvino()
        check_options(target, self.name, OPTIONS)
        option_choice(target, "performance_hint", PERFORMANCE_HINTS, "LATENCY", ignore_case=True)
        option_flag(target, "compress_to_fp16", False)
        option_flag(target, "smooth_quant", False)
        option_choice(target, "float_precision", FLOAT_PRECISIONS, "f32")
        float_roles(target)
        check_precision(target, self.name, self.precisions)
        if Precision(target.precision).quantized:
            import_nncf()
        try:
            available = list(ov.Core().available_devices)
        except Exception as exc:  # a broken install or plugin
            raise BackendUnavailable(
                f"openvino cannot list its devices: {ov_message(exc)}"
            ) from None
        check_device(
            target, self.name, [d.lower() for d in available], available=True, ignore_case=True
        )

    def build(self, request: BuildRequest) -> BackendSection:
        import onnx_ir as ir

        ov = import_openvino()
        model, target, out = request.model, request.target, request.out
        quantization: dict[str, Any] | None = None
        compress = option_flag(target, "compress_to_fp16", False)
        hint = option_choice(target, "performance_hint", PERFORMANCE_HINTS, "LATENCY", True)
        precision_hint = PRECISION_HINTS[request.precision]
        if request.precision.quantized:  # the table's f32 is the default of float_precision
            precision_hint = option_choice(
                target, "float_precision", FLOAT_PRECISIONS, precision_hint
            )
        device = ov_device(target.device)
        # The ONNX file is an intermediate: it lives in a hidden folder inside `out` (same
        # disk as the artifact) that is removed whatever happens, since every file left in
        # `out` becomes part of the artifact. Weights go to external data, so models over
        # protobuf's 2 GiB limit convert too.
        scratch = Path(tempfile.mkdtemp(prefix=".openvino-build-", dir=out))
        try:
            onnx_path = scratch / "model.onnx"
            ir.save(model, onnx_path, external_data="model.onnx.data", size_threshold_bytes=1024)
            try:
                with no_telemetry():
                    ov_model = ov.convert_model(onnx_path)
            except Exception as exc:  # OpenVINO raises its own exception types
                raise BuildError(
                    f"openvino cannot convert the ONNX model: {ov_message(exc)}"
                ) from None
            # Inputs OpenVINO dropped (unused by the graph) have nothing to bound.
            present = {n for port in ov_model.inputs for n in port.get_names()}
            bounds = {
                k: v for k, v in bounded_shapes(ov, model, target.shapes).items() if k in present
            }
            if bounds:
                try:
                    ov_model.reshape(bounds)
                except Exception as exc:  # OpenVINO raises its own exception types
                    ranges = ", ".join(f"{k} {v}" for k, v in bounds.items())
                    raise BuildError(
                        f"openvino cannot bound the inputs of target '{target.name}' to "
                        f"{ranges}: {ov_message(exc)}"
                    ) from None
            input_shapes = {
                port.get_any_name(): port.get_partial_shape().to_string()
                for port in ov_model.inputs
            }
            if request.precision.quantized:
                ov_model, quantization = self._quantize(
                    model, ov_model, target, request.calibration, request.keep_float
                )
            try:
                ov.save_model(ov_model, out / XML_FILE, compress_to_fp16=compress)
            except Exception as exc:  # OpenVINO raises its own exception types
                for name in (XML_FILE, BIN_FILE):  # a partial save
                    (out / name).unlink(missing_ok=True)
                raise BuildError(f"openvino cannot save the model: {ov_message(exc)}") from None
            del ov_model
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

        # Compile once (no cache: this folder is a staging folder) so a model the device
        # cannot run fails the build, and record what the device makes of our hints.
        core = ov.Core()
        try:
            compiled = core.compile_model(
                str(out / XML_FILE), device, compile_config(hint, precision_hint)
            )
        except Exception as exc:  # OpenVINO raises its own exception types
            raise BuildError(
                f"openvino cannot compile the model for {device}: {ov_message(exc)}"
            ) from None
        outputs = [v.name for v in model.graph.outputs if v.name]
        port_names(compiled.outputs, outputs, "output", "openvino build")
        reported = reported_properties(compiled)
        del compiled
        details = {
            "device": device,
            "compress_to_fp16": compress,
            # The IR's input shapes: the target's [shapes] ranges become bounded dimensions
            # ("1..256"), a range with min == max a static one.
            "input_shapes": input_shapes,
            "performance_hint": hint,
            "inference_precision_hint": precision_hint,
            # Properties as reported by the build machine's compiled model; a machine that
            # loads the artifact may report others (e.g. f32 on a CPU without bf16).
            "compiled": reported,
            "openvino_version": ov.get_version(),
            **({"quantization": quantization} if quantization else {}),
        }
        return BackendSection(self.name, {"model": XML_FILE, "weights": BIN_FILE}, details)

    def _quantize(
        self,
        model: ir.Model,
        ov_model: Any,
        target: Target,
        calibration: Sequence[Mapping[str, np.ndarray]],
        keep: frozenset[str],
    ) -> tuple[Any, dict[str, Any]]:
        roles = float_roles(target)
        key = (id(model), target.precision, id(calibration), roles)
        if key not in self._quantized:
            by_role = layers_by_role(ov_model, roles)
            quantized, record = quantize(
                ov_model,
                target.precision,
                calibration=calibration,
                smooth_quant=option_flag(target, "smooth_quant", False),
                float_names=[name for names in by_role.values() for name in names],
            )
            if roles:
                record["float_layers"] = by_role
            self._quantized[key] = quantized, record
        quantized, record = self._quantized[key]
        mixed, missing = keep_float(quantized, keep)
        if missing:
            raise BuildError(
                f"cannot keep {', '.join(missing)} in floating point: the quantized model has "
                "no such quantized node"
            )
        return mixed, {**record, "kept_fp32": sorted(keep)}

    def load(self, artifact: Artifact, **options: Any) -> OpenVinoSession:
        return OpenVinoSession(artifact, **options)


def float_roles(target: Target) -> tuple[str, ...]:
    """The target's `float_layers`: roles of linear layers quantization leaves float."""
    value = target.options.get("float_layers", [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v in ROLES for v in value):
        raise UserInputError(
            f"target '{target.name}': float_layers must be a list of {', '.join(ROLES)}, "
            f"got {value!r}"
        )
    return tuple(dict.fromkeys(value))
