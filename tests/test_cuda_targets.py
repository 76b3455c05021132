"""ONNX Runtime's CUDA targets (`cuda`, `cuda-fp16`): the onnxruntime backend with the CUDA
execution provider from onnxruntime-gpu. Here (no CUDA) they must be refused at once with
the install hint; on a GPU machine (`gpu` tests) they build and validate."""

from __future__ import annotations

import json
from pathlib import Path

import models
import onnxruntime
import pytest
from conftest import assert_one_line_error, run_kiln

import modelkiln
from modelkiln.backends.registry import get_backend
from modelkiln.errors import BackendUnavailable
from modelkiln.targets import load_target

HAS_CUDA = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
no_cuda_here = pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA")
PRESETS = ("cuda", "cuda-fp16")


@pytest.mark.parametrize(("preset", "precision"), [("cuda", "fp32"), ("cuda-fp16", "fp16")])
def test_presets(preset: str, precision: str) -> None:
    target = load_target(preset)
    assert (target.backend, target.device, target.precision) == ("onnxruntime", "cuda", precision)


@no_cuda_here
@pytest.mark.parametrize("preset", PRESETS)
def test_refused_without_the_cuda_provider(preset: str) -> None:
    with pytest.raises(
        BackendUnavailable, match="CUDAExecutionProvider.*pip install onnxruntime-gpu"
    ):
        get_backend("onnxruntime").check(load_target(preset))


@no_cuda_here
def test_targets_says_why_not_usable() -> None:
    rows = {row["name"]: row for row in json.loads(run_kiln("targets", "--json").stdout)}
    for preset in PRESETS:
        assert rows[preset]["usable"] is False
        assert "CUDAExecutionProvider" in rows[preset]["reason"]
        assert "onnxruntime-gpu" in rows[preset]["reason"]
    assert rows["cpu"]["usable"] is True


@no_cuda_here
@pytest.mark.parametrize("preset", PRESETS)
def test_export_is_refused_before_any_work(mlp_onnx: Path, tmp_path: Path, preset: str) -> None:
    out = tmp_path / "out"
    result = run_kiln("export", mlp_onnx, "-o", out, "--target", preset)
    assert_one_line_error(result, "CUDAExecutionProvider", "pip install onnxruntime-gpu")
    assert not out.exists()


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs onnxruntime-gpu and an NVIDIA GPU")
@pytest.mark.parametrize("preset", PRESETS)
def test_builds_and_validates_on_a_gpu(mlp_onnx: Path, tmp_path: Path, preset: str) -> None:
    out = tmp_path / preset
    result = run_kiln("export", mlp_onnx, "-o", out, "--target", preset)
    assert result.exit_code == 0, result.stderr
    assert models.read_manifest(out)["backend"]["provider"] == "CUDAExecutionProvider"
    assert models.check_mlp(modelkiln.load(out)) < (1e-4 if preset == "cuda" else 2e-2)
