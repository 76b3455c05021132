"""What a user can get wrong, through the CLI: exit code 2, one line on stderr, nothing written.

Every case builds its own inputs under `tmp_path / "in"` and exports to
`tmp_path / "out" / "artifact"`, so "nothing at the output path" also covers parent folders and
staging folders.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import run_kiln

import modelkiln
import models

Case = Callable[[Path, dict[str, Path]], tuple[list[str], str]]


def _nonexistent(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    return [str(tmp / "no-such-checkpoint")], "does not exist"


def _no_config(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    folder = tmp / "weights-only"
    folder.mkdir()
    shutil.copy(ckpt["bert"] / "model.safetensors", folder)
    return [str(folder)], "config.json"


def _config_not_json(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    folder = shutil.copytree(ckpt["bert"], tmp / "bad-config")
    (folder / "config.json").write_text("{ not json")
    return [str(folder)], "config.json"


def _no_weights(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    folder = tmp / "config-only"
    folder.mkdir()
    shutil.copy(ckpt["bert"] / "config.json", folder)
    return [str(folder)], "weights"


def _truncated_safetensors(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    folder = shutil.copytree(ckpt["bert"], tmp / "truncated")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return [str(folder)], "model.safetensors"


def _corrupt_header(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    folder = shutil.copytree(ckpt["bert"], tmp / "corrupt")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:24] = b"\xff" * 16  # the JSON header starts at byte 8
    weights.write_bytes(bytes(data))
    return [str(folder)], "model.safetensors"


def _pickle_only(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    return [str(ckpt["pickle"])], "--allow-pickle"


def _unknown_task(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    return [str(ckpt["bert"]), "--task", "summon-demons"], "summon-demons"


def _task_for_other_modality(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    return [str(ckpt["bert"]), "--task", "image-classification"], "image-classification"


def _task_without_weights(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    # A feature-extraction checkpoint has no classifier head: refuse, don't export random logits.
    return [str(ckpt["bert"]), "--task", "text-classification"], "classifier"


def _onnx_data_outside(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    model = models.build_onnx_with_external_data(tmp / "model" / "m.onnx", "../secret.bin")
    assert (tmp / "secret.bin").is_file()  # the data exists; it is just not the model's
    return [str(model)], "outside"


def _onnx_not_onnx(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    path = tmp / "garbage.onnx"
    path.write_bytes(b"\x00\x01 this is not a protobuf \xff" * 10)
    return [str(path)], "garbage.onnx"


def _unknown_target(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    return [str(ckpt["bert"]), "--target", "quantum-toaster"], "quantum-toaster"


def _missing_target_file(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    return [str(ckpt["bert"]), "--target", str(tmp / "nope.toml")], "nope.toml"


def _target_file_with_unknown_key(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    toml = tmp / "odd.toml"
    toml.write_text('backend = "onnxruntime"\nflux_capacitor = true\n')
    return [str(ckpt["bert"]), "--target", str(toml)], "flux_capacitor"


def _factory_file_missing(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    return [f"{tmp / 'nowhere.py'}:make"], "nowhere.py"


BAD_INPUTS: dict[str, Case] = {
    "nonexistent path": _nonexistent,
    "folder without config.json": _no_config,
    "config.json not JSON": _config_not_json,
    "config.json but no weights": _no_weights,
    "truncated safetensors": _truncated_safetensors,
    "corrupt safetensors header": _corrupt_header,
    "pickle-only checkpoint": _pickle_only,
    "unknown task": _unknown_task,
    "task of another modality": _task_for_other_modality,
    "task whose head the checkpoint lacks": _task_without_weights,
    "onnx external data outside its folder": _onnx_data_outside,
    "onnx file that is not onnx": _onnx_not_onnx,
    "unknown target": _unknown_target,
    "missing target file": _missing_target_file,
    "target file with unknown key": _target_file_with_unknown_key,
    "factory file missing": _factory_file_missing,
}


@pytest.fixture(scope="module")
def checkpoints(tiny_bert_dir: Path, pickle_bert_dir: Path) -> dict[str, Path]:
    return {"bert": tiny_bert_dir, "pickle": pickle_bert_dir}


def assert_one_line_error(result, *must_mention: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("error:"), lines[0]
    for text in must_mention:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line(case: str, tmp_path: Path, checkpoints) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    args, mention = BAD_INPUTS[case](inputs, checkpoints)
    out = tmp_path / "out" / "artifact"
    result = run_kiln("export", *args, "-o", out)
    assert_one_line_error(result, mention)
    assert not (tmp_path / "out").exists(), "a failed export left something at the output path"
    assert result.stdout == ""


def test_existing_output_is_refused_and_left_alone(tmp_path: Path, tiny_bert_dir: Path) -> None:
    out = tmp_path / "artifact"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = run_kiln("export", tiny_bert_dir, "-o", out)
    assert_one_line_error(result, "--force")
    assert [p.name for p in out.iterdir()] == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"
    assert [p.name for p in tmp_path.iterdir()] == ["artifact"]  # no staging left behind


def test_output_path_that_is_a_file_is_refused_even_with_force(
    tmp_path: Path, tiny_bert_dir: Path
) -> None:
    out = tmp_path / "artifact"
    out.write_text("a file")
    result = run_kiln("export", tiny_bert_dir, "-o", out, "--force")
    assert_one_line_error(result)
    assert out.read_text() == "a file"


def test_api_raises_user_input_errors(tmp_path: Path) -> None:
    with pytest.raises(modelkiln.CheckpointError, match="does not exist"):
        modelkiln.export(tmp_path / "missing", tmp_path / "out")
    with pytest.raises(modelkiln.UserInputError, match="unknown task"):
        modelkiln.export(tmp_path / "missing", tmp_path / "out", task="nope")
    assert not (tmp_path / "out").exists()


def test_validate_and_inspect_of_missing_paths_exit_2(tmp_path: Path) -> None:
    for command in ("validate", "inspect"):
        result = run_kiln(command, tmp_path / "missing")
        assert_one_line_error(result, "missing")


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "modelkiln.cli"]
    args = ["export", str(tmp_path / "missing"), "-o", str(tmp_path / "out")]
    plain = subprocess.run(base + args, capture_output=True, text=True, timeout=120)
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr
    assert plain.stderr.strip().startswith("error:")
    debug = subprocess.run(base + ["--debug"] + args, capture_output=True, text=True, timeout=120)
    assert debug.returncode != 0
    assert "Traceback (most recent call last)" in debug.stderr
    assert "CheckpointError" in debug.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- --allow-pickle


def test_pickle_checkpoint_exports_with_allow_pickle(tmp_path: Path, pickle_bert_dir: Path) -> None:
    out = tmp_path / "pickle-artifact"
    result = run_kiln("export", pickle_bert_dir, "-o", out, "--allow-pickle", "-q")
    assert result.exit_code == 0, result.stderr
    manifest = models.read_manifest(out)
    assert [w["file"] for w in manifest["source"]["weights"]] == ["pytorch_model.bin"]
    assert manifest["validation"]["passed"] is True
    session = modelkiln.load(out)
    models.check_tiny_bert(pickle_bert_dir, session)
    # The pickle weights differ from the safetensors tiny BERT's: the export used these.
    feeds = models.text_feeds(list(session.inputs), 1, 4)
    assert np.isfinite(session.run(feeds)["last_hidden_state"]).all()
