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

import models
import pytest
from conftest import assert_one_line_error, run_kiln

import modelkiln

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


def _target_toml(tmp: Path, ckpt: dict[str, Path], body: str) -> list[str]:
    toml = tmp / "target.toml"
    toml.write_text(body)
    return [str(ckpt["bert"]), "--target", str(toml)]


def _target_unknown_backend(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    return _target_toml(tmp, ckpt, 'backend = "warp-drive"\n'), "warp-drive"


def _target_unknown_option(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    body = 'backend = "onnxruntime"\n[options]\nturbo = true\n'
    return _target_toml(tmp, ckpt, body), "turbo"


def _target_unsupported_precision(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    # onnxruntime builds fp32, fp16 and integer precisions, not bf16.
    return _target_toml(tmp, ckpt, 'backend = "onnxruntime"\nprecision = "bf16"\n'), "bf16"


def _target_unavailable_device(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    # This machine's onnxruntime has no CUDA provider.
    return _target_toml(tmp, ckpt, 'backend = "onnxruntime"\ndevice = "cuda"\n'), "CUDA"


def _target_bad_shape_range(tmp: Path, ckpt: dict[str, Path]) -> tuple[list[str], str]:
    body = 'backend = "onnxruntime"\n[shapes.batch]\nmin = 8\nopt = 4\nmax = 2\n'
    return _target_toml(tmp, ckpt, body), "shapes.batch"


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
    "target with unknown backend": _target_unknown_backend,
    "target with unknown backend option": _target_unknown_option,
    "target with unsupported precision": _target_unsupported_precision,
    "target on a device this machine lacks": _target_unavailable_device,
    "target with min > max shape range": _target_bad_shape_range,
    "factory file missing": _factory_file_missing,
}


@pytest.fixture(scope="module")
def checkpoints(tiny_bert_dir: Path, pickle_bert_dir: Path) -> dict[str, Path]:
    return {"bert": tiny_bert_dir, "pickle": pickle_bert_dir}


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
    models.check_tiny_bert(pickle_bert_dir, modelkiln.load(out))
    # Re-running the pickle reference is refused too unless allowed.
    refused = run_kiln("validate", out, "--reference", pickle_bert_dir)
    assert_one_line_error(refused, "--allow-pickle")
    allowed = run_kiln("validate", out, "--reference", pickle_bert_dir, "--allow-pickle")
    assert allowed.exit_code == 0, allowed.stderr


# --------------------------------------------------------------------------- output vs inputs


@pytest.mark.parametrize("where", ["the checkpoint itself", "a folder holding it"])
def test_force_never_replaces_the_checkpoint_being_exported(
    tmp_path: Path, tiny_bert_dir: Path, where: str
) -> None:
    ckpt = shutil.copytree(tiny_bert_dir, tmp_path / "models" / "ckpt")
    out = ckpt if where == "the checkpoint itself" else ckpt.parent
    before = sorted(p.name for p in ckpt.iterdir())
    result = run_kiln("export", ckpt, "-o", out, "--force", "-q")
    assert ckpt.is_dir(), "the checkpoint was deleted"
    assert sorted(p.name for p in ckpt.iterdir()) == before, "the checkpoint was replaced"
    assert_one_line_error(result, "checkpoint")


def test_dump_passes_inside_the_output_folder_is_refused(tmp_path: Path, mlp_onnx: Path) -> None:
    out = tmp_path / "art"
    result = run_kiln("export", mlp_onnx, "-o", out, "--dump-passes", out / "passes", "-q")
    line = assert_one_line_error(result, "--dump-passes")
    assert "already exists" not in line  # it did not exist before the command
    assert not out.exists(), "a failed export left something at the output path"


# --------------------------------------------------------------------------- unusable paths
# A path the user got wrong is a user error (one line, exit 2), not a modelkiln crash.


def assert_no_crash(result) -> None:
    """The command ended through the CLI's own error handling, not an uncaught exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception}"
    )


def test_output_under_a_file_is_a_user_error(tmp_path: Path, mlp_onnx: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    result = run_kiln("export", mlp_onnx, "-o", blocker / "out")
    assert_no_crash(result)
    assert_one_line_error(result, "afile")
    assert blocker.read_text() == "not a folder"


def test_dump_passes_onto_a_file_is_a_user_error(tmp_path: Path, mlp_onnx: Path) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    out = tmp_path / "art"
    result = run_kiln("export", mlp_onnx, "-o", out, "--dump-passes", blocker)
    assert_no_crash(result)
    assert_one_line_error(result, "afile")
    assert not out.exists()


def test_allow_pickle_still_refuses_code_in_the_pickle(
    tmp_path: Path, pickle_bert_dir: Path
) -> None:
    """--allow-pickle loads with weights_only=True: a pickle that runs code is refused unrun."""
    import torch

    marker = tmp_path / "PWNED"
    folder = tmp_path / "evil"
    folder.mkdir()
    shutil.copy(pickle_bert_dir / "config.json", folder)
    state = torch.load(pickle_bert_dir / "pytorch_model.bin", weights_only=True)
    state["payload"] = _Payload(str(marker))
    torch.save(state, folder / "pytorch_model.bin")
    out = tmp_path / "out"
    result = run_kiln("export", folder, "-o", out, "--allow-pickle")
    assert_one_line_error(result, str(folder))
    assert not marker.exists(), "the pickle's code ran"
    assert not out.exists()


class _Payload:
    """Unpickling this calls pathlib.Path.touch: stands in for arbitrary code."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))
