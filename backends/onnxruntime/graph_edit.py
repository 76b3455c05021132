"""Small onnx_ir edits the onnxruntime backend's int8 rewrites share: new constants with
names no initializer has yet, constant float arrays, and who reads a value."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx_ir as ir


def fresh_name(graph: ir.Graph, base: str) -> str:
    """`base`, or `base_2`, `base_3`...: the first no initializer of `graph` has (one constant
    can be shared by several nodes, each of which gets its own rewritten copy)."""
    name, count = base, 1
    while name in graph.initializers:
        count += 1
        name = f"{base}_{count}"
    return name


def add_initializer(
    graph: ir.Graph, name: str, array: np.ndarray, type_: ir.TypeProtocol | None
) -> ir.Value:
    """A new initializer of `graph` holding `array`, named after `name` (see fresh_name)."""
    value = ir.Value(
        name=fresh_name(graph, name),
        const_value=ir.tensor(array),
        shape=ir.Shape(array.shape),
        type=type_,
    )
    graph.register_initializer(value)
    return value


def const_array(value: ir.Value | None, ndim: int) -> np.ndarray | None:
    """The constant float array `value` holds, if it has `ndim` dimensions."""
    const = value.const_value if value is not None else None
    if const is None or len(const.shape) != ndim or not const.dtype.is_floating_point():
        return None
    return const.numpy()


def read_only_by(value: ir.Value, nodes: Sequence[ir.Node]) -> bool:
    """Whether exactly `nodes` read `value` and it is not a graph output."""
    return not value.is_graph_output() and {id(u) for u, _ in value.uses()} == {
        id(n) for n in nodes
    }
