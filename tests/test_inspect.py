"""`kiln inspect`: what an artifact or an .onnx file holds, human-readable and as JSON."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import models
import numpy as np
import onnx
from conftest import Exported, run_kiln


def onnx_facts(path: Path) -> tuple[Counter[str], int]:
    """Op histogram and parameter count, computed with onnx directly."""
    proto = onnx.load(str(path), load_external_data=False)
    ops = Counter(
        f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type
        for node in proto.graph.node
    )
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    return ops, params


def test_inspect_artifact_json(tiny_bert_artifact: Exported) -> None:
    result = run_kiln("inspect", tiny_bert_artifact.path, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    m = tiny_bert_artifact.manifest
    assert info["kind"] == "artifact"
    assert info["task"] == "feature-extraction"
    assert info["target"] == "cpu"
    assert info["backend"] == "onnxruntime"
    assert info["precision"] == "fp32"
    assert info["inputs"] == m["inputs"]
    assert info["outputs"] == m["outputs"]
    backend = [{**p, "backend": "onnxruntime"} for p in m["backend"]["passes"]]
    assert info["passes"] == m["passes"] + backend
    assert info["size_bytes"] == sum(e["size"] for e in m["files"].values())
    assert info["validation"]["passed"] is True
    ops, params = onnx_facts(tiny_bert_artifact.path / "model.onnx")
    graph = info["graph"]
    assert graph["ops"] == dict(ops)
    assert graph["nodes"] == sum(ops.values())
    assert graph["parameters"] == params
    # Roughly what a 2-layer, 32-wide BERT over a 100-token vocabulary holds (~25k).
    assert 15_000 < params < 30_000
    assert graph["opset"]["ai.onnx"] >= 17


def test_inspect_artifact_human(tiny_bert_artifact: Exported) -> None:
    result = run_kiln("inspect", tiny_bert_artifact.path)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert "artifact" in text and "feature-extraction" in text
    for name in ("input_ids", "attention_mask", "token_type_ids", "last_hidden_state"):
        assert name in text
    assert "int64[batch, sequence]" in text
    assert f"float32[batch, sequence, {models.HIDDEN}]" in text
    ops, params = onnx_facts(tiny_bert_artifact.path / "model.onnx")
    assert f"{params:,} parameters" in text
    top_op, count = ops.most_common(1)[0]
    assert f"{top_op} {count}" in text
    for entry in tiny_bert_artifact.manifest["passes"]:
        assert entry["name"] in text


def test_inspect_onnx_file_json(mlp_onnx: Path) -> None:
    result = run_kiln("inspect", mlp_onnx, "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["kind"] == "onnx"
    assert info["inputs"] == {"x": {"dtype": "float32", "shape": ["batch", models.MLP_IN]}}
    assert info["outputs"] == {"y": {"dtype": "float32", "shape": ["batch", models.MLP_OUT]}}
    assert info["graph"]["ops"] == {"MatMul": 1, "Add": 1, "Relu": 1}
    assert info["graph"]["nodes"] == 3
    assert info["graph"]["parameters"] == models.MLP_IN * models.MLP_OUT + models.MLP_OUT
    assert info["size_bytes"] == mlp_onnx.stat().st_size


def test_inspect_onnx_file_human(mlp_onnx: Path) -> None:
    result = run_kiln("inspect", mlp_onnx)
    assert result.exit_code == 0, result.stderr
    text = result.stdout
    assert f"x: float32[batch, {models.MLP_IN}]" in text
    assert f"y: float32[batch, {models.MLP_OUT}]" in text
    assert "3 nodes" in text
    assert f"{models.MLP_IN * models.MLP_OUT + models.MLP_OUT:,} parameters" in text
    for op in ("MatMul 1", "Add 1", "Relu 1"):
        assert op in text


def test_inspect_artifact_model_file(cnn_artifact: Exported) -> None:
    """The model.onnx inside an artifact inspects like any .onnx file, with the same graph."""
    as_artifact = json.loads(run_kiln("inspect", cnn_artifact.path, "--json").stdout)
    as_file = json.loads(run_kiln("inspect", cnn_artifact.path / "model.onnx", "--json").stdout)
    assert as_file["graph"]["ops"] == as_artifact["graph"]["ops"]
    assert as_file["graph"]["parameters"] == as_artifact["graph"]["parameters"]
    # the manifest adds the kind of values each input takes; dtypes and shapes must agree
    assert as_file["inputs"] == {
        name: {k: v for k, v in spec.items() if k != "values"}
        for name, spec in as_artifact["inputs"].items()
    }
    assert "Conv" in as_file["graph"]["ops"]


def test_inspect_of_what_is_not_a_model_exits_2(tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    result = run_kiln("inspect", junk)
    assert result.exit_code == 2
    assert "Traceback" not in result.stderr
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07garbage" * 3)
    result = run_kiln("inspect", broken)
    assert result.exit_code == 2, (result.stderr, result.exception)
    assert "broken.onnx" in result.stderr


def test_inspect_shows_validation_as_lines_not_a_dict(tiny_bert_artifact: Exported) -> None:
    result = run_kiln("inspect", tiny_bert_artifact.path)
    assert result.exit_code == 0, result.stderr
    report = tiny_bert_artifact.manifest["validation"]
    lines = result.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("validation: "))
    assert lines[start] == f"validation: passed, max abs diff {report['max_abs_diff']:.2e}"
    assert lines[start + 1] == "  tolerance atol 0.0001, min cosine 0.9999"
    assert lines[start + 2] == "  against pytorch"
    assert "{" not in result.stdout and "'passed'" not in result.stdout


PIPED = """
import subprocess, sys
for args in (["inspect", sys.argv[1]], ["targets"], ["cache", "info"]):
    done = subprocess.run(
        [sys.executable, "-m", "modelkiln.cli", *args], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    print(max(len(line) for line in done.stdout.splitlines()))
"""


def test_piped_output_is_not_wrapped_at_narrow_widths(
    tiny_bert_artifact: Exported, tmp_path: Path
) -> None:
    """rich wraps at 80 columns (or $COLUMNS) when stdout is not a terminal; lines that
    scripts grep must stay whole."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "40"}
    done = subprocess.run(
        [sys.executable, "-c", PIPED, str(tiny_bert_artifact.path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    widths = [int(w) for w in done.stdout.split()]
    assert all(w > 40 for w in widths), widths  # a wrapped line would be cut at 40
