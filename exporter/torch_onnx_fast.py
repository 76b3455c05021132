"""Two shortcuts through torch.onnx's dynamo exporter that leave the ONNX it makes unchanged.

1. `torch.onnx.export(dynamo=True)` traces the model with `torch.export`, then traces the whole
   program a second time in `run_decompositions`, only to replace the ATen ops that have no ONNX
   translation. In most transformers models every op of the first trace has a translation but
   for a few spellings (`aten.to.*`, `aten.__and__`) and reshapes to the shape a tensor already
   has; `_keep_translatable` rewrites those in the FX graph and hands the program straight to the
   translation. Anything else it does not know (an op without translation, a higher-order op, a
   nested graph) takes torch.onnx's own decomposition, unchanged.
2. Building torch.onnx's op registry asks onnxscript for the domain of each of its ~550 torchlib
   functions through `function_ir`, which re-parses the function's Python source; the domain is
   the function's opset's, which `_torchlib_ops` reads directly.

Together they save about 2.5 s of a cold MiniLM export (a 6-layer BERT). Both patch private
torch.onnx / onnxscript names only while `fast_torch_onnx()` is active, and only when those
names exist with the expected shape; otherwise the export runs exactly as torch.onnx ships it.
`MODELKILN_TRACE_SHORTCUTS=0` turns both off (to compare, or to rule them out).
"""

from __future__ import annotations

import contextlib
import importlib
import operator
import os
from collections.abc import Callable, Iterator
from typing import Any

# Spellings of one op that torch.onnx's registry lacks, with the op they mean.
_LOGICAL = {"__and__": "bitwise_and", "__or__": "bitwise_or", "__xor__": "bitwise_xor"}
_CASTS = ("dtype", "dtype_layout", "device", "other")


def _meta(node: Any) -> Any:
    return node.meta.get("val") if hasattr(node, "meta") else None


def _shape(node: Any) -> tuple[str, ...] | None:
    shape = getattr(_meta(node), "shape", None)
    return None if shape is None else tuple(str(d) for d in shape)


def _rewrite(graph: Any, aten: Any) -> None:
    """What the second trace would have simplified: `x.to(...)` becomes `_to_copy(x, dtype=...)`
    or `x` itself, `a & b` becomes bitwise_and, a reshape to the shape it has is dropped."""
    for node in list(graph.nodes):
        if node.op != "call_function" or not hasattr(node.target, "overloadpacket"):
            continue
        name = node.target.overloadpacket.__name__
        overload = node.target._overloadname
        if name in ("reshape", "view") and overload == "default":
            shape = _shape(node)
            if shape is not None and shape == _shape(node.args[0]):
                node.replace_all_uses_with(node.args[0])
                graph.erase_node(node)
        elif name == "to" and overload in _CASTS:
            source, dtype = node.args[0], getattr(_meta(node), "dtype", None)
            if dtype is None:
                continue
            if getattr(_meta(source), "dtype", None) == dtype:
                node.replace_all_uses_with(source)
            else:
                with graph.inserting_before(node):
                    cast = graph.call_function(aten._to_copy.default, (source,), {"dtype": dtype})
                cast.meta = dict(node.meta)
                node.replace_all_uses_with(cast)
            graph.erase_node(node)
        elif name in _LOGICAL and overload in ("Tensor", "Scalar"):
            node.target = getattr(getattr(aten, _LOGICAL[name]), overload)


def _translatable(graph_module: Any, registry: Any, dropped: set[Any]) -> bool:
    """Every node is a plain op the registry translates, or an assertion torch.onnx drops."""
    import torch

    if any(module is not graph_module for module in graph_module.modules()):
        return False  # control flow or another nested graph: torch.onnx's own path
    for node in graph_module.graph.nodes:
        if node.op in ("placeholder", "call_function") and "val" not in node.meta:
            return False  # made by a pass after the trace: the re-trace gives it its types
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        if node.op != "call_function" or isinstance(node.target, torch._ops.HigherOrderOperator):
            return False
        if node.target in dropped or node.target is operator.getitem:
            continue
        if not registry.is_registered(node.target):
            return False
    return True


def _keep_translatable(original: Callable[..., Any]) -> Callable[..., Any]:
    import torch

    aten = torch.ops.aten
    # What torch.onnx's remove_assertion_nodes erases after this step.
    dropped = {
        aten.sym_constrain_range_for_size.default,
        aten._assert_async.default,
        aten._assert_async.msg,
        aten._assert_scalar.default,
        aten._assert_tensor_metadata.default,
    }

    def decompose_with_registry(exported_program: Any, registry: Any) -> Any:
        graph_module = exported_program.graph_module
        _rewrite(graph_module.graph, aten)  # meaning-preserving: fine for either path
        if not _translatable(graph_module, registry, dropped):
            return original(exported_program, registry)
        graph_module.graph.eliminate_dead_code()
        graph_module.recompile()
        return exported_program

    return decompose_with_registry


def _torchlib_ops(original: Callable[..., Any], meta_type: Any) -> Callable[..., Any]:
    """onnxscript's get_torchlib_ops, reading each function's domain from its opset."""

    def get_torchlib_ops() -> list[Any]:
        from onnxscript.function_libs.torch_lib import ops, registration

        del ops  # importing it registers the functions
        metas = []
        try:
            for qualified_name, functions in registration.default_registry.items():
                if qualified_name.startswith("internal::"):
                    continue
                for is_complex, group in ((False, functions.overloads), (True, functions.complex)):
                    for function in group:
                        metas.append(
                            meta_type(
                                qualified_name=qualified_name,
                                function=function,
                                domain=function.opset.domain,
                                name=function.name,
                                is_complex=is_complex,
                            )
                        )
        except (AttributeError, TypeError):
            return list(original())
        return metas

    return get_torchlib_ops


@contextlib.contextmanager
def _patched(owner: Any, name: str, replacement: Callable[..., Any]) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, replacement)
    try:
        yield
    finally:
        setattr(owner, name, original)


def _torchlib_apis(lazy_import: Any) -> tuple[Any, Callable[..., Any], Any] | None:
    """The onnxscript module torch.onnx takes get_torchlib_ops from, that function, and the
    record type it returns; None when any of them is not where this torch puts it."""
    name = getattr(getattr(lazy_import, "onnxscript_apis", None), "_name", None)
    try:
        apis = importlib.import_module(name) if isinstance(name, str) else None
        original = getattr(apis, "get_torchlib_ops", None)
        home = importlib.import_module(original.__module__) if callable(original) else None
    except ImportError:
        return None
    meta_type = getattr(home, "_OnnxFunctionMeta", None)
    if original is None or meta_type is None:
        return None
    return apis, original, meta_type


@contextlib.contextmanager
def fast_torch_onnx() -> Iterator[None]:
    """While active, torch.onnx.export(dynamo=True) takes the two shortcuts where it can."""
    if os.environ.get("MODELKILN_TRACE_SHORTCUTS", "1") == "0":
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            from torch.onnx._internal import _lazy_import
            from torch.onnx._internal.exporter import _fx_passes
        except ImportError:
            yield
            return
        decompose = getattr(_fx_passes, "decompose_with_registry", None)
        if decompose is not None and hasattr(_fx_passes, "remove_assertion_nodes"):
            stack.enter_context(
                _patched(_fx_passes, "decompose_with_registry", _keep_translatable(decompose))
            )
        found = _torchlib_apis(_lazy_import)
        if found is not None:
            apis, original, meta_type = found
            stack.enter_context(
                _patched(apis, "get_torchlib_ops", _torchlib_ops(original, meta_type))
            )
        yield
