"""MultiHeadAttention takes ONNX Runtime's flash kernel when its attention bias is all zeros.

The If the pass adds must give the node's own outputs for any bias: within float rounding
when the bias is zero (the flash kernel), exactly when it is not (the node as it was).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from modelkiln.backends.base import BuildRequest
from modelkiln.backends.onnxruntime import OnnxRuntimeBackend
from modelkiln.backends.onnxruntime.unpadded_attention import PASS_NAME, applies, wrap
from modelkiln.targets import Target

BATCH, SEQ, HEADS, HIDDEN = 2, 9, 4, 32


def attention_proto(padding_mask: bool = False) -> onnx.ModelProto:
    """q, k, v and an additive bias [batch, 1, seq, seq] -> MultiHeadAttention -> y; with
    `padding_mask`, the node also takes a key padding mask (the flash kernel cannot)."""
    f = TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(n, f, [BATCH, SEQ, HIDDEN]) for n in "qkv"]
    inputs.append(helper.make_tensor_value_info("bias", f, [BATCH, 1, SEQ, SEQ]))
    mask = ""
    if padding_mask:
        inputs.append(helper.make_tensor_value_info("mask", TensorProto.INT32, [BATCH, SEQ]))
        mask = "mask"
    node = helper.make_node(
        "MultiHeadAttention",
        ["q", "k", "v", "", mask, "bias"],
        ["y"],
        domain="com.microsoft",
        num_heads=HEADS,
        name="attention",
    )
    graph = helper.make_graph(
        [node], "mha", inputs, [helper.make_tensor_value_info("y", f, [BATCH, SEQ, HIDDEN])]
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return model


def feeds(padded: bool) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {n: rng.normal(0, 1, (BATCH, SEQ, HIDDEN)).astype(np.float32) for n in "qkv"}
    bias = np.zeros((BATCH, 1, SEQ, SEQ), np.float32)
    if padded:
        bias[1, :, :, 5:] = np.finfo(np.float32).min  # row 1: its last 4 tokens are padding
    out["bias"] = bias
    return out


def outputs(model: ir.Model | onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    proto = ir.serde.serialize_model(model) if isinstance(model, ir.Model) else model
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def test_the_if_gives_the_node_outputs_with_and_without_padding() -> None:
    original = attention_proto()
    model = ir.serde.deserialize_model(original)
    assert applies(model)
    record = wrap(model)
    assert (record.name, record.modified) == (PASS_NAME, True)
    ops = [n.op_type for n in model.graph]
    assert ops == ["Abs", "ReduceMax", "Equal", "If"]
    assert [o.name for o in model.graph.outputs] == ["y"]
    then_branch = model.graph.node(3).attributes["then_branch"].as_graph()
    assert len([v for v in then_branch.node(0).inputs if v is not None]) == 3  # no bias
    unpadded, padded = feeds(padded=False), feeds(padded=True)
    np.testing.assert_allclose(outputs(model, unpadded), outputs(original, unpadded), atol=1e-5)
    np.testing.assert_array_equal(outputs(model, padded), outputs(original, padded))


def test_a_node_with_a_padding_mask_is_left_alone() -> None:
    model = ir.serde.deserialize_model(attention_proto(padding_mask=True))
    assert not applies(model)
    assert not wrap(model).modified
    assert [n.op_type for n in model.graph] == ["MultiHeadAttention"]


def build(tmp_path: Path, **options: object) -> tuple[ir.Model, dict, list[str]]:
    target = Target(name="t", backend="onnxruntime", options={"ort_fusions": "off", **options})
    backend = OnnxRuntimeBackend()
    backend.check(target)
    model = ir.serde.deserialize_model(attention_proto())
    out = tmp_path / "a"
    out.mkdir(exist_ok=True)
    section = backend.build(BuildRequest(model, target, out, []))
    built = onnx.load(str(out / section.files["model"]))
    return (
        model,
        section.details,
        [p.name for p in section.passes] + [n.op_type for n in built.graph.node],
    )


def test_the_backend_wraps_a_copy_for_the_cpu(tmp_path: Path) -> None:
    shared, _, seen = build(tmp_path)
    assert PASS_NAME in seen and "If" in seen
    # The request's model is the graph every target builds from: it must stay as it was.
    assert [n.op_type for n in shared.graph] == ["MultiHeadAttention"]
    _, _, seen = build(tmp_path, unpadded_attention=False)
    assert PASS_NAME not in seen and "If" not in seen


def test_a_bad_unpadded_attention_value_is_refused() -> None:
    from modelkiln.errors import UserInputError

    target = Target(name="t", backend="onnxruntime", options={"unpadded_attention": "yes"})
    with pytest.raises(UserInputError, match="unpadded_attention must be true or false"):
        OnnxRuntimeBackend().check(target)
