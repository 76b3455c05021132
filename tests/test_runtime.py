"""The runtime facade: `modelkiln.load(artifact).run(feeds)`, light and strict about feeds."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import models
import numpy as np
import pytest
from conftest import Exported, copy_artifact, run_kiln

import modelkiln
from modelkiln import FeedError, TensorSpec, UserInputError

LIGHT_SCRIPT = """
import json
import sys
import numpy as np
import modelkiln

session = modelkiln.load(sys.argv[1])
feeds = {
    name: np.ones((2, 5), dtype=np.int64) for name in session.inputs
}
out = session.run(feeds)
heavy = sorted(m for m in ("torch", "transformers", "onnxscript") if m in sys.modules)
print(json.dumps({"heavy": heavy, "shape": list(out["last_hidden_state"].shape)}))
"""


def test_runtime_does_not_import_torch_or_transformers(tiny_bert_artifact: Exported) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", LIGHT_SCRIPT, str(tiny_bert_artifact.path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["shape"] == [2, 5, models.HIDDEN]
    assert "torch" not in report["heavy"]
    assert "transformers" not in report["heavy"]


def test_session_describes_its_inputs_and_outputs(tiny_bert_artifact: Exported) -> None:
    session = modelkiln.load(tiny_bert_artifact.path)
    assert isinstance(session, modelkiln.Session)
    assert session.inputs == {
        name: TensorSpec("int64", ("batch", "sequence"))
        for name in ("input_ids", "attention_mask", "token_type_ids")
    }
    assert session.outputs == {
        "last_hidden_state": TensorSpec("float32", ("batch", "sequence", models.HIDDEN))
    }


def test_run_returns_named_numpy_arrays(tiny_bert_artifact: Exported) -> None:
    session = modelkiln.load(tiny_bert_artifact.path, threads=1)
    out = session.run(models.text_feeds(list(session.inputs), 3, 7))
    assert list(out) == ["last_hidden_state"]
    assert isinstance(out["last_hidden_state"], np.ndarray)
    assert out["last_hidden_state"].dtype == np.float32
    assert out["last_hidden_state"].shape == (3, 7, models.HIDDEN)


def test_run_is_deterministic(tiny_bert_artifact: Exported) -> None:
    session = modelkiln.load(tiny_bert_artifact.path)
    feeds = models.text_feeds(list(session.inputs), 2, 9)
    first = session.run(feeds)["last_hidden_state"]
    second = session.run(feeds)["last_hidden_state"]
    np.testing.assert_array_equal(first, second)


def test_load_rejects_a_folder_that_is_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="kiln.json"):
        modelkiln.load(tmp_path)
    with pytest.raises(UserInputError, match="does not exist"):
        modelkiln.load(tmp_path / "missing")


def test_load_rejects_another_schema_version(tiny_bert_artifact: Exported, tmp_path: Path) -> None:
    copy = copy_artifact(tiny_bert_artifact.path, tmp_path / "a")
    manifest = json.loads((copy / "kiln.json").read_text())
    manifest["schema_version"] = 99
    (copy / "kiln.json").write_text(json.dumps(manifest))
    with pytest.raises(UserInputError, match="schema version"):
        modelkiln.load(copy)


# --------------------------------------------------------------------------- feed checks


def good_feeds(batch: int = 2, sequence: int = 6) -> dict[str, np.ndarray]:
    return models.text_feeds(["input_ids", "attention_mask", "token_type_ids"], batch, sequence)


def _missing():
    feeds = good_feeds()
    del feeds["attention_mask"]
    return feeds, "attention_mask"


def _unknown():
    feeds = good_feeds()
    feeds["position_ids"] = np.zeros((2, 6), dtype=np.int64)
    return feeds, "position_ids"


def _wrong_dtype():
    feeds = good_feeds()
    feeds["input_ids"] = feeds["input_ids"].astype(np.int32)
    return feeds, "input_ids"


def _wrong_rank():
    feeds = good_feeds()
    feeds["token_type_ids"] = feeds["token_type_ids"][0]
    return feeds, "token_type_ids"


def _named_dim_disagrees():
    feeds = good_feeds()
    feeds["attention_mask"] = np.ones((2, 7), dtype=np.int64)  # sequence 7 vs 6
    return feeds, "attention_mask"


def _not_an_array():
    feeds = good_feeds()
    feeds["input_ids"] = feeds["input_ids"].tolist()
    return feeds, "input_ids"


FEED_MISTAKES = {
    "missing input": _missing,
    "unknown input": _unknown,
    "wrong dtype": _wrong_dtype,
    "wrong rank": _wrong_rank,
    "named dim disagrees across inputs": _named_dim_disagrees,
    "not an array": _not_an_array,
}


@pytest.mark.parametrize("mistake", list(FEED_MISTAKES))
def test_feed_mistakes_raise_feed_error_naming_the_input(
    tiny_bert_artifact: Exported, mistake: str
) -> None:
    session = modelkiln.load(tiny_bert_artifact.path)
    feeds, culprit = FEED_MISTAKES[mistake]()
    with pytest.raises(FeedError) as info:
        session.run(feeds)
    assert culprit in str(info.value)
    assert isinstance(info.value, UserInputError)
    assert info.value.exit_code == 2


def test_feed_error_on_wrong_fixed_dim(mlp_artifact: Exported) -> None:
    session = modelkiln.load(mlp_artifact.path)
    assert session.inputs["x"].shape == ("batch", models.MLP_IN)
    x = np.zeros((3, models.MLP_IN + 1), dtype=np.float32)
    with pytest.raises(FeedError) as info:
        session.run({"x": x})
    message = str(info.value)
    assert "'x'" in message or "x:" in message
    assert str(models.MLP_IN) in message


def test_feed_error_for_wrong_dtype_names_the_expected_dtype(mlp_artifact: Exported) -> None:
    session = modelkiln.load(mlp_artifact.path)
    with pytest.raises(FeedError, match="float32"):
        session.run({"x": np.zeros((2, models.MLP_IN), dtype=np.float64)})


def test_good_feeds_of_any_batch_run(mlp_artifact: Exported) -> None:
    session = modelkiln.load(mlp_artifact.path)
    for batch in (1, 2, 17):
        out = session.run({"x": np.zeros((batch, models.MLP_IN), dtype=np.float32)})
        assert out["y"].shape == (batch, models.MLP_OUT)


def test_unavailable_provider_is_backend_unavailable(mlp_artifact: Exported) -> None:
    with pytest.raises(modelkiln.BackendUnavailable, match="CUDAExecutionProvider"):
        modelkiln.load(mlp_artifact.path, providers=["CUDAExecutionProvider"])


# ----------------------------------------------------------------- values the manifest knows


def test_token_id_outside_the_vocabulary_is_a_feed_error(tiny_bert_artifact: Exported) -> None:
    """ONNX Runtime would answer with "indices element out of data bounds ... Gather"."""
    session = modelkiln.load(tiny_bert_artifact.path)
    for bad in (models.VOCAB_SIZE, 999999, -1):
        feeds = good_feeds()
        feeds["input_ids"][1, 3] = bad
        with pytest.raises(FeedError) as info:
            session.run(feeds)
        message = str(info.value)
        assert "'input_ids'" in message and f"token id {bad} at [1, 3]" in message
        assert f"vocabulary has {models.VOCAB_SIZE} ids" in message
    feeds = good_feeds()
    feeds["input_ids"][0, 0] = models.VOCAB_SIZE - 1  # the last id is fine
    session.run(feeds)


def test_sequence_beyond_the_positions_is_a_feed_error(tiny_bert_artifact: Exported) -> None:
    """ONNX Runtime would answer with "Attempting to broadcast an axis by a dimension other
    than 1. 128 by 129"."""
    session = modelkiln.load(tiny_bert_artifact.path)
    assert tiny_bert_artifact.manifest["limits"] == {"sequence": models.MAX_POSITIONS}
    session.run(good_feeds(1, models.MAX_POSITIONS))
    with pytest.raises(FeedError) as info:
        session.run(good_feeds(1, models.MAX_POSITIONS + 1))
    message = str(info.value)
    assert f"sequence {models.MAX_POSITIONS + 1}" in message and "'input_ids'" in message
    assert f"at most {models.MAX_POSITIONS}" in message


def test_artifact_from_before_limits_were_recorded_still_loads_and_checks(
    tiny_bert_artifact: Exported, tmp_path: Path
) -> None:
    """Manifests of schema 1 written before `limits` existed: the limit comes from the
    config.json the artifact ships, and the manifest reads as it did."""
    copy = copy_artifact(tiny_bert_artifact.path, tmp_path / "old")
    manifest = json.loads((copy / "kiln.json").read_text())
    del manifest["limits"]
    (copy / "kiln.json").write_text(json.dumps(manifest))
    session = modelkiln.load(copy)
    with pytest.raises(FeedError, match=f"at most {models.MAX_POSITIONS}"):
        session.run(good_feeds(1, models.MAX_POSITIONS + 1))
    assert session.artifact.manifest.to_json() == manifest | {
        "limits": {"sequence": models.MAX_POSITIONS}
    }
    assert run_kiln("validate", copy).exit_code == 0


def test_manifest_round_trips_unknown_keys(tiny_bert_artifact: Exported) -> None:
    from modelkiln.manifest import Manifest

    data = json.loads((tiny_bert_artifact.path / "kiln.json").read_text())
    data["from_a_newer_modelkiln"] = {"x": 1}
    data["backend"]["new_detail"] = True
    data["validation"]["new_field"] = [1]
    assert Manifest.from_json(data).to_json() == data


def test_malformed_manifest_is_one_line(tiny_bert_artifact: Exported, tmp_path: Path) -> None:
    copy = copy_artifact(tiny_bert_artifact.path, tmp_path / "bad")
    manifest = json.loads((copy / "kiln.json").read_text())
    del manifest["backend"]["files"]
    (copy / "kiln.json").write_text(json.dumps(manifest))
    with pytest.raises(UserInputError, match="malformed"):
        modelkiln.load(copy)
