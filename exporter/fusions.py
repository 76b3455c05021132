"""Graph rewrites that put common subgraphs into the form backends' own fusions recognise.

torch.export decomposes `scaled_dot_product_attention` into a graph OpenVINO's CPU plugin
does not fuse: the key is transposed through a 3-D reshape, the query and the key are each
multiplied by sqrt(scale), and the softmax is wrapped in a NaN guard. OpenVINO then runs
attention as separate MatMul/Softmax kernels (about 10% slower on MiniLM than OpenVINO
converting from PyTorch itself). Rewritten to the textbook form
`Softmax(MatMul(Q, Kᵀ) · scale + mask) · V` the same graph becomes one fused attention
kernel in OpenVINO, and ONNX Runtime runs it a little faster too.

The rewrite keeps every value's meaning: the two square-root scales become one scale on
the scores (equal up to float rounding) and the NaN guard is dropped only when no row can
be NaN: a guard matters only if a whole row of scores is -inf, which an additive mask
built by `Where(cond, 0, finite)` cannot produce from finite scores.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import onnx_ir as ir
from onnxscript.rewriter import pattern
from onnxscript.rewriter.rules.common._basic_rules import transpose_transpose_rule


def scalar(value: ir.Value | None) -> float | None:
    """The number a one-element constant holds, else None."""
    if value is None or value.const_value is None:
        return None
    array = value.const_value.numpy()
    return float(array.reshape(-1)[0]) if array.size == 1 else None


def _scale(kind: str, value: ir.Value | None) -> float | None:
    if kind == "none":
        return 1.0
    number = scalar(value)
    if number is None or number == 0.0 or not math.isfinite(number):
        return None
    return number if kind == "mul" else 1.0 / number


def _finite_where_mask(mask: ir.Value | None) -> bool:
    """True if `mask` is Where(cond, a, b) with finite constants a and b."""
    node = mask.producer() if mask is not None else None
    if node is None or node.op_type != "Where" or node.domain not in ("", "ai.onnx"):
        return False
    values = [scalar(v) for v in node.inputs[1:]]
    return all(v is not None and math.isfinite(v) for v in values)


class CanonicalAttention(pattern.RewriteRuleClassBase):
    """Softmax(f(Q)·g(Kᵀ)·s + M)·V in any of torch's spellings -> the textbook form."""

    def __init__(self) -> None:
        super().__init__(name="canonical-attention")
        self._plan: dict[str, Any] = {}

    def pattern(
        self, op: Any, query: Any, key: Any, value: Any, mask: Any, q_scale: Any, k_scale: Any,
        s_scale: Any,
    ) -> Any:  # fmt: skip
        via_3d = op.Reshape(
            op.Transpose(op.Reshape(key, pattern.ANY_VALUE), perm=[0, 2, 1]),
            pattern.ANY_VALUE,
            _outputs=["key_t3"],
        )
        key_t = pattern.OrValue(
            [op.Transpose(key, perm=[0, 1, 3, 2]), via_3d],
            tag_var="key_path",
            tag_values=["4d", "3d"],
        )
        query = pattern.OrValue(
            [op.Mul(query, q_scale), op.Div(query, q_scale), query],
            tag_var="q_kind",
            tag_values=["mul", "div", "none"],
        )
        key_t = pattern.OrValue(
            [op.Mul(key_t, k_scale), op.Div(key_t, k_scale), key_t],
            tag_var="k_kind",
            tag_values=["mul", "div", "none"],
        )
        scores = op.MatMul(query, key_t)
        scores = pattern.OrValue(
            [op.Mul(scores, s_scale), op.Div(scores, s_scale), scores],
            tag_var="s_kind",
            tag_values=["mul", "div", "none"],
        )
        scores = pattern.OrValue(
            [op.Add(scores, mask), scores], tag_var="masked", tag_values=[True, False]
        )
        probs = op.Softmax(scores, axis=-1)
        probs = pattern.OrValue(
            [op.Where(op.IsNaN(probs), 0.0, probs), probs],
            tag_var="guarded",
            tag_values=[True, False],
        )
        return op.MatMul(probs, value)

    def check(  # type: ignore[override]  # the rewriter binds pattern variables by name
        self,
        context: Any,
        query: ir.Value,
        key: ir.Value,
        value: ir.Value,
        mask: ir.Value | None = None,
        q_scale: ir.Value | None = None,
        k_scale: ir.Value | None = None,
        s_scale: ir.Value | None = None,
        key_t3: ir.Value | None = None,
        key_path: str = "4d",
        q_kind: str = "none",
        k_kind: str = "none",
        s_kind: str = "none",
        masked: bool = False,
        guarded: bool = False,
        **_: Any,
    ) -> Any:  # pattern.MatchResult
        result = pattern.MatchResult()
        shapes = [v.shape for v in (query, key, value)]
        if any(s is None or len(s) != 4 for s in shapes):
            return result.fail("query, key and value must have known rank 4")
        if query.dtype is None or query.dtype != key.dtype:
            return result.fail("query and key need one known dtype")
        if key_path == "3d":
            # The reshape/transpose/reshape must be exactly a swap of the key's last two axes.
            k = list(key.shape)  # type: ignore[arg-type]
            swapped = [k[0], k[1], k[3], k[2]]
            out = list(key_t3.shape) if key_t3 is not None and key_t3.shape else None
            if out is None or any(not _same_dim(a, b) for a, b in zip(out, swapped, strict=True)):
                return result.fail("the 3-D reshape does not transpose the key's last two axes")
        scales = [_scale(q_kind, q_scale), _scale(k_kind, k_scale), _scale(s_kind, s_scale)]
        if any(s is None for s in scales):
            return result.fail("attention scales must be finite non-zero scalar constants")
        drop_guard = guarded and (not masked or _finite_where_mask(mask))
        already = key_path == "4d" and q_kind == k_kind == "none" and not drop_guard
        if already:
            return result.fail("attention is already in canonical form")
        scale = scales[0] * scales[1] * scales[2]  # type: ignore[operator]
        self._plan = {"scale": scale, "keep_guard": guarded and not drop_guard}
        return result

    def rewrite(
        self,
        op: Any,
        query: ir.Value,
        key: ir.Value,
        value: ir.Value,
        mask: ir.Value | None = None,
        masked: bool = False,
        **_: Any,
    ) -> Any:
        scores = op.MatMul(query, op.Transpose(key, perm=[0, 1, 3, 2]))
        scale = self._plan["scale"]
        if scale != 1.0:
            dtype = query.dtype.numpy()  # type: ignore[union-attr]
            scores = op.Mul(scores, op.Constant(value=ir.tensor(np.array(scale, dtype=dtype))))
        if masked:
            scores = op.Add(scores, mask)
        probs = op.Softmax(scores, axis=-1)
        if self._plan["keep_guard"]:
            zero = op.Constant(value=ir.tensor(np.array(0, dtype=query.dtype.numpy())))  # type: ignore[union-attr]
            probs = op.Where(op.IsNaN(probs), zero, probs)
        return op.MatMul(probs, value)


def _same_dim(a: Any, b: Any) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    name_a, name_b = getattr(a, "value", a), getattr(b, "value", b)
    return isinstance(name_a, str) and name_a == name_b


def attention_rules() -> pattern.RewriteRuleSet:
    return pattern.RewriteRuleSet([CanonicalAttention.rule()])


def transpose_rules() -> pattern.RewriteRuleSet:
    """Transpose(Transpose(x)) -> one Transpose (the rewritten key's two transposes)."""
    return pattern.RewriteRuleSet([transpose_transpose_rule])
