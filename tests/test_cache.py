"""The build cache: hits skip tracing (and torch), misses on any change, safe when shared."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest
from conftest import run_kiln

import modelkiln
from modelkiln.cache import BuildCache

KILN = Path(sys.executable).with_name("kiln")


@pytest.fixture()
def bert_copy(tmp_path: Path, tiny_bert_dir: Path) -> Path:
    return Path(shutil.copytree(tiny_bert_dir, tmp_path / "bert"))


def export(ckpt: Path, out: Path, cache: Path, *extra: str) -> dict:
    result = run_kiln("export", ckpt, "-o", out, "--cache-dir", cache, "--json", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_second_export_reuses_the_traced_model(bert_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = export(bert_copy, tmp_path / "a", cache)
    second = export(bert_copy, tmp_path / "b", cache)
    assert first["cache"]["hit"] is False and "trace" in first["times"]
    assert second["cache"] == {"key": first["cache"]["key"], "hit": True}
    assert "trace" not in second["times"] and "passes" not in second["times"]
    a, b = models.read_manifest(tmp_path / "a"), models.read_manifest(tmp_path / "b")
    assert a["files"]["model.onnx"]["sha256"] == b["files"]["model.onnx"]["sha256"]
    assert a["passes"] == b["passes"] and a["inputs"] == b["inputs"]
    assert b["validation"]["passed"] is True
    models.check_tiny_bert(bert_copy, modelkiln.load(tmp_path / "b"))


def test_a_hit_needs_no_torch(bert_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    export(bert_copy, tmp_path / "a", cache)
    code = (
        "import sys; from modelkiln.pipeline import export; "
        f"r = export({str(bert_copy)!r}, {str(tmp_path / 'b')!r}, cache_dir={str(cache)!r}); "
        "assert r.manifest.cache['hit'], r.manifest.cache; "
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("change", ["config", "weights", "task"])
def test_any_change_misses(bert_copy: Path, tmp_path: Path, change: str) -> None:
    cache = tmp_path / "cache"
    first = export(bert_copy, tmp_path / "a", cache)
    extra: list[str] = []
    if change == "config":
        config = json.loads((bert_copy / "config.json").read_text())
        config["layer_norm_eps"] = 1e-6
        (bert_copy / "config.json").write_text(json.dumps(config))
    elif change == "weights":
        import torch
        from safetensors.torch import load_file, save_file

        weights = load_file(bert_copy / "model.safetensors")
        name = next(iter(weights))
        weights[name] = weights[name] + torch.ones_like(weights[name])
        save_file(weights, bert_copy / "model.safetensors", metadata={"format": "pt"})
    else:
        extra = ["--task", "feature-extraction"]  # explicit task: another key
    second = export(bert_copy, tmp_path / "b", cache, *extra)
    assert second["cache"]["hit"] is False
    assert second["cache"]["key"] != first["cache"]["key"]
    assert len(BuildCache(cache).info()["entries"]) == 2


def test_no_cache_neither_reads_nor_writes(bert_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    summary = export(bert_copy, tmp_path / "a", cache, "--no-cache")
    assert summary["cache"] == {} and "trace" in summary["times"]
    assert not (cache / "models").exists() or not any((cache / "models").iterdir())


def test_cache_info_and_clear(bert_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    key = export(bert_copy, tmp_path / "a", cache)["cache"]["key"]
    info = run_kiln("cache", "info", "--cache-dir", cache, "--json")
    assert info.exit_code == 0, info.stderr
    data = json.loads(info.stdout)
    assert [e["key"] for e in data["entries"]] == [key]
    assert data["entries"][0]["task"] == "feature-extraction"
    assert data["size_bytes"] > 0
    assert data["compiled"]["folders"] == 0
    blob = cache / "openvino" / "0123abcd" / "model.blob"  # as an OpenVINO load leaves it
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"x" * 100)
    human = run_kiln("cache", "info", "--cache-dir", cache)
    assert key in human.stdout and "1 entry" in human.stdout
    assert "compiled OpenVINO blobs of 1 loaded model(s)" in human.stdout
    cleared = run_kiln("cache", "clear", "--cache-dir", cache)
    assert cleared.exit_code == 0 and "removed 1 entry and 1 compiled-blob folder" in cleared.stderr
    assert BuildCache(cache).info()["entries"] == []
    assert not blob.exists()


def test_a_damaged_entry_is_a_miss(bert_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    key = export(bert_copy, tmp_path / "a", cache)["cache"]["key"]
    (cache / "models" / key / "reference.npz").unlink()
    second = export(bert_copy, tmp_path / "b", cache)
    assert second["cache"]["hit"] is False
    models.check_tiny_bert(bert_copy, modelkiln.load(tmp_path / "b"))


def test_concurrent_exports_of_the_same_model_both_succeed(bert_copy: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    env = {**os.environ, "MODELKILN_CACHE_DIR": str(cache)}
    procs = [
        subprocess.Popen(
            [str(KILN), "export", str(bert_copy), "-o", str(tmp_path / f"out{i}"), "-q"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    entries = BuildCache(cache).info()["entries"]
    assert len(entries) == 1
    assert not [p for p in (cache / "models").iterdir() if p.name.startswith(".")]
    outputs = []
    feeds = models.text_feeds(["input_ids", "attention_mask", "token_type_ids"], 2, 9)
    for i in range(2):
        outputs.append(modelkiln.load(tmp_path / f"out{i}").run(feeds)["last_hidden_state"])
    np.testing.assert_array_equal(outputs[0], outputs[1])
    third = export(bert_copy, tmp_path / "out2", cache)
    assert third["cache"]["hit"] is True
