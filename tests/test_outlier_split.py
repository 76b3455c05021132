"""int8-smooth's float branch for the outlier channels of a feed-forward block's GELU output,
and SmoothQuant's fold of the attention context's scale into the value projection.

A feed-forward block whose up projection has two columns 30x the others makes the GELU
outliers transformers have. The split graph must compute the same function in float, pick
those channels, and make the int8 build closer to fp32 than the same build without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelkiln.backends.base import BuildRequest
from modelkiln.backends.onnxruntime import OnnxRuntimeBackend
from modelkiln.backends.onnxruntime.outlier_split import outlier_channels, sites, split
from modelkiln.backends.onnxruntime.smooth_quant import channel_maxima, smooth
from modelkiln.targets import Target

HIDDEN, INNER, TOKENS = 32, 64, 7
OUTLIERS = [5, 41]


def x_to_y(nodes: list, inits: dict[str, np.ndarray], name: str) -> onnx.ModelProto:
    """A model of `nodes` from x to y, both [batch, sequence, HIDDEN] float."""
    shape = ["batch", "sequence", HIDDEN]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    opsets = [helper.make_opsetid("", 20), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return model


def ffn_proto(gelu: str) -> onnx.ModelProto:
    """x -> LayerNorm -> up MatMul -> (+ bias, GELU) -> down MatMul -> + bias -> y. `gelu`:
    "bias-gelu" (com.microsoft BiasGelu taking the bias) or "add-gelu" (Add, then ONNX Gelu)."""
    rng = np.random.default_rng(0)
    w_up = rng.normal(0, 0.2, (HIDDEN, INNER)).astype(np.float32)
    w_up[:, OUTLIERS] *= 30.0
    inits = {
        "gamma": np.ones(HIDDEN, np.float32),
        "beta": np.zeros(HIDDEN, np.float32),
        "w_up": w_up,
        "b_up": rng.normal(0, 0.1, INNER).astype(np.float32),
        "w_down": rng.normal(0, 0.2, (INNER, HIDDEN)).astype(np.float32),
        "b_down": rng.normal(0, 0.1, HIDDEN).astype(np.float32),
    }
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], axis=-1),
        helper.make_node("MatMul", ["h", "w_up"], ["u"], name="up"),
    ]
    if gelu == "bias-gelu":
        nodes.append(helper.make_node("BiasGelu", ["u", "b_up"], ["g"], domain="com.microsoft"))
    else:
        nodes += [
            helper.make_node("Add", ["u", "b_up"], ["ub"]),
            helper.make_node("Gelu", ["ub"], ["g"]),
        ]
    nodes += [
        helper.make_node("MatMul", ["g", "w_down"], ["d"], name="down"),
        helper.make_node("Add", ["d", "b_down"], ["y"]),
    ]
    return x_to_y(nodes, inits, "ffn")


def feeds(count: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        {"x": rng.normal(0, 1, (1, 1 + i % TOKENS, HIDDEN)).astype(np.float32)}
        for i in range(count)
    ]


def run(model: ir.Model | Path, samples: list[dict[str, np.ndarray]]) -> list[np.ndarray]:
    source = str(model) if isinstance(model, Path) else None
    if source is None:
        source = ir.serde.serialize_model(model).SerializeToString()
    session = ort.InferenceSession(source, providers=["CPUExecutionProvider"])
    return [session.run(None, f)[0] for f in samples]


@pytest.mark.parametrize("gelu", ["bias-gelu", "add-gelu"])
def test_the_split_keeps_the_function_and_takes_the_outliers(gelu: str) -> None:
    model = ir.serde.deserialize_model(ffn_proto(gelu))
    found = sites(model)
    assert len(found) == 1 and found[0].up.name == "up"
    assert [n.name for n in found[0].downs] == ["down"]
    calibration = feeds(16, seed=1)
    maxima, _ = channel_maxima(ir.serde.serialize_model(model), calibration, ["g"])
    assert list(outlier_channels(maxima["g"], 2)) == OUTLIERS
    parted, record = split(model, maxima, 2)
    assert (record.sites, record.down_matmuls) == (1, ["down"])
    assert record.down_branches == ["down_outliers"]
    assert sorted(record.float_matmuls) == ["down_outliers", "up_outliers"]
    assert len(list(model.graph)) == len(ffn_proto(gelu).graph.node)  # the original untouched
    weights = {v.name: v.const_value.numpy() for v in parted.graph.initializers.values()}
    assert not weights["up_int8_part"][:, OUTLIERS].any()
    assert not weights["down_int8_part"][OUTLIERS].any()
    held_out = feeds(8, seed=2)
    for got, want in zip(run(parted, held_out), run(model, held_out), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_the_split_leaves_blocks_it_cannot_rewrite() -> None:
    proto = ffn_proto("bias-gelu")
    proto.graph.output.append(helper.make_tensor_value_info("g", TensorProto.FLOAT, None))
    assert sites(ir.serde.deserialize_model(proto)) == []  # the GELU output is read elsewhere


def build(tmp_path: Path, name: str, **options: object) -> tuple[Path, dict]:
    target = Target(name="t", backend="onnxruntime", precision="int8-smooth", options=options)
    backend = OnnxRuntimeBackend()
    backend.check(target)
    out = tmp_path / name
    out.mkdir()
    model = ir.serde.deserialize_model(ffn_proto("add-gelu"))
    section = backend.build(BuildRequest(model, target, out, feeds(24, seed=1)))
    return out / section.files["model"], section.details


def test_int8_smooth_with_the_split_is_closer_to_fp32(tmp_path: Path) -> None:
    held_out = feeds(12, seed=3)
    reference = run(ir.serde.deserialize_model(ffn_proto("add-gelu")), held_out)
    with_split, details = build(tmp_path, "split", smooth_quant_alpha=0.7)
    without, plain_details = build(tmp_path, "plain", smooth_quant_alpha=0.7, outlier_channels=0)
    record = details["smooth_quant"]["outlier_split"]
    assert (record["blocks"], record["channels_per_block"]) == (1, 8)
    assert "outlier_split" not in plain_details["smooth_quant"]
    assert details["quantization"]["kept_fp32"] == []  # the branches are not the user's
    ops = [n.op_type for n in onnx.load(str(with_split)).graph.node]
    assert ops.count("MatMul") == 2 and "MatMulInteger" in ops  # float branch, int8 rest

    def error(path: Path) -> float:
        return max(
            float(np.abs(g - r).max() / np.abs(r).max())
            for g, r in zip(run(path, held_out), reference, strict=True)
        )

    assert error(with_split) < 0.5 * error(without), (error(with_split), error(without))


def test_a_bad_outlier_channel_count_is_refused() -> None:
    from modelkiln.errors import UserInputError

    target = Target(
        name="t", backend="onnxruntime", precision="int8-smooth", options={"outlier_channels": -1}
    )
    with pytest.raises(UserInputError, match="outlier_channels must be a whole number"):
        OnnxRuntimeBackend().check(target)


def attention_proto() -> onnx.ModelProto:
    """x -> Q/K/V MatMuls -> MultiHeadAttention (packed bias) -> output MatMul -> y, the
    context with two outlier channels (value columns 30x)."""
    rng = np.random.default_rng(4)
    inits = {
        name: rng.normal(0, 0.2, (HIDDEN, HIDDEN)).astype(np.float32)
        for name in ("wq", "wk", "wv", "wo")
    }
    inits["wv"][:, [3, 20]] *= 30.0
    inits["qkv_bias"] = rng.normal(0, 0.1, 3 * HIDDEN).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v"),
        helper.make_node(
            "MultiHeadAttention",
            ["q", "k", "v", "qkv_bias"],
            ["context"],
            domain="com.microsoft",
            num_heads=4,
        ),
        helper.make_node("MatMul", ["context", "wo"], ["y"], name="o"),
    ]
    return x_to_y(nodes, inits, "attention")


def test_the_context_scale_folds_into_the_value_projection() -> None:
    model = ir.serde.deserialize_model(attention_proto())
    calibration = feeds(16, seed=1)
    maxima, _ = channel_maxima(ir.serde.serialize_model(model), calibration, ["x", "context"])
    smoothed, record = smooth(model, maxima, 0.7, skip=frozenset({"q", "k", "v"}))
    assert (record.groups, record.folded_values, record.scaled) == (1, 1, 0)
    assert "Mul" not in [n.op_type for n in smoothed.graph]
    held_out = feeds(8, seed=2)
    for got, want in zip(run(smoothed, held_out), run(model, held_out), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
