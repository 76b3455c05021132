"""Validation: at export time (a divergent artifact never appears) and `kiln validate` later."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import models
import pytest
from conftest import Exported, copy_artifact, run_kiln

import modelkiln

# --------------------------------------------------------------------------- export-time failure
# The noisy factory's module draws random numbers (randn_like, dropout in training mode): ONNX
# Runtime's draws differ from torch's, so "noisy" and "dropped" diverge on every shape, for
# real, while "clean" matches.

FAILING_OUTPUTS = ("noisy", "dropped")


@pytest.fixture(scope="module")
def noisy_factory(tmp_path_factory) -> str:
    return models.write_noisy_factory(tmp_path_factory.mktemp("noisy"))


def test_divergent_export_raises_validation_error_listing_every_failure(
    noisy_factory: str, tmp_path: Path
) -> None:
    out = tmp_path / "out" / "noisy"
    with pytest.raises(modelkiln.ValidationError) as info:
        modelkiln.export(noisy_factory, out)
    report = info.value.report
    assert report["passed"] is False
    assert len(report["checks"]) == 2
    failures = report["failures"]
    # Every failing output at every shape is listed, not just the first one found.
    assert len(failures) == len(FAILING_OUTPUTS) * len(report["checks"])
    for name in FAILING_OUTPUTS:
        assert sum(f.startswith(f"{name} ") for f in failures) == 2, failures
    assert not any(f.startswith("clean") for f in failures)
    for check in report["checks"]:
        assert check["outputs"]["clean"]["passed"] is True
        for name in FAILING_OUTPUTS:
            assert check["outputs"][name]["passed"] is False
    assert info.value.exit_code == 1
    assert not out.exists()
    assert not (tmp_path / "out").exists()


def test_divergent_export_through_cli_exits_1_and_leaves_nothing(
    noisy_factory: str, tmp_path: Path
) -> None:
    out = tmp_path / "noisy-artifact"
    result = run_kiln("export", noisy_factory, "-o", out, "-q")
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error:")
    for name in FAILING_OUTPUTS:
        assert result.stderr.count(f"✗ {name} ") == 2, result.stderr
    assert "✗ clean" not in result.stderr
    assert list(tmp_path.iterdir()) == []  # no artifact, no staging folder


def test_divergent_export_with_force_keeps_the_previous_artifact(
    noisy_factory: str, tmp_path: Path
) -> None:
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "kiln.json").write_text('{"previous": true}')
    result = run_kiln("export", noisy_factory, "-o", out, "--force", "--json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["passed"] is False
    assert len(summary["validation"]["failures"]) == 4
    assert json.loads((out / "kiln.json").read_text()) == {"previous": True}
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]


# --------------------------------------------------------------------------- kiln validate


def test_validate_passes_on_a_fresh_artifact(tiny_bert_artifact: Exported) -> None:
    result = run_kiln("validate", tiny_bert_artifact.path)
    assert result.exit_code == 0, result.stderr
    assert "passed" in result.stderr
    assert "FAILED" not in result.stderr


def test_validate_json_report(tiny_bert_artifact: Exported) -> None:
    result = run_kiln("validate", tiny_bert_artifact.path, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] is True
    checks = report["checks"]
    assert checks["files"]["passed"] is True
    assert checks["files"]["count"] == len(tiny_bert_artifact.manifest["files"])
    assert checks["load"]["passed"] is True
    golden = checks["golden"]
    assert golden["passed"] is True
    assert len(golden["checks"]) == 2  # both exported shapes replayed
    assert golden["max_abs_diff"] <= models.ATOL


def test_flipped_byte_in_model_fails_and_names_the_file(
    tiny_bert_artifact: Exported, tmp_path: Path
) -> None:
    copy = copy_artifact(tiny_bert_artifact.path, tmp_path / "tampered")
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    result = run_kiln("validate", copy)
    assert result.exit_code == 1
    assert "model.onnx" in result.stderr
    assert "FAILED" in result.stderr
    report = json.loads(run_kiln("validate", copy, "--json").stdout)
    assert report["passed"] is False
    assert any("model.onnx" in p for p in report["checks"]["files"]["problems"])


def test_missing_and_unlisted_files_fail(tiny_bert_artifact: Exported, tmp_path: Path) -> None:
    copy = copy_artifact(tiny_bert_artifact.path, tmp_path / "changed")
    (copy / "golden.npz").unlink()
    (copy / "extra.bin").write_bytes(b"smuggled")
    result = run_kiln("validate", copy, "--json")
    assert result.exit_code == 1
    problems = json.loads(result.stdout)["checks"]["files"]["problems"]
    assert any("golden.npz" in p and "missing" in p for p in problems), problems
    assert any("extra.bin" in p for p in problems), problems


def test_junit_report_is_valid_xml_with_testcases(
    tiny_bert_artifact: Exported, tmp_path: Path
) -> None:
    junit = tmp_path / "report.xml"
    result = run_kiln("validate", tiny_bert_artifact.path, "--junit", junit)
    assert result.exit_code == 0, result.stderr
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite"
    cases = suite.findall("testcase")
    names = [c.get("name") for c in cases]
    assert "files" in names and "load" in names
    assert sum(n.startswith("golden") for n in names) == 2
    assert int(suite.get("tests")) == len(cases)
    assert suite.get("failures") == "0"
    assert not suite.findall(".//failure")


def test_junit_report_records_failures(tiny_bert_artifact: Exported, tmp_path: Path) -> None:
    copy = copy_artifact(tiny_bert_artifact.path, tmp_path / "tampered")
    with open(copy / "model.onnx", "ab") as f:
        f.write(b"\x00")
    junit = tmp_path / "report.xml"
    result = run_kiln("validate", copy, "--junit", junit)
    assert result.exit_code == 1
    suite = ET.parse(junit).getroot()
    failures = suite.findall(".//failure")
    assert failures and int(suite.get("failures")) == len(failures)
    assert any("model.onnx" in (f.get("message") or "") for f in failures)


def test_reference_rerun_passes(tiny_bert_artifact: Exported) -> None:
    result = run_kiln(
        "validate", tiny_bert_artifact.path, "--reference", tiny_bert_artifact.source, "--json"
    )
    assert result.exit_code == 0, result.stderr
    reference = json.loads(result.stdout)["checks"]["reference"]
    assert reference["passed"] is True
    exported = [c["dims"] for c in tiny_bert_artifact.manifest["validation"]["checks"]]
    assert len(reference["checks"]) == 2
    for check in reference["checks"]:
        assert check["dims"] not in exported  # fresh shapes, not the export's
        assert check["outputs"]["last_hidden_state"]["passed"] is True


def test_reference_of_another_model_fails(tiny_bert_artifact: Exported, tmp_path: Path) -> None:
    import torch

    # Same architecture and config, other weights: the artifact no longer matches.
    other = models.build_tiny_bert(tmp_path / "other", tokenizer=False)
    from transformers import BertModel

    model = BertModel.from_pretrained(str(other))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05)
    model.save_pretrained(str(other), safe_serialization=True)
    result = run_kiln("validate", tiny_bert_artifact.path, "--reference", other)
    assert result.exit_code == 1
    assert "reference" in result.stderr
    assert "FAILED" in result.stderr


def test_reference_rerun_for_a_module_factory(cnn_artifact: Exported) -> None:
    result = run_kiln("validate", cnn_artifact.path, "--reference", cnn_artifact.source, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["checks"]["reference"]["passed"] is True


def test_validate_python_api_matches_cli(tiny_bert_artifact: Exported) -> None:
    from modelkiln.verify import verify_artifact

    report = verify_artifact(tiny_bert_artifact.path)
    assert report["passed"] is True
    assert set(report["checks"]) == {"files", "load", "golden"}


def test_golden_replay_catches_a_rehashed_weight_change(
    tiny_bert_artifact: Exported, tmp_path: Path
) -> None:
    """Someone edits a weight and updates the manifest hashes: the golden outputs still catch it."""
    import hashlib

    import onnx
    from onnx import numpy_helper

    copy = copy_artifact(tiny_bert_artifact.path, tmp_path / "edited")
    proto = onnx.load(str(copy / "model.onnx"))
    weight = max(proto.graph.initializer, key=lambda t: len(t.raw_data) if t.data_type == 1 else 0)
    array = numpy_helper.to_array(weight).copy()
    array *= 1.5  # not a constant shift: a LayerNorm right after would cancel that
    weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    onnx.save(proto, str(copy / "model.onnx"))
    manifest = json.loads((copy / "kiln.json").read_text())
    data = (copy / "model.onnx").read_bytes()
    manifest["files"]["model.onnx"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    (copy / "kiln.json").write_text(json.dumps(manifest))

    result = run_kiln("validate", copy, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["checks"]["files"]["passed"] is True
    assert report["checks"]["golden"]["passed"] is False
    assert len(report["checks"]["golden"]["failures"]) == 2


def test_reference_rerun_for_an_onnx_source(mlp_artifact: Exported) -> None:
    result = run_kiln("validate", mlp_artifact.path, "--reference", mlp_artifact.source, "--json")
    assert result.exit_code == 0, result.stderr
    reference = json.loads(result.stdout)["checks"]["reference"]
    assert reference["passed"] is True
    assert [c["dims"]["batch"] for c in reference["checks"]] == [2, 4]


def test_junit_into_a_missing_folder_creates_it(mlp_artifact: Exported, tmp_path: Path) -> None:
    junit = tmp_path / "reports" / "ci" / "kiln.xml"
    result = run_kiln("validate", mlp_artifact.path, "--junit", junit)
    assert result.exit_code == 0, (result.stderr, result.exception)
    suite = ET.parse(junit).getroot()
    assert suite.tag == "testsuite" and suite.get("failures") == "0"


def test_junit_path_under_a_file_is_a_user_error(mlp_artifact: Exported, tmp_path: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    result = run_kiln("validate", mlp_artifact.path, "--junit", blocker / "kiln.xml")
    assert result.exit_code == 2, (result.stderr, result.exception)
    assert result.stderr.startswith("error:") and "Traceback" not in result.stderr
    assert blocker.read_text() == "x"
