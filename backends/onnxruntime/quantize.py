"""Reduced precisions for the ONNX Runtime backend, each with ONNX Runtime's own tool.

- fp16: `onnxruntime.transformers.float16`, inputs and outputs kept fp32, numerically
  sensitive ops (softmax, normalizations, reductions) kept fp32.
- int8-dynamic: `quantize_dynamic`, per-channel int8 weights of MatMul/Gemm (and the
  embedding tables' Gather), activations quantized at run time.
- int8-smooth: int8-dynamic after the feed-forward blocks' outlier channels are split off in
  float (`outlier_split.py`) and the other MatMul inputs are smoothed (SmoothQuant,
  `smooth_quant.py`), its alpha chosen by the worst cosine on the calibration samples
  (`smoothed_for_int8`).
- int8-static: `quantize_static` in QDQ format (explicit quantization, the form TensorRT
  needs too), per-channel weights, activation ranges from the calibration samples.
- int4-weights: MatMulNBits 4-bit block-quantized weights.

`keep` names ONNX nodes to leave in fp32 (mixed precision). Everything runs on a protobuf
copy in a scratch folder; only the final model is written into the artifact.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.backends.onnxruntime.outlier_split import DEFAULT_CHANNELS
from modelkiln.backends.ort_quantization import CalibrationReader, quiet
from modelkiln.cpu_kernels import int8_kernels
from modelkiln.errors import BuildError

# Kept in fp32 by the fp16 conversion: their reductions overflow or lose too much in fp16.
FP16_BLOCKED = (
    "Softmax",
    "LayerNormalization",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Erf",
    "Exp",
    "Range",
    "CumSum",
)


@dataclass(frozen=True)
class Int4Settings:
    """MatMulNBits' block size (weights per scale) and accuracy level: the precision its
    kernels compute in (0: ORT's default, fp32; 4: int8 activations, the fastest on CPUs,
    e.g. 1.2x over fp32 compute on AVX2 for a 135M-parameter decoder)."""

    block_size: int = 32
    accuracy_level: int = 4


def quantize(
    proto: Any,
    precision: str,
    out_file: Path,
    *,
    calibration: Sequence[Mapping[str, np.ndarray]] = (),
    keep: Sequence[str] = (),
    calibration_cache: Path | None = None,
    int4: Int4Settings | None = None,
    also_float: Sequence[str] = (),
) -> dict[str, Any]:
    """Write `proto` at `precision` to `out_file`; returns what the manifest records.

    `calibration_cache` (a JSON file, created on first use) lets repeated int8-static builds
    of one model with one calibration set, as the mixed-precision search makes, skip
    calibration.

    `also_float`: more nodes to leave in fp32 that are not the user's choice (int8-smooth's
    float branches); the record lists only `keep`."""
    import onnx

    scratch = Path(tempfile.mkdtemp(prefix=".ort-quantize-", dir=out_file.parent))
    try:
        source = scratch / "fp32.onnx"
        onnx.save(proto, str(source), save_as_external_data=False)
        record: dict[str, Any] = {"precision": precision, "kept_fp32": sorted(keep)}
        keep = sorted({*keep, *also_float})
        try:
            with quiet():
                if precision == "fp16":
                    record |= _fp16(source, out_file, keep)
                elif precision in ("int8-dynamic", "int8-smooth"):
                    record |= _int8_dynamic(source, out_file, keep)
                elif precision == "int8-static":
                    if not calibration:
                        raise BuildError("int8-static needs calibration samples")
                    record |= _int8_static(source, out_file, calibration, keep, calibration_cache)
                elif precision == "int4-weights":
                    record |= _int4_weights(source, out_file, keep, int4 or Int4Settings())
                else:
                    raise BuildError(f"onnxruntime cannot build precision {precision}")
        except BuildError:
            raise
        except Exception as exc:  # the quantization tools raise assorted types
            raise BuildError(
                f"onnxruntime quantization to {precision} failed: "
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"
            ) from exc
        if precision.startswith("int8"):
            record["cpu_int8_kernels"] = int8_kernels()  # the CPU its accuracy is measured on
        return record
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _fp16(source: Path, out_file: Path, keep: Sequence[str]) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(
        onnx.load(str(source)),
        keep_io_types=True,
        op_block_list=list(FP16_BLOCKED),
        node_block_list=list(keep) or None,
    )
    onnx.save(model, str(out_file))
    return {"tool": "onnxruntime.transformers.float16", "fp32_ops": list(FP16_BLOCKED)}


def _int8_dynamic(source: Path, out_file: Path, keep: Sequence[str]) -> dict[str, Any]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = ["MatMul", "Gemm", "Gather"]
    quantize_dynamic(
        source,
        out_file,
        op_types_to_quantize=ops,
        per_channel=True,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(keep),
        extra_options={"MatMulConstBOnly": True},
    )
    return {"tool": "onnxruntime.quantization.quantize_dynamic", "ops": ops, "per_channel": True}


def _int8_static(
    source: Path,
    out_file: Path,
    samples: Sequence[Mapping[str, np.ndarray]],
    keep: Sequence[str],
    cache: Path | None,
) -> dict[str, Any]:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = source.with_name("prepared.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    ops = ["MatMul", "Gemm", "Conv", "Gather"]
    quantize_static(
        prepared,
        out_file,
        CalibrationReader(samples),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=ops,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=list(keep),
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"MatMulConstBOnly": True},
        calibration_cache_path=cache,
    )
    if keep:
        _float_inputs(out_file, keep)
    return {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "ops": ops,
        "per_channel": True,
        "activations": "uint8",
        "weights": "int8",
        "calibration": {"method": "MinMax", "samples": len(samples)},
    }


def _int4_weights(
    source: Path, out_file: Path, keep: Sequence[str], settings: Int4Settings
) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    quantizer = MatMulNBitsQuantizer(
        onnx.load(str(source)),
        bits=4,
        block_size=settings.block_size,
        is_symmetric=True,
        accuracy_level=settings.accuracy_level or None,
        nodes_to_exclude=list(keep),
    )
    quantizer.process()
    quantizer.model.save_model_to_file(str(out_file), use_external_data_format=False)
    return {
        "tool": "MatMulNBits",
        "bits": 4,
        "block_size": settings.block_size,
        "accuracy_level": settings.accuracy_level,
        "symmetric": True,
    }


def smoothed_for_int8(
    model: Any,
    calibration: Sequence[Mapping[str, np.ndarray]],
    keep: Sequence[str],
    alphas: Sequence[float],
    stats: tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]] | None = None,
    outlier_channels: int = DEFAULT_CHANNELS,
) -> tuple[
    Any, dict[str, Any], tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]], list[str]
]:
    """`model` (onnx_ir, fused) prepared for int8-dynamic: the `outlier_channels` largest
    channels of each feed-forward block's GELU output split off in float (`outlier_split`),
    then every other MatMul input smoothed with the alpha, of `alphas`, whose int8 build keeps
    the highest worst-case cosine to fp32 on the calibration samples (measured end to end:
    the per-layer quantization error did not predict the worst sentence). Returns it, the
    manifest's record, the calibration statistics (channel maxima of every MatMul input, fp32
    outputs), which a rebuild of the same model with other `keep` can pass back, and the
    nodes quantization must leave in float (the split's branches)."""
    import onnx_ir as ir
    import onnxruntime as ort

    from modelkiln.backends.onnxruntime.outlier_split import split
    from modelkiln.backends.onnxruntime.smooth_quant import (
        channel_maxima,
        matmul_groups,
        run_samples,
        smooth,
        worst_cosine,
    )

    if not calibration:
        raise BuildError("int8-smooth needs calibration samples")
    if stats is None:
        names = list(matmul_groups(model))
        stats = channel_maxima(ir.serde.serialize_model(model), calibration, names)
    maxima, references = stats
    model, parted = split(model, maxima, outlier_channels)
    float_nodes = list(parted.float_matmuls)
    # The down projections' int8 parts are not smoothed (their input's outliers left), nor
    # the float branches reading the split-off channels; the up branches are smoothed with
    # their block's other projection, so a norm that fed only it can still absorb the scale.
    skip = frozenset(keep) | frozenset(parted.down_matmuls) | frozenset(parted.down_branches)
    quantize_keep = sorted({*keep, *float_nodes})
    extra = {"outlier_split": parted.to_json()} if parted.sites else {}
    if len(alphas) == 1:
        candidate, info = smooth(model, maxima, alphas[0], skip)
        return candidate, _smooth_record(info, {}, len(calibration)) | extra, stats, float_nodes
    scores: dict[str, float] = {}
    best: tuple[float, Any, Any] | None = None
    scratch = Path(tempfile.mkdtemp(prefix="kiln-smooth-"))
    try:
        for alpha in alphas:
            candidate, info = smooth(model, maxima, alpha, skip)
            path = scratch / f"alpha-{alpha}.onnx"
            quantize(ir.serde.serialize_model(candidate), "int8-dynamic", path, keep=quantize_keep)
            session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            score = round(worst_cosine(references, run_samples(session, calibration)), 6)
            scores[f"{alpha:g}"] = score
            if best is None or score > best[0]:
                best = (score, candidate, info)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    assert best is not None
    record = _smooth_record(best[2], scores, len(calibration)) | extra
    return best[1], record, stats, float_nodes


def _smooth_record(info: Any, scores: dict[str, float], samples: int) -> dict[str, Any]:
    search = {"alpha_worst_cosine": scores, "metric": "worst output cosine"} if scores else {}
    return {
        "method": "SmoothQuant",
        **info.to_json(),
        **search,
        "calibration_samples": samples,
    }


def _float_inputs(path: Path, keep: Sequence[str]) -> None:
    """Feed the kept nodes their activations unquantized.

    `nodes_to_exclude` keeps a node's weights float, but a QDQ pair on an activation is
    shared by all its consumers, so an excluded node still reads int8-rounded values (the
    query projection shares its input with key and value). Rewire the kept nodes to the
    tensor before its QuantizeLinear."""
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    model = ir.load(path)
    wanted = set(keep)
    for node in model.graph:
        if node.name not in wanted:
            continue
        for index, value in enumerate(node.inputs):
            dq = value.producer() if value is not None else None
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            q = dq.inputs[0].producer() if dq.inputs[0] is not None else None
            if q is not None and q.op_type == "QuantizeLinear":
                node.replace_input_with(index, q.inputs[0])
    RemoveUnusedNodesPass()(model)
    ir.save(model, path)
