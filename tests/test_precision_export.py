"""The export flow with reduced precisions, end to end: calibration and evaluation text files,
the manifest's quantization and accuracy records, `--precision auto`, budgets, and the user
errors around them, through the CLI and the Python API.

Data files hold words of the tiny BERT's WordPiece vocabulary (no [UNK]s), one to twenty
words per line. Artifacts several tests read are exported once per module; after the first
trace the build cache serves the traced model.

Latencies of a model this small are noise, so the `--precision auto` runs that assert which
candidate was chosen shift the measured latency of one precision by a fixed amount
(`shifted`): the ranking stays a real measurement, the choice becomes deterministic.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys
from collections.abc import Collection
from pathlib import Path
from typing import Any

import models
import onnx
import pytest
from conftest import assert_one_line_error, run_kiln

import modelkiln
import modelkiln.precision.search as search_module
from modelkiln.backends.onnxruntime import PRECISIONS as ORT_PRECISIONS
from modelkiln.pipeline import export_targets
from modelkiln.precision import Budget, PrecisionOptions
from modelkiln.precision.names import is_quantized

OV_PRECISIONS = ("fp32", "bf16", "int8-weights", "int8-static", "int4-weights")
VOCAB_WORDS = [w for w in models.WORDS if w.isalpha()] + ["cats", "dogs", "kilns", "worlds"]
SLOW = 1000.0  # ms added to a precision's measured latency to keep auto from choosing it


# --------------------------------------------------------------------------- data


def make_lines(count: int, seed: int, exclude: Collection[str] = ()) -> list[str]:
    """`count` distinct texts of 1..20 vocabulary words (lengths cycle), none in `exclude`."""
    rng = random.Random(seed)
    lines: list[str] = []
    while len(lines) < count:
        length = len(lines) % 20 + 1
        text = " ".join(rng.choice(VOCAB_WORDS) for _ in range(length))
        text += rng.choice(["", " .", " !", " , the end"]) if length > 2 else ""
        if text not in exclude and text not in lines:
            lines.append(text)
    return lines


def short_name(text: str) -> str:
    """How reports label a text sample (at most 60 characters)."""
    text = " ".join(text.split())
    return text if len(text) <= 60 else text[:59].rstrip() + "…"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Data:
    def __init__(self, root: Path) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.eval_lines = make_lines(12, seed=2)
        unique = make_lines(34, seed=1, exclude=set(self.eval_lines))
        self.calib_lines = unique + [unique[5]]  # one duplicate, dropped by the split
        self.calib_unique = len(unique)
        self.calib = root / "calib.txt"
        self.eval = root / "eval.txt"
        self.calib.write_text("\n".join(self.calib_lines) + "\n", encoding="utf-8")
        self.eval.write_text("\n".join(self.eval_lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    return Data(tmp_path_factory.mktemp("data"))


def test_data_files_hold_varied_vocabulary_texts(data: Data) -> None:
    lengths = [len(line.split()) for line in data.calib_lines + data.eval_lines]
    assert min(lengths) == 1 and max(lengths) >= 20
    assert len(data.calib_lines) >= 30 and len(data.eval_lines) >= 12
    assert not set(data.calib_lines) & set(data.eval_lines)


# --------------------------------------------------------------------------- helpers


def export_cli(*args: Any) -> Any:
    return run_kiln("export", *args)


def leftovers(out: Path) -> list[str]:
    """Hidden staging or candidate folders left beside an artifact."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith("."))


@pytest.fixture
def no_tracing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if the export gets as far as loading or tracing the checkpoint."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the export started loading/tracing before refusing its input")

    monkeypatch.setattr("modelkiln.pipeline.prepare", refuse)


def shifted(extra: dict[str, float]) -> pytest.MonkeyPatch:
    """Add `extra[precision]` milliseconds to what the auto search measures for that
    precision (the session's manifest names it); `.undo()` the returned patch."""
    real = search_module.probe_ms
    mp = pytest.MonkeyPatch()

    def probe(run: Any, feeds: Any, runs: int = 10) -> float:
        precision = run.__self__.artifact.manifest.precision
        return real(run, feeds, runs) + extra.get(precision, 0.0)

    mp.setattr(search_module, "probe_ms", probe)
    return mp


def check_worst_names(accuracy: dict[str, Any], lines: list[str]) -> None:
    names = {short_name(line) for line in lines}
    assert accuracy["worst"], accuracy
    for entry in accuracy["worst"]:
        assert entry["name"] in names, entry
        assert 0.0 < entry["cosine"] <= 1.0


# --------------------------------------------------------------------------- int8-static


@pytest.fixture(scope="module")
def static_int8(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, data: Data):
    out = tmp_path_factory.mktemp("static") / "bert-int8"
    result = export_cli(
        tiny_bert_dir,
        "-o",
        out,
        "--target",
        "cpu",
        "--precision",
        "int8-static",
        "--calibration",
        data.calib,
        "--eval",
        data.eval,
    )
    assert result.exit_code == 0, result.stderr
    return out, models.read_manifest(out), result


def test_int8_static_records_its_quantization(static_int8, data: Data) -> None:
    out, manifest, result = static_int8
    assert manifest["precision"] == "int8-static"
    assert manifest["target"]["precision"] == "int8-static"
    record = manifest["backend"]["quantization"]
    assert record["tool"] == "onnxruntime.quantization.quantize_static"
    assert record["format"] == "QDQ"
    assert record["calibration"]["samples"] == data.calib_unique
    assert "precision  int8-static" in result.stderr
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert leftovers(out) == []


def test_int8_static_accuracy_report(static_int8, data: Data) -> None:
    _, manifest, _ = static_int8
    accuracy = manifest["accuracy"]
    assert accuracy["metric"] == "cosine"
    assert accuracy["reference"] == "fp32 PyTorch"
    assert accuracy["samples"] == len(data.eval_lines)
    cosine = accuracy["cosine"]
    assert 0.0 < cosine["min"] <= cosine["mean"] <= 1.0
    assert cosine["pooling"] == "mean over attention mask"
    check_worst_names(accuracy, data.eval_lines)
    assert accuracy["budget"]["source"] == "default floor"
    assert accuracy["budget"]["min_cosine"] == 0.95
    assert accuracy["misses"] == []
    origin = accuracy["data"]
    assert origin["calibration_file"]["sha256"] == sha256(data.calib)
    assert origin["evaluation_file"]["sha256"] == sha256(data.eval)
    assert origin["calibration_file"]["unknown_token_fraction"] == 0.0
    assert origin["split"]["method"] == "explicit evaluation set"
    counts = origin["counts"]
    assert counts["duplicates_dropped"] == 1
    assert counts["calibration"] == data.calib_unique
    assert counts["evaluation"] == len(data.eval_lines)


def test_int8_static_validation_and_kiln_validate(static_int8) -> None:
    out, manifest, _ = static_int8
    validation = manifest["validation"]
    assert validation["passed"] is True
    assert validation["tolerance_source"].startswith("measured at build")
    assert validation["tolerance"]["atol"] >= 1e-3
    assert validation["max_abs_diff"] * 2 <= validation["tolerance"]["atol"] * 1.01
    result = run_kiln("validate", out, "--json")
    assert result.exit_code == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["checks"]["golden"]["passed"] is True
    assert report["precision"] == "int8-static"
    assert report["accuracy"]["cosine"] == manifest["accuracy"]["cosine"]
    session = modelkiln.load(out)
    ids = models.text_feeds(list(session.inputs), 2, 9)
    assert session.run(ids)["last_hidden_state"].shape == (2, 9, models.HIDDEN)


# --------------------------------------------------------------------------- int8-dynamic


@pytest.fixture(scope="module")
def dynamic_int8(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, data: Data):
    out = tmp_path_factory.mktemp("dynamic") / "bert-dyn"
    result = export_cli(
        tiny_bert_dir, "-o", out, "--precision", "int8-dynamic", "--eval", data.eval, "--json"
    )
    assert result.exit_code == 0, result.stderr
    return out, models.read_manifest(out), result


def test_int8_dynamic_needs_no_calibration(dynamic_int8, data: Data) -> None:
    out, manifest, _ = dynamic_int8
    assert manifest["precision"] == "int8-dynamic"
    record = manifest["backend"]["quantization"]
    assert record["tool"] == "onnxruntime.quantization.quantize_dynamic"
    assert "calibration" not in record
    accuracy = manifest["accuracy"]
    assert accuracy["samples"] == len(data.eval_lines)
    assert accuracy["misses"] == [] and accuracy["budget"]["source"] == "default floor"
    check_worst_names(accuracy, data.eval_lines)
    ops = {n.op_type for n in onnx.load(str(out / "model.onnx")).graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeLinear" in ops
    assert run_kiln("validate", out).exit_code == 0


def test_int8_dynamic_records_the_eval_files_hash(dynamic_int8, data: Data) -> None:
    _, manifest, _ = dynamic_int8
    record = manifest["accuracy"]["data"]["evaluation_file"]
    assert isinstance(record, dict), f"evaluation_file is {record!r}, not a file record"
    assert record["sha256"] == sha256(data.eval)


def test_json_summary_of_an_int8_export(dynamic_int8, data: Data) -> None:
    out, manifest, result = dynamic_int8
    summary = json.loads(result.stdout)
    assert summary["passed"] is True
    assert summary["artifact"] == str(out)
    assert summary["precision"] == "int8-dynamic"
    accuracy = summary["accuracy"]
    assert accuracy["metric"] == "cosine"
    assert accuracy["samples"] == len(data.eval_lines)
    assert accuracy["cosine"] == manifest["accuracy"]["cosine"]
    assert accuracy["misses"] == []
    assert [w["name"] for w in accuracy["worst"]] == [
        w["name"] for w in manifest["accuracy"]["worst"]
    ]
    assert "candidates" not in accuracy  # no auto search
    assert result.stderr == ""  # --json: no progress


# --------------------------------------------------------------------------- Python API


def test_api_int8_static_holds_back_part_of_the_calibration_file(
    tmp_path: Path, tiny_bert_dir: Path, data: Data
) -> None:
    out = tmp_path / "api-int8"
    options = PrecisionOptions(precision="int8-static", calibration=data.calib, calibration_size=8)
    result = modelkiln.export(tiny_bert_dir, out, precision=options)
    manifest = result.manifest.to_json()
    assert result.path == out and manifest == models.read_manifest(out)
    assert result.manifest.precision == manifest["precision"] == "int8-static"
    origin = manifest["accuracy"]["data"]
    assert origin["split"]["method"] == "held back from --calibration"
    assert origin["split"]["selection"] == "evenly spaced"
    counts = origin["counts"]
    assert counts["calibration"] == 8
    assert counts["evaluation"] >= 1
    assert counts["evaluation"] + counts["calibration_available"] == data.calib_unique
    assert manifest["backend"]["quantization"]["calibration"]["samples"] == 8
    assert manifest["accuracy"]["samples"] == counts["evaluation"]
    check_worst_names(manifest["accuracy"], data.calib_lines)


def test_api_fp16_with_eval_data_is_measured_without_a_floor(
    tmp_path: Path, tiny_bert_dir: Path, data: Data
) -> None:
    out = tmp_path / "api-fp16"
    options = PrecisionOptions(precision="fp16", evaluation=data.eval)
    (result,) = export_targets(tiny_bert_dir, [(out, "cpu")], precision=options)
    manifest = result.manifest.to_json()
    assert manifest["precision"] == "fp16"
    accuracy = manifest["accuracy"]
    assert accuracy["samples"] == len(data.eval_lines)
    assert accuracy["cosine"]["min"] > 0.99
    assert accuracy["budget"]["source"] is None and accuracy["misses"] == []
    assert "tolerance_source" not in manifest["validation"]  # fp16 keeps the task tolerance
    assert run_kiln("validate", out).exit_code == 0


def test_api_refuses_static_int8_without_calibration(
    tmp_path: Path, tiny_bert_dir: Path, data: Data, no_tracing: None
) -> None:
    out = tmp_path / "out" / "api"
    options = PrecisionOptions(precision="int8-static", evaluation=data.eval)
    with pytest.raises(modelkiln.UserInputError, match="random"):
        modelkiln.export(tiny_bert_dir, out, precision=options)
    with pytest.raises(modelkiln.UserInputError, match=r"min_cosine .*\(0, 1\]"):
        PrecisionOptions(budget=Budget(min_cosine=1.5))
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- user errors


def _bad(tmp: Path, data: Data, name: str) -> Path:
    if name == "missing":
        return tmp / "no-such.txt"
    if name == "empty":
        path = tmp / "empty.txt"
        path.write_text("")
        return path
    if name == "folder":
        path = tmp / "texts"
        path.mkdir()
        return path
    path = tmp / "texts.csv"
    path.write_text("the cat\n")
    return path


REFUSED_BEFORE_TRACING = {
    "int8-static with --eval but no --calibration": (
        ["--precision", "int8-static", "--eval", "{eval}"],
        ["--calibration", "random"],
    ),
    "int8-static with no data at all": (
        ["--precision", "int8-static"],
        ["--calibration", "random"],
    ),
    "int8-dynamic without data": (["--precision", "int8-dynamic"], ["--eval"]),
    "auto without a budget": (
        ["--precision", "auto", "--calibration", "{calib}"],
        ["--precision auto", "--min-cosine"],
    ),
    "keep-best without a budget": (
        ["--precision", "int8-dynamic", "--eval", "{eval}", "--keep-best"],
        ["--keep-best"],
    ),
    "keep-best with auto but no budget": (
        ["--precision", "auto", "--calibration", "{calib}", "--keep-best"],
        ["--keep-best"],
    ),
    "calibration file missing": (
        ["--precision", "int8-static", "--calibration", "{missing}"],
        ["--calibration", "no-such.txt", "does not exist"],
    ),
    "calibration file empty": (
        ["--precision", "int8-static", "--calibration", "{empty}"],
        ["--calibration", "empty.txt", "empty"],
    ),
    "calibration is a folder": (
        ["--precision", "int8-static", "--calibration", "{folder}"],
        ["--calibration", "texts", "folder"],
    ),
    "calibration of an unread format": (
        ["--precision", "int8-static", "--calibration", "{csv}"],
        ["--calibration", "texts.csv", ".csv"],
    ),
    "eval file missing": (
        ["--precision", "int8-dynamic", "--eval", "{missing}"],
        ["--eval", "no-such.txt"],
    ),
    "min cosine above 1": (
        ["--precision", "int8-dynamic", "--eval", "{eval}", "--min-cosine", "1.5"],
        ["--min-cosine", "1.5", "(0, 1]"],
    ),
    "top-1 agreement of 0": (
        ["--precision", "int8-dynamic", "--eval", "{eval}", "--min-top1-agreement", "0"],
        ["--min-top1-agreement", "(0, 1]"],
    ),
    "calibration size 0": (
        ["--precision", "int8-static", "--calibration", "{calib}", "--calibration-size", "0"],
        ["--calibration-size"],
    ),
    "no-validate with a quantized precision": (
        ["--precision", "int8-dynamic", "--eval", "{eval}", "--no-validate"],
        ["--no-validate"],
    ),
    "a precision the backend does not build": (
        ["--precision", "bf16", "--eval", "{eval}"],
        ["bf16", "onnxruntime"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSED_BEFORE_TRACING))
def test_refused_before_tracing(
    case: str, tmp_path: Path, tiny_bert_dir: Path, data: Data, no_tracing: None
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    paths = {k: str(_bad(inputs, data, k)) for k in ("missing", "empty", "folder", "csv")}
    paths |= {"calib": str(data.calib), "eval": str(data.eval)}
    args, mentions = REFUSED_BEFORE_TRACING[case]
    out = tmp_path / "out" / "artifact"
    result = export_cli(tiny_bert_dir, "-o", out, *[a.format(**paths) for a in args])
    assert_one_line_error(result, *mentions)
    assert result.stdout == ""
    assert not (tmp_path / "out").exists(), "a refused export left something behind"


def test_top1_budget_on_an_embedding_model_is_refused(
    tmp_path: Path, tiny_bert_dir: Path, data: Data
) -> None:
    out = tmp_path / "out" / "artifact"
    result = export_cli(
        tiny_bert_dir,
        "-o",
        out,
        "-q",
        "--precision",
        "int8-dynamic",
        "--eval",
        data.eval,
        "--min-top1-agreement",
        "0.9",
    )
    assert_one_line_error(result, "--min-top1-agreement", "feature-extraction", "--min-cosine")
    assert not (tmp_path / "out").exists()


def test_top1_budget_on_an_embedding_model_is_refused_at_fp32(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    out = tmp_path / "out" / "artifact"
    result = export_cli(tiny_bert_dir, "-o", out, "-q", "--min-top1-agreement", "0.9")
    assert_one_line_error(result, "--min-top1-agreement")


def test_texts_for_an_image_model_are_refused(
    tmp_path: Path, tiny_vit_dir: Path, data: Data
) -> None:
    out = tmp_path / "out" / "vit"
    result = export_cli(
        tiny_vit_dir, "-o", out, "-q", "--precision", "int8-dynamic", "--eval", data.eval
    )
    assert_one_line_error(result, "--eval", "eval.txt", "pixel_values", ".npz")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- auto (onnxruntime)


@pytest.fixture(scope="module")
def auto_cpu(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, data: Data):
    out = tmp_path_factory.mktemp("auto") / "bert-auto"
    mp = shifted({"fp32": SLOW})  # see the module docstring
    try:
        result = export_cli(
            tiny_bert_dir,
            "-o",
            out,
            "--target",
            "cpu",
            "--precision",
            "auto",
            "--min-cosine",
            "0.9",
            "--calibration",
            data.calib,
        )
    finally:
        mp.undo()
    assert result.exit_code == 0, result.stderr
    return out, models.read_manifest(out), result


def check_search(manifest: dict[str, Any], precisions: tuple[str, ...], budget: float) -> dict:
    accuracy = manifest["accuracy"]
    search = accuracy["search"]
    rows = search["candidates"]
    assert [r["precision"] for r in rows] == list(precisions)
    assert search["budget"]["min_cosine"] == budget
    for row in rows:
        assert row["error"] is None, row
        assert row["latency_ms"] > 0 and row["size_bytes"] > 0
        assert row["accuracy"]["metric"] == "cosine"
        assert row["accuracy"]["samples"] == accuracy["samples"]
        assert row["passed"] == (row["accuracy"]["cosine"]["min"] >= budget) == (not row["misses"])
    passing = [r for r in rows if r["passed"]]
    fastest = min(passing, key=lambda r: r["latency_ms"])
    assert search["chosen"] == fastest["label"]
    assert manifest["precision"] == fastest["precision"]
    assert accuracy["cosine"] == fastest["accuracy"]["cosine"]
    assert accuracy["budget"] == {
        "min_cosine": budget,
        "min_top1_agreement": None,
        "source": "command line",
    }
    assert accuracy["misses"] == []
    return fastest


def test_auto_on_cpu_tries_every_precision_and_keeps_the_fastest_passing(
    auto_cpu, data: Data
) -> None:
    out, manifest, result = auto_cpu
    chosen = check_search(manifest, ORT_PRECISIONS, 0.9)
    assert chosen["precision"] != "fp32"  # shifted out of the race
    assert manifest["target"]["precision"] == chosen["precision"]
    if is_quantized(chosen["precision"]):
        assert manifest["backend"]["quantization"]["precision"] == chosen["precision"]
    origin = manifest["accuracy"]["data"]
    assert origin["calibration_file"]["sha256"] == sha256(data.calib)
    assert origin["split"]["method"] == "held back from --calibration"
    assert manifest["accuracy"]["samples"] == origin["counts"]["evaluation"]
    table = [line.split()[0] for line in result.stderr.splitlines() if line.strip()]
    for precision in ORT_PRECISIONS:
        assert precision in table
    assert leftovers(out) == [], "candidate folders were left next to the artifact"
    assert run_kiln("validate", out).exit_code == 0


def test_auto_choosing_fp32_still_records_the_search(
    tmp_path: Path, tiny_bert_dir: Path, data: Data
) -> None:
    out = tmp_path / "auto-fp32"
    mp = shifted({p: SLOW for p in ORT_PRECISIONS if p != "fp32"})
    try:
        result = export_cli(
            tiny_bert_dir,
            "-o",
            out,
            "-q",
            "--precision",
            "auto",
            "--min-cosine",
            "0.9",
            "--calibration",
            data.calib,
        )
    finally:
        mp.undo()
    assert result.exit_code == 0, result.stderr
    manifest = models.read_manifest(out)
    assert manifest["precision"] == "fp32"
    assert leftovers(out) == []
    assert "accuracy" in manifest, "no accuracy section: the search table is gone"
    check_search(manifest, ORT_PRECISIONS, 0.9)


# --------------------------------------------------------------------------- unmeetable budget
# fp32 matches PyTorch to a cosine that rounds to 1.0, so no budget excludes it honestly.
# A target file restricting the candidates to int8-dynamic, whose int8 embedding table never
# gives cosine 1.0 even with every MatMul kept float, makes --min-cosine 1.0 unmeetable.

ONLY_INT8 = 'name = "int8-only"\nbackend = "onnxruntime"\ncandidates = ["int8-dynamic"]\n'
# int4 weight compression has no per-layer activation quantizers to keep float: a budget of
# min cosine 1.0 is out of its reach.
ONLY_INT4 = 'name = "int4-only"\nbackend = "onnxruntime"\ncandidates = ["int4-weights"]\n'


@pytest.fixture(scope="module")
def only_int8(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("targets") / "int8-only.toml"
    path.write_text(ONLY_INT8)
    return path


@pytest.fixture(scope="module")
def only_int4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("targets") / "int4-only.toml"
    path.write_text(ONLY_INT4)
    return path


def closest_label(rows: list[dict[str, Any]]) -> str:
    measured = [r for r in rows if r["accuracy"]]
    return max(measured, key=lambda r: r["accuracy"]["cosine"]["min"])["label"]


def auto_export(
    tiny_bert_dir: Path, out: Path, target: Path, data: Data, *extra: str, min_cosine: str = "1.0"
):
    return export_cli(
        tiny_bert_dir,
        "-o",
        out,
        "--target",
        target,
        "--precision",
        "auto",
        "--min-cosine",
        min_cosine,
        "--eval",
        data.eval,
        *extra,
        "--json",
    )


@pytest.fixture(scope="module")
def unmeetable(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, data, only_int4):
    out = tmp_path_factory.mktemp("unmeetable") / "out" / "bert"
    return out, auto_export(tiny_bert_dir, out, only_int4, data)


def test_unmeetable_budget_fails_naming_the_closest(unmeetable) -> None:
    out, result = unmeetable
    assert result.exit_code == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is False
    rows = report["validation"]["candidates"]
    assert [r["label"] for r in rows] == ["int4-weights"]  # not mixable: no mixed candidate
    assert all(not r["passed"] for r in rows)
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1
    assert "meets the budget" in error[0] and "min cosine 1.0" in error[0]
    assert f"closest: {closest_label(rows)} (" in error[0]
    assert "--keep-best" in error[0]
    failures = [line.strip() for line in result.stderr.splitlines() if "✗" in line]
    assert len(failures) == len(rows)
    assert not out.parent.exists() or list(out.parent.iterdir()) == [], "something was written"


def test_budget_misses_show_why_they_miss(unmeetable) -> None:
    _, result = unmeetable
    rows = json.loads(result.stdout)["validation"]["candidates"]
    for row in rows:
        for miss in row["misses"]:
            found = re.search(r"([0-9.]+) < ([0-9.]+)", miss)
            assert found, miss
            measured, budget = float(found[1]), float(found[2])
            assert measured < budget, miss


def test_mixed_precision_keeps_the_sensitive_layers_float(
    tmp_path: Path, tiny_bert_dir: Path, data: Data, only_int8: Path, dynamic_int8
) -> None:
    """A budget int8-dynamic alone misses (half-way from its min cosine to 1.0: how far it
    is depends on the CPU's int8 kernels, e.g. AVX2's saturating u8xs8 pair sums against
    VNNI); keeping its most sensitive layers (the embedding tables count: int8-dynamic
    quantizes them too) float until it passes."""
    alone = dynamic_int8[1]["accuracy"]["cosine"]["min"]
    assert alone < 1.0
    budget = f"{1.0 - (1.0 - alone) / 2:.9f}"
    out = tmp_path / "out" / "bert"
    result = auto_export(tiny_bert_dir, out, only_int8, data, min_cosine=budget)
    assert result.exit_code == 0, result.stderr
    manifest = models.read_manifest(out)
    search = manifest["accuracy"]["search"]
    rows = search["candidates"]
    assert rows[0]["label"] == "int8-dynamic" and not rows[0]["passed"]
    assert len(rows) > 1, "no mixed-precision candidate was tried"
    assert all(r["precision"] == "int8-dynamic" and r["kept_float"] for r in rows[1:])
    sizes = [len(r["kept_float"]) for r in rows[1:]]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)  # more each step
    chosen = next(r for r in rows if r["label"] == search["chosen"])
    assert chosen is rows[-1] and chosen["passed"] and chosen["kept_float"]
    assert manifest["backend"]["quantization"]["kept_fp32"] == sorted(chosen["kept_float"])
    assert manifest["accuracy"]["misses"] == [] and "kept_best" not in manifest["accuracy"]
    assert run_kiln("validate", out).exit_code == 0


@pytest.fixture(scope="module")
def keep_best(tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path, data, only_int4):
    out = tmp_path_factory.mktemp("keep-best") / "bert"
    result = auto_export(tiny_bert_dir, out, only_int4, data, "--keep-best")
    assert result.exit_code == 0, result.stderr
    return out, models.read_manifest(out), result


def test_keep_best_writes_the_closest(keep_best) -> None:
    out, manifest, _ = keep_best
    accuracy = manifest["accuracy"]
    search = accuracy["search"]
    rows = search["candidates"]
    assert all(not r["passed"] for r in rows)
    closest = next(r for r in rows if r["label"] == closest_label(rows))
    assert search["chosen"] == closest["label"] and search["kept_best"] is True
    assert manifest["precision"] == closest["precision"] == "int4-weights"
    kept = manifest["backend"]["quantization"]["kept_fp32"]
    assert kept == sorted(closest["kept_float"])
    assert accuracy["cosine"] == closest["accuracy"]["cosine"]
    assert accuracy["kept_best"] is True
    assert accuracy["missed"] == closest["misses"] and accuracy["missed"]
    assert accuracy["budget"]["min_cosine"] == 1.0
    assert leftovers(out) == []
    assert run_kiln("validate", out).exit_code == 0
    shown = run_kiln("inspect", out)
    assert shown.exit_code == 0
    assert f"{closest['label']}: " in shown.stdout and "chosen (--keep-best)" in shown.stdout


def test_keep_best_json_summary_reports_the_miss(keep_best) -> None:
    _, manifest, result = keep_best
    summary = json.loads(result.stdout)["accuracy"]
    assert summary["chosen"] == manifest["accuracy"]["search"]["chosen"]
    assert summary.get("missed") or summary.get("kept_best") or summary["misses"]


# --------------------------------------------------------------------------- openvino


@pytest.fixture(scope="module")
def openvino_ready() -> None:
    pytest.importorskip("openvino")
    pytest.importorskip("nncf")


def test_openvino_int8_weights(openvino_ready, tmp_path: Path, tiny_bert_dir: Path, data) -> None:
    out = tmp_path / "bert-ov-int8"
    result = export_cli(
        tiny_bert_dir,
        "-o",
        out,
        "-q",
        "--target",
        "openvino-cpu",
        "--precision",
        "int8-weights",
        "--eval",
        data.eval,
    )
    assert result.exit_code == 0, result.stderr
    manifest = models.read_manifest(out)
    assert manifest["precision"] == "int8-weights"
    record = manifest["backend"]["quantization"]
    assert record["tool"].startswith("nncf") and record["method"] == "nncf.compress_weights"
    assert manifest["backend"]["inference_precision_hint"] == "f32"
    accuracy = manifest["accuracy"]
    assert accuracy["samples"] == len(data.eval_lines) and accuracy["misses"] == []
    assert accuracy["budget"]["source"] == "default floor"
    check_worst_names(accuracy, data.eval_lines)
    assert manifest["validation"]["tolerance_source"]
    validated = run_kiln("validate", out)
    assert validated.exit_code == 0, validated.stderr
    assert leftovers(out) == []


def test_openvino_auto_search(openvino_ready, tmp_path: Path, tiny_bert_dir: Path, data) -> None:
    out = tmp_path / "bert-ov-auto"
    mp = shifted({"fp32": SLOW})
    try:
        result = export_cli(
            tiny_bert_dir,
            "-o",
            out,
            "-q",
            "--target",
            "openvino-cpu",
            "--precision",
            "auto",
            "--min-cosine",
            "0.9",
            "--calibration",
            data.calib,
        )
    finally:
        mp.undo()
    assert result.exit_code == 0, result.stderr
    manifest = models.read_manifest(out)
    assert manifest["backend"]["name"] == "openvino"
    chosen = check_search(manifest, OV_PRECISIONS, 0.9)
    assert chosen["precision"] != "fp32"
    assert leftovers(out) == []
    assert run_kiln("validate", out).exit_code == 0


def test_a_calibrated_export_leaves_no_temporary_folder(
    tiny_bert_dir: Path, tmp_path: Path, data: Data
) -> None:
    """The `kiln` process ends with os._exit (torch's teardown is slow): the exit handlers
    that remove temporary folders (ONNX Runtime's calibration scratch) must still run."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    args = ["export", str(tiny_bert_dir), "-o", str(tmp_path / "out"), "--no-cache"]
    args += ["--precision", "int8-static", "--calibration", str(data.calib)]
    done = subprocess.run(
        [sys.executable, "-m", "modelkiln.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "kiln.json").is_file()
    # `.ses` is onnxruntime's own: its native library writes $TMPDIR/.ses on import
    assert sorted(p.name for p in scratch.iterdir() if p.name != ".ses") == []
