"""Every reduced precision of every backend, built from the tiny BERT's simplified model.

Backends are called directly (build into a folder, run the files with the backend's own
runtime) so each precision is checked on its own; the export flow with calibration files and
budgets is in test_precision_export.py. Feeds here are generated token ids: tests may
calibrate on them, users may not (modelkiln refuses to calibrate without their data).
"""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import Exported

from modelkiln.backends.base import BuildRequest
from modelkiln.backends.onnxruntime import OnnxRuntimeBackend
from modelkiln.backends.onnxruntime.backend import ALPHAS
from modelkiln.exporter.accuracy import cosine_rows, pooled
from modelkiln.precision.candidates import quantizable_nodes
from modelkiln.targets import Target

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def calibration_feeds(count: int = 12) -> list[dict[str, np.ndarray]]:
    return [models.text_feeds(INPUTS, 1, 4 + 3 * i, seed=100 + i) for i in range(count)]


def eval_feeds() -> list[dict[str, np.ndarray]]:
    return [models.text_feeds(INPUTS, 1, n, seed=7 + n) for n in (5, 17, 33)]


@pytest.fixture(scope="module")
def plain_bert(tmp_path_factory, tiny_bert_dir) -> Exported:
    """The tiny BERT exported without ONNX Runtime's fusions: its model.onnx is the shared
    simplified model every backend builds from (no com.microsoft ops)."""
    import modelkiln

    out = tmp_path_factory.mktemp("artifacts") / "tiny-bert-plain"
    target = Target(name="cpu-plain", backend="onnxruntime", options={"ort_fusions": "off"})
    result = modelkiln.export(tiny_bert_dir, out, target=target, use_cache=False)
    return Exported(tiny_bert_dir, out, models.read_manifest(out), result)


def fp32_model(artifact: Exported) -> ir.Model:
    return ir.load(artifact.path / "model.onnx")


def weight_bytes(path: Path) -> int:
    """Bytes of the initializers: the tiny model's file is mostly graph metadata."""
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def ort_run(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["last_hidden_state"], feeds)[0]


def min_cosine(reference: list[np.ndarray], got: list[np.ndarray], feeds: list) -> float:
    values = []
    for ref, out, feed in zip(reference, got, feeds, strict=True):
        names = ["h"]
        a = pooled({"h": ref}, feed, names)
        b = pooled({"h": out}, feed, names)
        values.append(float(cosine_rows(a, b).min()))
    return min(values)


@pytest.fixture(scope="module")
def fp32_outputs(plain_bert: Exported) -> list[np.ndarray]:
    return [ort_run(plain_bert.path / "model.onnx", f) for f in eval_feeds()]


@pytest.mark.parametrize(
    ("precision", "ops", "floor"),
    [
        ("fp16", {"Cast"}, 0.999),
        ("int8-dynamic", {"DynamicQuantizeLinear", "MatMulInteger"}, 0.98),
        ("int8-smooth", {"DynamicQuantizeLinear", "MatMulInteger"}, 0.98),
        ("int8-static", {"QuantizeLinear", "DequantizeLinear"}, 0.98),
        ("int4-weights", {"MatMulNBits"}, 0.9),
    ],
)
def test_onnxruntime_precision(
    plain_bert: Exported,
    fp32_outputs: list[np.ndarray],
    tmp_path: Path,
    precision: str,
    ops: set[str],
    floor: float,
) -> None:
    backend = OnnxRuntimeBackend()
    target = Target(name="t", backend="onnxruntime", precision=precision)
    backend.check(target)
    section = backend.build(
        BuildRequest(fp32_model(plain_bert), target, tmp_path, calibration_feeds())
    )
    assert section.name == "onnxruntime" and section.files == {"model": "model.onnx"}
    record = section.get("quantization")
    assert record["precision"] == precision and record["tool"]
    if precision == "int8-smooth":  # SmoothQuant first, its alpha searched on the calibration
        smoothed = section.get("smooth_quant")
        assert smoothed["alpha"] in ALPHAS and set(smoothed["alpha_worst_cosine"]) == {
            f"{a:g}" for a in ALPHAS
        }
        assert smoothed["matmuls"] == len(quantizable_nodes(fp32_model(plain_bert))) - 3
    path = tmp_path / section.files["model"]
    graph_ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert ops <= graph_ops, graph_ops
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no scratch left
    got = [ort_run(path, f) for f in eval_feeds()]
    assert min_cosine(fp32_outputs, got, eval_feeds()) >= floor
    if precision != "fp16":
        fp32 = weight_bytes(plain_bert.path / "model.onnx")
        assert weight_bytes(path) < 0.6 * fp32


def test_onnxruntime_keep_leaves_named_nodes_in_float(plain_bert: Exported, tmp_path: Path) -> None:
    model = fp32_model(plain_bert)
    names = quantizable_nodes(model)
    assert len(names) >= 12  # 6 Linear layers per BERT layer, 2 layers
    backend = OnnxRuntimeBackend()
    target = Target(name="t", backend="onnxruntime", precision="int8-static")
    calib = calibration_feeds()
    all_int8 = tmp_path / "all"
    mixed = tmp_path / "mixed"
    all_int8.mkdir()
    mixed.mkdir()
    backend.build(BuildRequest(model, target, all_int8, calib))
    section = backend.build(BuildRequest(model, target, mixed, calib, frozenset(names[:2])))
    assert section.get("quantization")["kept_fp32"] == sorted(names[:2])

    def quantized_consumers(path: Path) -> set[str]:
        graph = onnx.load(str(path)).graph
        dq_outputs = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        return {n.name for n in graph.node if any(i in dq_outputs for i in n.input)}

    before = quantized_consumers(all_int8 / "model.onnx")
    after = quantized_consumers(mixed / "model.onnx")
    assert set(names[:2]) <= before
    assert not set(names[:2]) & after
    assert set(names[2:]) <= after


def test_static_int8_without_calibration_is_a_build_error(
    plain_bert: Exported, tmp_path: Path
) -> None:
    from modelkiln.errors import BuildError

    target = Target(name="t", backend="onnxruntime", precision="int8-static")
    with pytest.raises(BuildError, match="needs calibration"):
        OnnxRuntimeBackend().build(BuildRequest(fp32_model(plain_bert), target, tmp_path))


# --------------------------------------------------------------------------- openvino


@pytest.mark.parametrize(
    ("precision", "floor"),
    [("int8-static", 0.98), ("int8-weights", 0.99), ("int4-weights", 0.8)],
)
def test_openvino_precision(
    plain_bert: Exported,
    fp32_outputs: list[np.ndarray],
    tmp_path: Path,
    precision: str,
    floor: float,
) -> None:
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from modelkiln.backends.openvino import OpenVinoBackend

    backend = OpenVinoBackend()
    target = Target(name="t", backend="openvino", precision=precision)
    backend.check(target)
    section = backend.build(
        BuildRequest(fp32_model(plain_bert), target, tmp_path, calibration_feeds())
    )
    record = section.get("quantization")
    assert record["precision"] == precision and record["tool"].startswith("nncf")
    assert section.get("inference_precision_hint") == "f32"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.bin", "model.xml"]
    core = ov.Core()
    compiled = core.compile_model(str(tmp_path / "model.xml"), "CPU")
    got = [compiled(f)[compiled.output("last_hidden_state")] for f in eval_feeds()]
    assert min_cosine(fp32_outputs, got, eval_feeds()) >= floor
    fp32_bytes = (plain_bert.path / "model.onnx").stat().st_size
    assert (tmp_path / "model.bin").stat().st_size < 0.6 * fp32_bytes


def test_openvino_keep_float_bypasses_only_the_named_nodes(plain_bert: Exported) -> None:
    ov = pytest.importorskip("openvino")
    pytest.importorskip("nncf")
    from modelkiln.backends.openvino.quantize import keep_float, quantize

    model = fp32_model(plain_bert)
    names = quantizable_nodes(model)
    path = Path(str(plain_bert.path / "model.onnx"))
    quantized, _ = quantize(
        ov.Core().read_model(str(path)), "int8-static", calibration=calibration_feeds()
    )

    def fq_fed(m: object) -> set[str]:
        return {
            op.get_friendly_name()
            for op in m.get_ordered_ops()  # type: ignore[attr-defined]
            if any(
                i.get_source_output().get_node().get_type_name() == "FakeQuantize"
                for i in op.inputs()
            )
        }

    before = fq_fed(quantized)
    # NNCF quantizes the MatMuls' activations (the embeddings' Gathers it leaves alone)
    name = next(n for n in names if n in before)
    mixed, missing = keep_float(quantized, [name, "no-such-node"])
    assert missing == ["no-such-node"]
    assert name not in fq_fed(mixed)
    assert fq_fed(mixed) == before - {name}
    assert fq_fed(quantized) == before  # the calibrated model itself is untouched


def test_int4_block_size_and_accuracy_level_are_target_options(
    plain_bert: Exported, tmp_path: Path
) -> None:
    from modelkiln.errors import UserInputError

    backend = OnnxRuntimeBackend()
    options = {"int4_block_size": 64, "int4_accuracy_level": 0}
    target = Target(name="t", backend="onnxruntime", precision="int4-weights", options=options)
    backend.check(target)
    section = backend.build(BuildRequest(fp32_model(plain_bert), target, tmp_path))
    record = section.get("quantization")
    assert (record["block_size"], record["accuracy_level"]) == (64, 0)
    graph = onnx.load(str(tmp_path / "model.onnx")).graph
    nbits = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert nbits and all({a.name: a.i for a in n.attribute}["block_size"] == 64 for n in nbits)
    default = Target(name="d", backend="onnxruntime", precision="int4-weights")
    out = tmp_path / "default"
    out.mkdir()
    record = backend.build(BuildRequest(fp32_model(plain_bert), default, out))
    assert (
        record.get("quantization")["block_size"],
        record.get("quantization")["accuracy_level"],
    ) == (32, 4)
    for bad, message in (
        ({"int4_block_size": 48}, "int4_block_size"),
        ({"int4_accuracy_level": 3}, "0, 1, 2 or 4"),
    ):
        with pytest.raises(UserInputError, match=message):
            backend.check(
                Target(name="b", backend="onnxruntime", precision="int4-weights", options=bad)
            )
