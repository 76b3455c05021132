"""ONNX Runtime's contrib-op fusions, as a backend pass of the onnxruntime backend only.

onnxscript's `ort_fusions` rewrite rules turn the portable graph's transformer blocks into
ONNX Runtime's own kernels (com.microsoft domain): `SkipLayerNormalization` (residual add +
LayerNorm), `BiasGelu`, `MultiHeadAttention` and, at the last level, `Attention` (one packed
QKV projection). ONNX Runtime's load-time optimizer finds some of these by itself, but not
attention on the graph torch.export makes. They run on a copy of the model inside the
onnxruntime backend's build, so the graph shared with OpenVINO and TensorRT never holds a
com.microsoft op.

Levels, each including the one before:
- `norms`: SkipLayerNormalization, BiasGelu (erf-GELU recognised first), and for decoders
  SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization (RMSNorm);
- `multi-head`: + MultiHeadAttention; the Q, K and V projections stay MatMuls, so int8
  quantization still reaches them;
- `attention`: + Attention with one packed QKV weight (fastest in float).
`auto` picks per precision what `benchmarks/minilm.py` measured fastest; `off` runs none.

On the CPU execution provider the residual add + norm stay `Add` + `LayerNormalization` (or
`SimplifiedLayerNormalization`): `skip_norms=False`, and the session disables ONNX Runtime's own
`SkipLayerNormFusion`. onnxruntime 1.32's CPU SkipLayerNormalization kernel measured 2.6x (1x128
tokens) to 6.5x (32x128) slower than Add + LayerNormalization, SkipSimplifiedLayerNormalization
up to 1.8x slower than its pair and never faster (`benchmarks/ort_kernels.py`); on MiniLM that
is 4-16 % of a whole inference. Other execution providers get the fused kernels.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from modelkiln.manifest import PassRecord
from modelkiln.precision.names import Precision
from modelkiln.rule_filter import root_filtered

LEVELS = ("off", "norms", "multi-head", "attention")
# ONNX Runtime's load-time fusions an artifact for the CPU execution provider turns off.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
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


def _steps(level: str, skip_norms: bool) -> list[tuple[str, Callable[[ir.Model], int]]]:
    """(pass name, fusion) in the order onnxscript's own `fuse_xformers` applies them."""
    from onnxscript.rewriter.ort_fusions.attention import fuse_attention
    from onnxscript.rewriter.ort_fusions.bias_gelu import fuse_bias_gelu
    from onnxscript.rewriter.ort_fusions.erfgelu import fuse_erfgelu
    from onnxscript.rewriter.ort_fusions.gelu import fuse_gelu
    from onnxscript.rewriter.ort_fusions.mha import fuse_mha1, fuse_mha2
    from onnxscript.rewriter.ort_fusions.mha_bias import fuse_mha_bias
    from onnxscript.rewriter.ort_fusions.mha_scale import fuse_mha_scale
    from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
    from onnxscript.rewriter.ort_fusions.sdpa import fuse_sdpa
    from onnxscript.rewriter.ort_fusions.sdpa_via_mha import replace_sdpa_by_mha
    from onnxscript.rewriter.ort_fusions.skip_normalization import (
        fuse_skip_layer_normalization,
        fuse_skip_rms_normalization,
    )

    steps: list[tuple[str, Callable[[ir.Model], int]]] = [
        ("ort-erf-gelu", fuse_erfgelu),
        ("ort-rms-norm", fuse_rms_normalization),
    ]
    if skip_norms:
        steps += [
            ("ort-skip-layer-norm", fuse_skip_layer_normalization),
            ("ort-skip-rms-norm", fuse_skip_rms_normalization),
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
    if level in ("multi-head", "attention"):
        # Attention no MHA rule took (decoders' with a KV cache, rotary embeddings) stays in
        # the rewriter's intermediate SDPA op: MultiHeadAttention computes it.
        steps.append(("ort-sdpa-as-multi-head", replace_sdpa_by_mha))
    return steps


def count_nodes(model: ir.Model) -> int:
    """Nodes of `model`, those of subgraphs included."""
    return sum(1 for _ in model.graph.all_nodes())


def timed_pass(name: str, model: ir.Model, run: Callable[[ir.Model], Any]) -> PassRecord:
    """`run(model)` in place, recorded for the manifest: nodes before and after, seconds."""
    before, start = count_nodes(model), time.perf_counter()
    run(model)
    after = count_nodes(model)
    return PassRecord(name, before, after, after != before, round(time.perf_counter() - start, 4))


@dataclass
class Fused:
    """`model`: the fused copy (or the original, when `reverted` says why the copy could not
    ship); `passes`: one record per pass for the manifest; `counts`: fusions made."""

    model: ir.Model
    passes: list[PassRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    reverted: str | None = None

    def record(self) -> dict[str, Any]:
        extra = {"reverted": self.reverted} if self.reverted else {}
        return {"fused": dict(self.counts), **extra}


def fuse(model: ir.Model, level: str, skip_norms: bool = True) -> Fused:
    """A fused copy of `model` (the original is left as it is). If the rules left the copy
    unfit to ship (another interface, or an intermediate op of the rewriter's own domain
    that no later fusion consumed), the original, with the reason. `skip_norms`: fuse residual
    add + norm into Skip(Simplified)LayerNormalization (not for the CPU provider)."""
    from onnx_ir.passes import common
    from onnxscript.optimizer import optimize
    from onnxscript.rewriter import rewrite
    from onnxscript.rewriter.ort_fusions import ORT_PATTERN_REWRITE_RULES

    if level == "off":
        return Fused(model)
    fused = model.clone()
    counts: dict[str, int] = {}
    # Shapes for the attention rules; the shared passes already folded and simplified.
    records = [timed_pass("ort-prepare", fused, common.ShapeInferencePass())]

    for name, step in _steps(level, skip_norms):

        def counted(m: ir.Model, name: str = name, step: Callable[[ir.Model], int] = step) -> None:
            counts[name] = int(step(m))

        records.append(timed_pass(name, fused, counted))
        records[-1].modified = counts[name] > 0

    def cleanup(m: ir.Model) -> None:
        optimize(m)  # inlines the intermediate functions no later fusion took
        rewrite(m, root_filtered(ORT_PATTERN_REWRITE_RULES))
        common.RemoveUnusedNodesPass()(m)
        common.RemoveUnusedOpsetsPass()(m)
        _drop_rewriter_metadata(m)

    records.append(timed_pass("ort-cleanup", fused, cleanup))
    problem = _unfit(model, fused)
    if problem:
        note = PassRecord(
            "ort-fusions-reverted", records[-1].nodes_after, count_nodes(model), True, 0.0
        )
        return Fused(model, [*records, note], counts, problem)
    return Fused(fused, records, counts)


ORT_DOMAINS = ("", "ai.onnx", "com.microsoft")


def _unfit(original: ir.Model, fused: ir.Model) -> str | None:
    """Why `fused` cannot ship in place of `original`, or None."""

    def interface(m: ir.Model) -> tuple[list[str | None], list[str | None]]:
        return [v.name for v in m.graph.inputs], [v.name for v in m.graph.outputs]

    if interface(fused) != interface(original):
        return f"the interface changed from {interface(original)} to {interface(fused)}"
    functions = {(f.domain, f.name) for f in fused.functions.values()}
    for node in fused.graph.all_nodes():
        if node.domain not in ORT_DOMAINS and (node.domain, node.op_type) not in functions:
            return f"{node.domain}::{node.op_type} is left in the graph"
    return None


def _drop_rewriter_metadata(model: ir.Model) -> None:
    """onnxscript notes on values what it folded them from; dropped so the same model gives
    the same bytes whether it was traced in this process or read from the build cache."""
    outputs = (value for node in model.graph.all_nodes() for value in node.outputs)
    for value in itertools.chain(outputs, model.graph.initializers.values()):
        for key in [k for k in value.metadata_props if k.startswith("pkg.onnxscript")]:
            del value.metadata_props[key]
