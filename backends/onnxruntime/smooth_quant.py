"""SmoothQuant: move activation outliers into the weights before dynamic int8 quantization.

Transformer activations have a few channels far larger than the rest (MiniLM's LayerNorm
outputs reach 30 where the median channel is 2), so one per-tensor int8 scale leaves the
ordinary channels a handful of levels; short inputs ("Ok.", "lol") then lose most of their
signal (min cosine 0.967 with plain dynamic int8). For a MatMul `x · W` the product is kept
exactly by dividing input channel k of x by s_k and multiplying row k of W by s_k
(Xiao et al., "SmoothQuant", 2023): with s_k = max|x_k|^α / max|W_k|^(1-α) both factors
become easy to quantize. The channel maxima come from the calibration samples.

The division is folded into the LayerNormalization that produces x when it feeds only the
smoothed MatMuls (scale and bias divided by s, no extra op), and into the value projection
when x is the context of ONNX Runtime's MultiHeadAttention (each context channel is a
weighted sum of one value channel, so dividing that value column and its bias divides the
channel); other inputs get one Mul by 1/s. The graph computes the same function in float
(up to rounding); only its quantization changes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from modelkiln.backends.onnxruntime.graph_edit import add_initializer, const_array, read_only_by

FLOOR = 1e-5  # channel maxima below this count as this (dead channels, zero weight rows)


@dataclass
class Smoothed:
    """What a smoothing did, for the manifest."""

    alpha: float
    groups: int = 0  # activations smoothed (each feeds one or more MatMuls)
    folded: int = 0  # of them, folded into the LayerNormalization producing them
    folded_values: int = 0  # of them, attention contexts folded into the value projection
    scaled: int = 0  # of them, given an explicit Mul
    matmuls: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "activations": self.groups,
            "folded_into_layer_norm": self.folded,
            "folded_into_attention_values": self.folded_values,
            "explicit_scales": self.scaled,
            "matmuls": len(self.matmuls),
        }


def _weight(node: ir.Node) -> np.ndarray | None:
    return const_array(node.inputs[1] if len(node.inputs) > 1 else None, 2)


def matmul_groups(model: ir.Model, skip: frozenset[str] = frozenset()) -> dict[str, list[ir.Node]]:
    """MatMuls with a constant 2-D float weight, grouped by the activation they read (the
    Q, K and V projections share one); nodes named in `skip` (kept float) are left out."""
    groups: dict[str, list[ir.Node]] = {}
    for node in model.graph:
        x = node.inputs[0] if node.inputs else None
        if node.op_type != "MatMul" or node.domain not in ("", "ai.onnx") or x is None:
            continue
        if node.name in skip or x.name is None or _weight(node) is None:
            continue
        groups.setdefault(x.name, []).append(node)
    return groups


def channel_maxima(
    proto: Any, feeds: Sequence[Mapping[str, np.ndarray]], names: Sequence[str]
) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    """max |value| per last-axis channel of each named tensor over the calibration samples,
    and the model's own outputs for every sample (the reference the alpha search scores
    against), from one ONNX Runtime pass over the samples."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    outputs = [o.name for o in probe.graph.output]
    for name in names:
        if name not in outputs:
            probe.graph.output.append(onnx.ValueInfoProto(name=name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(
        probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    maxima: dict[str, np.ndarray] = {}
    references = []
    for values in run_samples(session, feeds):
        references.append({name: values[name] for name in outputs})
        for name in names:
            array = np.abs(values[name].astype(np.float32))
            channel = array.reshape(-1, array.shape[-1]).max(axis=0)
            maxima[name] = np.maximum(maxima[name], channel) if name in maxima else channel
    return maxima, references


def run_samples(session: Any, feeds: Sequence[Mapping[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Every output of an ONNX Runtime session for each sample, by name (inputs the session
    does not take are left out)."""
    wanted = {i.name for i in session.get_inputs()}
    names = [o.name for o in session.get_outputs()]
    runs = []
    for sample in feeds:
        got = session.run(None, {k: v for k, v in sample.items() if k in wanted})
        runs.append(dict(zip(names, got, strict=True)))
    return runs


def smooth(
    model: ir.Model,
    maxima: Mapping[str, np.ndarray],
    alpha: float,
    skip: frozenset[str] = frozenset(),
) -> tuple[ir.Model, Smoothed]:
    """A copy of `model` with every MatMul group's input divided and its weights multiplied
    by s = max|x|^alpha / max|W|^(1 - alpha), per input channel."""
    copy = model.clone()
    graph = copy.graph
    record = Smoothed(alpha)
    for name, nodes in matmul_groups(copy, skip).items():
        if name not in maxima:
            continue
        x = nodes[0].inputs[0]
        assert x is not None
        weights = [w for w in (_weight(n) for n in nodes) if w is not None]
        if any(w.shape[0] != maxima[name].shape[0] for w in weights):
            continue  # broadcast along another axis: not a per-channel product
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        scale = np.maximum(maxima[name], FLOOR) ** alpha / np.maximum(w_max, FLOOR) ** (1 - alpha)
        scale = np.maximum(scale, FLOOR).astype(np.float32)
        for node, weight in zip(nodes, weights, strict=True):
            value = node.inputs[1]
            assert value is not None
            scaled = add_initializer(
                graph,
                f"{value.name}_smoothed",
                (weight * scale[:, None]).astype(weight.dtype),
                value.type,
            )
            node.replace_input_with(1, scaled)
        record.groups += 1
        record.matmuls += [n.name or "" for n in nodes]
        if _fold_into_layer_norm(x, nodes, scale):
            record.folded += 1
            continue
        if _fold_into_attention_values(x, nodes, scale):
            record.folded_values += 1
            continue
        inverse = add_initializer(
            graph, f"{name}_smooth_scale", 1.0 / scale, ir.TensorType(ir.DataType.FLOAT)
        )
        mul = ir.node("Mul", [x, inverse], name=f"{name}_smooth")
        graph.insert_before(nodes[0], [mul])
        for node in nodes:
            node.replace_input_with(0, mul.outputs[0])
        record.scaled += 1
    from onnx_ir.passes.common import RemoveUnusedNodesPass

    RemoveUnusedNodesPass()(copy)  # the replaced weights
    return copy, record


def _fold_into_layer_norm(x: ir.Value, nodes: list[ir.Node], scale: np.ndarray) -> bool:
    """Divide the LayerNormalization producing `x` by `scale`, if only `nodes` read x and
    its scale and bias are constants (a graph output or another reader needs x as it is)."""
    norm = x.producer()
    if norm is None or norm.op_type != "LayerNormalization" or not read_only_by(x, nodes):
        return False
    if norm.attributes.get_int("axis", -1) not in (-1, len(x.shape or ()) - 1):
        return False
    params = [v for v in norm.inputs[1:3] if v is not None]
    if any(p.const_value is None or len(p.const_value.shape) != 1 for p in params):
        return False
    graph = norm.graph
    assert graph is not None
    for index, param in enumerate(params, start=1):
        assert param.const_value is not None
        array = param.const_value.numpy()
        divided = add_initializer(
            graph, f"{param.name}_smoothed", (array / scale).astype(array.dtype), param.type
        )
        norm.replace_input_with(index, divided)
    return True


def _fold_into_attention_values(x: ir.Value, nodes: list[ir.Node], scale: np.ndarray) -> bool:
    """Divide the value projection feeding the MultiHeadAttention whose context is `x` by
    `scale`, per channel: only when only `nodes` read x, nothing else reads the values, they
    come from a MatMul with a constant weight, the packed Q/K/V bias (if any) is constant, and
    no past key/value joins them (those would stay undivided)."""
    attention = x.producer()
    if attention is None or attention.op_type != "MultiHeadAttention":
        return False
    if attention.domain != "com.microsoft" or attention.outputs[0] is not x:
        return False
    if not read_only_by(x, nodes):
        return False
    inputs = list(attention.inputs)
    if len(inputs) < 3 or any(v is not None for v in inputs[6:]):
        return False
    if any(o.uses() or o.is_graph_output() for o in attention.outputs[1:]):
        return False
    values = inputs[2]
    projection = values.producer() if values is not None else None
    if values is None or projection is None or projection.op_type != "MatMul":
        return False
    if values.is_graph_output() or len(values.uses()) != 1:
        return False
    weight = _weight(projection)
    width = scale.shape[0]
    if weight is None or weight.shape[1] != width:
        return False
    bias_value = inputs[3] if len(inputs) > 3 else None
    bias = None
    if bias_value is not None:
        const = bias_value.const_value
        if const is None or const.shape != ir.Shape([3 * width]):
            return False
        bias = const.numpy().copy()
        dtype = bias.dtype
    graph = attention.graph
    assert graph is not None
    old = projection.inputs[1]
    assert old is not None
    divided = add_initializer(
        graph,
        f"{old.name}_context_smoothed",
        (weight / scale[None, :]).astype(weight.dtype),
        old.type,
    )
    projection.replace_input_with(1, divided)
    if bias is not None and bias_value is not None:
        bias[2 * width :] = bias[2 * width :] / scale
        new_bias = add_initializer(
            graph, f"{bias_value.name}_context_smoothed", bias.astype(dtype), bias_value.type
        )
        attention.replace_input_with(3, new_bias)
    return True


def worst_cosine(
    references: Sequence[Mapping[str, np.ndarray]], candidates: Sequence[Mapping[str, np.ndarray]]
) -> float:
    """The lowest cosine, over samples, batch rows and float outputs, between a candidate's
    outputs and the fp32 model's."""
    worst = 1.0
    for ref, cand in zip(references, candidates, strict=True):
        for name, expected in ref.items():
            if not np.issubdtype(expected.dtype, np.floating):
                continue
            a = expected.reshape(expected.shape[0], -1).astype(np.float64)
            b = cand[name].reshape(a.shape[0], -1).astype(np.float64)
            norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
            cos = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-300), 1.0)
            worst = min(worst, float(np.nan_to_num(cos, nan=-1.0).min()))
    return worst
