"""`kiln triton`: Triton model repositories from real artifacts.

Every config.pbtxt is parsed into Triton's own ModelConfig message (tritonclient), the model
files in `1/` are loaded the way Triton's backends load them (ONNX Runtime from the file or
the model.onnx folder; OpenVINO with the batch fixed to max_batch_size and padded, as its
backend does) and must give the artifact's own outputs.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import models
import numpy as np
import onnx
import pytest
from conftest import assert_one_line_error, run_kiln
from google.protobuf import text_format
from onnx import TensorProto, helper, numpy_helper
from tritonclient.grpc import model_config_pb2

import modelkiln
from modelkiln.artifact import Artifact, verify_files
from modelkiln.golden import load_golden
from modelkiln.serve import triton_repo
from modelkiln.serve.pbtxt import Token, format_message, message
from modelkiln.serve.triton_repo import MARKER, write_repository

ov = pytest.importorskip("openvino")

ONNX_PLATFORM, OV_BACKEND = "onnxruntime_onnx", "openvino"


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def edit_manifest(src: Path, dst: Path, change: Any) -> Path:
    """A copy of the artifact at `src` whose kiln.json `change(data)` has edited."""
    shutil.copytree(src, dst)
    data = json.loads((dst / "kiln.json").read_text())
    change(data)
    (dst / "kiln.json").write_text(json.dumps(data))
    return dst


def export_onnx(proto: Any, folder: Path, name: str, *targets: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(proto)
    onnx.save(proto, folder / f"{name}.onnx")
    flags = [a for t in targets for a in ("--target", t)] or ["--target", "cpu"]
    result = run_kiln("export", folder / f"{name}.onnx", *flags, "-o", folder / name, "-q")
    assert result.exit_code == 0, result.stderr
    return folder / name


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory, tiny_bert_dir, tiny_bert_artifact, mlp_artifact, mlp_onnx):
    """One artifact per case: batched and unbatched, both backends, external data, a
    batch-only output, fixed shapes."""
    root = tmp_path_factory.mktemp("triton-artifacts")
    ext = root / "ext.toml"
    ext.write_text('backend = "onnxruntime"\n[options]\nexternal_data_threshold_bytes = 0\n')
    bounded = root / "ov-bounded.toml"
    bounded.write_text('backend = "openvino"\n[shapes]\nbatch = { min = 1, opt = 2, max = 4 }\n')
    result = run_kiln(
        "export", mlp_onnx, "--target", "openvino-cpu", "--target", ext, "--target", bounded,
        "--name", "mlp", "-o", root, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    bert_ov = root / "tiny-bert-openvino-cpu"  # the trace comes from the build cache
    modelkiln.export(tiny_bert_dir, bert_ov, target="openvino-cpu")

    fixed = models.mlp_proto()  # x: float32[4, 16] -> y: float32[4, 32], nothing to batch
    for value in (*fixed.graph.input, *fixed.graph.output):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    axes = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes")
    rowsum = helper.make_model(  # y: float32[batch], batched with an empty per-row shape
        helper.make_graph(
            [helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=0)],
            "rowsum",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch"])],
            initializer=[axes],
        ),
        opset_imports=[helper.make_opsetid("", 18)],
        ir_version=10,
    )
    return {
        "tiny-bert-cpu": tiny_bert_artifact.path,
        "tiny-bert-openvino-cpu": bert_ov,
        "tiny-mlp-cpu": mlp_artifact.path,
        "mlp-openvino-cpu": root / "mlp-openvino-cpu",
        "mlp-ext": root / "mlp-ext",
        "mlp-ov-bounded": root / "mlp-ov-bounded",
        "fixed": export_onnx(fixed, root / "fixed-src", "fixed"),
        "rowsum": export_onnx(rowsum, root / "rowsum-src", "rowsum"),
    }


@pytest.fixture(scope="module")
def repo(artifacts, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("triton") / "repo"
    written = write_repository(list(artifacts.values()), out)
    return out, {m.name: m for m in written}


# name -> (platform or backend, max_batch_size, {tensor: dims}, parameters)
EXPECTED = {
    "tiny-bert-cpu": (
        ONNX_PLATFORM, 8,
        {"input_ids": [-1], "attention_mask": [-1], "token_type_ids": [-1],
         "last_hidden_state": [-1, 32]},
        {},
    ),
    "tiny-bert-openvino-cpu": (
        OV_BACKEND, 0,
        {"input_ids": [-1, -1], "attention_mask": [-1, -1], "token_type_ids": [-1, -1],
         "last_hidden_state": [-1, -1, 32]},
        {"PERFORMANCE_HINT": "LATENCY"},
    ),
    "tiny-mlp-cpu": (ONNX_PLATFORM, 8, {"x": [16], "y": [32]}, {}),
    "mlp-openvino-cpu": (
        OV_BACKEND, 8, {"x": [16], "y": [32]},
        {"PERFORMANCE_HINT": "LATENCY", "ENABLE_BATCH_PADDING": "YES"},
    ),
    "mlp-ext": (ONNX_PLATFORM, 8, {"x": [16], "y": [32]}, {}),
    "mlp-ov-bounded": (OV_BACKEND, 4, {"x": [16], "y": [32]}, {"ENABLE_BATCH_PADDING": "YES"}),
    "fixed": (ONNX_PLATFORM, 0, {"x": [4, 16], "y": [4, 32]}, {}),
    "rowsum": (ONNX_PLATFORM, 8, {"x": [16], "y": [1]}, {}),
}  # fmt: skip
TYPES = {"float32": model_config_pb2.TYPE_FP32, "int64": model_config_pb2.TYPE_INT64}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_parses_into_tritons_model_config(name: str, repo, artifacts) -> None:
    out, written = repo
    runtime, batch, dims, parameters = EXPECTED[name]
    config = parse_config(out / name / "config.pbtxt")
    manifest = Artifact.open(artifacts[name]).manifest
    assert config.name == name
    assert (config.platform, config.backend) == (
        (runtime, "") if runtime == ONNX_PLATFORM else ("", runtime)
    )
    assert config.max_batch_size == batch == written[name].max_batch_size
    assert config.HasField("dynamic_batching") == (batch > 0)
    if batch:
        assert config.dynamic_batching.max_queue_delay_microseconds == 100
    specs = {**manifest.inputs, **manifest.outputs}
    tensors = [*config.input, *config.output]
    assert [t.name for t in config.input] == list(manifest.inputs)
    assert [t.name for t in config.output] == list(manifest.outputs)
    assert {t.name: list(t.dims) for t in tensors} == dims
    assert all(t.data_type == TYPES[specs[t.name].dtype] for t in tensors)
    assert [(g.count, g.kind) for g in config.instance_group] == [
        (1, model_config_pb2.ModelInstanceGroup.KIND_CPU)
    ]
    got = {k: v.string_value for k, v in config.parameters.items()}
    assert {k: got.get(k) for k in parameters} == parameters
    assert "intra_op_thread_count" not in got and "INFERENCE_NUM_THREADS" not in got
    if name == "rowsum":  # a batched [batch] output: [1] for clients, [] inside
        (y,) = config.output
        assert y.HasField("reshape") and list(y.reshape.shape) == []


def test_repository_holds_linked_model_files_and_leaves_artifacts_intact(repo, artifacts) -> None:
    out, written = repo
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, *EXPECTED])
    assert {m["name"] for m in json.loads((out / MARKER).read_text())["models"]} == set(EXPECTED)
    for name, path in artifacts.items():
        folder = out / name
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        assert files == sorted(written[name].files)
        artifact = Artifact.open(path)
        for source, rel in zip(written[name].sources, written[name].files[1:], strict=True):
            assert os.path.samefile(source, folder / rel)  # hard links on one file system
        assert verify_files(artifact.path, artifact.manifest.files) == []
    ext = {p.relative_to(out / "mlp-ext").as_posix() for p in (out / "mlp-ext").rglob("*")}
    assert {"1/model.onnx/model.onnx", "1/model.onnx/model.onnx.data"} <= ext
    assert (out / "tiny-mlp-cpu" / "1" / "model.onnx").is_file()
    xml = {p.name for p in (out / "mlp-openvino-cpu" / "1").iterdir()}
    assert xml == {"model.xml", "model.bin"}


def golden_inputs(artifact: Path) -> dict[str, np.ndarray]:
    """The larger (batch 3) validation feed recorded at export."""
    return load_golden(artifact / "golden.npz")[-1][0]


@pytest.mark.parametrize("name", ["tiny-bert-cpu", "tiny-mlp-cpu", "mlp-ext", "fixed", "rowsum"])
def test_onnxruntime_models_give_the_artifacts_outputs(name: str, repo, artifacts) -> None:
    import onnxruntime as ort

    out, _ = repo
    model = out / name / "1" / "model.onnx"
    path = model / "model.onnx" if model.is_dir() else model  # Triton's folder form
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = golden_inputs(artifacts[name])
    expected = modelkiln.load(artifacts[name]).run(feeds)
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, atol=1e-5)


def _matches(dim: Any, wanted: int) -> bool:
    """Triton's OpenVINO backend's dimension check: a static size must equal the config's,
    an unbounded one matches anything, a bounded one only sizes strictly inside it."""
    if dim.is_static:
        return dim.get_length() == wanted
    return dim.get_max_length() < 0 or dim.get_min_length() < wanted < dim.get_max_length()


@pytest.mark.parametrize("name", ["tiny-bert-openvino-cpu", "mlp-openvino-cpu", "mlp-ov-bounded"])
def test_openvino_models_load_as_the_backend_loads_them(name: str, repo, artifacts) -> None:
    out, _ = repo
    config = parse_config(out / name / "config.pbtxt")
    core = ov.Core()
    model = core.read_model(out / name / "1" / "model.xml")
    assert [p.get_any_name() for p in model.inputs] == [t.name for t in config.input]
    assert [p.get_any_name() for p in model.outputs] == [t.name for t in config.output]
    batch = config.max_batch_size
    if batch:  # as the backend: layout N..., batch fixed to max_batch_size, zero padding
        ppp = ov.preprocess.PrePostProcessor(model)
        for tensor in config.input:
            ppp.input(tensor.name).tensor().set_layout(ov.Layout("N..."))
        model = ppp.build()
        ov.set_batch(model, batch)
    for port, tensor in zip(
        [*model.inputs, *model.outputs], [*config.input, *config.output], strict=True
    ):
        dims = ([batch] if batch else []) + list(tensor.dims)
        shape = port.get_partial_shape()
        assert len(shape) == len(dims) and all(map(_matches, shape, dims)), (tensor.name, shape)
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    feeds = golden_inputs(artifacts[name])
    rows = len(next(iter(feeds.values())))
    padding = max(batch - rows, 0)
    padded = {
        k: np.concatenate([v, np.zeros((padding, *v.shape[1:]), v.dtype)]) for k, v in feeds.items()
    }
    results = compiled(padded)
    expected = modelkiln.load(artifacts[name]).run(feeds)
    for key, value in expected.items():
        np.testing.assert_allclose(results[compiled.output(key)][:rows], value, atol=1e-4)


def test_thread_options_and_optimization_level_reach_the_parameters(
    tmp_path: Path, artifacts
) -> None:
    def threads(data: dict[str, Any]) -> None:
        data["target"]["options"]["threads"] = 3
        data["backend"]["graph_optimization_level"] = "basic"

    ort_copy = edit_manifest(artifacts["tiny-mlp-cpu"], tmp_path / "a" / "ort", threads)
    ov_copy = edit_manifest(artifacts["mlp-openvino-cpu"], tmp_path / "a" / "ov", threads)
    cases = [(None, "3"), (2, "2")]  # the target's option, then --threads over it
    for override, expected in cases:
        out = tmp_path / f"repo-{expected}"
        write_repository([ort_copy, ov_copy], out, threads=override, instances=2)
        ort_config = parse_config(out / "tiny-mlp-cpu" / "config.pbtxt")
        ov_config = parse_config(out / "mlp-openvino-cpu" / "config.pbtxt")
        assert ort_config.parameters["intra_op_thread_count"].string_value == expected
        assert ov_config.parameters["INFERENCE_NUM_THREADS"].string_value == expected
        assert ort_config.optimization.graph.level == -1  # Triton's number for "basic"
        assert ort_config.instance_group[0].count == ov_config.instance_group[0].count == 2


def test_batching_follows_the_flags_and_the_batch_range(tmp_path: Path, artifacts) -> None:
    paths = [artifacts["tiny-bert-cpu"], artifacts["mlp-ov-bounded"]]
    small = write_repository(paths, tmp_path / "small", max_batch_size=2, max_queue_delay_us=7)
    assert [m.max_batch_size for m in small] == [2, 2]
    config = parse_config(tmp_path / "small" / "tiny-bert-cpu" / "config.pbtxt")
    assert config.dynamic_batching.max_queue_delay_microseconds == 7
    large = write_repository(paths, tmp_path / "large", max_batch_size=64)
    assert [m.max_batch_size for m in large] == [64, 4]  # the target's batch range is 1..4
    assert any("1..4" in note for note in large[1].notes)
    write_repository([artifacts["tiny-bert-cpu"]], tmp_path / "off", max_batch_size=0)
    config = parse_config(tmp_path / "off" / "tiny-bert-cpu" / "config.pbtxt")
    assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
    assert list(config.input[0].dims) == [-1, -1]


def _decoder(data: dict[str, Any]) -> None:
    data["task"] = "text-generation"
    keys = ("past_key", "past_value", "present_key", "present_value")
    data["decoder"] = {"layers": [dict.fromkeys(keys, "x")], "pad_token_id": 0}


def _rename(name: str) -> Any:
    return lambda data: data.update(name=name)


@pytest.mark.parametrize(
    ("change", "mentions"),
    [
        (_decoder, ("decoder", "not supported", "kiln serve")),
        (lambda data: data["backend"].update(name="tensorrt"), ("tensorrt",)),
        (_rename("bad name"), ("bad name", "not a valid")),
        (_rename("tiny-mlp-cpu"), ("both named 'tiny-mlp-cpu'",)),  # like the other artifact
    ],
    ids=["decoder", "unknown-backend", "bad-name", "duplicate-name"],
)
def test_refusals_are_one_line_and_write_nothing(
    change: Any, mentions: tuple[str, ...], tmp_path: Path, artifacts
) -> None:
    copy = edit_manifest(artifacts["mlp-ext"], tmp_path / "art" / "copy", change)
    out = tmp_path / "repo"
    result = run_kiln("triton", artifacts["tiny-mlp-cpu"], copy, "-o", out)
    assert_one_line_error(result, *mentions)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_bounded_openvino_dimensions_without_batching_are_refused(
    tmp_path: Path, artifacts
) -> None:
    result = run_kiln(
        "triton", artifacts["mlp-ov-bounded"], "-o", tmp_path / "r", "--max-batch-size", "0"
    )
    assert_one_line_error(result, "bounded", "x [1..4,16]")


def test_output_rules(tmp_path: Path, artifacts, monkeypatch) -> None:
    mlp = artifacts["tiny-mlp-cpu"]
    out = tmp_path / "repo"
    (out / "keep").mkdir(parents=True)
    assert_one_line_error(run_kiln("triton", mlp, "-o", out), "not empty", "--force")
    assert_one_line_error(run_kiln("triton", mlp, "-o", out, "--force"), "not a repository")
    assert (out / "keep").is_dir()
    assert_one_line_error(run_kiln("triton", mlp, "-o", mlp / "triton"), "inside one another")
    shutil.rmtree(out / "keep")
    assert run_kiln("triton", mlp, "-o", out).exit_code == 0  # an empty folder is free
    result = run_kiln("triton", artifacts["fixed"], "-o", out, "--force")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "fixed"]  # replaced, not merged

    calls: list[Path] = []

    def failing(source: Path, target: Path) -> None:
        calls.append(target)
        raise OSError("disk full")

    monkeypatch.setattr(triton_repo, "_place", failing)
    with pytest.raises(OSError, match="disk full"):
        write_repository([mlp], out, force=True)
    assert calls and sorted(p.name for p in out.iterdir()) == [MARKER, "fixed"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging folder left


def test_cli_prints_one_line_per_model_and_the_command(tmp_path: Path, artifacts) -> None:
    out = tmp_path / "repo"
    paths = [artifacts["tiny-bert-cpu"], artifacts["tiny-bert-openvino-cpu"]]
    result = run_kiln("triton", *paths, "-o", out)
    assert result.exit_code == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines == [
        f"tiny-bert-cpu: platform onnxruntime_onnx, max_batch_size 8, {out / 'tiny-bert-cpu'}",
        f"tiny-bert-openvino-cpu: backend openvino, max_batch_size 0, "
        f"{out / 'tiny-bert-openvino-cpu'}",
        f"run: tritonserver --model-repository {out}",
    ]
    assert all(line.startswith("note: ") for line in result.stderr.splitlines())
    result = run_kiln("triton", *paths, "-o", out, "--force", "--json", "--instances", "3")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["command"] == f"tritonserver --model-repository {out}"
    first, second = document["models"]
    assert (first["platform"], first["backend"], first["max_batch_size"]) == (
        ONNX_PLATFORM,
        None,
        8,
    )
    assert (second["backend"], second["dynamic_batching"], second["instances"]) == (
        OV_BACKEND,
        False,
        3,
    )
    assert first["files"] == ["config.pbtxt", "1/model.onnx"] and first["path"] == str(
        out / "tiny-bert-cpu"
    )
    assert run_kiln("triton", "-o", out).exit_code == 2  # click's usage error


def test_text_format_round_trips_any_string() -> None:
    name = 'odd "name" \\ with ümlaut\n'
    tensor = message(("name", "x"), ("data_type", Token("TYPE_BOOL")), ("dims", []))
    config_message = message(("name", name), ("max_batch_size", 0), ("input", [tensor]))
    text = "\n".join(format_message(config_message))
    config = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert config.name == name and config.input[0].data_type == model_config_pb2.TYPE_BOOL
