"""A static check of an ONNX graph against TensorRT's ONNX parser, runnable without TensorRT.

It reads the operator matrix TensorRT publishes (`onnx_support`) and reports every node the
parser would refuse or mis-import: ops and domains it has no importer for, types it lacks
(DOUBLE, UINT8 inside the network, quantized types outside Q/DQ), inputs it needs as
constants, non-zero quantization zero points and the attribute values it does not take.
Every finding is collected, in graph order, so one run names everything to fix; the check
takes seconds where a failed engine build on a GPU takes minutes.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx_ir as ir

from modelkiln.backends.tensorrt.onnx_support import (
    PARSERS,
    QUANTIZED_TYPES,
    TRT_TYPES,
    TYPE_NAMES,
    OpSupport,
    ParserSupport,
)

SUPPORTED_VERSIONS: tuple[int, ...] = tuple(sorted(PARSERS))
DEFAULT_VERSION = 10
_DEFAULT_DOMAINS = ("", "ai.onnx")
_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")
_RANDOM_OPS = frozenset({"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike"})


@dataclass(frozen=True)
class Finding:
    """One thing TensorRT's parser would refuse; `op` is "graph input" or "model" for
    findings that belong to no node."""

    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        if self.op == "model":
            return f"model: {self.reason}"
        if self.op == "graph input":
            return f"graph input '{self.node}': {self.reason}"
        return f"node '{self.node}' ({self.op}): {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"node": self.node, "op": self.op, "reason": self.reason}


def installed_major() -> int | None:
    """The major version of the installed TensorRT Python package, or None.

    Package metadata first (reading it does not load CUDA libraries); importing `tensorrt`
    only for installs without metadata (e.g. system packages).
    """
    for dist in _DISTRIBUTIONS:
        try:
            return int(importlib.metadata.version(dist).split(".")[0])
        except (importlib.metadata.PackageNotFoundError, ValueError):
            continue
    if importlib.util.find_spec("tensorrt") is None:
        return None
    try:
        import tensorrt  # type: ignore[import-not-found]

        return int(str(tensorrt.__version__).split(".")[0])
    except Exception:  # a broken install: no version to take
        return None


def default_version() -> int:
    """The installed TensorRT's major if its matrix is known here, else the newest known
    matrix for newer installs, else 10."""
    major = installed_major()
    if major is None:
        return DEFAULT_VERSION
    if major in PARSERS:
        return major
    return SUPPORTED_VERSIONS[-1] if major > SUPPORTED_VERSIONS[-1] else DEFAULT_VERSION


def lint_model(model: ir.Model, trt_major: int = DEFAULT_VERSION) -> list[Finding]:
    """Every reason TensorRT `trt_major`'s ONNX parser would refuse `model`, in graph order."""
    if trt_major not in PARSERS:
        known = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise ValueError(f"no TensorRT {trt_major} operator data; known versions: {known}")
    return _Linter(model, PARSERS[trt_major]).run()


def count_nodes(model: ir.Model) -> int:
    """Nodes `lint_model` checks: the graph's, its sub-graphs' and the local functions'."""
    return sum(1 for _ in model.graph.all_nodes()) + sum(
        1 for f in model.functions.values() for _ in f.all_nodes()
    )


def _type_name(dtype: str) -> str:
    return TYPE_NAMES.get(dtype, dtype)


def _type_list(types: Iterable[str]) -> str:
    return ", ".join(_type_name(t) for t in types)


class _Linter:
    def __init__(self, model: ir.Model, parser: ParserSupport) -> None:
        self.model = model
        self.parser = parser
        self.findings: list[Finding] = []
        self.reported: set[int] = set()  # ids of values whose type was checked
        self.foldable: dict[int, bool] = {}
        self.io = {id(v) for v in (*model.graph.inputs, *model.graph.outputs)}

    @property
    def trt(self) -> str:
        return f"TensorRT {self.parser.version}"

    def run(self) -> list[Finding]:
        self._check_opset()
        for value in self.model.graph.inputs:
            self._check_value(value, None, "")
        self._walk(self.model.graph, "")
        done: set[ir.OperatorIdentifier] = set()
        pending = list(self._called_functions(self.model.graph.all_nodes()))
        while pending:
            key = pending.pop(0)
            if key in done:
                continue
            done.add(key)
            function = self.model.functions[key]
            self._walk(function, f"{function.name}/")
            pending.extend(self._called_functions(function.all_nodes()))
        return self.findings

    def _add(self, node: str, op: str, reason: str) -> None:
        self.findings.append(Finding(node, op, reason))

    # ------------------------------------------------------------------ model and graphs

    def _check_opset(self) -> None:
        imports = self.model.opset_imports
        version = imports.get("", imports.get("ai.onnx"))
        low, high = self.parser.opsets
        if version is not None and not low <= version <= high:
            self._add(
                "",
                "model",
                f"default-domain opset {version}; {self.trt}'s ONNX parser supports opsets "
                f"{low} to {high}",
            )

    def _called_functions(self, nodes: Iterable[ir.Node]) -> Iterable[ir.OperatorIdentifier]:
        for node in nodes:
            key = node.op_identifier()
            if key in self.model.functions:
                yield key

    def _walk(self, graph: ir.Graph | ir.Function, prefix: str) -> None:
        for index, node in enumerate(graph):
            self._check_node(node, f"{prefix}{node.name or f'{node.op_type}#{index}'}")
            for attr in node.attributes.values():
                if attr.type == ir.AttributeType.GRAPH:
                    self._walk(attr.as_graph(), prefix)
                elif attr.type == ir.AttributeType.GRAPHS:
                    for sub in attr.as_graphs():
                        self._walk(sub, prefix)

    # ------------------------------------------------------------------ nodes

    def _check_node(self, node: ir.Node, name: str) -> None:
        default = node.domain in _DEFAULT_DOMAINS
        label = node.op_type if default else f"{node.domain}::{node.op_type}"
        before = len(self.findings)
        spec = self._op_problem(node, name, label, default)
        if len(self.findings) > before:  # refused outright: the types around it are moot
            self.reported.update(id(v) for v in node.outputs)
            return
        for value in node.inputs:
            if value is not None and value.producer() is None:
                self._check_value(value, node, name, label)
        if spec is not None:
            for problem in self._rule_problems(node, spec):
                self._add(name, label, problem)
        for value in node.outputs:
            self._check_value(value, node, name, label)

    def _op_problem(self, node: ir.Node, name: str, label: str, default: bool) -> OpSupport | None:
        """Report an op the parser has no (right) importer for; else its matrix entry."""
        ops = self.parser.ops
        if node.op_identifier() in self.model.functions:
            return None  # the parser imports model-local functions; their bodies are walked
        if node.op_type in self.parser.custom_ops:
            return None
        if not default:
            if node.domain == "ai.onnx.ml":
                reason = f"an ONNX-ML op; {self.trt}'s ONNX parser has no importer for ai.onnx.ml"
            elif node.op_type in ops and ops[node.op_type].supported:
                reason = (
                    f"not an ONNX op; {self.trt}'s parser looks ops up by name only and would "
                    f"import it as ONNX {node.op_type}, whose inputs and meaning differ"
                )
            else:
                reason = (
                    f"not an ONNX op; {self.trt}'s parser has no importer for it (only a "
                    f"TensorRT plugin registered as '{node.op_type}' could stand in)"
                )
            if node.domain == "com.microsoft":
                reason += "; export without ONNX Runtime fusions"
            self._add(name, label, reason)
            return None
        spec = ops.get(node.op_type)
        if spec is None:
            self._add(
                name,
                label,
                f"not in {self.trt}'s ONNX operator support matrix (the parser would look "
                f"for a TensorRT plugin named '{node.op_type}')",
            )
            return None
        if not spec.supported:
            note = f" ({spec.note})" if spec.note else ""
            self._add(name, label, f"not supported by {self.trt}'s ONNX parser{note}")
            return None
        return spec

    def _rule_problems(self, node: ir.Node, spec: OpSupport) -> Iterable[str]:
        inputs, outputs = node.inputs, node.outputs
        if spec.types:
            typed = [(inputs, i, "input") for i in spec.typed_inputs]
            typed += [(outputs, i, "output") for i in spec.typed_outputs]
            for values, index, role in typed:
                value = values[index] if index < len(values) else None
                dtype = _dtype(value)
                if value is None or dtype is None or dtype in spec.types:
                    continue
                if dtype in QUANTIZED_TYPES:  # governed by the Q/DQ rule alone
                    continue
                if self._type_problem(value, dtype) is None:  # else reported with the value
                    yield (
                        f"{role} '{value.name}' is {_type_name(dtype)}; TensorRT's "
                        f"{node.op_type} takes {_type_list(spec.types)}"
                    )
        for index, (label, kind) in spec.const_inputs.items():
            value = inputs[index] if index < len(inputs) else None
            if value is not None:
                yield from self._const_problems(node, value, label, kind)
        for index, label in spec.static_if_omitted.items():
            given = index < len(inputs) and inputs[index] is not None
            data = inputs[0] if inputs else None
            shape = data.shape if data is not None else None
            if not given and label not in node.attributes and shape and not shape.is_static():
                yield (
                    f"no `{label}` given and input '{data.name if data else ''}' has dynamic shape "
                    f"{shape}; {self.trt}'s parser infers {label} from static shapes only"
                )
        for attr_name, kind, allowed in spec.attrs:
            problem = _attr_problem(node, attr_name, kind, allowed)
            if problem:
                yield problem
        for index, label in spec.unsupported_inputs.items():
            if index < len(inputs) and inputs[index] is not None:
                yield f"input `{label}` is not supported by TensorRT"
        for index, label in spec.unsupported_outputs.items():
            value = outputs[index] if index < len(outputs) else None
            if value is not None and value.name and (value.uses() or value.is_graph_output()):
                yield f"output `{label}` is not supported by TensorRT"
        for index, (label, allowed) in spec.input_dtypes.items():
            value = inputs[index] if index < len(inputs) else None
            dtype = _dtype(value)
            if value is not None and dtype is not None and dtype not in allowed:
                yield (
                    f"`{label}` '{value.name}' is {_type_name(dtype)}; TensorRT takes "
                    f"{_type_list(allowed)}"
                )
        for index, ranks in spec.input_ranks.items():
            value = inputs[index] if index < len(inputs) else None
            if value is not None and value.shape is not None and value.shape.rank() not in ranks:
                yield (
                    f"input '{value.name}' has rank {value.shape.rank()}; TensorRT takes rank "
                    + " or ".join(str(r) for r in ranks)
                )
        if spec.static_input and inputs and inputs[0] is not None:
            shape = inputs[0].shape
            if shape is not None and not shape.is_static():
                yield (
                    f"input '{inputs[0].name}' has dynamic dimensions {shape}; TensorRT "
                    "needs static ones"
                )

    def _const_problems(
        self, node: ir.Node, value: ir.Value, label: str, kind: str
    ) -> Iterable[str]:
        where = "a graph input" if value.is_graph_input() else "computed in the graph"
        if kind == "initializer":
            if _constant(value) is None:
                yield f"`{label}` input '{value.name}' must be an initializer; it is {where}"
            return
        if kind == "constant":
            if not self._foldable(value):
                yield (
                    f"`{label}` input '{value.name}' must be a build-time constant; it depends "
                    "on graph inputs"
                )
            return
        array = _constant(value)
        if kind == "zero":
            if array is None:
                yield (
                    f"`{label}` '{value.name}' must be a constant 0 (TensorRT quantizes "
                    f"symmetrically only); it is {where}"
                )
            elif np.any(array.astype(np.float64) != 0):
                yield (
                    f"`{label}` '{value.name}' is not zero ({_sample(array)}); TensorRT takes "
                    "only zero points of 0 (symmetric quantization)"
                )
        elif kind == "false":
            if array is None:
                yield (
                    f"`{label}` '{value.name}' must be an initializer equal to False; it is "
                    + where
                )
            elif np.any(array):
                yield (
                    f"`{label}` '{value.name}' is True; TensorRT runs {node.op_type} for "
                    "inference only"
                )
        elif kind == "lt3840" and array is not None and np.any(array >= 3840):
            yield (
                f"`{label}` is {_sample(array)}; TensorRT's {node.op_type} takes {label} below 3840"
            )

    # ------------------------------------------------------------------ values

    def _check_value(
        self, value: ir.Value, node: ir.Node | None, name: str, label: str = ""
    ) -> None:
        if id(value) in self.reported or not value.name:
            return
        self.reported.add(id(value))
        if isinstance(value.type, ir.SequenceType | ir.OptionalType):
            problem: str | None = (
                f"{type(value.type).__name__.removesuffix('Type').lower()} type: TensorRT has "
                "tensors only"
            )
        else:
            dtype = _dtype(value)
            problem = None if dtype is None else self._type_problem(value, dtype)
        if problem is None:
            return
        if node is None:
            self._add(value.name, "graph input", f"is {problem}")
        else:
            role = "output" if value.producer() is node else "input"
            self._add(name, label, f"{role} '{value.name}' is {problem}")

    def _type_problem(self, value: ir.Value, dtype: str) -> str | None:
        if dtype not in TRT_TYPES:
            return f"{dtype}: not a TensorRT type"
        if dtype == "DOUBLE":
            return (
                "DOUBLE: TensorRT has no DOUBLE kernels (its parser casts DOUBLE down to FLOAT, "
                "clamping to +-FLT_MAX)"
            )
        if dtype == "UINT8" and id(value) not in self.io:
            return "UINT8: TensorRT takes UINT8 only as a network input or output"
        if dtype in QUANTIZED_TYPES and not _in_qdq(value, self.parser.custom_ops):
            removed = " (TensorRT 11 has no implicit INT8)" if self.parser.version >= 11 else ""
            return (
                f"{_type_name(dtype)} outside a QuantizeLinear/DequantizeLinear pair: TensorRT "
                f"takes quantized types only through explicit quantization{removed}"
            )
        return None

    def _foldable(self, value: ir.Value) -> bool:
        """Whether TensorRT can resolve `value` to a constant at build time."""
        key = id(value)
        if key in self.foldable:
            return self.foldable[key]
        self.foldable[key] = False  # cycles (loop-carried values) are not constant
        result = _constant(value) is not None
        producer = value.producer()
        if not result and producer is not None:
            if producer.op_type == "Shape" and producer.inputs and producer.inputs[0] is not None:
                shape = producer.inputs[0].shape
                result = shape is not None and shape.is_static()
            elif producer.op_type not in _RANDOM_OPS and not _has_subgraph(producer):
                result = all(v is None or self._foldable(v) for v in producer.inputs)
        self.foldable[key] = result
        return result


def _dtype(value: ir.Value | None) -> str | None:
    if value is None or value.dtype is None or value.dtype == ir.DataType.UNDEFINED:
        return None
    return value.dtype.name


def _has_subgraph(node: ir.Node) -> bool:
    return any(
        a.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
        for a in node.attributes.values()
    )


def _constant(value: ir.Value) -> np.ndarray | None:
    """The value of an initializer or of a Constant node's output; None otherwise (or when
    its external data cannot be read)."""
    try:
        if value.const_value is not None:
            return np.asarray(value.const_value.numpy())
        producer = value.producer()
        if producer is None or producer.op_type != "Constant":
            return None
        for attr in producer.attributes.values():
            if attr.name == "value":
                return np.asarray(attr.as_tensor().numpy())
            if attr.name in ("value_int", "value_float"):
                return np.asarray(attr.value)
            if attr.name in ("value_ints", "value_floats"):
                return np.asarray(list(attr.value))
    except Exception:  # unreadable external data: treated as unknown
        return None
    return None


def _in_qdq(value: ir.Value, custom_ops: frozenset[str]) -> bool:
    """Whether a quantized-type value sits where TensorRT takes one: made by QuantizeLinear
    (or stored as a constant) and read only by DequantizeLinear (or as a zero point)."""
    if value.is_graph_output() or value.is_graph_input():
        return False
    producer = value.producer()
    made = (
        value.const_value is not None
        if producer is None
        else producer.op_type in ("QuantizeLinear", "Constant") or producer.op_type in custom_ops
    )
    uses: Sequence[Any] = list(value.uses())
    read = all(
        use.node.op_type == "DequantizeLinear"
        or (use.node.op_type == "QuantizeLinear" and use.idx == 2)
        or use.node.op_type in custom_ops
        for use in uses
    )
    return made and read


def _attr_problem(node: ir.Node, name: str, kind: str, allowed: tuple[object, ...]) -> str | None:
    attr = node.attributes.get(name)
    if attr is None:
        return None
    value = attr.value
    if kind == "absent":
        return f"attribute `{name}` is not supported by TensorRT"
    if kind == "in" and value not in allowed:
        choices = ", ".join(repr(a) for a in allowed)
        return f"attribute {name}={value!r} is not supported; TensorRT takes {choices}"
    if kind == "len_in" and len(value) not in allowed:
        return f"{len(value)}-D {name} is not supported; TensorRT takes " + " or ".join(
            f"{a}-D" for a in allowed
        )
    if kind == "all_ones" and any(v != 1 for v in value):
        return f"attribute {name}={list(value)} is not supported; TensorRT takes all ones"
    return None


def _sample(array: np.ndarray) -> str:
    flat = array.reshape(-1)
    shown = ", ".join(str(v.item()) for v in flat[:4])
    return shown + (", ..." if flat.size > 4 else "")
