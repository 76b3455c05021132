"""MultiHeadAttention without its attention bias when that bias is all zeros (no padding).

ONNX Runtime's CPU MultiHeadAttention has two kernels: a flash-attention loop (tiled; the
[sequence, sequence] scores never stored) that it takes only when the node gets no mask, no
bias and no past, and the unfused one (scores per batch x head, + bias, softmax, x values)
otherwise. An encoder exported from transformers always passes the additive bias it builds
from the attention mask, and that bias is all zeros whenever no token is padding (always at
batch 1, and for batches of equal lengths). This pass puts each such node in an If on
`ReduceMax(Abs(bias)) == 0`, computed once per bias tensor: the then-branch is the node
without the bias (the flash kernel), the else-branch the node as it was. softmax(s + 0) =
softmax(s), so both branches compute the same function; the flash kernel rounds differently
(about 1e-6 on MiniLM's fp32 attention). Only for the CPU execution provider, after
quantization (the smoothing folds look for the attention node itself).
"""

from __future__ import annotations

import numpy as np
import onnx_ir as ir

from modelkiln.backends.onnxruntime.fusions import timed_pass
from modelkiln.backends.onnxruntime.graph_edit import add_initializer
from modelkiln.manifest import PassRecord

PASS_NAME = "ort-unpadded-attention"
BIAS = 5  # MultiHeadAttention's attention_bias input; 4 is key_padding_mask, 6-7 past


def _eligible(node: ir.Node) -> bool:
    if node.op_type != "MultiHeadAttention" or node.domain != "com.microsoft":
        return False
    inputs = list(node.inputs)
    if len(inputs) <= BIAS or inputs[BIAS] is None or inputs[4] is not None:
        return False
    if any(v is not None for v in inputs[BIAS + 1 :]) or inputs[0] is None:
        return False
    if node.attributes.get_int("unidirectional", 0):
        return False  # the flash kernel is bidirectional only
    if any(o.uses() or o.is_graph_output() for o in node.outputs[1:]):
        return False
    dtype = inputs[0].dtype
    bias_dtype = inputs[BIAS].dtype  # type: ignore[union-attr]
    return dtype == ir.DataType.FLOAT and bias_dtype == ir.DataType.FLOAT


def applies(model: ir.Model) -> bool:
    """Whether `model` has a node this pass would wrap."""
    return any(_eligible(node) for node in model.graph)


def _no_padding(graph: ir.Graph, bias: ir.Value, before: ir.Node, index: int) -> ir.Value:
    zero = add_initializer(
        graph,
        f"unpadded_attention_zero_{index}",
        np.array(0.0, np.float32),
        ir.TensorType(ir.DataType.FLOAT),
    )
    magnitude = ir.node("Abs", [bias], name=f"unpadded_attention_abs_{index}")
    largest = ir.node(
        "ReduceMax",
        [magnitude.outputs[0]],
        attributes={"keepdims": 0},
        name=f"unpadded_attention_max_{index}",
    )
    equal = ir.node("Equal", [largest.outputs[0], zero], name=f"unpadded_attention_{index}")
    graph.insert_before(before, [magnitude, largest, equal])
    equal.outputs[0].name = f"no_padding_{index}"
    return equal.outputs[0]


def _branch(node: ir.Node, inputs: list[ir.Value | None], name: str) -> ir.Graph:
    while inputs and inputs[-1] is None:
        inputs.pop()
    output = ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT))
    inner = ir.node(
        node.op_type,
        inputs,
        attributes=dict(node.attributes),
        domain=node.domain,
        outputs=[output],
        name=name,
    )
    return ir.Graph(inputs=[], outputs=[output], nodes=[inner], name=name)


def wrap(model: ir.Model) -> PassRecord:
    """Rewrite `model` in place; the record counts nodes as the other passes do."""
    return timed_pass(PASS_NAME, model, _wrap)


def _wrap(model: ir.Model) -> None:
    graph = model.graph
    conditions: dict[int, ir.Value] = {}
    for index, node in enumerate(list(graph)):
        if not _eligible(node):
            continue
        bias = node.inputs[BIAS]
        assert bias is not None
        condition = conditions.get(id(bias))
        if condition is None:
            condition = _no_padding(graph, bias, node, len(conditions))
            conditions[id(bias)] = condition
        label = node.name or f"attention_{index}"
        inputs = list(node.inputs)
        unpadded = _branch(node, inputs[:BIAS], f"{label}_unpadded")
        padded = _branch(node, inputs, f"{label}_padded")
        choice = ir.node(
            "If",
            [condition],
            attributes={"then_branch": unpadded, "else_branch": padded},
            name=f"{label}_if_unpadded",
        )
        # The If takes the node's place, its output the node's name, type, shape and readers.
        ir.convenience.replace_nodes_and_values(
            graph, node, [node], [choice], [node.outputs[0]], [choice.outputs[0]]
        )
