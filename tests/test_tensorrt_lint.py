"""The static TensorRT check (`lint_model`) on small graphs built here, each with one thing
TensorRT's ONNX parser refuses, and on what modelkiln itself exports.

No TensorRT and no GPU: the check reads TensorRT's published operator matrix only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelkiln.backends.tensorrt.lint import (
    SUPPORTED_VERSIONS,
    Finding,
    count_nodes,
    default_version,
    installed_major,
    lint_model,
)
from modelkiln.backends.tensorrt.onnx_support import PARSERS

FLOAT, INT64 = TensorProto.FLOAT, TensorProto.INT64


def model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 18,
    extra_opsets: Sequence[tuple[str, int]] = (),
    functions: Sequence[onnx.FunctionProto] = (),
    value_info: Sequence[onnx.ValueInfoProto] = (),
) -> onnx.ModelProto:
    graph = helper.make_graph(
        list(nodes), "g", list(inputs), list(outputs), list(initializers), value_info=value_info
    )
    imports = [helper.make_opsetid("", opset)] + [
        helper.make_opsetid(d, v) for d, v in extra_opsets
    ]
    proto = helper.make_model(graph, opset_imports=imports, functions=list(functions))
    proto.ir_version = 10
    return proto


def lint(proto: onnx.ModelProto, version: int = 10) -> list[Finding]:
    return lint_model(ir.from_proto(proto), version)


def tensor(name: str, dtype: int = FLOAT, shape: Sequence[Any] = ("batch", 4)) -> Any:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(array, name)


def relu_model() -> onnx.ModelProto:
    return model(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], [tensor("x")], [tensor("y")]
    )


# --------------------------------------------------------------------------- ops and domains


def test_a_supported_graph_is_clean() -> None:
    assert lint(relu_model()) == []
    assert lint(relu_model(), 11) == []


def test_com_microsoft_op_is_named_with_its_domain() -> None:
    proto = model(
        [
            helper.make_node("Relu", ["x"], ["h"], name="pre"),
            helper.make_node(
                "FusedMatMul", ["h", "w"], ["y"], name="attn/FusedMatMul_1", domain="com.microsoft"
            ),
        ],
        [tensor("x")],
        [tensor("y")],
        [init("w", np.ones((4, 4), np.float32))],
        extra_opsets=[("com.microsoft", 1)],
    )
    (finding,) = lint(proto)
    assert finding.node == "attn/FusedMatMul_1"
    assert finding.op == "com.microsoft::FusedMatMul"
    assert "not an ONNX op" in finding.reason and "no importer" in finding.reason
    assert "export without ONNX Runtime fusions" in finding.reason
    assert str(finding).startswith("node 'attn/FusedMatMul_1' (com.microsoft::FusedMatMul): ")


def test_contrib_op_sharing_an_onnx_name_is_not_taken_for_the_onnx_op() -> None:
    """The parser dispatches on op_type alone: com.microsoft::Attention would reach the
    importer of ONNX Attention-23, whose inputs are different."""
    proto = model(
        [
            helper.make_node(
                "Attention",
                ["x", "w", "b"],
                ["y"],
                name="attn",
                domain="com.microsoft",
                num_heads=2,
            )
        ],
        [tensor("x", shape=(1, 3, 4))],
        [tensor("y", shape=(1, 3, 4))],
        [init("w", np.ones((4, 12), np.float32)), init("b", np.zeros(12, np.float32))],
        extra_opsets=[("com.microsoft", 1)],
    )
    (finding,) = lint(proto)
    assert (finding.node, finding.op) == ("attn", "com.microsoft::Attention")
    assert "would import it as ONNX Attention" in finding.reason


def test_unsupported_onnx_op_and_format_of_the_line() -> None:
    proto = model(
        [helper.make_node("Unique", ["x"], ["y"], name="attn/Unique_3")],
        [tensor("x", shape=(5,))],
        [tensor("y", shape=("n",))],
    )
    (finding,) = lint(proto)
    assert (
        str(finding) == "node 'attn/Unique_3' (Unique): not supported by TensorRT 10's ONNX parser"
    )


def test_sequence_ops_are_refused() -> None:
    proto = model(
        [
            helper.make_node("SequenceConstruct", ["x", "x"], ["s"], name="make_seq"),
            helper.make_node("ConcatFromSequence", ["s"], ["y"], name="concat_seq", axis=0),
        ],
        [tensor("x")],
        [tensor("y")],
    )
    findings = lint(proto)
    named = [(f.node, f.op) for f in findings]
    assert ("make_seq", "SequenceConstruct") in named
    assert ("concat_seq", "ConcatFromSequence") in named
    assert all("not supported" in f.reason or "sequence" in f.reason for f in findings)


def test_dynamic_quantize_and_matmul_integer_are_refused() -> None:
    """The graph our `cpu-int8` target (ONNX Runtime int8-dynamic) produces."""
    weights = np.arange(16, dtype=np.int8).reshape(4, 4)
    proto = model(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
            helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"], name="mmi"),
            helper.make_node("Cast", ["acc"], ["accf"], name="to_float", to=FLOAT),
            helper.make_node("Mul", ["accf", "xs"], ["y"], name="rescale"),
        ],
        [tensor("x")],
        [tensor("y")],
        [init("w", weights), init("wz", np.zeros((), np.int8))],
        value_info=[tensor("xq", TensorProto.UINT8)],
    )
    findings = lint(proto)
    assert [(f.node, f.op) for f in findings] == [
        ("dql", "DynamicQuantizeLinear"),
        ("mmi", "MatMulInteger"),
    ]
    assert "IDynamicQuantize" in findings[0].reason  # the matrix's own advice
    assert (
        str(findings[1]) == "node 'mmi' (MatMulInteger): not supported by TensorRT 10's ONNX parser"
    )


def test_types_around_a_refused_node_are_not_reported_again_but_elsewhere_are() -> None:
    """The INT8 weights of a refused MatMulInteger add nothing; the same weights read by a
    supported op are reported there."""
    proto = model(
        [
            helper.make_node("MatMulInteger", ["x8", "w"], ["acc"], name="mmi"),
            helper.make_node("Identity", ["w"], ["w2"], name="copy"),
        ],
        [tensor("x8", TensorProto.UINT8)],
        [tensor("acc", TensorProto.INT32), tensor("w2", TensorProto.INT8, (4, 4))],
        [init("w", np.ones((4, 4), np.int8))],
    )
    findings = lint(proto)
    assert [f.node for f in findings] == ["mmi", "copy", "copy"]
    assert "input 'w' is INT8 outside a QuantizeLinear" in findings[1].reason
    assert "output 'w2' is INT8 outside a QuantizeLinear" in findings[2].reason


def test_op_missing_from_the_matrix_differs_between_versions() -> None:
    """Swish is in TensorRT 11's parser (11.0 release notes) and not in 10's matrix."""
    proto = model(
        [helper.make_node("Swish", ["x"], ["y"], name="act")],
        [tensor("x")],
        [tensor("y")],
        opset=24,
    )
    (finding,) = lint(proto, 10)
    assert (
        finding.op == "Swish"
        and "not in TensorRT 10's ONNX operator support matrix" in finding.reason
    )
    assert lint(proto, 11) == []


def test_opset_outside_the_parsers_range() -> None:
    findings = lint(
        model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x")], [tensor("y")], opset=25)
    )
    assert [str(f) for f in findings] == [
        "model: default-domain opset 25; TensorRT 10's ONNX parser supports opsets 9 to 24"
    ]
    assert (
        lint(
            model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x")], [tensor("y")], opset=25),
            11,
        )
        == []
    )


# --------------------------------------------------------------------------- types


def test_uint8_inside_the_network_is_refused_but_not_at_its_inputs() -> None:
    proto = model(
        [
            helper.make_node("Relu", ["x"], ["h"], name="pre"),
            helper.make_node("Cast", ["h"], ["h8"], name="to_uint8", to=TensorProto.UINT8),
            helper.make_node("Cast", ["h8"], ["y"], name="back", to=FLOAT),
        ],
        [tensor("x")],
        [tensor("y")],
        value_info=[tensor("h8", TensorProto.UINT8)],
    )
    (finding,) = lint(proto)
    assert (finding.node, finding.op) == ("to_uint8", "Cast")
    assert "output 'h8' is UINT8" in finding.reason and "network input or output" in finding.reason

    image_input = model(
        [helper.make_node("Cast", ["img"], ["y"], name="to_float", to=FLOAT)],
        [tensor("img", TensorProto.UINT8, (1, 3, 8, 8))],
        [tensor("y", FLOAT, (1, 3, 8, 8))],
    )
    assert lint(image_input) == []


def test_double_tensors_are_refused_where_they_appear() -> None:
    proto = model(
        [
            helper.make_node("Cast", ["x"], ["xd"], name="to_double", to=TensorProto.DOUBLE),
            helper.make_node("Add", ["xd", "d"], ["sd"], name="add_double"),
            helper.make_node("Cast", ["sd"], ["y"], name="to_float", to=FLOAT),
        ],
        [tensor("x"), tensor("d", TensorProto.DOUBLE)],
        [tensor("y")],
        value_info=[tensor("xd", TensorProto.DOUBLE), tensor("sd", TensorProto.DOUBLE)],
    )
    findings = lint(proto)
    assert [(f.node, f.op) for f in findings] == [
        ("d", "graph input"),
        ("to_double", "Cast"),
        ("add_double", "Add"),
    ]
    assert all("DOUBLE" in f.reason for f in findings)
    assert str(findings[0]).startswith("graph input 'd': is DOUBLE")


def test_op_type_columns_are_checked() -> None:
    """MatMul takes FP32, FP16 and BF16 only: INT64 operands are refused."""
    proto = model(
        [helper.make_node("MatMul", ["a", "b"], ["c"], name="int_matmul")],
        [tensor("a", INT64), tensor("b", INT64, (4, 4))],
        [tensor("c", INT64)],
    )
    (finding,) = lint(proto)
    assert finding.node == "int_matmul"
    assert finding.reason == "input 'a' is INT64; TensorRT's MatMul takes FP32, FP16, BF16"


# --------------------------------------------------------------------------- constant inputs


def reduce_model(axes_from_input: bool) -> onnx.ModelProto:
    nodes = [helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="sum", keepdims=1)]
    inputs = [tensor("x")]
    initializers = []
    if axes_from_input:
        inputs.append(tensor("axes", INT64, (1,)))
    else:
        initializers.append(init("axes", np.array([1], np.int64)))
    return model(nodes, inputs, [tensor("y", shape=("batch", 1))], initializers)


def test_reduce_axes_must_be_an_initializer() -> None:
    (finding,) = lint(reduce_model(axes_from_input=True))
    assert (finding.node, finding.op) == ("sum", "ReduceSum")
    assert finding.reason == "`axes` input 'axes' must be an initializer; it is a graph input"
    assert lint(reduce_model(axes_from_input=False)) == []


def test_unsqueeze_axes_folded_from_constants_are_accepted() -> None:
    """ "Resolvable to a constant": computed from constants is fine, from inputs is not."""
    constant = model(
        [
            helper.make_node("Constant", [], ["one"], value=init("c", np.array([1], np.int64))),
            helper.make_node("Add", ["one", "zero"], ["axes"], name="make_axes"),
            helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsq"),
        ],
        [tensor("x")],
        [tensor("y", shape=("batch", 1, 4))],
        [init("zero", np.array([0], np.int64))],
    )
    assert lint(constant) == []
    dynamic = model(
        [helper.make_node("Unsqueeze", ["x", "axes"], ["y"], name="unsq")],
        [tensor("x"), tensor("axes", INT64, (1,))],
        [tensor("y", shape=("batch", 1, 4))],
    )
    (finding,) = lint(dynamic)
    assert finding.node == "unsq" and "must be a build-time constant" in finding.reason


def test_squeeze_without_axes_needs_a_static_shape_before_tensorrt_11() -> None:
    proto = model(
        [helper.make_node("Squeeze", ["x"], ["y"], name="sq")],
        [tensor("x", shape=("batch", 1))],
        [tensor("y", shape=("batch",))],
    )
    (finding,) = lint(proto, 10)
    assert finding.node == "sq" and "no `axes` given" in finding.reason
    assert lint(proto, 11) == []
    static = model(
        [helper.make_node("Squeeze", ["x"], ["y"], name="sq")],
        [tensor("x", shape=(3, 1))],
        [tensor("y", shape=(3,))],
    )
    assert lint(static, 10) == []


def dq_model(zero_point: int) -> onnx.ModelProto:
    return model(
        [
            helper.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["w"], name="dq_w"),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        ],
        [tensor("x")],
        [tensor("y")],
        [
            init("wq", np.arange(16, dtype=np.int8).reshape(4, 4)),
            init("scale", np.array(0.1, np.float32)),
            init("zp", np.array(zero_point, np.int8)),
        ],
    )


def test_dequantize_with_a_non_zero_zero_point_is_refused() -> None:
    (finding,) = lint(dq_model(3))
    assert (finding.node, finding.op) == ("dq_w", "DequantizeLinear")
    assert "`x_zero_point` 'zp' is not zero (3)" in finding.reason
    assert lint(dq_model(0)) == []


def test_quantize_dequantize_pair_with_zero_points_is_clean() -> None:
    proto = model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
            helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
            helper.make_node("Relu", ["xd"], ["y"], name="relu"),
        ],
        [tensor("x")],
        [tensor("y")],
        [init("s", np.array(0.05, np.float32)), init("z", np.array(0, np.int8))],
        value_info=[tensor("xq", TensorProto.INT8)],
    )
    assert lint(proto) == []


def test_int8_weights_in_a_constant_node_feeding_dq_are_clean() -> None:
    weights = init("wq", np.arange(16, dtype=np.int8).reshape(4, 4))
    proto = model(
        [
            helper.make_node("Constant", [], ["wq"], name="weights", value=weights),
            helper.make_node("DequantizeLinear", ["wq", "s"], ["w"], name="dq"),
            helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
        ],
        [tensor("x")],
        [tensor("y")],
        [init("s", np.array(0.05, np.float32))],
        value_info=[tensor("wq", TensorProto.INT8, (4, 4))],
    )
    assert lint(proto) == []


def test_int8_between_q_and_an_op_other_than_dq_is_refused() -> None:
    proto = model(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
            helper.make_node("Transpose", ["xq"], ["t"], name="transpose_int8", perm=[1, 0]),
            helper.make_node("DequantizeLinear", ["t", "s", "z"], ["y"], name="dq"),
        ],
        [tensor("x", shape=(2, 4))],
        [tensor("y", shape=(4, 2))],
        [init("s", np.array(0.05, np.float32)), init("z", np.array(0, np.int8))],
        value_info=[tensor("xq", TensorProto.INT8, (2, 4)), tensor("t", TensorProto.INT8, (4, 2))],
    )
    findings = lint(proto)
    assert [f.node for f in findings] == ["q", "transpose_int8"]
    assert "'xq' is INT8 outside a QuantizeLinear/DequantizeLinear pair" in findings[0].reason
    assert "TensorRT 11" in lint(proto, 11)[0].reason  # 11 has no implicit INT8


def test_attribute_values_the_parser_does_not_take() -> None:
    proto = model(
        [helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", sorted=0)],
        [tensor("x", shape=(2, 5000))],
        [tensor("v", shape=(2, 4000)), tensor("i", INT64, (2, 4000))],
        [init("k", np.array([4000], np.int64))],
    )
    reasons = [f.reason for f in lint(proto)]
    assert reasons == [
        "`K` is 4000; TensorRT's TopK takes K below 3840",
        "attribute sorted=0 is not supported; TensorRT takes 1",
    ]


# --------------------------------------------------------------------------- graph walk


def test_subgraphs_are_walked_and_every_finding_kept_in_graph_order() -> None:
    then_branch = helper.make_graph(
        [helper.make_node("Unique", ["x"], ["u"], name="then/unique")],
        "then",
        [],
        [tensor("u", shape=("n",))],
    )
    else_branch = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["e"], name="else/id")],
        "else",
        [],
        [tensor("e", shape=("n",))],
    )
    proto = model(
        [
            helper.make_node("Det", ["m"], ["d"], name="first"),
            helper.make_node(
                "If", ["c"], ["y"], name="branch", then_branch=then_branch, else_branch=else_branch
            ),
            helper.make_node("Unique", ["x"], ["z"], name="last"),
        ],
        [tensor("m", shape=(3, 3)), tensor("c", TensorProto.BOOL, ()), tensor("x", shape=(5,))],
        [tensor("d", shape=()), tensor("y", shape=("n",)), tensor("z", shape=("n",))],
    )
    assert [f.node for f in lint(proto)] == ["first", "then/unique", "last"]


def test_local_functions_are_imported_and_their_bodies_checked() -> None:
    body = [
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("Unique", ["r"], ["b"], name="inner_unique"),
    ]
    function = helper.make_function(
        "custom.fns", "MyBlock", ["a"], ["b"], body, [helper.make_opsetid("", 18)]
    )
    proto = model(
        [helper.make_node("MyBlock", ["x"], ["y"], name="call", domain="custom.fns")],
        [tensor("x", shape=(5,))],
        [tensor("y", shape=("n",))],
        extra_opsets=[("custom.fns", 1)],
        functions=[function],
    )
    (finding,) = lint(proto)
    assert (finding.node, finding.op) == ("MyBlock/inner_unique", "Unique")


def test_versions_and_count() -> None:
    assert SUPPORTED_VERSIONS == (10, 11) == tuple(sorted(PARSERS))
    with pytest.raises(ValueError, match="known versions: 10, 11"):
        lint(relu_model(), 9)
    assert count_nodes(ir.from_proto(relu_model())) == 1


def test_default_version_without_tensorrt_installed() -> None:
    if installed_major() is not None:
        pytest.skip("TensorRT is installed here; the fallback needs a machine without it")
    assert default_version() == 10
