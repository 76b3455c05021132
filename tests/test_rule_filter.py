"""`modelkiln.rule_filter`: rewrite rules tried only on nodes of their root op type."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
from onnx import TensorProto, helper
from onnxscript.rewriter import _DEFAULT_REWRITE_RULES, pattern

from modelkiln.rule_filter import root_filtered, root_op_type


def rewritable_proto() -> onnx.ModelProto:
    """Patterns onnxscript's default rules rewrite (x*1, +0, a Reshape chain, a no-op Cast)
    between ops no rule has at its root (Relu twice, Softmax)."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    flat = helper.make_tensor("flat", TensorProto.INT64, [1], [8])
    back = helper.make_tensor("back", TensorProto.INT64, [2], [2, 4])
    nodes = [
        helper.make_node("Mul", ["x", "one"], ["m"]),
        helper.make_node("Relu", ["m"], ["r"]),
        helper.make_node("Add", ["r", "zero"], ["a"]),
        helper.make_node("Reshape", ["a", "flat"], ["f"]),
        helper.make_node("Reshape", ["f", "back"], ["b"]),
        helper.make_node("Cast", ["b"], ["c"], to=TensorProto.FLOAT),
        helper.make_node("Softmax", ["c"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "rewritable",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        initializer=[one, zero, flat, back],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def rewritten(rules: Any) -> ir.Model:
    model = ir.from_proto(rewritable_proto())
    rules.apply_to_model(model)
    return model


def test_root_op_type_of_default_rules() -> None:
    roots = [root_op_type(rule) for rule in _DEFAULT_REWRITE_RULES]
    assert "Mul" in roots and "Reshape" in roots and "Cast" in roots
    assert root_op_type(object()) is None  # not a pattern rule: always tried


def test_filtered_rules_rewrite_exactly_like_the_originals() -> None:
    plain = rewritten(pattern.RewriteRuleSet(list(_DEFAULT_REWRITE_RULES)))
    filtered = rewritten(root_filtered(_DEFAULT_REWRITE_RULES))
    ops = [node.op_type for node in filtered.graph]
    assert len(ops) < 7, ops  # the rules did rewrite something
    assert ops == [node.op_type for node in plain.graph]
    assert ir.to_proto(filtered).SerializeToString() == ir.to_proto(plain).SerializeToString()


class CountingRule:
    """Stands in for a pattern rule rooted at Mul: counts the nodes it is tried on."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.tried: list[str] = []
        self._target_pattern = inner._target_pattern
        self._matcher = inner._matcher
        self.name = "counting"

    def try_rewrite(self, model: Any, graph: Any, node: ir.Node, **kwargs: Any) -> Any:
        self.tried.append(node.op_type)
        return self.inner.try_rewrite(model, graph, node, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_rule_is_tried_only_on_its_root_op_type() -> None:
    mul_rule = next(r for r in _DEFAULT_REWRITE_RULES if root_op_type(r) == "Mul")
    counting = CountingRule(mul_rule)
    model = rewritten(root_filtered([counting]))
    assert counting.tried == ["Mul"]  # not the Relu, Add, Reshapes, Cast, Softmax
    assert "Mul" not in [node.op_type for node in model.graph]  # x * 1 is gone
    unfiltered = CountingRule(mul_rule)
    rewritten(pattern.RewriteRuleSet([unfiltered]))
    # Without the filter every node, the replacement Identity included.
    assert {"Relu", "Add", "Reshape", "Cast", "Softmax", "Identity"} <= set(unfiltered.tried)


def test_filtered_model_computes_the_same() -> None:
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    outputs = []
    original = ir.from_proto(rewritable_proto())
    for model in (original, rewritten(root_filtered(_DEFAULT_REWRITE_RULES))):
        proto = ir.to_proto(model).SerializeToString()
        session = ort.InferenceSession(proto, providers=["CPUExecutionProvider"])
        outputs.append(session.run(None, {"x": x})[0])
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-6)
