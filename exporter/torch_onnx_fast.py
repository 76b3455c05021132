"""Four shortcuts through torch.onnx's dynamo exporter that leave the ONNX it makes unchanged.

1. `torch.onnx.export(dynamo=True)` traces the model with `torch.export`, then traces the whole
   program a second time in `run_decompositions`, only to replace the ATen ops that have no ONNX
   translation. In most transformers models every op of the first trace has a translation but
   for a few spellings (`aten.to.*`, `aten.__and__`), reshapes to the shape a tensor already
   has, and in-place arithmetic on a tensor nothing else reads (transformers 4.x's BERT:
   `embeddings += position_embeddings`, a `detach_()` of a fresh mask); `_keep_translatable`
   rewrites those in the FX graph and hands the program straight to the
   translation. Anything else it does not know (an op without translation, a higher-order op, a
   nested graph) takes torch.onnx's own decomposition, unchanged.
2. Building torch.onnx's op registry asks onnxscript for the domain of each of its ~550 torchlib
   functions through `function_ir`, which re-parses the function's Python source; the domain is
   the function's opset's, which `_torchlib_ops` reads directly.

3. Inserting explicit type promotions (`insert_type_promotion_nodes`) re-runs every node of
   the program on fake tensors to learn the dtypes its arguments have, although each node
   already carries them (`node.meta["val"]`). `_promote_where_needed` asks each node's
   promotion rule with those dtypes first and runs torch.onnx's pass only when some argument
   would be cast; when none would, the pass changes nothing, so skipping it is exact.
4. The registry also infers an ONNX signature for each of those functions from its type
   annotations (`OnnxDecompMeta.__post_init__`, about 0.3 s). Only a script function's
   signature is ever read, by `OpRecorder.eval_function` when it is called, which infers it
   then with the same arguments if it is missing; a traced function is called directly. So the
   built-in ones are left without one (`_lazy_signatures`); custom registrations keep theirs.

Together they save about 3.3 s of a cold MiniLM export (a 6-layer BERT). All patch private
torch.onnx / onnxscript names only while `fast_torch_onnx()` is active, and only when those
names exist with the expected shape; otherwise the export runs exactly as torch.onnx ships it.
`MODELKILN_TRACE_SHORTCUTS=0` turns them off (to compare, or to rule them out).
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
# In-place arithmetic and the op that computes the same value into a new tensor.
_IN_PLACE = {"add_": "add", "sub_": "sub", "mul_": "mul", "div_": "div"}


def _meta(node: Any) -> Any:
    return node.meta.get("val") if hasattr(node, "meta") else None


def _shape(node: Any) -> tuple[str, ...] | None:
    shape = getattr(_meta(node), "shape", None)
    return None if shape is None else tuple(str(d) for d in shape)


def _sole_owner(node: Any) -> bool:
    """Whether the in-place `node` is the only reader of the tensor it changes, and that tensor
    is a fresh result (not an input, parameter or buffer, nor a view of anything): then the
    same op out of place computes what every later reader sees."""
    target: Any = node.args[0] if node.args else None
    if not hasattr(target, "op") or target.op != "call_function" or len(target.users) != 1:
        return False
    schema = getattr(target.target, "_schema", None)
    if schema is None:  # operator.getitem and other Python callables: not known to own it
        return False
    return all(r.alias_info is None for r in schema.returns)


def _same_dtype(node: Any) -> bool:
    """`a.op_(b)` keeps a's dtype; `a.op(b)` would promote unless b's dtype is a's."""
    other = node.args[1] if len(node.args) > 1 else None
    if not hasattr(other, "op"):
        return isinstance(other, (int, float)) and not isinstance(other, bool)
    mine, theirs = _meta(node.args[0]), _meta(other)
    return mine is not None and theirs is not None and mine.dtype == theirs.dtype


def _rewrite(graph: Any, aten: Any) -> None:
    """What the second trace would have simplified: `x.to(...)` becomes `_to_copy(x, dtype=...)`
    or `x` itself, `a & b` becomes bitwise_and, a reshape to the shape it has is dropped,
    `a.add_(b)` on a tensor only it reads becomes `add(a, b)`, such a `detach_()` goes."""
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
        elif name in _IN_PLACE and overload in ("Tensor", "Scalar"):
            if _sole_owner(node) and _same_dtype(node):
                node.target = getattr(getattr(aten, _IN_PLACE[name]), overload)
        elif name == "detach_" and overload == "default" and _sole_owner(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)


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


def _promotion_rules() -> tuple[Any, Any, Any, Any] | None:
    """(TypePromotionTable, get_type_promotion_rule, is_torch_symbolic_type,
    from_scalar_type_to_torch_dtype) from where this torch keeps them, else None."""
    try:
        from torch.onnx._internal.fx import type_utils
        from torch.onnx._internal.fx.passes import type_promotion
    except ImportError:
        return None
    found = (
        getattr(type_promotion, "TypePromotionTable", None),
        getattr(type_promotion, "get_type_promotion_rule", None),
        getattr(type_utils, "is_torch_symbolic_type", None),
        getattr(type_utils, "from_scalar_type_to_torch_dtype", None),
    )
    return None if any(f is None for f in found) else found


class _Unknown(Exception):
    """Something the static check cannot decide: torch.onnx's own pass decides."""


def _would_cast(arg: Any, dtype: Any, is_symbolic: Any, scalar_dtype: Any) -> bool:
    """Whether torch.onnx's `_maybe_promote_arg` would insert a cast for `arg`: the same
    cases in the same order, with the dtype the trace recorded instead of a re-run's."""
    import torch

    if dtype is None:
        return False
    if isinstance(arg, torch.fx.Node):
        if "val" not in arg.meta:
            raise _Unknown
        value = arg.meta["val"]
        if isinstance(value, torch.Tensor):
            return bool(value.dtype != dtype)
        if is_symbolic(value):
            return bool(scalar_dtype(type(value)) != dtype)
        raise _Unknown  # torch.onnx raises for this: let it
    equivalent = scalar_dtype(type(arg))
    if equivalent is not None:
        return bool(equivalent != dtype)
    if isinstance(arg, (tuple, list)):
        return any(_would_cast(a, dtype, is_symbolic, scalar_dtype) for a in arg)
    raise _Unknown


def promotion_needed(graph_module: Any, rules: tuple[Any, Any, Any, Any]) -> bool:
    """Whether inserting type promotions would change any graph of `graph_module`."""
    import torch

    table_type, rule_for, is_symbolic, scalar_dtype = rules
    table = table_type()

    def recorded(node: Any) -> Any:
        if "val" not in node.meta:
            raise _Unknown
        return node.meta["val"]

    try:
        for module in graph_module.modules():
            if not isinstance(module, torch.fx.GraphModule):
                return True
            for node in module.graph.nodes:
                if node.op != "call_function":
                    continue
                rule = rule_for(node, table)
                if rule is None:
                    continue
                args = torch.fx.node.map_arg(node.args, recorded)
                kwargs = torch.fx.node.map_arg(node.kwargs, recorded)
                info = rule.preview_type_promotion(args, kwargs)
                for i, arg in enumerate(node.args):
                    if _would_cast(arg, info.args_dtypes.get(i), is_symbolic, scalar_dtype):
                        return True
                for name, arg in node.kwargs.items():
                    if _would_cast(arg, info.kwargs_dtypes.get(name), is_symbolic, scalar_dtype):
                        return True
    except Exception:  # _Unknown, or a rule that wants what only a re-run has
        return True
    return False


def _promote_where_needed(
    original: Callable[..., Any], rules: tuple[Any, Any, Any, Any]
) -> Callable[..., Any]:
    def insert_type_promotion_nodes(graph_module: Any) -> None:
        if promotion_needed(graph_module, rules):
            original(graph_module)

    return insert_type_promotion_nodes


def _lazy_signatures(original: Callable[..., Any]) -> Callable[..., Any]:
    def __post_init__(self: Any) -> None:
        if self.is_custom or self.signature is not None:
            original(self)

    return __post_init__


def _decomp_meta_type(registration: Any) -> Any:
    """torch.onnx's OnnxDecompMeta when it infers signatures where this module expects."""
    meta = getattr(registration, "OnnxDecompMeta", None)
    fields = getattr(meta, "__dataclass_fields__", {})
    if callable(getattr(meta, "__post_init__", None)) and {"signature", "is_custom"} <= set(fields):
        return meta
    return None


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
    """While active, torch.onnx.export(dynamo=True) takes the four shortcuts where it can."""
    if os.environ.get("MODELKILN_TRACE_SHORTCUTS", "1") == "0":
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            from torch.onnx._internal import _lazy_import
            from torch.onnx._internal.exporter import _fx_passes, _registration
        except ImportError:
            yield
            return
        decompose = getattr(_fx_passes, "decompose_with_registry", None)
        if decompose is not None and hasattr(_fx_passes, "remove_assertion_nodes"):
            stack.enter_context(
                _patched(_fx_passes, "decompose_with_registry", _keep_translatable(decompose))
            )
        promote = getattr(_fx_passes, "insert_type_promotion_nodes", None)
        rules = _promotion_rules()
        if promote is not None and rules is not None:
            stack.enter_context(
                _patched(
                    _fx_passes, "insert_type_promotion_nodes", _promote_where_needed(promote, rules)
                )
            )
        found = _torchlib_apis(_lazy_import)
        if found is not None:
            apis, original, meta_type = found
            stack.enter_context(
                _patched(apis, "get_torchlib_ops", _torchlib_ops(original, meta_type))
            )
        decomp_meta = _decomp_meta_type(_registration)
        if decomp_meta is not None:
            stack.enter_context(
                _patched(decomp_meta, "__post_init__", _lazy_signatures(decomp_meta.__post_init__))
            )
        yield
