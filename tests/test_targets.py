"""Targets: listing what this machine can build, and one trace fanned out to many targets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import models
import numpy as np
import pytest
from conftest import run_kiln

import modelkiln
from modelkiln.errors import UserInputError
from modelkiln.pipeline import default_name, export_many
from modelkiln.targets import load_target


def test_targets_lists_every_preset_with_usability() -> None:
    result = run_kiln("targets", "--json")
    assert result.exit_code == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"cpu", "openvino-cpu", "openvino-cpu-bf16", "nvidia-gpu"} <= set(rows)
    assert rows["cpu"]["usable"] is True and rows["cpu"]["reason"] is None
    gpu = rows["nvidia-gpu"]
    assert gpu["usable"] is False and gpu["backend"] == "tensorrt"
    assert "tensorrt" in gpu["reason"] and "pip install" in gpu["reason"]


def test_targets_human_output_and_user_files(tmp_path: Path) -> None:
    toml = tmp_path / "my-edge.toml"
    toml.write_text('name = "my-edge"\nbackend = "onnxruntime"\n[options]\nbogus = 1\n')
    result = run_kiln("targets", toml)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["TARGET", "BACKEND", "DEVICE", "PRECISION", "USABLE"]
    edge = next(line for line in lines if line.startswith("my-edge "))
    assert " no " in edge and "bogus" in edge  # an unknown option makes it unusable, and why


def _two_targets(tmp_path: Path) -> list[Path | str]:
    toml = tmp_path / "cpu-basic.toml"
    toml.write_text(
        'name = "cpu-basic"\nbackend = "onnxruntime"\n'
        '[options]\ngraph_optimization_level = "basic"\n'
    )
    return ["cpu", str(toml)]


def test_one_trace_many_targets_via_cli(mlp_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["export", mlp_onnx, "-o", out, "--json"]
    for target in _two_targets(tmp_path):
        args += ["--target", target]
    result = run_kiln(*args)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    stem = default_name(str(mlp_onnx))
    paths = [Path(a["artifact"]) for a in summary["artifacts"]]
    assert paths == [out / f"{stem}-cpu", out / f"{stem}-cpu-basic"]
    sessions = [modelkiln.load(p) for p in paths]
    assert sessions[0].inputs == sessions[1].inputs and sessions[0].outputs == sessions[1].outputs
    feeds = {"x": np.random.default_rng(0).standard_normal((3, models.MLP_IN)).astype("float32")}
    a, b = (s.run(feeds) for s in sessions)
    np.testing.assert_allclose(a["y"], b["y"], atol=1e-6)
    for path, level in zip(paths, ("all", "basic"), strict=True):
        manifest = models.read_manifest(path)
        assert manifest["validation"]["passed"] is True
        assert manifest["backend"]["graph_optimization_level"] == level
        assert run_kiln("validate", path).exit_code == 0


def test_fan_out_checks_every_target_before_any_work(mlp_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_kiln("export", mlp_onnx, "-o", out, "--target", "cpu", "--target", "nvidia-gpu")
    assert result.exit_code == 2
    assert "tensorrt" in result.stderr and "Traceback" not in result.stderr
    assert not out.exists()


def test_export_many_python_api_names_artifacts(mlp_onnx: Path, tmp_path: Path) -> None:
    results = export_many(mlp_onnx, tmp_path, ["cpu"], name="mlp")
    assert [r.path for r in results] == [tmp_path / "mlp-cpu"]
    assert results[0].probe_ms is not None and results[0].probe_ms > 0
    models.check_mlp(modelkiln.load(results[0].path))


def test_duplicate_target_names_are_refused(mlp_onnx: Path, tmp_path: Path) -> None:
    result = run_kiln(
        "export", mlp_onnx, "-o", tmp_path / "o", "--target", "cpu", "--target", "cpu"
    )
    assert result.exit_code == 2 and "same artifact" in result.stderr


def test_reduced_precision_loosens_the_tolerance() -> None:
    from modelkiln.compare import Tolerance
    from modelkiln.exporter.specs import for_hf
    from modelkiln.precision.names import loosened

    spec = for_hf({"vocab_size": 50, "architectures": ["BertModel"]}, None, {"input_ids"})
    assert loosened(spec.tolerance, "fp32") == spec.tolerance
    assert loosened(spec.tolerance, "int8-dynamic") == spec.tolerance  # judged by accuracy
    bf16 = loosened(spec.tolerance, load_target("openvino-cpu-bf16").precision)
    assert bf16.atol > spec.tolerance.atol
    assert bf16.min_cosine is not None and bf16.min_cosine < (spec.tolerance.min_cosine or 1)
    assert isinstance(bf16, Tolerance)


def test_presets_for_reduced_precisions() -> None:
    assert load_target("cpu-int8").precision == "int8-smooth"
    accurate = load_target("cpu-int8-accurate")
    assert accurate.precision == "auto" and accurate.candidates == ("int8-smooth",)
    assert dict(accurate.budget) == {"min_cosine": 0.99}
    int8 = load_target("openvino-int8")
    assert int8.precision == "int8-static" and int8.options["smooth_quant"] is True
    edge = load_target("edge")
    assert edge.precision == "auto" and dict(edge.budget) == {"min_cosine": 0.99}
    assert edge.candidates == ("int4-weights", "int8-weights", "int8-static")
    assert edge.to_json()["budget"] == {"min_cosine": 0.99}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[budget]\nmin_cos = 0.9\n", "unknown budget key 'min_cos'"),
        ("[budget]\nmin_cosine = 1.5\n", "budget.min_cosine must be a number in (0, 1]"),
        ("[budget]\nmin_cosine = true\n", "budget.min_cosine must be a number"),
        ('budget = "high"\n', "'budget' must be a table"),
        ('candidates = ["int9"]\n', "candidates must be a list of precisions"),
        ('candidates = "int8-static"\n', "candidates must be a list of precisions"),
    ],
)
def test_bad_budget_or_candidates(tmp_path: Path, body: str, message: str) -> None:
    toml = tmp_path / "t.toml"
    # top-level keys must come before any table
    first, _, rest = body.partition("[")
    toml.write_text(f'backend = "openvino"\n{first}' + (f"[{rest}" if rest else ""))
    with pytest.raises(UserInputError, match=re.escape(message)):
        load_target(str(toml))
