"""Targets' [shapes] ranges: validation inside them, feeds refused outside, bounded OpenVINO IR,
refusals before tracing, and the build cache keeping reference samples per set of shapes."""

from __future__ import annotations

import json
from pathlib import Path

import models
import numpy as np
import pytest
from conftest import Exported, run_kiln

import modelkiln
from modelkiln.errors import FeedError
from modelkiln.pipeline import export_many

ORT_RANGE = """\
name = "cpu-short"
backend = "onnxruntime"

[shapes.sequence]
min = 4
opt = 8
max = 12
"""

OV_RANGE = """\
name = "ov-short"
backend = "openvino"

[shapes.batch]
min = 1
opt = 1
max = 1

[shapes.sequence]
min = 1
opt = 8
max = 10
"""


def write_target(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.toml"
    path.write_text(body)
    return path


def one_error_line(result, *mentions: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    for mention in mentions:
        assert mention in errors[0], errors[0]
    return errors[0]


@pytest.fixture(scope="module")
def ranged(tmp_path_factory, tiny_bert_dir) -> Exported:
    """Tiny BERT for a user target whose sequence range (4..12) excludes the task's default
    validation shapes (16 and 37 tokens)."""
    root = tmp_path_factory.mktemp("ranged")
    target = write_target(root, "cpu-short", ORT_RANGE)
    out = root / "tiny-bert-short"
    result = modelkiln.export(tiny_bert_dir, out, target=str(target), cache_dir=root / "cache")
    return Exported(tiny_bert_dir, out, models.read_manifest(out), result)


def test_a_range_target_validates_inside_its_range(ranged: Exported) -> None:
    manifest = ranged.manifest
    assert manifest["target"]["shapes"] == {"sequence": {"min": 4, "opt": 8, "max": 12}}
    validation = manifest["validation"]
    assert validation["passed"] is True
    sizes = [check["dims"]["sequence"] for check in validation["checks"]]
    assert all(4 <= s <= 12 for s in sizes) and len(set(sizes)) == 2
    assert [check["dims"]["batch"] for check in validation["checks"]] == [1, 3]
    assert run_kiln("validate", ranged.path).exit_code == 0


def test_validate_reference_runs_inside_the_range(ranged: Exported) -> None:
    result = run_kiln("validate", ranged.path, "--reference", ranged.source, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)["checks"]["reference"]
    sizes = [check["dims"]["sequence"] for check in report["checks"]]
    assert report["passed"] and all(4 <= s <= 12 for s in sizes)


def test_feeds_outside_the_range_are_refused_in_one_line(ranged: Exported) -> None:
    session = modelkiln.load(ranged.path)
    assert session.shape_ranges == {"sequence": (4, 12)}
    models.check_tiny_bert(ranged.source, session, batch=2, sequence=11)  # inside: runs right
    for sequence in (3, 13):
        feeds = models.text_feeds(list(session.inputs), 2, sequence)
        with pytest.raises(FeedError) as info:
            session.run(feeds)
        message = str(info.value)
        assert "\n" not in message
        assert "input 'input_ids'" in message and f"sequence {sequence}" in message
        assert "from 4 to 12" in message


def test_one_trace_for_overlapping_ranges_and_bounded_openvino_ir(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    ov = pytest.importorskip("openvino")
    targets = [
        str(write_target(tmp_path, "cpu-short", ORT_RANGE)),
        str(write_target(tmp_path, "ov-short", OV_RANGE)),
    ]
    results = export_many(tiny_bert_dir, tmp_path / "out", targets, cache_dir=tmp_path / "c")
    cpu, ovr = (r.manifest for r in results)
    # Shapes every target accepts: batch 1, sequence 4..10; the defaults (16, 37) are above.
    expected = [{"batch": 1, "sequence": 7}, {"batch": 1, "sequence": 10}]
    for manifest in (cpu, ovr):
        assert manifest.validation is not None and manifest.validation.passed is True
        assert [c["dims"] for c in manifest.validation.checks] == expected
    shapes = ovr.backend.get("input_shapes")
    assert shapes == {name: "[1,1..10]" for name in ovr.inputs}
    model = ov.Core().read_model(str(results[1].path / "model.xml"))
    for port in model.inputs:
        batch, sequence = port.get_partial_shape()
        assert batch.is_static and batch.get_length() == 1
        assert (sequence.get_min_length(), sequence.get_max_length()) == (1, 10)
    session = modelkiln.load(results[1].path, cache_dir=None)
    models.check_tiny_bert(tiny_bert_dir, session, batch=1, sequence=9)
    with pytest.raises(FeedError, match="has batch 2 .* takes batch from 1 to 1"):
        session.run(models.text_feeds(list(session.inputs), 2, 9))


def test_default_openvino_build_records_dynamic_inputs(tmp_path: Path, mlp_onnx: Path) -> None:
    pytest.importorskip("openvino")
    result = modelkiln.export(mlp_onnx, tmp_path / "mlp", target="openvino-cpu")
    assert result.manifest.backend.get("input_shapes") == {"x": f"[?,{models.MLP_IN}]"}


MARKED_FACTORY = """\
import pathlib
import torch


class Double(torch.nn.Module):
    def forward(self, *, x):
        return x * 2


def make():
    pathlib.Path(__file__).with_name("MADE").touch()
    return Double(), {"x": torch.ones(2, 4)}
"""


def test_disjoint_ranges_fail_before_any_work(tmp_path: Path) -> None:
    factory = tmp_path / "src" / "marked.py"
    factory.parent.mkdir()
    factory.write_text(MARKED_FACTORY)
    small = write_target(
        tmp_path, "small", 'backend = "onnxruntime"\n[shapes.batch]\nmin = 1\nopt = 1\nmax = 2\n'
    )
    large = write_target(
        tmp_path, "large", 'backend = "onnxruntime"\n[shapes.batch]\nmin = 3\nopt = 4\nmax = 8\n'
    )
    out = tmp_path / "out"
    result = run_kiln("export", f"{factory}:make", "-o", out, "--target", small, "--target", large)
    one_error_line(result, "no common batch size", "'small' 1..2", "'large' 3..8")
    assert not out.exists()
    assert not (factory.parent / "MADE").exists(), "the factory ran before the ranges were checked"


@pytest.mark.parametrize(
    ("shapes", "mentions"),
    [
        (
            "[shapes.seq]\nmin = 1\nopt = 2\nmax = 4\n",
            ("dimension(s) seq", "its dynamic dimensions: batch, sequence"),
        ),
        (
            "[shapes.sequence]\nmin = 200\nopt = 200\nmax = 300\n",
            ("sequence >= 200", "at most 128"),
        ),
    ],
    ids=["unknown-dim", "above-the-model-limit"],
)
def test_ranges_the_model_cannot_take_are_refused_before_tracing(
    tmp_path: Path, tiny_bert_dir: Path, shapes: str, mentions: tuple[str, ...]
) -> None:
    target = write_target(tmp_path, "odd", 'backend = "onnxruntime"\n' + shapes)
    out = tmp_path / "out" / "art"
    result = run_kiln("export", tiny_bert_dir, "-o", out, "--target", target, "--no-cache")
    one_error_line(result, *mentions)
    assert "tracing" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_the_cache_keeps_reference_samples_per_set_of_shapes(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    cache = tmp_path / "cache"
    short = write_target(tmp_path, "cpu-short", ORT_RANGE)
    roomy = write_target(
        tmp_path,
        "roomy",
        'backend = "onnxruntime"\n[shapes.sequence]\nmin = 1\nopt = 32\nmax = 64\n',
    )

    def export(name: str, *target: object) -> dict:
        args = ["export", tiny_bert_dir, "-o", tmp_path / name, "--cache-dir", cache, "--json"]
        result = run_kiln(*args, *target)
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    plain = export("plain")
    assert plain["cache"]["hit"] is False and "trace" in plain["times"]
    # Other shapes: the traced model is reused, only the reference runs again.
    first = export("short-1", "--target", short)
    assert first["cache"]["hit"] is False and first["cache"]["model_from"] == plain["cache"]["key"]
    assert "trace" not in first["times"] and "reference" in first["times"]
    again = export("short-2", "--target", short)
    assert again["cache"] == {"key": first["cache"]["key"], "hit": True}
    # Ranges that hold the default shapes share the plain entry; so does the default target.
    assert export("roomy", "--target", roomy)["cache"] == {
        "key": plain["cache"]["key"],
        "hit": True,
    }
    assert export("plain-2")["cache"] == {"key": plain["cache"]["key"], "hit": True}
    for name, lengths in (("plain-2", {16, 37}), ("short-2", {8, 12})):
        manifest = models.read_manifest(tmp_path / name)
        assert {c["dims"]["sequence"] for c in manifest["validation"]["checks"]} == lengths
        with np.load(tmp_path / name / "golden.npz") as golden:
            ids = {golden[k].shape[1] for k in golden.files if k.endswith("__in__input_ids")}
        assert ids == lengths
        assert run_kiln("validate", tmp_path / name).exit_code == 0


def _target(name: str, **ranges: tuple[int, int]):
    from modelkiln.targets import ShapeRange, Target

    shapes = {d: ShapeRange(lo, lo, hi) for d, (lo, hi) in ranges.items()}
    return Target(name=name, backend="onnxruntime", shapes=shapes)


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        ({}, [16, 37]),  # no range: the task's defaults
        ({"sequence": (1, 64)}, [16, 37]),  # the defaults fit
        ({"sequence": (20, 30)}, [20, 30]),  # one below, one above
        ({"sequence": (4, 12)}, [8, 12]),  # both above: kept apart
        ({"sequence": (40, 100)}, [40, 70]),  # both below: kept apart
        ({"sequence": (100, 500)}, [100, 114]),  # capped at the model's limit (128)
        ({"sequence": (9, 9)}, [9, 9]),  # static
    ],
)
def test_validation_shapes_inside_ranges(ranges: dict, expected: list[int]) -> None:
    from modelkiln.targets.shapes import validation_dims

    defaults = ({"batch": 1, "sequence": 16}, {"batch": 3, "sequence": 37})
    dims = validation_dims(
        defaults, ["batch", "sequence"], {"sequence": 128}, [_target("t", **ranges)]
    )
    assert [d["sequence"] for d in dims] == expected
    assert [d["batch"] for d in dims] == [1, 3]


def test_reduced_precision_data_is_truncated_to_the_targets_range(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    """Evaluation texts longer than the range would be refused by the artifact's sessions."""
    words = [w for w in models.WORDS if w.isalpha()]
    lines = [" ".join(words[(i + j) % len(words)] for j in range(3 + 2 * i)) for i in range(12)]
    calib = tmp_path / "calib.txt"
    calib.write_text("\n".join(lines) + "\n", encoding="utf-8")
    target = write_target(tmp_path, "cpu-short", ORT_RANGE)
    out = tmp_path / "short-int8"
    result = run_kiln(
        "export", tiny_bert_dir, "-o", out, "--target", target, "--precision", "int8-dynamic",
        "--calibration", calib, "--cache-dir", tmp_path / "cache",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    accuracy = models.read_manifest(out)["accuracy"]
    data = accuracy["data"]["calibration_file"]
    assert data["max_length"] == 12 and data["tokens"]["max"] == 12
    assert accuracy["samples"] >= 1 and accuracy["misses"] == []
