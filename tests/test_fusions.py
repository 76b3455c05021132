"""Canonical attention (`modelkiln.exporter.fusions`) on hand-built attention graphs.

Each graph spells attention the way torch.export's decomposition of
scaled_dot_product_attention does (key transposed through a 3-D reshape, sqrt(scale) on the
query and on the key, NaN guard after the softmax); the checks compare ONNX Runtime's outputs
before and after `simplify` and look at what the graph became.
"""

from __future__ import annotations

import collections
import math

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from modelkiln.exporter.passes import simplify

HEADS, SEQ, DIM = 2, 5, 4
SQRT_SCALE = math.sqrt(1.0 / math.sqrt(DIM))


def attention_proto(
    mask: str = "where", key_path: str = "3d", key_dims: int = 2
) -> onnx.ModelProto:
    """q, k, v: float[batch, 2, 5, 4]; `mask` is "where" (Where(cond, 0, finite) from a bool
    input), "float" (an additive float input that may hold -inf) or "none"."""
    consts = {
        "s": np.array(SQRT_SCALE, np.float32),
        "zero": np.array(0.0, np.float32),
        "neg": np.array(np.finfo(np.float32).min, np.float32),
        "shape3": np.array([-1, SEQ, DIM], np.int64),
    }
    nodes = []
    if key_path == "3d":
        # key_dims=2 swaps the last two axes; key_dims=1 reshapes to a different split.
        shape4 = [-1, HEADS, DIM, SEQ] if key_dims == 2 else [-1, HEADS, SEQ, DIM]
        consts["shape4"] = np.array(shape4, np.int64)
        nodes += [
            helper.make_node("Reshape", ["k", "shape3"], ["k3"]),
            helper.make_node("Transpose", ["k3"], ["k3t"], perm=[0, 2, 1]),
            helper.make_node("Reshape", ["k3t", "shape4"], ["kt"]),
        ]
    else:
        nodes.append(helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]))
    nodes += [
        helper.make_node("Mul", ["q", "s"], ["qs"]),
        helper.make_node("Mul", ["kt", "s"], ["kts"]),
        helper.make_node("MatMul", ["qs", "kts"], ["scores"]),
    ]
    inputs = [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, ["batch", HEADS, SEQ, DIM])
        for n in "qkv"
    ]
    if mask == "where":
        inputs.append(helper.make_tensor_value_info("keep", TensorProto.BOOL, ["batch", 1, 1, SEQ]))
        nodes += [
            helper.make_node("Where", ["keep", "zero", "neg"], ["bias"]),
            helper.make_node("Add", ["scores", "bias"], ["masked"]),
        ]
    elif mask == "float":
        inputs.append(
            helper.make_tensor_value_info("bias", TensorProto.FLOAT, ["batch", 1, 1, SEQ])
        )
        nodes.append(helper.make_node("Add", ["scores", "bias"], ["masked"]))
    else:
        nodes.append(helper.make_node("Identity", ["scores"], ["masked"]))
    nodes += [
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("IsNaN", ["probs"], ["nan"]),
        helper.make_node("Where", ["nan", "zero", "probs"], ["safe"]),
        helper.make_node("MatMul", ["safe", "v"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "attention",
        inputs,
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", HEADS, SEQ, DIM])],
        initializer=[numpy_helper.from_array(v, k) for k, v in consts.items()],
        # torch.export names the dynamic dims of every intermediate value, as here.
        value_info=[
            helper.make_tensor_value_info(
                "kt", TensorProto.FLOAT, ["batch", HEADS, *consts["shape4"][2:].tolist()]
            )
        ]
        if key_path == "3d"
        else [],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def feeds(proto: onnx.ModelProto, fully_masked_row: bool = False) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    out = {n: rng.standard_normal((3, HEADS, SEQ, DIM)).astype(np.float32) for n in "qkv"}
    names = {i.name for i in proto.graph.input}
    if "keep" in names:
        keep = rng.random((3, 1, 1, SEQ)) > 0.3
        keep[:, :, :, 0] = True
        out["keep"] = keep
    if "bias" in names:
        bias = np.where(rng.random((3, 1, 1, SEQ)) > 0.3, 0.0, -1e4).astype(np.float32)
        if fully_masked_row:
            bias[1] = -np.inf  # every key of batch item 1 masked: the guard's case
        out["bias"] = bias
    return out


def run(proto: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return session.run(["y"], inputs)[0]


def simplified(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, dict[str, int], list]:
    model, log = simplify(ir.serde.deserialize_model(proto))
    ops = collections.Counter(node.op_type for node in model.graph.all_nodes())
    return ir.serde.serialize_model(model), ops, log


def test_torch_spelling_becomes_textbook_attention_with_the_same_outputs() -> None:
    proto = attention_proto()
    after, ops, log = simplified(proto)
    inputs = feeds(proto)
    np.testing.assert_allclose(run(after, inputs), run(proto, inputs), rtol=1e-5, atol=1e-6)
    assert ops["IsNaN"] == 0 and ops["Reshape"] == 0
    assert ops["Transpose"] == 1 and ops["MatMul"] == 2 and ops["Softmax"] == 1
    # One scale on the scores instead of sqrt(scale) on both operands.
    assert ops["Mul"] == 1
    (entry,) = [e for e in log if e["name"] == "canonical-attention"]
    assert entry["modified"] and entry["nodes_after"] < entry["nodes_before"]


def test_scale_lands_on_the_scores() -> None:
    after, _, _ = simplified(attention_proto())
    model = ir.serde.deserialize_model(after)
    (mul,) = [n for n in model.graph if n.op_type == "Mul"]
    assert mul.inputs[0].producer().op_type == "MatMul"
    scale = mul.inputs[1].const_value.numpy()
    assert math.isclose(float(scale), 1.0 / math.sqrt(DIM), rel_tol=1e-6)


def test_unmasked_attention_drops_the_guard() -> None:
    proto = attention_proto(mask="none", key_path="4d")
    after, ops, _ = simplified(proto)
    inputs = feeds(proto)
    np.testing.assert_allclose(run(after, inputs), run(proto, inputs), rtol=1e-5, atol=1e-6)
    assert ops["IsNaN"] == 0 and ops["Mul"] == 1


def test_guard_stays_when_the_mask_can_hold_minus_infinity() -> None:
    """A float mask input may mask a whole row with -inf: the guard turns that NaN row to 0."""
    proto = attention_proto(mask="float")
    after, ops, _ = simplified(proto)
    assert ops["IsNaN"] == 1 and ops["Reshape"] == 0 and ops["Mul"] == 1
    inputs = feeds(proto, fully_masked_row=True)
    before, now = run(proto, inputs), run(after, inputs)
    assert not np.isnan(now).any()
    assert (now[1] == 0).all()
    np.testing.assert_allclose(now, before, rtol=1e-5, atol=1e-6)


def test_a_reshape_that_is_not_a_transpose_is_left_alone() -> None:
    proto = attention_proto(key_dims=1)
    _, ops, log = simplified(proto)
    assert ops["Reshape"] == 2 and ops["IsNaN"] == 1
    (entry,) = [e for e in log if e["name"] == "canonical-attention"]
    assert not entry["modified"]


def test_textbook_attention_is_not_rewritten_again() -> None:
    once, _, _ = simplified(attention_proto())
    twice, ops, log = simplified(once)
    (entry,) = [e for e in log if e["name"] == "canonical-attention"]
    assert not entry["modified"]
    assert ops["Mul"] == 1 and ops["Transpose"] == 1
