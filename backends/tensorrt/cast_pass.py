"""fp16/bf16 for TensorRT by casting the ONNX graph before the build (strong typing).

TensorRT 11 has no precision builder flags: a network is strongly typed, every tensor
keeps the type the ONNX graph gives it. So reduced precision is written into the graph:
float32 weights and activations become float16 (or bfloat16), graph inputs and outputs
stay float32 (a Cast after each input, before each output), and ops whose reductions
overflow or lose too much in half precision, or whose inputs the ONNX spec fixes to
float32, run in float32 between Casts. The same graph builds on TensorRT 10 with a strongly
typed network, so both versions compute the same thing.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx_ir as ir

# Run in float32: normalizations and reductions (overflow, precision), exp-like ops, and ops
# whose float inputs the spec fixes to float32 (Resize scales, Range/CumSum index math).
KEEP_FLOAT = frozenset(
    {
        "Softmax",
        "LogSoftmax",
        "LayerNormalization",
        "InstanceNormalization",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceL2",
        "Pow",
        "Sqrt",
        "Erf",
        "Exp",
        "Log",
        "Range",
        "CumSum",
        "Resize",
        "Upsample",
        "RoiAlign",
        "TopK",
        "NonMaxSuppression",
        "RandomNormal",
        "RandomNormalLike",
        "RandomUniform",
        "RandomUniformLike",
        "EyeLike",
    }
)
FLOAT = ir.DataType.FLOAT
HALF_MAX = 65504.0


def _np_half(dtype: ir.DataType) -> np.dtype:
    if dtype == ir.DataType.FLOAT16:
        return np.dtype(np.float16)
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


def _half_tensor(
    array: np.ndarray, dtype: ir.DataType, name: str | None = None
) -> ir.TensorProtocol:
    if dtype == ir.DataType.FLOAT16:  # out-of-range values (masks of -3.4e38) saturate
        array = np.clip(array, -HALF_MAX, HALF_MAX)
    return ir.tensor(array.astype(_np_half(dtype)), dtype=dtype, name=name)


class CastToHalf(ir.passes.InPlacePass):
    """Cast a float32 graph to `dtype` (FLOAT16 or BFLOAT16), keeping float32 I/O and the
    ops in `keep_ops` and the nodes named in `keep_nodes` in float32."""

    def __init__(
        self,
        dtype: ir.DataType = ir.DataType.FLOAT16,
        keep_ops: Iterable[str] = KEEP_FLOAT,
        keep_nodes: Iterable[str] = (),
    ) -> None:
        super().__init__()
        if dtype not in (ir.DataType.FLOAT16, ir.DataType.BFLOAT16):
            raise ValueError(f"CastToHalf casts to FLOAT16 or BFLOAT16, not {dtype}")
        self.dtype = dtype
        self.keep_ops = frozenset(keep_ops)
        self.keep_nodes = frozenset(keep_nodes)

    def _kept(self, node: ir.Node) -> bool:
        return node.op_type in self.keep_ops or (node.name or "") in self.keep_nodes

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnx_ir.passes.common import ShapeInferencePass

        ShapeInferencePass()(model)  # every float value must know it is float
        graph = model.graph
        nodes = list(graph)
        kept = {id(n) for n in nodes if self._kept(n)}
        modified = False
        for value in graph.initializers.values():
            users = [user for user, _ in value.uses()]
            if value.dtype == FLOAT and value.const_value is not None and users:
                if any(id(u) not in kept for u in users):
                    value.const_value = _half_tensor(value.const_value.numpy(), self.dtype)
                    value.dtype = self.dtype
                    modified = True
        first = nodes[0] if nodes else None
        for value in graph.inputs:
            if value.dtype == FLOAT and first is not None:
                modified |= self._half_for_users(graph, value, kept, before=first)
        for node in nodes:
            if id(node) in kept:
                modified |= self._keep_float(graph, node, kept)
            else:
                modified |= self._to_half(node)
        for index, value in enumerate(list(graph.outputs)):
            if value.dtype == self.dtype:
                name = value.name
                value.name = f"{name}__{self.dtype.name.lower()}"
                cast = self._cast(value, FLOAT, name=name)
                graph.append(cast)
                graph.outputs[index] = cast.outputs[0]
                modified = True
        return ir.passes.PassResult(model, modified)

    def _cast(self, value: ir.Value, to: ir.DataType, name: str | None = None) -> ir.Node:
        base = value.name or "value"
        cast = ir.node(
            "Cast", inputs=[value], attributes={"to": to}, name=f"{base}__cast_{to.name.lower()}"
        )
        out = cast.outputs[0]
        out.name = name or f"{base}__{to.name.lower()}"
        out.dtype = to
        out.shape = value.shape
        return cast

    def _to_half(self, node: ir.Node) -> bool:
        """Retype the node's float outputs, and the float dtypes its attributes name."""
        changed = False
        to = node.attributes.get("to")
        if node.op_type == "Cast" and to is not None and to.as_int() == FLOAT:
            node.attributes["to"] = ir.AttrInt64("to", self.dtype)
            changed = True
        if node.op_type in ("Constant", "ConstantOfShape"):
            attr = node.attributes.get("value")
            tensor = attr.as_tensor() if attr is not None else None
            if tensor is not None and tensor.dtype == FLOAT:
                half = _half_tensor(tensor.numpy(), self.dtype, tensor.name)
                node.attributes["value"] = ir.AttrTensor("value", half)
                changed = True
        for value in node.outputs:
            if value.dtype == FLOAT:
                value.dtype = self.dtype
                changed = True
        return changed

    def _keep_float(self, graph: ir.Graph, node: ir.Node, kept: set[int]) -> bool:
        """Feed a kept node float32 inputs, and its half consumers half outputs."""
        changed = False
        for index, value in enumerate(node.inputs):
            if value is not None and value.dtype == self.dtype:
                cast = self._cast(value, FLOAT)
                graph.insert_before(node, cast)
                node.replace_input_with(index, cast.outputs[0])
                changed = True
        for value in node.outputs:
            if value.dtype == FLOAT:
                changed |= self._half_for_users(graph, value, kept, after=node)
        return changed

    def _half_for_users(
        self,
        graph: ir.Graph,
        value: ir.Value,
        kept: set[int],
        before: ir.Node | None = None,
        after: ir.Node | None = None,
    ) -> bool:
        """Give the half-precision users of float `value` one cast of it (placed before
        `before` or after `after`); True if there were any."""
        uses = [(u, i) for u, i in value.uses() if id(u) not in kept]
        if not uses:
            return False
        cast = self._cast(value, self.dtype)
        if before is not None:
            graph.insert_before(before, cast)
        else:
            assert after is not None
            graph.insert_after(after, cast)
        for user, index in uses:
            user.replace_input_with(index, cast.outputs[0])
        return True
