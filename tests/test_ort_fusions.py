"""ONNX Runtime's contrib-op fusions as a backend pass of the onnxruntime backend only.

The tiny BERT is traced once; each level fuses a copy, which must compute what the plain graph
computes, and the plain graph (the one other backends build from) must stay free of
com.microsoft ops. The export path records every backend pass in the manifest.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import models
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from conftest import Exported

import modelkiln
from modelkiln.backends.onnxruntime.fusions import AUTO_LEVEL, fuse, resolve
from modelkiln.cli import main
from modelkiln.pipeline import export_many
from modelkiln.precision.names import Precision
from modelkiln.targets import Target

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
PLAIN = Target(name="cpu-plain", backend="onnxruntime", options={"ort_fusions": "off"})


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_bert_dir) -> Exported:
    out = tmp_path_factory.mktemp("artifacts") / "tiny-bert-plain"
    result = modelkiln.export(tiny_bert_dir, out, target=PLAIN, use_cache=False)
    return Exported(tiny_bert_dir, out, models.read_manifest(out), result)


def ops(model: ir.Model) -> collections.Counter[str]:
    return collections.Counter(
        f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
        for n in model.graph.all_nodes()
    )


def projections(model: ir.Model) -> int:
    """MatMuls with a constant weight: what int8 and int4 quantization reach."""
    return sum(1 for n in model.graph if n.op_type == "MatMul" and n.inputs[1].is_initializer())


def run(model: ir.Model | Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    data = model if isinstance(model, Path) else ir.serde.serialize_model(model)
    source = str(data) if isinstance(data, Path) else data.SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return session.run(["last_hidden_state"], feeds)[0]


@pytest.mark.parametrize(
    ("level", "wanted", "absent"),
    [
        ("norms", {"com.microsoft::SkipLayerNormalization", "com.microsoft::BiasGelu"}, set()),
        ("multi-head", {"com.microsoft::MultiHeadAttention"}, {"com.microsoft::Attention"}),
        ("attention", {"com.microsoft::Attention"}, {"com.microsoft::MultiHeadAttention"}),
    ],
)
def test_each_level_fuses_a_copy_that_computes_the_same(
    plain: Exported, level: str, wanted: set[str], absent: set[str]
) -> None:
    model = ir.load(plain.path / "model.onnx")
    before = ops(model)
    assert not any(op.startswith("com.microsoft") for op in before)
    result = fuse(model, level)
    fused, records, counts = result.model, result.passes, result.counts
    assert result.reverted is None
    assert ops(model) == before  # the shared model is left as it is
    got = ops(fused)
    assert wanted <= set(got), got
    assert not absent & set(got), got
    assert sum(got.values()) < sum(before.values())
    if level != "attention":  # Q, K and V stay MatMuls for quantization to reach
        assert projections(fused) == projections(model)
    assert [r.name for r in records][0] == "ort-prepare" and records[-1].name == "ort-cleanup"
    assert all(r.nodes_before >= 0 and r.seconds >= 0 for r in records)
    assert counts["ort-skip-layer-norm"] > 0 and all(isinstance(v, int) for v in counts.values())
    for batch, seq in ((1, 5), (2, 17)):
        feeds = models.text_feeds(INPUTS, batch, seq, seed=seq)
        feeds["attention_mask"][-1, seq // 2 :] = 0  # padding: the mask must still apply
        np.testing.assert_allclose(run(fused, feeds), run(model, feeds), atol=1e-4, rtol=0)


def test_off_returns_the_model_untouched(plain: Exported) -> None:
    model = ir.load(plain.path / "model.onnx")
    result = fuse(model, "off")
    assert result.model is model and result.passes == [] and result.counts == {}


def test_auto_keeps_projections_for_quantized_precisions() -> None:
    assert resolve("auto", Precision.FP32) == "attention"
    for precision in (Precision.INT8_DYNAMIC, Precision.INT8_SMOOTH, Precision.INT4_WEIGHTS):
        assert resolve("auto", precision) == "multi-head"
    assert resolve("norms", Precision.INT8_DYNAMIC) == "norms"
    assert set(AUTO_LEVEL) == set(Precision) - {Precision.BF16, Precision.INT8_WEIGHTS}


def test_export_records_the_backend_passes_and_inspect_shows_them(
    tiny_bert_artifact: Exported,
) -> None:
    backend = tiny_bert_artifact.manifest["backend"]
    names = [p["name"] for p in backend["passes"]]
    assert names[0] == "ort-prepare" and "ort-packed-attention" in names
    assert backend["ort_fusions"]["level"] == "attention"
    assert backend["ort_fusions"]["fused"]["ort-packed-attention"] > 0
    graph = onnx.load(str(tiny_bert_artifact.path / "model.onnx"))
    assert "com.microsoft" in {o.domain for o in graph.opset_import}
    shared = [p["name"] for p in tiny_bert_artifact.manifest["passes"]]
    assert "ort-prepare" not in shared  # the shared passes stay the shared ones
    result = CliRunner().invoke(main, ["inspect", str(tiny_bert_artifact.path), "--json"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.output)["passes"]
    assert [p["name"] for p in listed] == shared + names
    assert {p.get("backend") for p in listed[len(shared) :]} == {"onnxruntime"}
    text = CliRunner().invoke(main, ["inspect", str(tiny_bert_artifact.path)]).output
    assert "ort-packed-attention (onnxruntime):" in text


def test_cpu_artifacts_keep_add_and_layer_norm_and_onnxruntime_does_not_refuse_them(
    tiny_bert_artifact: Exported, tmp_path: Path
) -> None:
    """ORT's CPU SkipLayerNormalization kernel is the slow one (benchmarks/ort_kernels.py):
    a cpu artifact has no SkipLayerNormalization, and its manifest turns off the load-time
    fusion that would make one; without that setting onnxruntime would fuse it back."""
    backend = tiny_bert_artifact.manifest["backend"]
    names = [p["name"] for p in backend["passes"]]
    assert "ort-skip-layer-norm" not in names and "ort-skip-rms-norm" not in names
    assert backend["disabled_optimizers"] == ["SkipLayerNormFusion"]
    model = tiny_bert_artifact.path / "model.onnx"
    assert ops(ir.load(model))["LayerNormalization"] > 0
    assert "com.microsoft::SkipLayerNormalization" not in ops(ir.load(model))

    def optimized(**extra: object) -> collections.Counter[str]:
        options = ort.SessionOptions()
        out = tmp_path / f"optimized-{len(extra)}.onnx"
        options.optimized_model_filepath = str(out)
        ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"], **extra)
        return ops(ir.load(out))

    assert "com.microsoft::SkipLayerNormalization" in optimized()
    kept = optimized(disabled_optimizers=backend["disabled_optimizers"])
    assert "com.microsoft::SkipLayerNormalization" not in kept
    session = modelkiln.load(tiny_bert_artifact.path)
    feeds = models.text_feeds(INPUTS, 2, 9, seed=3)
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(
        session.run(feeds)["last_hidden_state"],
        reference.run(["last_hidden_state"], feeds)[0],
        atol=1e-5,
    )


def test_off_exports_the_plain_graph(plain: Exported) -> None:
    backend = plain.manifest["backend"]
    assert "passes" not in backend and backend["ort_fusions"]["level"] == "off"
    graph = onnx.load(str(plain.path / "model.onnx"))
    assert not any(n.domain == "com.microsoft" for n in graph.graph.node)


def test_other_backends_never_see_the_fused_graph(tiny_bert_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("openvino")
    results = export_many(tiny_bert_dir, tmp_path, ["cpu", "openvino-cpu"], use_cache=False)
    cpu, ov = results
    assert cpu.manifest.backend.passes and not ov.manifest.backend.passes
    assert ov.manifest.validation.passed  # OpenVINO cannot read com.microsoft ops
    xml = next(tmp_path.glob("*openvino-cpu/*.xml")).read_text()
    assert "MultiHeadAttention" not in xml and "SkipLayerNormalization" not in xml


def test_a_bad_level_is_one_line(tiny_bert_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "t.toml"
    target.write_text('backend = "onnxruntime"\n[options]\nort_fusions = "everything"\n')
    result = CliRunner().invoke(
        main, ["export", str(tiny_bert_dir), "-o", str(tmp_path / "a"), "--target", str(target)]
    )
    assert result.exit_code == 2
    assert "ort_fusions 'everything' is not one of auto, off, norms" in result.output
    assert not (tmp_path / "a").exists()
