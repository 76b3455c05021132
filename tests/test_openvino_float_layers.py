"""OpenVINO int8 with linear layers left float by role (`float_layers`) and the float parts'
precision (`float_precision`): roles found in a real BERT graph, NNCF leaves exactly those
layers unquantized, the manifest records them, bad values are refused."""

from __future__ import annotations

import json
from pathlib import Path

import models
import pytest
from conftest import run_kiln

pytest.importorskip("openvino")
pytest.importorskip("nncf")

import openvino as ov  # noqa: E402

import modelkiln  # noqa: E402
from modelkiln import UserInputError  # noqa: E402
from modelkiln.backends import get_backend  # noqa: E402
from modelkiln.backends.openvino.layer_roles import ROLES, layers_by_role  # noqa: E402
from modelkiln.targets import Target, load_target  # noqa: E402

LAYERS = models.bert_config().num_hidden_layers


@pytest.fixture(scope="module")
def fp32_ir(tmp_path_factory, tiny_bert_dir) -> Path:
    out = tmp_path_factory.mktemp("ov-roles") / "bert-ov"
    modelkiln.export(tiny_bert_dir, out, target="openvino-cpu")
    return out / "model.xml"


def _weight_is_constant(op) -> bool:
    """The MatMul's second input is a Constant, perhaps behind converts, reshapes or (in an
    int8 model) the weight's FakeQuantize."""
    node = op.input_value(1).get_node()
    for _ in range(5):
        if node.get_type_name() == "Constant":
            return True
        node = node.input_value(0).get_node()
    return False


def linear_layers(model) -> list:
    """MatMuls with a constant weight: 6 per BERT layer (Q, K, V, attention out, up, down)."""
    return [
        op
        for op in model.get_ordered_ops()
        if op.get_type_name() == "MatMul" and _weight_is_constant(op)
    ]


def test_roles_of_a_bert_graph(fp32_ir: Path) -> None:
    model = ov.Core().read_model(fp32_ir)
    found = layers_by_role(model, ROLES)
    assert {role: len(names) for role, names in found.items()} == {
        "ffn-down": LAYERS,
        "attention-output": LAYERS,
    }
    assert len(linear_layers(model)) == 6 * LAYERS  # the other four per layer have no role
    by_name = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    for name in found["ffn-down"]:
        assert by_name[name].input_value(0).get_node().get_type_name() == "Gelu"
    assert layers_by_role(model, ("ffn-down",)).keys() == {"ffn-down"}


def quantized_inputs(model) -> dict[str, bool]:
    """For each linear layer: whether its activation input comes from a FakeQuantize."""
    return {
        op.get_friendly_name(): op.input_value(0).get_node().get_type_name() == "FakeQuantize"
        for op in linear_layers(model)
    }


def test_int8_leaves_the_named_roles_float(tmp_path: Path, tiny_bert_dir: Path) -> None:
    words = [w for w in models.WORDS if w.isalpha()]
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(1 + i % 9)) for i in range(24)]
    calib, evaluation = tmp_path / "calib.txt", tmp_path / "eval.txt"
    calib.write_text("\n".join(lines[:16]) + "\n", encoding="utf-8")
    evaluation.write_text("\n".join(lines[16:]) + "\n", encoding="utf-8")
    target = tmp_path / "ov-int8-float.toml"
    target.write_text(
        'backend = "openvino"\ndevice = "cpu"\nprecision = "int8-static"\n\n'
        "[budget]\nmin_cosine = 0.5\n\n[options]\nsmooth_quant = true\n"
        'float_layers = ["ffn-down", "attention-output"]\nfloat_precision = "bf16"\n'
    )
    out = tmp_path / "bert-int8"
    args = ["--target", str(target), "--calibration", calib, "--eval", evaluation]
    result = run_kiln("export", tiny_bert_dir, "-o", out, *args, "--json")
    assert result.exit_code == 0, result.stderr
    backend = models.read_manifest(out)["backend"]
    record = backend["quantization"]
    assert record["method"] == "nncf.quantize" and record["smooth_quant"] is True
    floated = record["float_layers"]
    assert {role: len(names) for role, names in floated.items()} == {
        "ffn-down": LAYERS,
        "attention-output": LAYERS,
    }
    assert backend["inference_precision_hint"] == "bf16"
    quantized = quantized_inputs(ov.Core().read_model(out / "model.xml"))
    left_float = {name for names in floated.values() for name in names}
    assert left_float < set(quantized)
    assert not any(quantized[name] for name in left_float)  # NNCF left these alone
    assert all(q for name, q in quantized.items() if name not in left_float)  # and int8 the rest
    summary = json.loads(result.stdout)
    assert summary["accuracy"]["cosine"]["min"] >= 0.5


def test_preset_checks_and_says_what_it_does() -> None:
    target = load_target("openvino-int8-accurate")
    assert target.options["float_layers"] == ["ffn-down", "attention-output"]
    assert target.options["float_precision"] == "bf16"
    assert "bf16" in target.description and "calibration" in target.description
    get_backend("openvino").check(target)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"float_layers": ["ffn-up"]}, "float_layers must be a list of ffn-down, attention-output"),
        ({"float_layers": "ffn-down"}, "float_layers must be a list"),
        ({"float_precision": "fp16"}, "float_precision 'fp16' is not one of f32, bf16"),
    ],
)
def test_bad_values_are_refused(options: dict, message: str) -> None:
    target = Target(
        name="t", backend="openvino", device="cpu", precision="int8-static", options=options
    )
    with pytest.raises(UserInputError, match=message):
        get_backend("openvino").check(target)
