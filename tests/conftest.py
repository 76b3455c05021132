"""Shared fixtures: tiny checkpoints built once, artifacts exported once per session.

A dynamo trace of a tiny BERT takes seconds, so every artifact here is exported once and shared;
tests that modify an artifact work on a copy (`copy_artifact`).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import models  # noqa: E402

from modelkiln.cli import main  # noqa: E402

REPO = TESTS.parent

# Exports in tests use a private build cache, never the user's ~/.cache/modelkiln; subprocesses
# inherit it through the environment.
TEST_CACHE = Path(tempfile.mkdtemp(prefix="kiln-test-cache-"))
os.environ["MODELKILN_CACHE_DIR"] = str(TEST_CACHE)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(TEST_CACHE, ignore_errors=True)


def run_kiln(*args: Any) -> Result:
    """Run `kiln ARGS...` in-process; stdout and stderr are captured separately."""
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result: Result, *must_mention: str) -> str:
    """A user error: exit 2, no traceback, exactly one `error:` line on stderr naming
    each of `must_mention`; returns that line."""
    assert result.exit_code == 2, (result.exit_code, result.stderr, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"uncaught {type(result.exception).__name__}: {result.exception}"
    )
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith("error:"), lines[0]
    for text in must_mention:
        assert text in lines[0], f"{text!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture(scope="session")
def kiln():
    """The CLI runner: `kiln("export", ckpt, "-o", out)` returns click's Result."""
    return run_kiln


def copy_artifact(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


@dataclass(frozen=True)
class Exported:
    """An artifact exported for the session, with where it came from."""

    source: Any  # checkpoint folder, factory reference or .onnx path
    path: Path
    manifest: dict[str, Any]
    result: Any = None  # modelkiln.pipeline.ExportResult, or click Result for CLI exports
    extra: Path | None = None  # e.g. the --dump-passes folder


# --------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return models.build_tiny_bert(tmp_path_factory.mktemp("ckpt") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_classifier_dir(tmp_path_factory) -> Path:
    return models.build_tiny_bert_classifier(tmp_path_factory.mktemp("ckpt") / "tiny-classifier")


@pytest.fixture(scope="session")
def tiny_vit_dir(tmp_path_factory) -> Path:
    return models.build_tiny_vit(tmp_path_factory.mktemp("ckpt") / "tiny-vit")


@pytest.fixture(scope="session")
def pickle_bert_dir(tmp_path_factory) -> Path:
    return models.build_tiny_bert_pickle(tmp_path_factory.mktemp("ckpt") / "pickle-bert")


@pytest.fixture(scope="session")
def cnn_factory(tmp_path_factory) -> str:
    return models.write_cnn_factory(tmp_path_factory.mktemp("factory"))


@pytest.fixture(scope="session")
def mlp_onnx(tmp_path_factory) -> Path:
    return models.build_mlp_onnx(tmp_path_factory.mktemp("onnx") / "tiny_mlp.onnx")


# --------------------------------------------------------------------------- artifacts


@pytest.fixture(scope="session")
def tiny_bert_artifact(tmp_path_factory, tiny_bert_dir) -> Exported:
    """Tiny BERT feature-extraction, exported through the Python API with validation."""
    import modelkiln

    out = tmp_path_factory.mktemp("artifacts") / "tiny-bert-cpu"
    result = modelkiln.export(tiny_bert_dir, out)
    return Exported(tiny_bert_dir, out, models.read_manifest(out), result)


@pytest.fixture(scope="session")
def classifier_artifact(tmp_path_factory, tiny_classifier_dir) -> Exported:
    import modelkiln

    out = tmp_path_factory.mktemp("artifacts") / "tiny-classifier-cpu"
    result = modelkiln.export(tiny_classifier_dir, out, task="text-classification")
    return Exported(tiny_classifier_dir, out, models.read_manifest(out), result)


@pytest.fixture(scope="session")
def vit_artifact(tmp_path_factory, tiny_vit_dir) -> Exported:
    import modelkiln

    out = tmp_path_factory.mktemp("artifacts") / "tiny-vit-cpu"
    result = modelkiln.export(tiny_vit_dir, out)
    return Exported(tiny_vit_dir, out, models.read_manifest(out), result)


@pytest.fixture(scope="session")
def cnn_artifact(tmp_path_factory, cnn_factory) -> Exported:
    """The CNN module factory exported through the CLI with --dump-passes and --json."""
    root = tmp_path_factory.mktemp("artifacts")
    out, dumps = root / "tiny-cnn-cpu", root / "cnn-passes"
    result = run_kiln("export", cnn_factory, "-o", out, "--dump-passes", dumps, "--json")
    assert result.exit_code == 0, result.stderr
    return Exported(cnn_factory, out, models.read_manifest(out), result, dumps)


@pytest.fixture(scope="session")
def mlp_artifact(tmp_path_factory, mlp_onnx) -> Exported:
    """The MatMul+Add+Relu .onnx file exported through the CLI (no tracing)."""
    out = tmp_path_factory.mktemp("artifacts") / "tiny-mlp-cpu"
    result = run_kiln("export", mlp_onnx, "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    return Exported(mlp_onnx, out, models.read_manifest(out), result)
