"""The `kiln` command line: help, version, output channels, and the console script itself."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import models
import pytest
from conftest import REPO, Exported, run_kiln

import modelkiln

COMMANDS = [[], ["export"], ["validate"], ["inspect"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "kiln")
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_of_every_command(command: list[str], flag: str) -> None:
    result = run_kiln(*command, flag)
    assert result.exit_code == 0, result.stderr
    assert "Usage:" in result.stdout
    assert result.stderr == ""


def test_top_level_help_lists_the_commands() -> None:
    text = run_kiln("--help").stdout
    for name in ("export", "validate", "inspect"):
        assert name in text


def test_export_help_documents_its_options() -> None:
    text = run_kiln("export", "--help").stdout
    for option in (
        "--output",
        "--task",
        "--target",
        "--force",
        "--allow-pickle",
        "--no-validate",
        "--dump-passes",
        "--json",
        "--quiet",
    ):
        assert option in text, option


def test_version() -> None:
    result = run_kiln("--version")
    assert result.exit_code == 0
    assert modelkiln.__version__ in result.stdout


def test_missing_output_option_is_a_usage_error(tmp_path: Path) -> None:
    result = run_kiln("export", tmp_path)
    assert result.exit_code == 2
    assert "--output" in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = run_kiln("bake")
    assert result.exit_code == 2
    assert "bake" in result.stderr


def test_export_reports_progress_and_summary_on_stderr(mlp_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "art"
    result = run_kiln("export", mlp_onnx, "-o", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # stdout stays clean for --json consumers
    assert "validat" in result.stderr
    assert "passed on 2 shapes" in result.stderr
    assert "artifact" in result.stderr  # (the path itself may be wrapped to the width)
    assert (out / "kiln.json").is_file()


def test_export_quiet_prints_nothing(mlp_onnx: Path, tmp_path: Path) -> None:
    result = run_kiln("export", mlp_onnx, "-o", tmp_path / "art", "-q")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""
    assert result.stderr == ""


def test_export_json_summary(mlp_artifact: Exported) -> None:
    summary = json.loads(mlp_artifact.result.stdout)
    assert summary["passed"] is True
    assert Path(summary["artifact"]) == mlp_artifact.path
    assert summary["task"] == "custom"
    assert summary["target"] == "cpu"
    assert summary["backend"] == "onnxruntime"
    assert summary["size_bytes"] == sum(e["size"] for e in mlp_artifact.manifest["files"].values())
    assert "passed on 2 shapes" in summary["validation"]
    assert {"load", "passes", "build", "validate"} <= set(summary["times"])
    assert mlp_artifact.result.stderr == ""  # --json implies no progress output


def test_force_replaces_an_existing_artifact(mlp_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "art"
    out.mkdir()
    (out / "kiln.json").write_text("{}")  # an earlier artifact
    (out / "stale.txt").write_text("old")
    result = run_kiln("export", mlp_onnx, "-o", out, "--force", "-q")
    assert result.exit_code == 0, result.stderr
    assert not (out / "stale.txt").exists()
    models.check_mlp(modelkiln.load(out))
    assert [p.name for p in tmp_path.iterdir()] == ["art"]


def test_force_never_replaces_a_folder_that_is_not_an_artifact(
    mlp_onnx: Path, tmp_path: Path
) -> None:
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("precious")
    result = run_kiln("export", mlp_onnx, "-o", out, "--force")
    assert result.exit_code == 2
    assert "not a modelkiln artifact" in result.stderr
    assert (out / "chapter1.tex").read_text() == "precious"


@pytest.mark.parametrize("relative", [".", "sub/.."])
def test_output_naming_the_current_folder_is_refused(
    mlp_onnx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, relative: str
) -> None:
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path)
    result = run_kiln("export", mlp_onnx, "-o", relative, "--force")
    assert result.exit_code == 2
    assert "current folder" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]


def test_export_with_a_target_toml_file(mlp_onnx: Path, tmp_path: Path) -> None:
    toml = tmp_path / "edge.toml"
    toml.write_text(
        'name = "edge"\nbackend = "onnxruntime"\n[options]\ngraph_optimization_level = "basic"\n'
    )
    out = tmp_path / "art"
    result = run_kiln("export", mlp_onnx, "-o", out, "--target", toml, "-q")
    assert result.exit_code == 0, result.stderr
    manifest = models.read_manifest(out)
    assert manifest["target"]["name"] == "edge"
    assert manifest["backend"]["graph_optimization_level"] == "basic"
    models.check_mlp(modelkiln.load(out))


def test_console_script_runs(tmp_path: Path) -> None:
    """The installed `kiln` entry point, as users run it, in a fresh process."""
    kiln = shutil.which("kiln", path=str(Path(sys.executable).parent)) or str(
        REPO / ".venv" / "bin" / "kiln"
    )
    proc = subprocess.run([kiln, "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "export" in proc.stdout
