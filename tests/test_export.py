"""`kiln export` / `modelkiln.export`: the artifact folder, its manifest, and its numbers.

Every artifact is checked against an independent reference (transformers, torch or numpy run
directly by tests/models.py) on input shapes the export's own validation never used.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from importlib.metadata import version
from pathlib import Path

import models
import numpy as np
import onnx
import pytest
from conftest import Exported, run_kiln

import modelkiln
from modelkiln.targets import Target


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listed_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


# --------------------------------------------------------------------------- tiny BERT manifest


def test_manifest_identity_fields(tiny_bert_artifact: Exported) -> None:
    m = tiny_bert_artifact.manifest
    assert m["schema_version"] == 1
    assert m["name"] == "tiny-bert-cpu"
    assert m["task"] == "feature-extraction"
    assert m["precision"] == "fp32"
    assert m["opset"] >= 17
    # what the API returned is what it wrote
    assert m == tiny_bert_artifact.result.manifest.to_json()


def test_manifest_source_records_weights_sha256(tiny_bert_artifact: Exported) -> None:
    source = tiny_bert_artifact.manifest["source"]
    folder = tiny_bert_artifact.source
    assert source["kind"] == "hf"
    assert Path(source["path"]) == folder.resolve()
    assert source["model_type"] == "bert"
    assert [w["file"] for w in source["weights"]] == ["model.safetensors"]
    weights = source["weights"][0]
    assert weights["sha256"] == sha256(folder / "model.safetensors")
    assert weights["size"] == (folder / "model.safetensors").stat().st_size


def test_manifest_target_and_backend(tiny_bert_artifact: Exported) -> None:
    m = tiny_bert_artifact.manifest
    assert m["target"]["name"] == "cpu"
    assert m["target"]["backend"] == "onnxruntime"
    assert m["target"]["device"] == "cpu"
    assert m["target"]["precision"] == "fp32"
    assert m["backend"]["name"] == "onnxruntime"
    assert m["backend"]["files"] == {"model": "model.onnx"}
    assert (tiny_bert_artifact.path / "model.onnx").is_file()


def test_manifest_records_tool_versions(tiny_bert_artifact: Exported) -> None:
    versions = tiny_bert_artifact.manifest["versions"]
    for tool in ("torch", "onnx", "onnxruntime", "transformers", "modelkiln"):
        assert versions[tool] == version(tool), tool


def test_manifest_passes_have_stats(tiny_bert_artifact: Exported) -> None:
    shared = tiny_bert_artifact.manifest["passes"]
    assert len(shared) >= 3
    # The onnxruntime backend's own passes (its fusions) continue from the shared graph.
    passes = shared + tiny_bert_artifact.manifest["backend"]["passes"]
    for entry in passes:
        assert isinstance(entry["name"], str) and entry["name"]
        assert isinstance(entry["nodes_before"], int) and entry["nodes_before"] > 0
        assert isinstance(entry["nodes_after"], int) and entry["nodes_after"] > 0
        assert isinstance(entry["seconds"], (int, float)) and entry["seconds"] >= 0
    # The passes form one chain: each starts from the graph the previous one left.
    for prev, nxt in itertools.pairwise(passes):
        assert nxt["nodes_before"] == prev["nodes_after"], (prev, nxt)
    # The simplification does something on a real traced transformer.
    assert passes[-1]["nodes_after"] < passes[0]["nodes_before"]
    # ...and the last count is the graph that was saved.
    saved = onnx.load(str(tiny_bert_artifact.path / "model.onnx"))
    assert len(saved.graph.node) == passes[-1]["nodes_after"]


def test_traced_attention_is_in_textbook_form(tiny_bert_dir: Path, tmp_path: Path) -> None:
    """torch.export's SDPA decomposition is rewritten so backends can fuse it (see fusions.py);
    exported without ONNX Runtime's fusions, the artifact holds the shared graph."""
    plain = Target(name="plain", backend="onnxruntime", options={"ort_fusions": "off"})
    result = modelkiln.export(tiny_bert_dir, tmp_path / "plain", target=plain, use_cache=False)
    (entry,) = [p for p in result.manifest.passes if p.name == "canonical-attention"]
    assert entry.modified
    ops = [n.op_type for n in onnx.load(str(tmp_path / "plain" / "model.onnx")).graph.node]
    layers = models.bert_config().num_hidden_layers
    assert ops.count("Softmax") == layers
    assert "IsNaN" not in ops


def test_manifest_inputs_and_outputs(tiny_bert_artifact: Exported) -> None:
    m = tiny_bert_artifact.manifest
    values = {
        "input_ids": {
            "kind": "token_ids",
            "low": models.VOCAB_SIZE // 2,
            "high": models.VOCAB_SIZE,
        },
        "attention_mask": {"kind": "mask", "low": 0, "high": 2},
        "token_type_ids": {"kind": "token_types", "low": 0, "high": 2},
    }
    assert m["inputs"] == {
        name: {"dtype": "int64", "shape": ["batch", "sequence"], "values": values[name]}
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    assert m["outputs"] == {
        "last_hidden_state": {"dtype": "float32", "shape": ["batch", "sequence", models.HIDDEN]}
    }


def test_manifest_lists_every_file_with_hash_and_size(tiny_bert_artifact: Exported) -> None:
    root = tiny_bert_artifact.path
    files = tiny_bert_artifact.manifest["files"]
    assert set(files) == listed_files(root) - {"kiln.json"}
    assert {"model.onnx", "golden.npz"} <= set(files)
    for rel, entry in files.items():
        assert entry["sha256"] == sha256(root / rel), rel
        assert entry["size"] == (root / rel).stat().st_size, rel


def test_no_staging_folders_left_next_to_artifact(tiny_bert_artifact: Exported) -> None:
    siblings = [p.name for p in tiny_bert_artifact.path.parent.iterdir()]
    assert siblings == [tiny_bert_artifact.path.name]


def test_validation_summary_covers_two_shapes(tiny_bert_artifact: Exported) -> None:
    report = tiny_bert_artifact.manifest["validation"]
    assert report["passed"] is True
    assert report["failures"] == []
    assert report["reference"] == "pytorch"
    checks = report["checks"]
    assert len(checks) == 2
    assert checks[0]["dims"] != checks[1]["dims"]
    for check in checks:
        assert set(check["dims"]) == {"batch", "sequence"}
        result = check["outputs"]["last_hidden_state"]
        assert result["passed"] is True
        assert result["max_abs_diff"] <= report["tolerance"]["atol"]
    assert report["max_abs_diff"] <= report["tolerance"]["atol"]


def test_golden_npz_loads_without_pickle(tiny_bert_artifact: Exported) -> None:
    checks = tiny_bert_artifact.manifest["validation"]["checks"]
    inputs = set(tiny_bert_artifact.manifest["inputs"])
    with np.load(tiny_bert_artifact.path / "golden.npz", allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    assert arrays, "golden.npz is empty"
    assert all(a.dtype != object for a in arrays.values())
    # One set of inputs and reference outputs per validated shape, at that shape.
    session = modelkiln.load(tiny_bert_artifact.path)
    by_check: dict[str, dict[str, np.ndarray]] = {}
    for key, value in arrays.items():
        check, _, rest = key.partition("__")
        by_check.setdefault(check, {})[rest] = value
    assert len(by_check) == len(checks) == 2
    for dims, (check, values) in zip(
        (c["dims"] for c in checks), sorted(by_check.items()), strict=True
    ):
        feeds = {k.split("__", 1)[1]: v for k, v in values.items() if k.startswith("in__")}
        expected = values["out__last_hidden_state"]
        assert set(feeds) == inputs, check
        assert feeds["input_ids"].shape == (dims["batch"], dims["sequence"])
        assert expected.shape == (dims["batch"], dims["sequence"], models.HIDDEN)
        got = session.run(feeds)["last_hidden_state"]
        assert models.max_abs_diff(expected, got) <= models.ATOL


def test_tokenizer_files_are_copied(tiny_bert_artifact: Exported) -> None:
    root, source = tiny_bert_artifact.path, tiny_bert_artifact.source
    preprocessing = tiny_bert_artifact.manifest["preprocessing"]
    for name in ("tokenizer.json", "vocab.txt", "config.json"):
        assert name in preprocessing
        assert (root / name).read_bytes() == (source / name).read_bytes(), name
        assert name in tiny_bert_artifact.manifest["files"]


def test_tokenizer_in_artifact_drives_the_model(tiny_bert_artifact: Exported) -> None:
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tiny_bert_artifact.path / "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tok.encode_batch(["the cat sat on the mat.", "hello kiln fire!"])
    feeds = {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }
    assert feeds["input_ids"][0, 0] == models.TOKENIZER_VOCAB.index("[CLS]")
    out = modelkiln.load(tiny_bert_artifact.path).run(feeds)["last_hidden_state"]
    assert out.shape == (*feeds["input_ids"].shape, models.HIDDEN)
    assert np.isfinite(out).all()


def test_outputs_match_pytorch_on_a_new_shape(tiny_bert_artifact: Exported) -> None:
    session = modelkiln.load(tiny_bert_artifact.path)
    seen = {
        (c["dims"]["batch"], c["dims"]["sequence"])
        for c in tiny_bert_artifact.manifest["validation"]["checks"]
    }
    for batch, sequence in ((2, 11), (5, 3), (1, 40)):
        assert (batch, sequence) not in seen
        models.check_tiny_bert(tiny_bert_artifact.source, session, batch, sequence)


def test_export_result_reports_size_and_times(tiny_bert_artifact: Exported) -> None:
    result = tiny_bert_artifact.result
    assert result.path == tiny_bert_artifact.path
    assert result.size_bytes == sum(e.size for e in result.manifest.files.values())
    assert {"load", "trace", "passes", "build", "validate"} <= set(result.times)


# --------------------------------------------------------------------------- other sources/tasks


def test_text_classification_export(classifier_artifact: Exported) -> None:
    m = classifier_artifact.manifest
    assert m["task"] == "text-classification"
    assert m["outputs"] == {"logits": {"dtype": "float32", "shape": ["batch", models.NUM_LABELS]}}
    assert m["validation"]["passed"] is True
    assert m["preprocessing"] == ["config.json"]  # this checkpoint ships no tokenizer
    models.check_tiny_bert_classifier(
        classifier_artifact.source, modelkiln.load(classifier_artifact.path)
    )


def test_token_classification_export(tmp_path_factory) -> None:
    folder = models.build_tiny_bert_tagger(tmp_path_factory.mktemp("ckpt") / "tagger")
    out = tmp_path_factory.mktemp("artifacts") / "tagger-cpu"
    modelkiln.export(folder, out)  # task inferred from BertForTokenClassification
    m = models.read_manifest(out)
    assert m["task"] == "token-classification"
    assert m["outputs"] == {
        "logits": {"dtype": "float32", "shape": ["batch", "sequence", models.TOKEN_LABELS]}
    }
    assert m["validation"]["passed"] is True
    models.check_tiny_bert_tagger(folder, modelkiln.load(out))


def test_image_classification_vit_export(vit_artifact: Exported) -> None:
    m = vit_artifact.manifest
    assert m["task"] == "image-classification"  # inferred from config.json architectures
    assert m["inputs"] == {
        "pixel_values": {
            "dtype": "float32",
            "shape": ["batch", 3, models.IMAGE_SIZE, models.IMAGE_SIZE],
            "values": {"kind": "normal", "low": 0, "high": 2},
        }
    }
    assert m["outputs"] == {"logits": {"dtype": "float32", "shape": ["batch", models.VIT_LABELS]}}
    assert m["validation"]["passed"] is True
    models.check_tiny_vit(vit_artifact.source, modelkiln.load(vit_artifact.path))


def test_module_factory_export(cnn_artifact: Exported) -> None:
    summary = json.loads(cnn_artifact.result.stdout)
    assert summary["passed"] is True
    assert summary["task"] == "custom"
    assert Path(summary["artifact"]) == cnn_artifact.path
    m = cnn_artifact.manifest
    assert m["source"]["kind"] == "factory"
    assert m["source"]["path"] == cnn_artifact.source
    assert m["inputs"] == {
        "pixel_values": {
            "dtype": "float32",
            "shape": ["batch", 3, 32, 32],
            "values": {"kind": "normal", "low": 0, "high": 0},
        }
    }
    assert m["outputs"] == {"logits": {"dtype": "float32", "shape": ["batch", 5]}}
    assert m["validation"]["passed"] is True
    assert m["preprocessing"] == []
    models.check_cnn(cnn_artifact.source, modelkiln.load(cnn_artifact.path))


def test_dump_passes_writes_one_onnx_per_pass(cnn_artifact: Exported) -> None:
    dumps = cnn_artifact.extra
    assert dumps is not None and dumps.is_dir()
    passes = cnn_artifact.manifest["passes"]
    written = sorted(p.name for p in dumps.glob("*.onnx"))
    expected = [f"{i:02d}-{p['name']}.onnx" for i, p in enumerate(passes, start=1)]
    assert set(expected) <= set(written)
    assert len(written) - len(expected) <= 1  # plus, at most, the traced model before any pass
    for name, entry in zip(expected, passes, strict=True):
        model = onnx.load(str(dumps / name))
        assert len(model.graph.node) == entry["nodes_after"], name
    # The dumps live where asked, not inside the artifact.
    assert not any(
        p.suffix == ".onnx" and p.name != "model.onnx" for p in cnn_artifact.path.iterdir()
    )


def test_onnx_source_export(mlp_artifact: Exported) -> None:
    m = mlp_artifact.manifest
    assert m["source"]["kind"] == "onnx"
    assert m["source"]["weights"][0]["sha256"] == sha256(mlp_artifact.source)
    assert m["inputs"] == {
        "x": {
            "dtype": "float32",
            "shape": ["batch", models.MLP_IN],
            "values": {"kind": "normal", "low": 0, "high": 2},
        }
    }
    assert m["outputs"] == {"y": {"dtype": "float32", "shape": ["batch", models.MLP_OUT]}}
    assert m["validation"]["passed"] is True
    assert m["validation"]["reference"].startswith("onnx source")
    models.check_mlp(modelkiln.load(mlp_artifact.path))


# --------------------------------------------------------------------------- --no-validate


@pytest.fixture(scope="module")
def unvalidated(tmp_path_factory, tiny_bert_dir) -> Exported:
    out = tmp_path_factory.mktemp("artifacts") / "tiny-bert-unvalidated"
    result = run_kiln("export", tiny_bert_dir, "-o", out, "--no-validate", "--json")
    assert result.exit_code == 0, result.stderr
    return Exported(tiny_bert_dir, out, models.read_manifest(out), result)


def test_no_validate_is_recorded(unvalidated: Exported) -> None:
    m = unvalidated.manifest
    assert m["validation"]["skipped"] is True
    assert "--no-validate" in m["validation"]["reason"]
    assert not (unvalidated.path / "golden.npz").exists()
    assert "golden.npz" not in m["files"]
    summary = json.loads(unvalidated.result.stdout)
    assert "skipped" in summary["validation"]


def test_no_validate_artifact_still_correct(unvalidated: Exported) -> None:
    models.check_tiny_bert(unvalidated.source, modelkiln.load(unvalidated.path))


def test_validate_on_unvalidated_artifact_says_golden_skipped(unvalidated: Exported) -> None:
    result = run_kiln("validate", unvalidated.path, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["checks"]["golden"].get("skipped")


# --------------------------------------------------------------------------- external data


@pytest.fixture(scope="module")
def external_artifact(tmp_path_factory, mlp_onnx) -> Exported:
    target = Target(
        name="cpu", backend="onnxruntime", options={"external_data_threshold_bytes": 1024}
    )
    out = tmp_path_factory.mktemp("artifacts") / "tiny-mlp-external"
    result = modelkiln.export(mlp_onnx, out, target=target)
    return Exported(mlp_onnx, out, models.read_manifest(out), result)


def test_external_data_artifact_has_weights_file(external_artifact: Exported) -> None:
    root, m = external_artifact.path, external_artifact.manifest
    assert (root / "model.onnx.data").is_file()
    assert m["backend"]["files"].get("weights") == "model.onnx.data"
    assert m["target"]["options"]["external_data_threshold_bytes"] == 1024
    assert "model.onnx.data" in m["files"]
    assert m["files"]["model.onnx.data"]["sha256"] == sha256(root / "model.onnx.data")
    # W (2 KiB) lives in the data file, not in the protobuf.
    proto = onnx.load(str(root / "model.onnx"), load_external_data=False)
    external = [
        t.name for t in proto.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL
    ]
    assert "W" in external
    assert (root / "model.onnx.data").stat().st_size >= models.MLP_IN * models.MLP_OUT * 4


def test_external_data_artifact_runs_after_moving(external_artifact: Exported, tmp_path) -> None:
    models.check_mlp(modelkiln.load(external_artifact.path))
    from conftest import copy_artifact

    moved = copy_artifact(external_artifact.path, tmp_path / "elsewhere" / "moved")
    models.check_mlp(modelkiln.load(moved))
    result = run_kiln("validate", moved)
    assert result.exit_code == 0, result.stderr


# --------------------------------------------------------------------------- short-context models


def test_model_with_short_context_exports(tmp_path: Path) -> None:
    import torch
    from transformers import BertModel

    folder = tmp_path / "short-bert"
    torch.manual_seed(7)
    BertModel(models.bert_config(max_position_embeddings=32)).eval().save_pretrained(str(folder))
    out = tmp_path / "art"
    modelkiln.export(folder, out)
    m = models.read_manifest(out)
    assert m["validation"]["passed"] is True
    assert all(c["dims"]["sequence"] <= 32 for c in m["validation"]["checks"])
    models.check_tiny_bert(folder, modelkiln.load(out), batch=2, sequence=32)
    # `kiln validate --reference` picks its fresh shapes within the limit too.
    result = run_kiln("validate", out, "--reference", folder, "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    fresh = json.loads(result.stdout)["checks"]["reference"]["checks"]
    assert all(c["dims"]["sequence"] <= 32 for c in fresh)
