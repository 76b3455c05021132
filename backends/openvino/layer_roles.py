"""Linear layers of an OpenVINO transformer graph found by their role, for int8 to leave float.

NNCF's static int8 gives each activation one calibrated scale. In a BERT two kinds of linear
layer take inputs whose range no single scale serves for short and long sentences alike: the
feed-forward down projection (its input is the GELU output, a few channels 5-17x the rest)
and the attention output projection (its input is the attention context). On MiniLM, leaving
just those 12 of 36 projections float took the worst sentence from 0.966 to 0.994 cosine while
the other 24 and the attention products stay int8 (`targets/presets/openvino-int8-accurate`).

A linear layer here is a `MatMul` whose second input is a constant weight (possibly behind
Convert / Transpose / Reshape, as OpenVINO's ONNX import leaves it). Its role comes from what
feeds its first input:
- `ffn-down`: a `Gelu` (OpenVINO's ONNX import fuses the erf formula into one);
- `attention-output`: a `Reshape` or `Transpose` (the heads merged back).
"""

from __future__ import annotations

from typing import Any

ROLES = ("ffn-down", "attention-output")
# What OpenVINO's ONNX import may put between a MatMul and its constant weight.
_WEIGHT_WRAPPERS = ("Convert", "Transpose", "Reshape")
_FEEDERS = {"ffn-down": ("Gelu",), "attention-output": ("Reshape", "Transpose")}


def _source(op: Any, index: int) -> Any:
    return op.input_value(index).get_node()


def _constant_weight(op: Any) -> bool:
    node = _source(op, 1)
    for _ in range(3):
        if node.get_type_name() not in _WEIGHT_WRAPPERS:
            break
        node = _source(node, 0)
    return bool(node.get_type_name() == "Constant")


def role_of(op: Any) -> str | None:
    """The role of `op` if it is a linear layer with one, else None."""
    if op.get_type_name() != "MatMul" or not _constant_weight(op):
        return None
    feeder = _source(op, 0)
    if feeder.get_type_name() == "Convert":  # a precision change in between
        feeder = _source(feeder, 0)
    kind = feeder.get_type_name()
    return next((role for role, types in _FEEDERS.items() if kind in types), None)


def layers_by_role(ov_model: Any, roles: tuple[str, ...]) -> dict[str, list[str]]:
    """Friendly names of the linear layers of each role in `roles`, in graph order."""
    found: dict[str, list[str]] = {role: [] for role in roles}
    for op in ov_model.get_ordered_ops():
        role = role_of(op)
        if role in found:
            found[role].append(op.get_friendly_name())
    return found
