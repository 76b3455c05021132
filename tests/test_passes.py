"""Graph passes (`modelkiln.exporter.passes.simplify`) on small hand-built onnx_ir graphs."""

from __future__ import annotations

import itertools
from pathlib import Path

import models
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
from onnx import TensorProto, helper

from modelkiln.exporter.passes import count_nodes, simplify


def redundant_proto() -> onnx.ModelProto:
    """y = Relu(x) + Relu(x) behind an Identity chain, plus a node nobody uses."""
    nodes = [
        helper.make_node("Identity", ["x"], ["i1"], name="id1"),
        helper.make_node("Identity", ["i1"], ["i2"], name="id2"),
        helper.make_node("Identity", ["i2"], ["i3"], name="id3"),
        helper.make_node("Relu", ["i3"], ["r1"], name="relu_a"),
        helper.make_node("Relu", ["i3"], ["r2"], name="relu_b"),  # same as relu_a
        helper.make_node("Add", ["r1", "r2"], ["y"], name="add"),
        helper.make_node("Neg", ["x"], ["unused"], name="dead"),
    ]
    graph = helper.make_graph(
        nodes,
        "redundant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    return model


def run_proto(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_simplify_removes_identity_chain_duplicate_and_dead_node() -> None:
    model = ir.from_proto(redundant_proto())
    assert count_nodes(model) == 7
    simplified, log = simplify(model)
    ops = [node.op_type for node in simplified.graph]
    assert ops == ["Relu", "Add"]
    add = next(node for node in simplified.graph if node.op_type == "Add")
    assert add.inputs[0] is add.inputs[1]  # both operands are the one remaining Relu
    assert [v.name for v in simplified.graph.outputs] == ["y"]


def test_simplify_records_stats_for_every_pass() -> None:
    _, log = simplify(ir.from_proto(redundant_proto()))
    names = [entry["name"] for entry in log]
    assert len(names) >= 5
    assert {
        "identity-elimination",
        "common-subexpression-elimination",
        "dead-code-elimination",
    } <= set(names)
    assert log[0]["nodes_before"] == 7
    assert log[-1]["nodes_after"] == 2
    for prev, nxt in itertools.pairwise(log):
        assert nxt["nodes_before"] == prev["nodes_after"]
    for entry in log:
        assert set(entry) >= {"name", "nodes_before", "nodes_after", "modified", "seconds"}
        assert entry["seconds"] >= 0
        assert entry["nodes_after"] <= entry["nodes_before"]  # these passes only simplify
    # The duplicate Relu is found by common-subexpression elimination.
    cse = next(e for e in log if e["name"] == "common-subexpression-elimination")
    assert cse["nodes_before"] - cse["nodes_after"] == 1
    assert cse["modified"] is True


def test_a_pass_that_removed_nodes_is_recorded_as_modified() -> None:
    _, log = simplify(ir.from_proto(redundant_proto()))
    for entry in log:
        if entry["nodes_after"] != entry["nodes_before"]:
            assert entry["modified"] is True, entry


def test_simplify_preserves_the_numbers() -> None:
    proto = redundant_proto()
    simplified, _ = simplify(ir.from_proto(proto))
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_array_equal(run_proto(proto, x), run_proto(ir.to_proto(simplified), x))


def test_simplify_leaves_a_minimal_graph_alone() -> None:
    simplified, log = simplify(ir.from_proto(models.mlp_proto()))
    assert [n.op_type for n in simplified.graph] == ["MatMul", "Add", "Relu"]
    assert all(e["nodes_before"] == e["nodes_after"] == 3 for e in log)
    weight, _ = models.mlp_weights()
    assert simplified.graph.initializers["W"].const_value.numpy().tolist() == weight.tolist()


def test_simplify_dump_dir_writes_each_stage(tmp_path: Path) -> None:
    dumps = tmp_path / "dumps"
    _, log = simplify(ir.from_proto(redundant_proto()), dumps)
    for i, entry in enumerate(log, start=1):
        path = dumps / f"{i:02d}-{entry['name']}.onnx"
        assert path.is_file(), path
        assert len(onnx.load(str(path)).graph.node) == entry["nodes_after"]
