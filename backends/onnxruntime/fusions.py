"""ONNX Runtime's contrib-op fusions, as a backend pass of the onnxruntime backend only.

onnxscript's `ort_fusions` rewrite rules turn the portable graph's transformer blocks into
ONNX Runtime's own kernels (com.microsoft domain): `SkipLayerNormalization` (residual add +
LayerNorm), `BiasGelu`, `MultiHeadAttention` and, at the last level, `Attention` (one packed
QKV projection). ONNX Runtime's load-time optimizer finds some of these by itself, but not
attention on the graph torch.export makes. They run on a copy of the model inside the
onnxruntime backend's build, so the graph shared with OpenVINO and TensorRT never holds a
com.microsoft op.

Levels, each including the one before:
- `norms`: SkipLayerNormalization, BiasGelu (erf-GELU recognised first);
- `multi-head`: + MultiHeadAttention; the Q, K and V projections stay MatMuls, so int8
  quantization still reaches them;
- `attention`: + Attention with one packed QKV weight (fastest in float).
`auto` picks per precision what `benchmarks/minilm.py` measured fastest; `off` runs none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import onnx_ir as ir

from modelkiln.manifest import PassRecord
from modelkiln.precision.names import Precision

LEVELS = ("off", "norms", "multi-head", "attention")
AUTO = "auto"
CHOICES = (AUTO, *LEVELS)
# What `auto` runs, per precision: packed-QKV Attention is fastest in float; quantized
# precisions keep the Q/K/V MatMuls (ORT's quantized attention was slower than MatMulInteger
# projections with MultiHeadAttention).
AUTO_LEVEL = {
    Precision.FP32: "attention",
    Precision.FP16: "attention",
    Precision.INT8_DYNAMIC: "multi-head",
    Precision.INT8_SMOOTH: "multi-head",
    Precision.INT8_STATIC: "multi-head",
    Precision.INT4_WEIGHTS: "multi-head",
}


def resolve(level: str, precision: Precision) -> str:
    return AUTO_LEVEL.get(precision, "off") if level == AUTO else level


def _steps(level: str) -> list[tuple[str, Callable[[ir.Model], int]]]:
    """(pass name, fusion) in the order onnxscript's own `fuse_xformers` applies them."""
    from onnxscript.rewriter.ort_fusions.attention import fuse_attention
    from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
    from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
    from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu
    from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
    from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
    from onnxscript.rewriter.ort_fusions.mha_scale import fuse_mha_scale
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
    from onnxscript.rewriter.ort_fusions.skip_normalization import (
        fuse_skip_layer_normalization,
    )

    steps: list[tuple[str, Callable[[ir.Model], int]]] = [
        ("ort-erf-gelu", fuse_erfgelu),
        ("ort-skip-layer-norm", fuse_skip_layer_normalization),
    ]
    if level in ("multi-head", "attention"):
        steps += [
            ("ort-sdpa", lambda m: fuse_sdpa(m, apply_shape_inference=True)),
            ("ort-multi-head-attention", lambda m: fuse_mha1(m) + fuse_mha2(m)),
            ("ort-attention-scale", fuse_mha_scale),
            ("ort-attention-bias", fuse_mha_bias),
        ]
    if level == "attention":
        steps.append(("ort-packed-attention", fuse_attention))
    steps += [("ort-gelu", fuse_gelu), ("ort-bias-gelu", fuse_bias_gelu)]
    return steps


def _count(model: ir.Model) -> int:
    return sum(1 for _ in model.graph.all_nodes())


def _timed(name: str, model: ir.Model, run: Callable[[ir.Model], Any]) -> PassRecord:
    before, start = _count(model), time.perf_counter()
    run(model)
    after = _count(model)
    return PassRecord(name, before, after, after != before, round(time.perf_counter() - start, 4))


def fuse(model: ir.Model, level: str) -> tuple[ir.Model, list[PassRecord], dict[str, int]]:
    """A fused copy of `model` (the original is left as it is), a record per pass for the
    manifest and the count of each fusion made."""
    from onnx_ir.passes import common
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES

    if level == "off":
        return model, [], {}
    fused = model.clone()
    counts: dict[str, int] = {}
    records = [
        _timed("ort-prepare", fused, lambda m: (common.ShapeInferencePass()(m), optimize(m)))
    ]

    for name, step in _steps(level):

        def counted(m: ir.Model, name: str = name, step: Callable[[ir.Model], int] = step) -> None:
            counts[name] = int(step(m))

        records.append(_timed(name, fused, counted))
    records.append(
        _timed(
            "ort-cleanup",
            fused,
            lambda m: (
                optimize(m),  # inlines the intermediate functions no later fusion took
                rewrite(m, ORT_PATTERN_REWRITE_RULES),
                common.RemoveUnusedNodesPass()(m),
                common.RemoveUnusedOpsetsPass()(m),
            ),
        )
    )
    for record, name in zip(records[1:-1], [n for n, _ in _steps(level)], strict=True):
        record.modified = counts.get(name, 0) > 0
    return fused, records, counts
