"""int8 for TensorRT: explicit quantization, Q/DQ pairs in the ONNX graph.

TensorRT 11 has no INT8 builder flag nor calibrator: int8 comes only from QuantizeLinear /
DequantizeLinear nodes, and TensorRT takes symmetric int8 quantization only (zero point 0,
signed int8 for activations too). ONNX Runtime's `quantize_static` writes that form with
`ActivationSymmetric`/`WeightSymmetric` and QInt8 activations; ranges come from the
target's calibration samples.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.backends.ort_quantization import CalibrationReader, quiet
from modelkiln.errors import BuildError, first_line

OPS = ("MatMul", "Gemm", "Conv")


def quantize_qdq(
    model_bytes: bytes,
    samples: Sequence[Mapping[str, np.ndarray]],
    keep: Sequence[str] = (),
) -> tuple[bytes, dict[str, Any]]:
    """(the Q/DQ model, the quantization record) of a float32 model."""
    if not samples:
        raise BuildError("int8 on TensorRT needs calibration samples (--calibration FILE)")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory(prefix="kiln-trt-qdq-") as scratch:
        source, out = Path(scratch) / "float.onnx", Path(scratch) / "qdq.onnx"
        source.write_bytes(model_bytes)
        try:
            with quiet():
                quantize_static(
                    source,
                    out,
                    CalibrationReader(samples),
                    quant_format=QuantFormat.QDQ,
                    op_types_to_quantize=list(OPS),
                    per_channel=True,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    nodes_to_exclude=list(keep),
                    calibrate_method=CalibrationMethod.MinMax,
                    extra_options={
                        "ActivationSymmetric": True,
                        "WeightSymmetric": True,
                        "MatMulConstBOnly": True,
                    },
                )
        except Exception as exc:  # ORT's quantizer raises whatever its passes raise
            raise BuildError(f"Q/DQ quantization for TensorRT failed: {first_line(exc)}") from None
        quantized = out.read_bytes()
    record = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ (explicit quantization)",
        "symmetric": True,
        "activations": "int8",
        "weights": "int8",
        "per_channel": True,
        "ops": list(OPS),
        "calibration": {"method": "MinMax", "samples": len(samples)},
    }
    return quantized, record
