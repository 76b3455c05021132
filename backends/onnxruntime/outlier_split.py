"""Outlier channels of a GELU output kept in float before dynamic int8 quantization.

A transformer's feed-forward block is `down(gelu(up(h) + b))`. Its GELU output has one or two
channels 5-17x larger than the median one on every calibration sample (MiniLM: 1-2 per
layer); one per-tensor int8 scale for the down projection's input then leaves the ordinary
channels a handful of levels, and the worst short sentence loses most of its signal.
SmoothQuant cannot fold its scale anywhere here (GELU is not linear), so it costs a Mul over
the widest activation of the block. Instead, as LLM.int8() (Dettmers et al., 2022) does, the
few outlier channels O are taken out of the int8 product and computed in float:

    down(gelu(up(h) + b)) = down_int8(gelu(up'(h) + b'))  +  down[O](gelu(up[:, O](h) + b[O]))

where up' and b' have columns O zeroed (GELU(0) = 0, so the int8 input is exactly zero there
and its scale comes from the ordinary channels) and down's rows O are zeroed too (their
per-column weight scales then come from the rest). The float branch is k columns wide: two
MatMuls of [tokens, hidden] x [hidden, k] and [tokens, k] x [k, out] and one Add. In float
the rewritten graph computes the same function (up to rounding).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from modelkiln.backends.onnxruntime.graph_edit import add_initializer, const_array, read_only_by

# GELU ops f with f(0) = 0, by (domain, op type): index of their bias input, or None.
GELUS: dict[tuple[str, str], int | None] = {
    ("com.microsoft", "BiasGelu"): 1,
    ("com.microsoft", "FastGelu"): 1,
    ("com.microsoft", "Gelu"): None,
    ("", "Gelu"): None,
}
DEFAULT_CHANNELS = 8


@dataclass
class Site:
    """One feed-forward block: `up` MatMul -> (bias Add) -> `gelu` -> `downs` MatMuls."""

    up: ir.Node
    bias_add: ir.Node | None
    gelu: ir.Node
    downs: list[ir.Node]

    @property
    def activation(self) -> ir.Value:
        return self.gelu.outputs[0]


@dataclass
class Split:
    """What the split did, for the manifest; `float_matmuls` must stay out of quantization."""

    channels: int
    sites: int = 0
    float_matmuls: list[str] = field(default_factory=list)  # every branch MatMul
    down_matmuls: list[str] = field(default_factory=list)  # the int8 parts of the downs
    down_branches: list[str] = field(default_factory=list)  # the branches' down MatMuls

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "outlier channels in float (LLM.int8-style decomposition)",
            "channels_per_block": self.channels,
            "blocks": self.sites,
        }


def _is_matmul(node: ir.Node) -> bool:
    return node.op_type == "MatMul" and node.domain in ("", "ai.onnx")


def sites(model: ir.Model) -> list[Site]:
    """Feed-forward blocks whose constant weights the split can rewrite exactly: the up
    projection feeds only the GELU (through at most one bias Add), and only MatMuls with
    constant 2-D weights read the GELU's output."""
    found = []
    for gelu in model.graph:
        bias_index = GELUS.get((gelu.domain or "", gelu.op_type), -1)
        if bias_index == -1 or not gelu.inputs or gelu.inputs[0] is None:
            continue
        if bias_index is not None and len(gelu.inputs) > bias_index:
            if const_array(gelu.inputs[bias_index], 1) is None:
                continue
        producer = gelu.inputs[0].producer()
        bias_add = None
        if (
            producer is not None
            and producer.op_type == "Add"
            and producer.domain in ("", "ai.onnx")
        ):
            if const_array(producer.inputs[1], 1) is None or not read_only_by(
                producer.outputs[0], [gelu]
            ):
                continue
            bias_add, producer = (
                producer,
                producer.inputs[0].producer() if producer.inputs[0] else None,
            )
        if (
            producer is None
            or not _is_matmul(producer)
            or const_array(producer.inputs[1], 2) is None
        ):
            continue
        if not read_only_by(producer.outputs[0], [bias_add or gelu]):
            continue
        users = [u for u, _ in gelu.outputs[0].uses()]
        if not users or gelu.outputs[0].is_graph_output():
            continue
        if any(not _is_matmul(u) or u.inputs[0] is not gelu.outputs[0] for u in users):
            continue
        if any(const_array(u.inputs[1], 2) is None for u in users):
            continue
        found.append(Site(producer, bias_add, gelu, users))
    return found


def outlier_channels(maxima: np.ndarray, count: int) -> np.ndarray:
    """The `count` channels with the largest calibration maxima, in ascending order."""
    count = min(count, maxima.shape[0] - 1)
    return np.sort(np.argsort(-maxima, kind="stable")[:count]).astype(np.int64)


def split(
    model: ir.Model, maxima: Mapping[str, np.ndarray], channels: int
) -> tuple[ir.Model, Split]:
    """A copy of `model` with the `channels` largest channels (by the calibration maxima of
    each GELU output, keyed by its name) of every feed-forward block computed in float."""
    copy = model.clone()
    graph = copy.graph
    record = Split(channels)
    if channels <= 0:
        return copy, record
    for site in sites(copy):
        name = site.activation.name
        if name is None or name not in maxima or maxima[name].shape[0] <= channels:
            continue
        chosen = outlier_channels(maxima[name], channels)
        _rewrite(graph, site, chosen, record)
    return copy, record


def _zeroed(array: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    out = array.copy()
    if axis == 0:
        out[index] = 0
    else:
        out[..., index] = 0
    return out


def _rewrite(graph: ir.Graph, site: Site, chosen: np.ndarray, record: Split) -> None:
    up, gelu = site.up, site.gelu
    label = up.name or site.activation.name or "ffn"
    w_up_value = up.inputs[1]
    assert w_up_value is not None and w_up_value.const_value is not None
    w_up = w_up_value.const_value.numpy()
    up.replace_input_with(
        1, add_initializer(graph, f"{label}_int8_part", _zeroed(w_up, chosen, 1), w_up_value.type)
    )
    branch_up = ir.node(
        "MatMul",
        [
            up.inputs[0],
            add_initializer(graph, f"{label}_outliers", w_up[:, chosen], w_up_value.type),
        ],
        name=f"{label}_outliers",
    )
    branch = [branch_up]
    pre_gelu = branch_up.outputs[0]
    if site.bias_add is not None:  # bias columns O move to the branch
        bias_value = site.bias_add.inputs[1]
        assert bias_value is not None and bias_value.const_value is not None
        bias = bias_value.const_value.numpy()
        site.bias_add.replace_input_with(
            1,
            add_initializer(
                graph, f"{label}_bias_int8_part", _zeroed(bias, chosen, 0), bias_value.type
            ),
        )
        add = ir.node(
            "Add",
            [
                pre_gelu,
                add_initializer(graph, f"{label}_bias_outliers", bias[chosen], bias_value.type),
            ],
            name=f"{label}_outliers_bias",
        )
        branch.append(add)
        pre_gelu = add.outputs[0]
    gelu_inputs: list[ir.Value | None] = [pre_gelu]
    bias_index = GELUS[(gelu.domain or "", gelu.op_type)]
    if bias_index is not None and len(gelu.inputs) > bias_index:
        bias_value = gelu.inputs[bias_index]
        assert bias_value is not None and bias_value.const_value is not None
        bias = bias_value.const_value.numpy()
        gelu.replace_input_with(
            bias_index,
            add_initializer(
                graph, f"{label}_gelu_bias_int8_part", _zeroed(bias, chosen, 0), bias_value.type
            ),
        )
        gelu_inputs.append(
            add_initializer(graph, f"{label}_gelu_bias_outliers", bias[chosen], bias_value.type)
        )
    branch_gelu = ir.node(
        gelu.op_type,
        gelu_inputs,
        attributes=dict(gelu.attributes),
        domain=gelu.domain,
        name=f"{label}_outliers_gelu",
    )
    branch.append(branch_gelu)
    graph.insert_after(up, branch)
    for down in site.downs:
        _split_down(graph, down, chosen, branch_gelu.outputs[0], record)
    record.sites += 1
    record.float_matmuls.append(branch_up.name or "")


def _split_down(
    graph: ir.Graph, down: ir.Node, chosen: np.ndarray, outliers: ir.Value, record: Split
) -> None:
    w_value = down.inputs[1]
    assert w_value is not None and w_value.const_value is not None
    weight = w_value.const_value.numpy()
    if not down.name:  # the caller skips it by name
        down.name = f"{outliers.name}_down_{len(record.down_matmuls)}"
    label = down.name
    down.replace_input_with(
        1, add_initializer(graph, f"{label}_int8_part", _zeroed(weight, chosen, 0), w_value.type)
    )
    product = ir.node(
        "MatMul",
        [outliers, add_initializer(graph, f"{label}_outliers", weight[chosen], w_value.type)],
        name=f"{label}_outliers",
    )
    # After the down projection's own bias Add, so ONNX Runtime still fuses that one into
    # its int8 kernel.
    anchor = down
    users = [u for u, _ in down.outputs[0].uses()]
    if (
        len(users) == 1
        and not down.outputs[0].is_graph_output()
        and users[0].op_type == "Add"
        and const_array(users[0].inputs[1], 1) is not None
    ):
        anchor = users[0]
    result = anchor.outputs[0]
    readers = list(result.uses())
    total = ir.node("Add", [result, product.outputs[0]], name=f"{label}_outliers_add")
    graph.insert_after(anchor, [product, total])
    for user, index in readers:
        user.replace_input_with(index, total.outputs[0])
    if result.is_graph_output():
        outputs = graph.outputs
        outputs[outputs.index(result)] = total.outputs[0]
        name = result.name
        result.name = f"{name}_int8_part"
        total.outputs[0].name = name
    record.float_matmuls.append(product.name or "")
    record.down_branches.append(product.name or "")
    record.down_matmuls.append(label)
