"""exporter/torch_onnx_fast.py: torch.onnx's export with the shortcuts gives the ONNX it gives
without them, skips the second trace only where nothing needs decomposing, and builds the same
op registry (without the signatures nothing reads)."""

from __future__ import annotations

import collections
import importlib
from typing import Any

import models
import numpy as np
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from torch.onnx._internal import _lazy_import

from modelkiln.exporter.passes import simplify
from modelkiln.exporter.torch_onnx_fast import fast_torch_onnx
from modelkiln.exporter.trace import OutputSelector, quiet


@pytest.fixture
def decompositions(monkeypatch) -> list[int]:
    """Counts ExportedProgram.run_decompositions calls (torch.onnx's second trace)."""
    calls: list[int] = []
    original = torch.export.ExportedProgram.run_decompositions

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.export.ExportedProgram, "run_decompositions", counted)
    return calls


def export(module: Any, kwargs: dict[str, torch.Tensor], dynamic: dict[str, Any]) -> ir.Model:
    with quiet(), torch.no_grad(), fast_torch_onnx():
        program = torch.onnx.export(
            module, (), kwargs=kwargs, dynamo=True, optimize=False, dynamic_shapes=dynamic
        )
    return program.model


def run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(ir.to_proto(model).SerializeToString())
    return session.run(None, feeds)


def histogram(model: ir.Model) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model.graph))


def test_registry_records_are_the_ones_onnxscript_makes(monkeypatch):
    apis = importlib.import_module(_lazy_import.onnxscript_apis._name)
    shipped = [
        (m.qualified_name, m.function, m.domain, m.name, m.is_complex)
        for m in apis.get_torchlib_ops()
    ]
    original = apis.get_torchlib_ops
    with fast_torch_onnx():
        assert apis.get_torchlib_ops is not original  # the shortcut is in place
        fast = [
            (m.qualified_name, m.function, m.domain, m.name, m.is_complex)
            for m in apis.get_torchlib_ops()
        ]
    assert len(shipped) > 400
    assert fast == shipped
    assert apis.get_torchlib_ops is original  # and gone afterwards
    monkeypatch.setenv("MODELKILN_TRACE_SHORTCUTS", "0")
    with fast_torch_onnx():
        assert apis.get_torchlib_ops is original


def test_tiny_bert_skips_the_second_trace_and_gives_the_same_graph(monkeypatch, decompositions):
    from transformers import BertModel

    torch.manual_seed(0)
    bert = BertModel(models.bert_config(), add_pooling_layer=False).eval()
    names = ("input_ids", "attention_mask", "token_type_ids")
    module = OutputSelector(bert, names, ("last_hidden_state",))
    ids = torch.randint(1, models.VOCAB_SIZE, (2, 8), generator=torch.Generator().manual_seed(0))
    # distinct tensors: torch.export would take one tensor passed twice for one input
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": ids * 0}
    dynamic = {n: {0: "batch", 1: "sequence"} for n in names}

    fast = export(module, kwargs, dynamic)
    assert decompositions == []  # nothing in this BERT needed decomposing
    monkeypatch.setenv("MODELKILN_TRACE_SHORTCUTS", "0")
    shipped = export(module, kwargs, dynamic)
    assert decompositions == [1]  # torch.onnx as shipped traces twice

    fast, _ = simplify(fast)
    shipped, _ = simplify(shipped)
    assert histogram(fast) == histogram(shipped)
    rng = np.random.default_rng(0)
    x = rng.integers(1, models.VOCAB_SIZE, (3, 11))
    mask = np.ones_like(x)
    mask[0, 6:] = 0
    feeds = {"input_ids": x, "attention_mask": mask, "token_type_ids": np.zeros_like(x)}
    with torch.no_grad():
        reference = bert(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    expected = reference.last_hidden_state.numpy()
    np.testing.assert_allclose(run(fast, feeds)[0], run(shipped, feeds)[0], atol=1e-6)
    np.testing.assert_allclose(run(fast, feeds)[0], expected, atol=1e-5)


class Spellings(torch.nn.Module):
    """The spellings the shortcut rewrites: casts, `&`/`|`, a reshape to the same shape."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        same = x.to(torch.float32).reshape(x.shape[0], x.shape[1])
        inside = ((x > 0) & (x < 1)) | (x < -2)
        return same * 2, inside.to(torch.int64) + x.to(torch.int32).to(torch.int64)


class NeedsDecomposition(torch.nn.Module):
    """aten.std has no ONNX translation: torch.onnx must decompose it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.std(-1, keepdim=True) + x.to(torch.float32)


class InPlace(torch.nn.Module):
    """transformers 4.x's spellings: `+=` and `*=` on fresh results, `detach_()` of one."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        embeddings = x + 1
        embeddings += x * 3
        scale = (x * 0 + 2).detach_()
        scaled = embeddings * 1
        scaled *= 0.5
        return scaled * scale - embeddings


class InPlaceOnView(torch.nn.Module):
    """`+=` on a row of a tensor read later: the shortcut must leave it to torch.onnx."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        row = y[0]
        row += 1
        return y + 1


class InPlaceCast(torch.nn.Module):
    """float32 `+=` float64 stays float32; `add` would promote: left to torch.onnx."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x * 2
        y += x.to(torch.float64) / 3
        return y


@pytest.mark.parametrize(
    ("module", "traces"),
    [
        (Spellings(), []),
        (InPlace(), []),
        (NeedsDecomposition(), [1]),
        (InPlaceOnView(), [1]),
        (InPlaceCast(), [1]),
    ],
    ids=["rewritten", "in-place", "kept", "in-place-on-view", "in-place-cast"],
)
def test_results_match_torch_whichever_path_is_taken(module, traces, decompositions):
    x = torch.linspace(-3, 3, 12).reshape(3, 4)
    model = export(module, {"x": x}, {"x": {0: "batch"}})
    assert decompositions == traces
    y = torch.linspace(-4, 2, 20).reshape(5, 4)
    got = run(model, {"x": y.numpy()})
    with torch.no_grad():
        want = module(y)
    want = want if isinstance(want, tuple) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-6, atol=1e-6)


class Promotes(torch.nn.Module):
    """float + int64 tensor: torch.onnx must cast the int64 operand (type promotion)."""

    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return (x + n).relu()


def exported_graph(module: Any, kwargs: dict[str, torch.Tensor]) -> Any:
    with quiet(), torch.no_grad():
        return torch.export.export(module, (), kwargs).graph_module


def tiny_bert_selector() -> tuple[Any, dict[str, torch.Tensor]]:
    from transformers import BertModel

    torch.manual_seed(0)
    bert = BertModel(models.bert_config(), add_pooling_layer=False).eval()
    names = ("input_ids", "attention_mask", "token_type_ids")
    ids = torch.randint(1, models.VOCAB_SIZE, (2, 8), generator=torch.Generator().manual_seed(0))
    kwargs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": ids * 0}
    return OutputSelector(bert, names, ("last_hidden_state",)), kwargs


def test_type_promotion_is_skipped_only_where_it_would_change_nothing():
    from torch.onnx._internal.exporter import _fx_passes

    from modelkiln.exporter.torch_onnx_fast import _promotion_rules, promotion_needed

    rules = _promotion_rules()
    assert rules is not None  # this torch keeps them where the shortcut looks
    module, kwargs = tiny_bert_selector()
    bert = exported_graph(module, kwargs)
    assert not promotion_needed(bert, rules)
    before = str(bert.graph)
    _fx_passes.insert_type_promotion_nodes(bert)  # torch.onnx's own pass
    assert str(bert.graph) == before  # it changes nothing: skipping it is exact

    x = torch.linspace(-1, 1, 6).reshape(2, 3)
    promotes = exported_graph(Promotes(), {"x": x, "n": torch.arange(6).reshape(2, 3)})
    assert promotion_needed(promotes, rules)
    before = str(promotes.graph)
    _fx_passes.insert_type_promotion_nodes(promotes)
    assert str(promotes.graph) != before  # the cast a skip would have lost


def test_promoting_model_still_gets_its_casts():
    x = torch.linspace(-1, 1, 6).reshape(2, 3)
    n = torch.arange(6).reshape(2, 3)
    model = export(Promotes(), {"x": x, "n": n}, {"x": {0: "batch"}, "n": {0: "batch"}})
    y = torch.linspace(-3, 3, 12).reshape(4, 3)
    m = torch.arange(12).reshape(4, 3) - 6
    got = run(model, {"x": y.numpy(), "n": m.numpy()})[0]
    np.testing.assert_allclose(got, Promotes()(y, m).numpy(), rtol=1e-6)


def test_registry_leaves_builtin_signatures_to_the_first_call():
    from torch.onnx._internal.exporter import _registration

    def listed(registry: Any) -> dict[Any, list[tuple[Any, bool]]]:
        return {
            target: [(m.onnx_function, m.is_complex) for m in metas]
            for target, metas in registry.functions.items()
        }

    shipped = _registration.ONNXRegistry.from_torchlib()
    original = _registration.OnnxDecompMeta.__post_init__
    with fast_torch_onnx():
        assert _registration.OnnxDecompMeta.__post_init__ is not original
        fast = _registration.ONNXRegistry.from_torchlib()

        def double(x):  # a custom registration still gets its signature at once
            return x

        fast.register_op(torch.ops.aten.relu.default, double)
        custom = fast.get_decomps(torch.ops.aten.relu.default)[0]
    assert _registration.OnnxDecompMeta.__post_init__ is original
    assert custom.is_custom and custom.signature is not None
    fast.functions["aten::relu"].pop(0)
    assert listed(fast) == listed(shipped)
    metas = [m for ms in fast.functions.values() for m in ms]
    assert len(metas) > 400
    assert all(m.signature is None for m in metas)
    inferred = [m for ms in shipped.functions.values() for m in ms if m.signature is not None]
    assert len(inferred) > 400  # torch.onnx as shipped infers them all up front
