"""SmoothQuant before dynamic int8 (`int8-smooth`) on graphs with outlier channels.

A LayerNormalization whose scale has two channels 40x the others makes the activation outliers
transformers have; one per-tensor int8 scale then leaves the ordinary channels a few levels.
The smoothed graph must compute the same function in float, and its int8 build must be far
closer to fp32 than plain int8-dynamic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from modelkiln.backends.base import BuildRequest
from modelkiln.backends.onnxruntime import OnnxRuntimeBackend
from modelkiln.backends.onnxruntime.smooth_quant import (
    channel_maxima,
    matmul_groups,
    smooth,
    worst_cosine,
)
from modelkiln.cli import main
from modelkiln.errors import UserInputError
from modelkiln.targets import Target

HIDDEN, OUT, TOKENS = 32, 24, 6


def outlier_proto(residual: bool = False) -> onnx.ModelProto:
    """x -> LayerNorm (two channels scaled 40x) -> two MatMuls; with `residual`, the norm's
    output is also added to the first product (so it cannot absorb the smoothing)."""
    rng = np.random.default_rng(0)
    gamma = np.ones(HIDDEN, np.float32)
    gamma[[3, 17]] = 40.0
    inits = {
        "gamma": gamma,
        "beta": rng.normal(0, 0.1, HIDDEN).astype(np.float32),
        "w1": rng.normal(0, 0.2, (HIDDEN, HIDDEN if residual else OUT)).astype(np.float32),
        "w2": rng.normal(0, 0.2, (HIDDEN, OUT)).astype(np.float32),
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1),
        helper.make_node("MatMul", ["h", "w1"], ["y1" if not residual else "p"], name="mm1"),
        helper.make_node("MatMul", ["h", "w2"], ["y2"], name="mm2"),
    ]
    if residual:
        nodes.append(helper.make_node("Add", ["p", "h"], ["y1"]))
    width = HIDDEN if residual else OUT
    graph = helper.make_graph(
        nodes,
        "outliers",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", HIDDEN])],
        [
            helper.make_tensor_value_info("y1", TensorProto.FLOAT, ["batch", "sequence", width]),
            helper.make_tensor_value_info("y2", TensorProto.FLOAT, ["batch", "sequence", OUT]),
        ],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {"x": rng.normal(0, 1, (1, 1 + i % TOKENS, HIDDEN)).astype(np.float32)}
        for i in range(count)
    ]


def run(model: ir.Model | Path, samples: list[dict[str, np.ndarray]]) -> list[dict]:
    source = str(model) if isinstance(model, Path) else None
    if source is None:
        source = ir.serde.serialize_model(model).SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return [dict(zip(names, session.run(None, f), strict=True)) for f in samples]


@pytest.mark.parametrize("residual", [False, True])
def test_smoothing_keeps_the_function(residual: bool) -> None:
    model = ir.serde.deserialize_model(outlier_proto(residual))
    groups = matmul_groups(model)
    assert list(groups) == ["h"] and [n.name for n in groups["h"]] == ["mm1", "mm2"]
    calibration = feeds(16, seed=1)
    maxima, references = channel_maxima(ir.serde.serialize_model(model), calibration, ["h"])
    assert maxima["h"].shape == (HIDDEN,) and maxima["h"][3] > 10 * np.median(maxima["h"])
    assert worst_cosine(references, run(model, calibration)) > 0.99999
    smoothed, record = smooth(model, maxima, 0.7)
    assert (record.groups, record.matmuls) == (1, ["mm1", "mm2"])
    # Folded into the norm when only the MatMuls read it; else one Mul in front of them.
    assert (record.folded, record.scaled) == ((0, 1) if residual else (1, 0))
    ops = [n.op_type for n in smoothed.graph]
    assert ops.count("Mul") == int(residual)
    assert [n.op_type for n in model.graph].count("Mul") == 0  # the original is untouched
    held_out = feeds(8, seed=2)
    for got, want in zip(run(smoothed, held_out), run(model, held_out), strict=True):
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-4)


def build(tmp_path: Path, precision: str, **options: object) -> tuple[Path, dict]:
    target = Target(name="t", backend="onnxruntime", precision=precision, options=options)
    backend = OnnxRuntimeBackend()
    backend.check(target)
    model = ir.serde.deserialize_model(outlier_proto())
    out = tmp_path / precision
    out.mkdir()
    section = backend.build(BuildRequest(model, target, out, feeds(24, seed=1)))
    return out / section.files["model"], section.details


def test_int8_smooth_is_closer_to_fp32_than_int8_dynamic(tmp_path: Path) -> None:
    held_out = feeds(12, seed=3)
    reference = run(ir.serde.deserialize_model(outlier_proto()), held_out)
    plain, _ = build(tmp_path, "int8-dynamic")
    smoothed, details = build(tmp_path, "int8-smooth")
    record = details["smooth_quant"]
    assert record["method"] == "SmoothQuant" and record["folded_into_layer_norm"] == 1
    assert set(record["alpha_worst_cosine"]) == {"0.5", "0.6", "0.7", "0.8"}
    assert record["alpha"] == max(
        (float(a) for a in record["alpha_worst_cosine"]),
        key=lambda a: record["alpha_worst_cosine"][f"{a:g}"],
    )
    graph_ops = {n.op_type for n in onnx.load(str(smoothed)).graph.node}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= graph_ops

    def error(path: Path) -> float:
        got = run(path, held_out)
        return max(
            float(np.abs(g[k] - r[k]).max() / np.abs(r[k]).max())
            for g, r in zip(got, reference, strict=True)
            for k in r
        )

    assert error(smoothed) < 0.5 * error(plain), (error(smoothed), error(plain))


def test_a_fixed_alpha_skips_the_search(tmp_path: Path) -> None:
    _, details = build(tmp_path, "int8-smooth", smooth_quant_alpha=0.6)
    assert details["smooth_quant"]["alpha"] == 0.6
    assert "alpha_worst_cosine" not in details["smooth_quant"]


@pytest.mark.parametrize("value", [0, 1.5, "high", True])
def test_a_bad_alpha_is_refused_before_building(value: object) -> None:
    target = Target(
        name="t",
        backend="onnxruntime",
        precision="int8-smooth",
        options={"smooth_quant_alpha": value},
    )
    with pytest.raises(UserInputError, match="smooth_quant_alpha must be"):
        OnnxRuntimeBackend().check(target)


def test_int8_smooth_needs_calibration_data(tiny_bert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "a"
    result = CliRunner().invoke(
        main, ["export", str(tiny_bert_dir), "-o", str(out), "--precision", "int8-smooth"]
    )
    assert result.exit_code == 2, result.output
    assert "calibration" in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()
