"""The TensorRT backend: everything that runs without TensorRT runs here (API names, profiles,
compatibility refusals, target checks, the cast and Q/DQ passes, the export-time static
check); engine build and inference are `gpu` tests that skip on this machine."""

from __future__ import annotations

import ast
import json
import re
import shutil
from pathlib import Path
from types import MappingProxyType
from typing import Any

import models
import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from conftest import REPO, assert_one_line_error, run_kiln
from onnx import TensorProto, helper

import modelkiln
from modelkiln.backends.registry import get_backend
from modelkiln.backends.tensorrt import api_names
from modelkiln.backends.tensorrt.backend import input_specs, timing_cache_path
from modelkiln.backends.tensorrt.build import ParsedError, parser_message
from modelkiln.backends.tensorrt.cast_pass import CastToHalf
from modelkiln.backends.tensorrt.compat import EngineRecord, load_problem
from modelkiln.backends.tensorrt.profiles import (
    InputProfile,
    build_profiles,
    dim_ranges,
    pick_profile,
    profile_ranges,
)
from modelkiln.backends.tensorrt.quantize import quantize_qdq
from modelkiln.errors import BackendUnavailable, UserInputError
from modelkiln.targets import Target, load_target
from modelkiln.targets.target import ShapeRange
from modelkiln.tensors import TensorSpec

PACKAGE = REPO / "backends" / "tensorrt"
TEXT = {
    "input_ids": TensorSpec("int64", ("batch", "sequence")),
    "attention_mask": TensorSpec("int64", ("batch", "sequence")),
}


def _target(**options: Any) -> Target:
    shapes = options.pop("shapes", {})
    return Target(
        "gpu-test",
        "tensorrt",
        "cuda",
        "fp16",
        shapes=MappingProxyType(shapes),
        options=MappingProxyType(options),
    )


# --------------------------------------------------------------------------- API names


class _Uses(ast.NodeVisitor):
    """Every attribute the source reads from the tensorrt module, cuda-python's runtime and
    the TensorRT objects (as `Class.attribute`), plus methods of classes deriving from
    TensorRT interfaces."""

    def __init__(self) -> None:
        self.trt: set[str] = set()
        self.cudart: set[str] = set()
        self.dynamic: list[str] = []

    def visit_Attribute(self, node: ast.Attribute) -> None:
        chain: list[str] = []
        base: ast.expr = node
        while isinstance(base, ast.Attribute):
            chain.insert(0, base.attr)
            base = base.value
        if isinstance(base, ast.Name):
            roots = [base.id, f"{base.id}.{chain[0]}"]
            for root, rest in ((roots[0], chain), (roots[1], chain[1:])):
                if not rest:
                    continue
                if root in api_names.TRT_MODULE_NAMES or root == "tensorrt":
                    self.trt.add(".".join(rest))
                elif root in api_names.CUDART_MODULE_NAMES:
                    self.cudart.add(".".join(rest))
                elif root in api_names.OBJECTS:
                    owner = api_names.OBJECTS[root]
                    (self.cudart if owner.startswith("cuda") else self.trt).add(
                        f"{owner}.{rest[0]}"
                    )
        else:  # a call or subscript at the root: its own attributes count too
            self.visit(base)

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            if isinstance(base, ast.Attribute) and isinstance(base.value, ast.Name):
                if base.value.id in api_names.TRT_MODULE_NAMES:
                    for item in node.body:
                        if isinstance(item, ast.FunctionDef):
                            self.trt.add(f"{base.attr}.{item.name}")
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Name) and func.id == "getattr" and node.args:
            self.dynamic.append(ast.unparse(node))
        self.generic_visit(node)


def _uses(source: str) -> _Uses:
    uses = _Uses()
    uses.visit(ast.parse(source))
    return uses


def _backend_sources() -> dict[str, str]:
    return {
        p.name: p.read_text()
        for p in sorted(PACKAGE.glob("*.py"))
        if p.name not in ("api_names.py",)
    }


def test_every_tensorrt_name_the_backend_uses_is_listed() -> None:
    used: dict[str, set[str]] = {}
    for name, source in _backend_sources().items():
        uses = _uses(source)
        assert not [d for d in uses.dynamic if "trt" in d or "cudart" in d], name
        for attr in uses.trt:
            used.setdefault(attr, set()).add(name)
    unknown = {a: sorted(f) for a, f in used.items() if a not in api_names.TENSORRT}
    assert not unknown, f"tensorrt names not in api_names.TENSORRT: {unknown}"
    removed = {a for a in used if api_names.TENSORRT[a] == "10"}
    assert not removed, f"names TensorRT 11 removed: {sorted(removed)}"
    # The walk sees the build and the session (so an empty result cannot pass).
    assert {"Builder.build_serialized_network", "IExecutionContext.execute_async_v3"} <= set(used)
    assert {"IProgressMonitor.step_complete", "ILogger.log"} <= set(used)


def test_every_cuda_runtime_name_the_session_uses_is_listed() -> None:
    used = set().union(*(_uses(s).cudart for s in _backend_sources().values()))
    assert {"cudaMemcpyAsync", "cudaStreamCreate", "cudaDeviceProp.major"} <= used
    assert used <= set(api_names.CUDART), sorted(used - set(api_names.CUDART))


def test_the_name_check_catches_a_typo() -> None:
    source = (
        "def f(trt, config):\n"
        "    config.set_memroy_pool_limit(trt.MemoryPoolType.WORKSPACE, 1)\n"
        "    trt.BuilderFlag.FP16\n"
    )
    uses = _uses(source)
    assert "IBuilderConfig.set_memroy_pool_limit" in uses.trt
    assert "IBuilderConfig.set_memroy_pool_limit" not in api_names.TENSORRT
    assert api_names.TENSORRT["BuilderFlag.FP16"] == "10"  # would fail the removed-name check


def test_cuda_names_exist_in_cuda_python() -> None:
    cudart = pytest.importorskip(
        "cuda.bindings.runtime", reason="cuda-python is not installed (modelkiln[tensorrt])"
    )
    for name in api_names.CUDART:
        head, _, tail = name.partition(".")
        owner = getattr(cudart, head)
        if tail:
            owner = owner() if head == "cudaDeviceProp" else owner
            assert hasattr(owner, tail), name


# --------------------------------------------------------------------------- profiles


def test_profile_from_shapes_and_defaults() -> None:
    target = _target(shapes={"sequence": ShapeRange(8, 64, 256)})
    (profile,) = build_profiles(TEXT, dim_ranges(target))
    # sequence from [shapes]; batch from the default range 1..32 tuned for 1
    assert profile["input_ids"] == InputProfile((1, 8), (1, 64), (32, 256))
    assert profile["attention_mask"] == profile["input_ids"]


def test_fixed_sizes_stay_fixed_and_unnamed_dims_get_defaults() -> None:
    inputs = {"pixels": TensorSpec("float32", ("batch", 3, 224, 224))}
    (profile,) = build_profiles(inputs, [{"batch": ShapeRange(2, 4, 16)}])
    assert profile["pixels"] == InputProfile((2, 3, 224, 224), (4, 3, 224, 224), (16, 3, 224, 224))


def test_several_profiles_from_the_option() -> None:
    target = _target(
        shapes={"batch": ShapeRange(1, 8, 64)},
        profiles=[
            {"batch": {"min": 1, "opt": 1, "max": 4}, "sequence": {"min": 1, "opt": 32, "max": 64}},
            {
                "batch": {"min": 4, "opt": 32, "max": 64},
                "sequence": {"min": 1, "opt": 128, "max": 128},
            },
        ],
    )
    profiles = build_profiles(TEXT, dim_ranges(target))
    assert [p["input_ids"].max for p in profiles] == [(4, 64), (64, 128)]
    assert [p["input_ids"].opt for p in profiles] == [(1, 32), (32, 128)]
    assert profile_ranges(profiles, TEXT) == {"batch": (1, 64), "sequence": (1, 128)}
    shapes = {"input_ids": (2, 50), "attention_mask": (2, 50)}
    assert pick_profile(profiles, shapes) == 0
    assert pick_profile(profiles, {"input_ids": (8, 100), "attention_mask": (8, 100)}) == 1
    assert pick_profile(profiles, {"input_ids": (2, 100), "attention_mask": (2, 100)}) is None


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"profiles": []}, "non-empty list"),
        ({"profiles": [{"batch": {"min": 4, "opt": 2, "max": 8}}]}, "1 <= min <= opt <= max"),
        ({"profiles": [{"batch": {"min": 1, "max": 8}}]}, "integer min, opt and max"),
        ({"profiles": [{"batch": {"min": 1, "opt": 2, "max": 99}}]}, "leaves [shapes] batch 1..64"),
    ],
)
def test_bad_profiles_are_refused(options: dict[str, Any], message: str) -> None:
    target = _target(shapes={"batch": ShapeRange(1, 8, 64)}, **options)
    with pytest.raises(UserInputError, match=message.replace("[", r"\[")):
        dim_ranges(target)


def test_a_profile_naming_a_dimension_the_model_lacks() -> None:
    with pytest.raises(UserInputError, match="height.*its dynamic dimensions: batch, sequence"):
        build_profiles(TEXT, [{"height": ShapeRange(1, 2, 3)}])


def test_input_specs_name_dims_as_the_manifest_does() -> None:
    model = ir.from_proto(models.mlp_proto())
    assert input_specs(model) == {"x": TensorSpec("float32", ("batch", models.MLP_IN))}


# --------------------------------------------------------------------------- compatibility

BUILT = EngineRecord("10.3.0", "8.6", gpu="NVIDIA A10", cuda_version="12.4")


@pytest.mark.parametrize(
    ("built", "here", "problem"),
    [
        (BUILT, EngineRecord("10.3.0", "8.6"), None),
        (BUILT, EngineRecord("10.4.0", "8.6"), "TensorRT versions differ"),
        (BUILT, EngineRecord("10.3.0", "8.9"), "compute capabilities differ"),
        (
            EngineRecord("10.3.0", "8.6", version_compatible=True),
            EngineRecord("11.0.1", "8.6"),
            None,
        ),
        (
            EngineRecord("11.0.0", "8.6", version_compatible=True),
            EngineRecord("10.9.0", "8.6"),
            "its TensorRT version or later only",
        ),
        (
            EngineRecord("10.3.0", "8.6", hardware_compatibility_level="ampere_plus"),
            EngineRecord("10.3.0", "9.0"),
            None,
        ),
        (
            EngineRecord("10.3.0", "8.6", hardware_compatibility_level="ampere_plus"),
            EngineRecord("10.3.0", "7.5"),
            "needs compute capability 8.0 or newer",
        ),
        (
            EngineRecord("10.3.0", "8.6", hardware_compatibility_level="same_compute_capability"),
            EngineRecord("10.3.0", "8.9"),
            "compute capabilities differ",
        ),
    ],
)
def test_load_refuses_what_the_flags_do_not_allow(
    built: EngineRecord, here: EngineRecord, problem: str | None
) -> None:
    found = load_problem(built, here)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
        assert f"TensorRT {built.tensorrt_version}" in found  # what was built
        assert f"TensorRT {here.tensorrt_version}" in found  # what is here
        assert "\n" not in found


def test_record_round_trips_through_manifest_details() -> None:
    record = EngineRecord("10.3.0", "8.6", "NVIDIA A10", "12.4", True, "ampere_plus")
    details = json.loads(json.dumps(record.to_details()))
    assert EngineRecord.from_details(details) == record


def test_loading_a_tensorrt_artifact_here_says_what_to_install(
    mlp_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "mlp"
    assert run_kiln("export", mlp_onnx, "-o", out, "-q").exit_code == 0
    manifest = json.loads((out / "kiln.json").read_text())
    manifest["backend"] = {
        "name": "tensorrt",
        "files": {"model": "model.onnx"},
        **BUILT.to_details(),
    }
    manifest["target"] = {**manifest["target"], "backend": "tensorrt", "device": "cuda"}
    (out / "kiln.json").write_text(json.dumps(manifest))
    with pytest.raises(
        BackendUnavailable, match=r"TensorRT is not installed \(pip install 'modelkiln\[tensorrt\]'"
    ):
        modelkiln.load(out)


# --------------------------------------------------------------------------- target checks


def test_backend_loads_without_tensorrt_and_declares_its_precisions() -> None:
    backend = get_backend("tensorrt")
    assert [str(p) for p in backend.precisions] == ["fp32", "fp16", "bf16", "int8-static"]
    assert [str(p) for p in backend.calibrated] == ["int8-static"]


@pytest.mark.parametrize("preset", ["nvidia-gpu", "nvidia-gpu-fp32", "nvidia-gpu-int8"])
def test_presets_are_refused_here_with_the_install_hint(preset: str) -> None:
    target = load_target(preset)
    assert target.backend == "tensorrt" and target.device == "cuda"
    with pytest.raises(
        BackendUnavailable, match=r"TensorRT is not installed .*modelkiln\[tensorrt\]"
    ):
        get_backend("tensorrt").check(target)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bogus": 1}, "does not know option(s) bogus"),
        ({"builder_optimization_level": 7}, "must be 0..5"),
        ({"workspace_mib": 0}, "workspace_mib must be a whole number >= 1"),
        ({"version_compatible": "yes"}, "must be true or false"),
        ({"hardware_compatibility_level": "turing"}, "is not one of none"),
    ],
)
def test_option_mistakes_are_one_line(options: dict[str, Any], message: str) -> None:
    from modelkiln.backends.tensorrt.options import build_options

    with pytest.raises(UserInputError, match=re.escape(message)):
        build_options(_target(**options))


def test_presets_options_are_valid() -> None:
    from modelkiln.backends.tensorrt.options import build_options

    for preset in ("nvidia-gpu", "nvidia-gpu-fp32", "nvidia-gpu-int8"):
        options = build_options(load_target(preset))
        assert options.builder_optimization_level == 3 and options.timing_cache is True


def test_a_precision_tensorrt_lacks_is_refused_here(mlp_onnx: Path, tmp_path: Path) -> None:
    toml = tmp_path / "gpu-dyn.toml"
    toml.write_text('backend = "tensorrt"\ndevice = "cuda"\nprecision = "int8-dynamic"\n')
    result = run_kiln("export", mlp_onnx, "-o", tmp_path / "o", "--target", toml)
    line = assert_one_line_error(result, "tensorrt builds fp32, fp16, bf16, int8-static")
    assert "int8-dynamic" in line


def test_targets_lists_gpu_targets_with_reasons() -> None:
    result = run_kiln("targets", "--json")
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    for name in ("nvidia-gpu", "nvidia-gpu-fp32", "nvidia-gpu-int8"):
        assert rows[name]["usable"] is False
        assert "TensorRT is not installed" in rows[name]["reason"]
        assert "NVIDIA GPU" in rows[name]["reason"]


def test_timing_cache_is_one_file_per_version_and_gpu(tmp_path: Path) -> None:
    a = timing_cache_path(tmp_path, "10.3.0", "8.6", "NVIDIA A10")
    assert a.parent == tmp_path / "tensorrt" and "10.3.0" in a.name and "sm8.6" in a.name
    assert a != timing_cache_path(tmp_path, "10.4.0", "8.6", "NVIDIA A10")
    assert a != timing_cache_path(tmp_path, "10.3.0", "8.9", "NVIDIA L4")


@pytest.mark.parametrize("use_cache", [True, False], ids=["cache-dir", "no-cache"])
def test_backends_get_the_build_cache_folder_the_export_uses(
    tiny_bert_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_cache: bool
) -> None:
    """Where TensorRT keeps its timing cache: the --cache-dir folder, nothing with --no-cache."""
    from modelkiln.backends.onnxruntime.backend import OnnxRuntimeBackend

    seen: list[Path | None] = []
    build = OnnxRuntimeBackend.build

    def recording(self: Any, request: Any) -> Any:
        seen.append(request.cache_dir)
        return build(self, request)

    monkeypatch.setattr(OnnxRuntimeBackend, "build", recording)
    cache = tmp_path / "my-cache"
    modelkiln.export(tiny_bert_dir, tmp_path / "out", cache_dir=cache, use_cache=use_cache)
    assert seen == [cache if use_cache else None]


# --------------------------------------------------------------------------- parser errors


def test_parser_errors_become_one_line_naming_node_op_and_reason() -> None:
    names = [("embed", "Gather"), ("attn/Mul", "Mul"), ("custom", "Foo")]
    errors = [
        ParsedError(2, "", "", "No importer registered for op: Foo\n"),
        ParsedError(1, "attn/Mul", "Mul", "broadcast failed"),
    ]
    line = parser_message(errors, names)
    assert line == (
        "TensorRT cannot parse the model: node 'custom' (Foo): No importer registered for "
        "op: Foo (and 1 more error(s))"
    )
    assert parser_message([ParsedError(-1, "", "", "bad opset")], names).endswith(": bad opset")


# --------------------------------------------------------------------------- precision passes


def _run(model: ir.Model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    proto = ir.to_proto(model)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def _norm_model() -> ir.Model:
    """MatMul -> LayerNormalization -> Softmax: two ops the cast keeps in float32."""
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((8, 8)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
            helper.make_node("LayerNormalization", ["h", "g", "b"], ["n"], name="ln", axis=-1),
            helper.make_node("Softmax", ["n"], ["y"], name="sm", axis=-1),
        ],
        "norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[
            onnx.numpy_helper.from_array(weight, "W"),
            onnx.numpy_helper.from_array(np.ones(8, np.float32), "g"),
            onnx.numpy_helper.from_array(np.zeros(8, np.float32), "b"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))


def test_fp16_cast_keeps_io_float32_and_matches_fp32() -> None:
    feeds = {"x": np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)}
    reference = _run(_norm_model(), feeds)[0]
    model = _norm_model()
    assert CastToHalf(ir.DataType.FLOAT16)(model).modified
    nodes = {n.name: n for n in model.graph}
    assert [str(i.dtype) for i in nodes["mm"].inputs] == ["FLOAT16", "FLOAT16"]
    assert {str(i.dtype) for i in nodes["ln"].inputs} == {"FLOAT"}  # kept in float32
    assert model.graph.inputs[0].dtype == model.graph.outputs[0].dtype == ir.DataType.FLOAT
    assert model.graph.outputs[0].name == "y"
    out = _run(model, feeds)[0]
    assert out.dtype == np.float32
    assert 0 < np.abs(out - reference).max() < 1e-2  # half precision, but close


def test_fp16_cast_on_the_mlp_runs_and_saturates_out_of_range_weights() -> None:
    proto = models.mlp_proto()
    proto.graph.initializer[1].CopyFrom(
        onnx.numpy_helper.from_array(np.full(models.MLP_OUT, 1e6, np.float32), "b")
    )
    model = ir.from_proto(proto)
    CastToHalf()(model)
    x = np.zeros((2, models.MLP_IN), np.float32)
    (y,) = _run(model, {"x": x})
    assert np.all(y == np.float32(65504.0))  # clipped to float16's max, not inf


def test_bf16_cast_types_the_graph_in_bfloat16() -> None:
    model = _norm_model()
    CastToHalf(ir.DataType.BFLOAT16, keep_nodes={"sm"})(model)
    nodes = {n.name: n for n in model.graph}
    assert nodes["mm"].inputs[1].const_value.dtype == ir.DataType.BFLOAT16
    assert {str(i.dtype) for i in nodes["sm"].inputs} == {"FLOAT"}
    onnx.checker.check_model(ir.to_proto(model), full_check=True)


def test_int8_is_symmetric_qdq() -> None:
    rng = np.random.default_rng(1)
    samples = [{"x": rng.standard_normal((4, models.MLP_IN)).astype(np.float32)} for _ in range(8)]
    quantized, record = quantize_qdq(models.mlp_proto().SerializeToString(), samples)
    model = onnx.load_from_string(quantized)
    ops = [n.op_type for n in model.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    assert record["symmetric"] is True and record["calibration"]["samples"] == 8
    # The Q/DQ math as TensorRT computes it (int32 accumulation): ORT's graph optimizations
    # would fuse it into its u8xs8 CPU kernels, which saturate int16 pair sums on CPUs
    # without VNNI (AVX2 vpmaddubsw) and so are not a reference for it there.
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(quantized, options, providers=["CPUExecutionProvider"])
    x = samples[0]["x"]
    weight, bias = models.mlp_weights()
    assert np.abs(session.run(None, {"x": x})[0] - np.maximum(x @ weight + bias, 0)).max() < 0.2


# --------------------------------------------------------------------------- export-time check


def _stderr_lines(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def test_export_lints_an_onnx_source_before_loading_it(mlp_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_kiln("export", mlp_onnx, "-o", out, "--target", "nvidia-gpu")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    lines = _stderr_lines(result)
    assert len(lines) == 2, lines  # the check, then the refusal: nothing was loaded
    assert "tensorrt static check of nvidia-gpu: clean (3 nodes)" in lines[0]
    assert lines[1].startswith("error: TensorRT is not installed")
    assert "pip install 'modelkiln[tensorrt]'" in lines[1]
    assert not out.exists()


def _unsupported_onnx(path: Path) -> Path:
    graph = helper.make_graph(
        [
            helper.make_node("Relu", ["x"], ["h"], name="relu"),
            helper.make_node("Foo", ["h"], ["y"], name="custom_1", domain="com.example"),
            helper.make_node("Foo", ["h"], ["z"], name="custom_2", domain="com.example"),
        ],
        "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 4]),
        ],
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.example", 1)]
    onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
    return path


def test_findings_fail_the_export_and_are_all_listed(tmp_path: Path) -> None:
    source = _unsupported_onnx(tmp_path / "unsupported.onnx")
    result = run_kiln("export", source, "-o", tmp_path / "out", "--target", "nvidia-gpu")
    assert result.exit_code == 1 and "Traceback" not in result.stderr
    errors = [line for line in _stderr_lines(result) if "error:" in line]
    assert len(errors) == 1 and "found 2 problem(s)" in errors[0]
    findings = [line.strip() for line in _stderr_lines(result) if line.strip().startswith("✗ node")]
    assert [f.split("'")[1] for f in findings] == ["custom_1", "custom_2"]
    assert "TensorRT is not installed" not in result.stderr  # findings come first


def test_findings_in_json(tmp_path: Path) -> None:
    source = _unsupported_onnx(tmp_path / "unsupported.onnx")
    result = run_kiln("export", source, "-o", tmp_path / "out", "--target", "nvidia-gpu", "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["passed"] is False
    assert len(summary["validation"]["failures"]) == 2
    assert summary["validation"]["static_check"] == "tensorrt"


def test_a_checkpoint_is_traced_then_linted_and_cached(tiny_bert_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    args = ["export", tiny_bert_dir, "--target", "nvidia-gpu", "--cache-dir", cache]
    first = run_kiln(*args, "-o", tmp_path / "a")
    assert first.exit_code == 2, first.stderr
    assert "tracing to ONNX" in first.stderr
    assert "tensorrt static check of nvidia-gpu: clean" in first.stderr
    second = run_kiln(*args, "-o", tmp_path / "b")
    assert second.exit_code == 2
    assert "tracing to ONNX" not in second.stderr and "from the build cache" in second.stderr
    assert "tensorrt static check of nvidia-gpu: clean" in second.stderr
    assert _stderr_lines(second)[-1].startswith("error: TensorRT is not installed")


def test_backends_without_a_static_check_still_refuse_at_once(
    mlp_onnx: Path, tmp_path: Path
) -> None:
    result = run_kiln("export", mlp_onnx, "-o", tmp_path / "o", "--target", "cuda")
    assert result.exit_code == 2
    assert _stderr_lines(result) == [_stderr_lines(result)[0]]  # no check line, one refusal
    assert "static check" not in result.stderr


# --------------------------------------------------------------------------- on a GPU


def _gpu() -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (needs an NVIDIA GPU)")
    cudart = pytest.importorskip("cuda.bindings.runtime", reason="cuda-python is not installed")
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or not count:
        pytest.skip("no NVIDIA GPU visible to CUDA")


@pytest.mark.gpu
@pytest.mark.parametrize("preset", ["nvidia-gpu-fp32", "nvidia-gpu"])
def test_engine_builds_validates_and_runs(mlp_onnx: Path, tmp_path: Path, preset: str) -> None:
    _gpu()
    out = tmp_path / preset
    result = run_kiln("export", mlp_onnx, "-o", out, "--target", preset)
    assert result.exit_code == 0, result.stderr
    manifest = models.read_manifest(out)
    backend = manifest["backend"]
    assert backend["files"]["model"] == "model.engine"
    for key in ("tensorrt_version", "cuda_version", "gpu", "compute_capability"):
        assert backend[key]
    assert backend["profiles"][0]["x"]["max"] == [32, models.MLP_IN]
    session = modelkiln.load(out)
    assert models.check_mlp(session, batch=7) < (1e-4 if preset.endswith("fp32") else 2e-2)
    assert run_kiln("validate", out).exit_code == 0


@pytest.mark.gpu
def test_timing_cache_is_reused(
    mlp_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _gpu()
    monkeypatch.setenv("MODELKILN_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("a", "b"):
        assert (
            run_kiln(
                "export", mlp_onnx, "-o", tmp_path / name, "--target", "nvidia-gpu-fp32"
            ).exit_code
            == 0
        )
    first, second = (models.read_manifest(tmp_path / n)["backend"]["timing_cache"] for n in "ab")
    assert first["reused"] is False and second["reused"] is True
    shutil.rmtree(tmp_path / "cache")
