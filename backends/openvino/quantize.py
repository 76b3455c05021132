"""Reduced precisions for the OpenVINO backend, with NNCF (OpenVINO's own compression tool).

- int8-static: `nncf.quantize` with the calibration samples, transformer model type,
  SmoothQuant off unless the target asks (`smooth_quant = true`): on MiniLM it costs
  accuracy on short sentences.
- int8-weights / int4-weights: `nncf.compress_weights` (weights only, activations stay
  floating point; no calibration data needed).
- bf16 is not a graph change: it is the inference precision hint (see backend.py).

`keep` names nodes (ONNX node names, which OpenVINO keeps as friendly names) to leave in
floating point (mixed precision). nncf is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from modelkiln.backends.openvino.common import no_telemetry
from modelkiln.backends.registry import install_hint
from modelkiln.errors import BackendUnavailable, BuildError


def import_nncf() -> Any:
    try:
        with no_telemetry():  # NNCF starts OpenVINO's usage telemetry when imported
            import nncf
    except ImportError:
        raise BackendUnavailable(
            f"quantizing for openvino needs nncf, which is not installed: "
            f"{install_hint('openvino')}"
        ) from None
    return nncf


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """NNCF logs INFO lines and draws its own progress bars; modelkiln has its own progress."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def quantize(
    ov_model: Any,
    precision: str,
    *,
    calibration: Sequence[Mapping[str, np.ndarray]] = (),
    keep: Sequence[str] = (),
    smooth_quant: bool = False,
    float_names: Sequence[str] = (),
) -> tuple[Any, dict[str, Any]]:
    """(compressed model, what the manifest records). `float_names`: layers NNCF leaves in
    floating point besides `keep` (the target's `float_layers`, recorded by the caller)."""
    nncf = import_nncf()
    record: dict[str, Any] = {
        "precision": precision,
        "tool": f"nncf {nncf.__version__}",
        "kept_fp32": sorted(keep),
    }
    left_float = [*keep, *float_names]
    ignored = nncf.IgnoredScope(names=left_float, validate=False) if left_float else None
    try:
        with _quiet():
            if precision == "int8-static":
                if not calibration:
                    raise BuildError("int8-static needs calibration samples")
                advanced = None
                if not smooth_quant:
                    advanced = nncf.AdvancedQuantizationParameters(
                        smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)
                    )
                model = nncf.quantize(
                    ov_model,
                    nncf.Dataset(list(calibration)),
                    model_type=nncf.ModelType.TRANSFORMER,
                    subset_size=len(calibration),
                    ignored_scope=ignored,
                    advanced_parameters=advanced,
                )
                record |= {
                    "method": "nncf.quantize",
                    "model_type": "transformer",
                    "smooth_quant": smooth_quant,
                    "calibration": {"samples": len(calibration)},
                }
            elif precision in ("int8-weights", "int4-weights"):
                mode = (
                    nncf.CompressWeightsMode.INT8_ASYM
                    if precision == "int8-weights"
                    else nncf.CompressWeightsMode.INT4_SYM
                )
                options: dict[str, Any] = {"mode": mode, "ignored_scope": ignored}
                if precision == "int4-weights":
                    # Layers int4 cannot serve (e.g. embeddings) fall back to int8.
                    options |= {"group_size": 32, "ratio": 1.0}
                model = nncf.compress_weights(ov_model, **options)
                record |= {"method": "nncf.compress_weights", "mode": mode.value}
            else:
                raise BuildError(f"openvino cannot build precision {precision}")
    except (BuildError, BackendUnavailable):
        raise
    except Exception as exc:  # NNCF raises assorted types
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise BuildError(
            f"nncf could not compress the model to {precision}: {type(exc).__name__}: {text}"
        ) from exc
    return model, record


def keep_float(quantized: Any, keep: Collection[str]) -> tuple[Any, list[str]]:
    """A copy of an NNCF-quantized model with the nodes named in `keep` back in floating
    point: the FakeQuantize ops feeding them are bypassed for them alone (other consumers
    of the same FakeQuantize stay quantized). No recalibration: the mixed-precision search
    tries many `keep` sets on one calibrated model. Returns (model, names it could not keep
    float: no such node, or a node NNCF left unquantized, such as an embedding's Gather)."""
    model = quantized.clone()
    wanted = set(keep)
    kept = set()
    for op in model.get_ordered_ops():
        if op.get_friendly_name() not in wanted:
            continue
        for port in op.inputs():
            source = port.get_source_output()
            producer = source.get_node()
            if producer.get_type_name() == "FakeQuantize":
                port.replace_source_output(producer.input_value(0))
                kept.add(op.get_friendly_name())
    model.validate_nodes_and_infer_types()
    return model, sorted(wanted - kept)
