"""`kiln bench` and `modelkiln.bench()`: feeds from manifests, the report's schema, bad input.

Runs are kept short (--rounds 2 --warmup 1 --min-time 0) and nothing here asserts on timings:
the figures depend on the machine; what is tested is what gets measured and reported.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import Exported, run_kiln

import modelkiln
from modelkiln import UserInputError
from modelkiln.benchmark.plan import (
    bench_decls,
    make_feeds,
    parse_shape,
    parse_sizes,
    plan_dims,
)
from modelkiln.benchmark.report import markdown_table, text_table
from modelkiln.generated_feeds import ValueKind
from modelkiln.tensors import TensorSpec, specs_from_json

SHORT = ["--rounds", "2", "--warmup", "1", "--min-time", "0"]
SHORT_API: dict[str, Any] = {"rounds": 2, "warmup": 1, "min_time": 0.0}
LATENCY_KEYS = {"p50", "p90", "p99", "mean", "min", "max"}


def _one_error_line(result: Any, after_progress: bool = False) -> str:
    """The error line; alone on stderr, or after progress lines for errors found loading."""
    lines = result.stderr.strip().splitlines()
    assert sum(line.startswith("error:") for line in lines) == 1, result.stderr
    if after_progress:
        lines = lines[-1:]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert result.stdout == ""
    return lines[0]


def _specs(inputs: dict[str, Any]) -> dict[str, TensorSpec]:
    return specs_from_json(inputs)


def _decls(inputs: dict[str, Any]) -> Any:
    """bench_decls of a manifest's `inputs` section (values where it records them)."""
    values = {n: ValueKind.from_json(s["values"]) for n, s in inputs.items() if "values" in s}
    return bench_decls(_specs(inputs), values)


def _edited_copy(artifact: Exported, tmp_path: Path, edit: Any) -> Path:
    """A copy of the artifact whose kiln.json was changed by `edit(manifest)`."""
    folder = shutil.copytree(artifact.path, tmp_path / artifact.path.name)
    manifest = json.loads((folder / "kiln.json").read_text())
    edit(manifest)
    (folder / "kiln.json").write_text(json.dumps(manifest))
    return folder


# --------------------------------------------------------------------------- feeds and sizes


def test_feeds_from_a_text_manifest(tiny_bert_artifact: Exported) -> None:
    inputs = tiny_bert_artifact.manifest["inputs"]
    decls, notes = _decls(inputs)
    assert notes == []
    feeds = make_feeds(decls, {"batch": 3, "sequence": 40}, seed=0)
    assert set(feeds) == set(inputs)
    values = inputs["input_ids"]["values"]
    ids = feeds["input_ids"]
    assert ids.shape == (3, 40) and ids.dtype == np.int64
    assert values["low"] <= ids.min() and ids.max() < values["high"]  # inside the vocabulary
    assert (feeds["attention_mask"] == 1).all()  # no padding when benchmarking
    if "token_type_ids" in feeds:
        assert (feeds["token_type_ids"] == 0).all()
    again = make_feeds(decls, {"batch": 3, "sequence": 40}, seed=0)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)


def test_feeds_from_an_image_manifest(vit_artifact: Exported) -> None:
    inputs = vit_artifact.manifest["inputs"]
    dims = plan_dims("vit", _specs(inputs), [2], None, {})
    assert dims == [{"batch": 2}]  # no sequence dimension, so --seq does not apply
    decls, _ = _decls(inputs)
    pixels = make_feeds(decls, dims[0], seed=0)["pixel_values"]
    assert list(pixels.shape) == [2, *inputs["pixel_values"]["shape"][1:]]
    assert pixels.dtype == np.float32


def test_older_manifest_without_value_kinds_gets_masks_of_ones_and_a_note() -> None:
    inputs = {
        "input_ids": {"dtype": "int64", "shape": ["batch", "sequence"]},
        "attention_mask": {"dtype": "int64", "shape": ["batch", "sequence"]},
    }
    decls, notes = _decls(inputs)
    feeds = make_feeds(decls, {"batch": 4, "sequence": 9}, seed=1)
    assert (feeds["attention_mask"] == 1).all()
    assert len(notes) == 1 and "input_ids" in notes[0]


def test_plan_covers_every_batch_and_sequence() -> None:
    inputs = {"input_ids": {"dtype": "int64", "shape": ["batch", "sequence"]}}
    dims = plan_dims("m", _specs(inputs), [1, 32], [16, 128], {})
    assert dims == [
        {"batch": 1, "sequence": 16},
        {"batch": 1, "sequence": 128},
        {"batch": 32, "sequence": 16},
        {"batch": 32, "sequence": 128},
    ]
    # the default sequence length is shortened to what the model takes
    shortened = plan_dims("m", _specs(inputs), [1], None, {}, seq_limit=64)
    assert shortened == [{"batch": 1, "sequence": 64}]


def test_shape_binds_other_named_dimensions() -> None:
    inputs = {"pixel_values": {"dtype": "float32", "shape": ["batch", 3, "height", "width"]}}
    dims = plan_dims("m", _specs(inputs), [1, 4], None, {"pixel_values": (1, 3, 96, 64)})
    assert dims == [
        {"height": 96, "width": 64, "batch": 1},
        {"height": 96, "width": 64, "batch": 4},
    ]


@pytest.mark.parametrize(
    ("inputs", "batches", "seqs", "shapes", "limit", "needle"),
    [
        (
            {"x": {"dtype": "float32", "shape": ["batch", 3, 32, 32]}},
            [1],
            None,
            {"x": (1, 3, 64, 64)},
            None,
            "fixed at 32",
        ),
        (
            {"x": {"dtype": "float32", "shape": ["batch", 3, 32, 32]}},
            [1],
            None,
            {"x": (1, 3, 32)},
            None,
            "has 4",
        ),
        (
            {"x": {"dtype": "float32", "shape": ["batch", "width"]}},
            [1],
            None,
            {},
            None,
            "--shape x=Nx",
        ),
        ({"x": {"dtype": "float32", "shape": [1, 16]}}, [8], None, {}, None, "--batch 1"),
        (
            {"ids": {"dtype": "int64", "shape": ["batch", "sequence"]}},
            [1],
            [256],
            {},
            128,
            "at most 128",
        ),
        (
            {"x": {"dtype": "float32", "shape": ["batch", 4]}},
            [1],
            None,
            {"y": (1, 4)},
            None,
            "no input 'y'",
        ),
    ],
    ids=["fixed-dim", "rank", "unsized-dim", "fixed-batch", "too-long", "unknown-input"],
)
def test_sizes_that_do_not_fit_the_manifest_are_refused(
    inputs: Any, batches: Any, seqs: Any, shapes: Any, limit: Any, needle: str
) -> None:
    with pytest.raises(UserInputError, match=None) as info:
        plan_dims("model", _specs(inputs), batches, seqs, shapes, seq_limit=limit)
    assert needle in str(info.value)


def test_size_options_are_parsed_strictly() -> None:
    assert parse_sizes("1, 8,32,8", "--batch") == (1, 8, 32)
    assert parse_shape("pixel_values=1x3x224x224") == ("pixel_values", (1, 3, 224, 224))
    for bad in ("", "0", "1,x", "-1"):
        with pytest.raises(UserInputError):
            parse_sizes(bad, "--batch")
    for bad in ("pixel_values", "=1x2", "x=1xa"):
        with pytest.raises(UserInputError):
            parse_shape(bad)


# --------------------------------------------------------------------------- the report


def _check_result_row(row: dict[str, Any]) -> None:
    assert set(row["latency_ms"]) == LATENCY_KEYS
    lat = row["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert row["throughput_items_per_s"] > 0
    assert row["runs"] == sum(row["rounds"]["runs"]) >= 2
    assert len(row["rounds"]["p50_ms"]) == 2 and row["rounds"]["spread_pct"] >= 0
    assert row["peak_rss_mb"] is None or isinstance(row["peak_rss_mb"], float)


def test_api_report_with_pytorch_baseline(tiny_bert_artifact: Exported) -> None:
    report = modelkiln.bench(
        tiny_bert_artifact.path,
        baseline=str(tiny_bert_artifact.source),
        batch=[1, 2],
        seq=[8],
        threads=1,
        **SHORT_API,
    )
    json.dumps(report)  # what --json writes
    assert report["schema"] == "modelkiln.bench/1"
    for key in ("created", "machine", "settings", "subjects", "results", "comparisons", "notes"):
        assert key in report
    assert report["settings"]["threads"] == 1 and report["settings"]["rounds"] == 2
    assert report["settings"]["batch"] == [1, 2] and report["settings"]["sequence"] == [8]
    baseline, artifact = report["subjects"]
    assert baseline["kind"] == "baseline" and baseline["threads"] == 1
    assert artifact["kind"] == "artifact" and artifact["target"] == "cpu"
    for subject in report["subjects"]:
        assert subject["load_s"] > 0 and "load_rss_mb" in subject and "import_s" in subject
    assert [(r["subject"], r["batch"], r["sequence"]) for r in report["results"]] == [
        ("pytorch", 1, 8),
        ("pytorch", 2, 8),
        (str(tiny_bert_artifact.path), 1, 8),
        (str(tiny_bert_artifact.path), 2, 8),
    ]
    for row in report["results"]:
        _check_result_row(row)
    assert [(c["batch"], c["sequence"]) for c in report["comparisons"]] == [(1, 8), (2, 8)]
    for c in report["comparisons"]:
        assert c["speedup_p50"] > 0 and c["throughput_ratio"] > 0
        assert c["max_abs_diff"] is not None and c["max_abs_diff"] < 1e-3  # the same model
    assert "vs PyTorch" in text_table(report)
    assert markdown_table(report).count("\n") == 1 + len(report["results"])


def test_vs_openvino_adds_openvinos_own_conversion(tiny_bert_artifact: Exported) -> None:
    pytest.importorskip("openvino")
    report = modelkiln.bench(
        tiny_bert_artifact.path,
        baseline=str(tiny_bert_artifact.source),
        vs_openvino=True,
        batch=[1],
        seq=[8, 12],
        threads=1,
        **SHORT_API,
    )
    json.dumps(report)
    kinds = [(s["id"], s["kind"]) for s in report["subjects"]]
    assert kinds == [
        ("pytorch", "baseline"),
        ("openvino-direct", "reference"),
        (str(tiny_bert_artifact.path), "artifact"),
    ]
    direct = report["subjects"][1]
    assert direct["threads"] == 1 and "ov.convert_model" in direct["runtime"]
    assert direct["compiled"]["inference_num_threads"] == 1
    rows = [(r["subject"], r["sequence"]) for r in report["results"]]
    assert ("openvino-direct", 8) in rows and ("openvino-direct", 12) in rows  # dynamic shapes
    compared = {c["subject"]: c for c in report["comparisons"] if c["sequence"] == 8}
    # OpenVINO's conversion runs the same model: same outputs as PyTorch on the same feeds.
    assert compared["openvino-direct"]["max_abs_diff"] < 1e-3
    assert "OpenVINO direct (ov.convert_model)" in text_table(report)


def test_vs_openvino_needs_a_baseline(tiny_bert_artifact: Exported) -> None:
    result = run_kiln("bench", str(tiny_bert_artifact.path), "--vs-openvino", *SHORT)
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "--vs-openvino needs --baseline" in line


def test_api_is_a_plain_function_also_after_importing_the_package(mlp_artifact: Exported) -> None:
    import modelkiln.benchmark as package

    first = modelkiln.bench([mlp_artifact.path], batch=[3], **SHORT_API)
    second = modelkiln.bench(mlp_artifact.path, batch=[3], **SHORT_API)
    third = package.bench(mlp_artifact.path, batch=[3], **SHORT_API)
    assert callable(modelkiln.bench) and not isinstance(modelkiln.bench, type(package))
    for report in (first, second, third):
        assert [r["batch"] for r in report["results"]] == [3]
        assert report["comparisons"] == []


def test_cli_writes_json_and_plot(tiny_bert_artifact: Exported, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "r" / "r.json", tmp_path / "r.png"
    result = run_kiln(
        "bench", tiny_bert_artifact.path, "--baseline", tiny_bert_artifact.source,
        "--batch", "1,2", "--seq", "8", "--threads", "1", *SHORT,
        "--json", out_json, "--plot", out_png,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    report = json.loads(out_json.read_text())
    assert {r["subject"] for r in report["results"]} == {"pytorch", str(tiny_bert_artifact.path)}
    assert len(report["comparisons"]) == 2
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "p50 ms" in result.stdout and "vs PyTorch" in result.stdout
    assert "round 2/2" in result.stderr  # progress


def test_cli_json_to_stdout(vit_artifact: Exported) -> None:
    result = run_kiln("bench", vit_artifact.path, "--batch", "2", *SHORT, "--json", "-", "-q")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["dims"] for r in report["results"]] == [{"batch": 2}]
    _check_result_row(report["results"][0])


BENCH_WITHOUT_TORCH = """
import json, sys
import modelkiln
report = modelkiln.bench(sys.argv[1], batch=[1], seq=[8], rounds=1, warmup=1, min_time=0)
print(json.dumps({"torch": "torch" in sys.modules, "rows": len(report["results"])}))
"""


def test_bench_without_baseline_does_not_import_torch(tiny_bert_artifact: Exported) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", BENCH_WITHOUT_TORCH, str(tiny_bert_artifact.path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"torch": False, "rows": 1}


# --------------------------------------------------------------------------- bad input


def test_unknown_artifact_path(tmp_path: Path) -> None:
    result = run_kiln("bench", tmp_path / "nothing-here", *SHORT)
    assert result.exit_code == 2
    assert "does not exist" in _one_error_line(result)


def test_folder_that_is_not_an_artifact(tmp_path: Path) -> None:
    result = run_kiln("bench", tmp_path, *SHORT)
    assert result.exit_code == 2
    assert "kiln.json" in _one_error_line(result)


def test_backend_not_installed(mlp_artifact: Exported, tmp_path: Path) -> None:
    def edit(manifest: dict[str, Any]) -> None:
        manifest["backend"]["name"] = "tensorrt"
        manifest["target"]["backend"] = "tensorrt"

    result = run_kiln("bench", _edited_copy(mlp_artifact, tmp_path, edit), *SHORT)
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "tensorrt" in line and "pip install 'modelkiln[tensorrt]'" in line


def test_device_this_machine_lacks(mlp_artifact: Exported, tmp_path: Path) -> None:
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")

    def edit(manifest: dict[str, Any]) -> None:
        manifest["target"]["device"] = manifest["backend"]["device"] = "cuda"
        manifest["backend"]["provider"] = "CUDAExecutionProvider"

    result = run_kiln("bench", _edited_copy(mlp_artifact, tmp_path, edit), *SHORT)
    assert result.exit_code == 2
    line = _one_error_line(result)
    assert "CUDAExecutionProvider" in line and "onnxruntime-gpu" in line


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--shape", "pixel_values=1x3x64x64"], "fixed at"),
        (["--shape", "pixel_values=1x3x32"], "dimensions"),
        (["--shape", "nope=1x2"], "no input 'nope'"),
        (["--seq", "16"], "no input of"),
        (["--batch", "0"], "positive integers"),
        (["--rounds", "0"], "--rounds 0"),
        (["--threads", "0"], "--threads 0"),
    ],
    ids=[
        "fixed-dim",
        "rank",
        "unknown-input",
        "seq-without-sequence",
        "batch-0",
        "rounds",
        "threads",
    ],
)
def test_sizes_and_numbers_that_do_not_fit(
    vit_artifact: Exported, args: list[str], needle: str
) -> None:
    result = run_kiln("bench", vit_artifact.path, *SHORT, *args)
    assert result.exit_code == 2
    assert needle in _one_error_line(result)


def test_sequence_longer_than_the_model_takes(tiny_bert_artifact: Exported) -> None:
    result = run_kiln("bench", tiny_bert_artifact.path, "--seq", "4096", *SHORT)
    assert result.exit_code == 2
    assert "at most" in _one_error_line(result)


def test_named_dimension_without_a_size(mlp_artifact: Exported, tmp_path: Path) -> None:
    def edit(manifest: dict[str, Any]) -> None:
        for spec in manifest["inputs"].values():
            spec["shape"] = ["batch", "features"]

    result = run_kiln("bench", _edited_copy(mlp_artifact, tmp_path, edit), *SHORT)
    assert result.exit_code == 2
    assert "--shape" in _one_error_line(result)


def test_missing_baseline_checkpoint(tiny_bert_artifact: Exported, tmp_path: Path) -> None:
    result = run_kiln(
        "bench", tiny_bert_artifact.path, "--baseline", tmp_path / "no-ckpt", "--seq", "8", *SHORT
    )
    assert result.exit_code == 2
    assert "no-ckpt" in _one_error_line(result)


def test_baseline_of_another_model(tiny_bert_artifact: Exported, tiny_vit_dir: Path) -> None:
    result = run_kiln(
        "bench", tiny_bert_artifact.path, "--baseline", tiny_vit_dir, "--seq", "8", *SHORT
    )
    assert result.exit_code == 2
    assert "--baseline" in _one_error_line(result, after_progress=True)


def test_unwritable_json_path(vit_artifact: Exported, tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_kiln("bench", vit_artifact.path, *SHORT, "--json", blocker / "r.json")
    assert result.exit_code == 2
    assert "is a file" in _one_error_line(result)
