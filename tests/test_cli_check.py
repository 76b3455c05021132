"""`kiln check`: exit codes and output of the static TensorRT check, and the check run on
everything modelkiln exports (the test model bank, a decoder, the int8-dynamic graph, MiniLM).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import decoder_models
import numpy as np
import onnx
import onnx_ir as ir
import pytest
from conftest import REPO, Exported, assert_one_line_error, run_kiln
from onnx import TensorProto, helper, numpy_helper

from modelkiln.backends.base import BuildRequest
from modelkiln.backends.onnxruntime import OnnxRuntimeBackend
from modelkiln.backends.tensorrt.lint import lint_model
from modelkiln.targets import Target


def save(tmp_path: Path, name: str, nodes, inputs, outputs, initializers=(), **kw) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, list(initializers), **kw)
    imports = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    proto = helper.make_model(graph, opset_imports=imports)
    proto.ir_version = 10
    path = tmp_path / f"{name}.onnx"
    onnx.save(proto, str(path))
    return path


def vi(name: str, dtype: int = TensorProto.FLOAT, shape=("batch", 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape))


@pytest.fixture
def contrib_onnx(tmp_path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    return save(
        tmp_path,
        "contrib",
        [
            helper.make_node("Relu", ["x"], ["h"], name="pre"),
            helper.make_node(
                "FusedMatMul",
                ["h", "w"],
                ["y"],
                name="encoder/FusedMatMul_0",
                domain="com.microsoft",
            ),
        ],
        [vi("x")],
        [vi("y")],
        [w],
    )


@pytest.fixture
def uint8_onnx(tmp_path: Path) -> Path:
    return save(
        tmp_path,
        "uint8",
        [
            helper.make_node("Cast", ["x"], ["x8"], name="quantize_by_cast", to=TensorProto.UINT8),
            helper.make_node("Cast", ["x8"], ["y"], name="back", to=TensorProto.FLOAT),
        ],
        [vi("x")],
        [vi("y")],
        value_info=[vi("x8", TensorProto.UINT8)],
    )


@pytest.fixture
def clean_onnx(tmp_path: Path) -> Path:
    return save(
        tmp_path, "clean", [helper.make_node("Relu", ["x"], ["y"], name="r")], [vi("x")], [vi("y")]
    )


def test_help_says_what_is_checked_and_that_no_gpu_is_needed() -> None:
    result = run_kiln("check", "--help")
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())
    for words in ("no GPU and no TensorRT needed", "--target", "--tensorrt-version", "--json"):
        assert words in text, words
    assert "kiln check PATH" in run_kiln("--help").stdout


def test_com_microsoft_op_is_named_and_exits_1(contrib_onnx: Path) -> None:
    result = run_kiln("check", contrib_onnx, "--target", "nvidia-gpu")
    assert result.exit_code == 1, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith(
        "node 'encoder/FusedMatMul_0' (com.microsoft::FusedMatMul): not an ONNX op"
    )
    assert lines[-1] == (
        "FAILED: 1 problem in 2 nodes checked against TensorRT 10's ONNX parser support"
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_uint8_internal_tensor_is_named_and_exits_1(uint8_onnx: Path) -> None:
    result = run_kiln("check", uint8_onnx)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[0] == (
        "node 'quantize_by_cast' (Cast): output 'x8' is UINT8: TensorRT takes UINT8 only as a "
        "network input or output"
    )


def test_clean_graph_exits_0(clean_onnx: Path) -> None:
    result = run_kiln("check", clean_onnx, "--tensorrt-version", "11")
    assert result.exit_code == 0, result.stdout
    assert (
        result.stdout.strip() == "clean: 1 nodes checked against TensorRT 11's ONNX parser support"
    )


def test_json_result(contrib_onnx: Path, clean_onnx: Path) -> None:
    result = run_kiln("check", contrib_onnx, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["passed"] is False and data["tensorrt_version"] == 10 and data["nodes"] == 2
    assert data["path"] == str(contrib_onnx) and data["target"] == "nvidia-gpu"
    (finding,) = data["findings"]
    assert finding["node"] == "encoder/FusedMatMul_0"
    assert finding["op"] == "com.microsoft::FusedMatMul"
    assert "no importer" in finding["reason"]
    clean = json.loads(run_kiln("check", clean_onnx, "--json").stdout)
    assert clean["passed"] is True and clean["findings"] == []


def test_user_errors_are_one_line_and_exit_2(tmp_path: Path, clean_onnx: Path) -> None:
    assert_one_line_error(run_kiln("check", tmp_path / "missing.onnx"), "does not exist")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a model at all" * 10)
    assert_one_line_error(run_kiln("check", corrupt), "not a readable ONNX model")
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    assert_one_line_error(run_kiln("check", other), "neither a modelkiln artifact")
    line = assert_one_line_error(run_kiln("check", clean_onnx, "--target", "cpu"), "'cpu'")
    assert "onnxruntime" in line and "TensorRT's static check" in line
    assert_one_line_error(
        run_kiln("check", clean_onnx, "--target", "no-such-target"), "unknown target"
    )


def test_artifact_without_an_onnx_file_is_refused(
    tmp_path: Path, tiny_bert_artifact: Exported
) -> None:
    import shutil

    copy = Path(shutil.copytree(tiny_bert_artifact.path, tmp_path / "a"))
    (copy / "model.onnx").unlink()
    assert_one_line_error(run_kiln("check", copy), "model.onnx does not exist")


# --------------------------------------------------------------------------- what we export


BANK = ["tiny_bert_artifact", "classifier_artifact", "vit_artifact", "cnn_artifact", "mlp_artifact"]


PORTABLE = 'backend = "onnxruntime"\n[options]\nort_fusions = "off"\n'


@pytest.mark.parametrize("fixture", BANK)
def test_exported_fp32_graphs_of_the_model_bank_pass(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """The portable graph every backend builds from passes; a `cpu` artifact is flagged for
    exactly its ONNX Runtime contrib ops (its fusions), nothing else."""
    artifact: Exported = request.getfixturevalue(fixture)
    target = tmp_path / "portable.toml"
    target.write_text(PORTABLE)
    out = tmp_path / "portable"
    task = artifact.manifest["task"]
    task = ["--task", task] if task == "text-classification" else []  # others are inferred
    exported = run_kiln(
        "export", artifact.source, "-o", out, "--target", target, "-q", "--no-cache", *task
    )
    assert exported.exit_code == 0, exported.stderr
    for version in ("10", "11"):
        result = run_kiln("check", out, "--tensorrt-version", version)
        assert result.exit_code == 0, result.stdout
        assert result.stdout.startswith("clean: ")
    fused = [n for n in onnx.load(str(artifact.path / "model.onnx")).graph.node]
    contrib = {n.name for n in fused if n.domain == "com.microsoft"}
    flagged = run_kiln("check", artifact.path, "--json")
    findings = json.loads(flagged.stdout)["findings"]
    assert flagged.exit_code == (1 if contrib else 0), flagged.stdout
    assert {f["node"] for f in findings} == contrib


def test_exported_decoder_with_cache_passes(tmp_path: Path) -> None:
    ckpt = decoder_models.build_decoder("llama", tmp_path / "llama")
    out = tmp_path / "llama-cpu"
    target = tmp_path / "portable.toml"
    target.write_text(PORTABLE)
    exported = run_kiln("export", ckpt, "-o", out, "--target", target, "-q")
    assert exported.exit_code == 0, exported.stderr
    result = run_kiln("check", out)
    assert result.exit_code == 0, result.stdout


def test_int8_dynamic_graph_of_the_cpu_int8_target_is_flagged(
    tiny_bert_artifact: Exported, tmp_path: Path
) -> None:
    """ONNX Runtime's dynamic int8 (what `cpu-int8`'s int8-smooth ends in) cannot go to
    TensorRT."""
    target = Target(name="cpu-int8", backend="onnxruntime", precision="int8-dynamic")
    model = ir.load(tiny_bert_artifact.path / "model.onnx")
    section = OnnxRuntimeBackend().build(BuildRequest(model, target, tmp_path))
    built = tmp_path / section.files["model"]
    findings = lint_model(ir.load(built))
    unsupported = {f.op for f in findings if "not supported by TensorRT 10" in f.reason}
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= unsupported
    graph_nodes = {n.name for n in onnx.load(str(built)).graph.node}
    assert all(f.node in graph_nodes for f in findings)
    result = run_kiln("check", built)
    assert result.exit_code == 1
    assert result.stdout.splitlines()[-1].startswith(f"FAILED: {len(findings)} problems in ")


@pytest.mark.slow
def test_minilm_export_passes(tmp_path: Path) -> None:
    checkpoint = subprocess.run(
        [sys.executable, str(REPO / "samples" / "minilm" / "checkpoint.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    out = tmp_path / "minilm-portable"
    target = tmp_path / "portable.toml"
    target.write_text(PORTABLE)
    exported = run_kiln("export", checkpoint, "-o", out, "--target", target, "-q")
    assert exported.exit_code == 0, exported.stderr
    result = run_kiln("check", out, "--target", "nvidia-gpu")
    assert result.exit_code == 0, result.stdout
    assert result.stdout.startswith("clean: ")
