"""A third-party backend, installed for real, is found through the `modelkiln.backends` group.

`samples/plugin_backend` is pip-installed into a temporary folder (from a copy, so the build
leaves nothing in the repository); every command then runs in a subprocess with that folder
on PYTHONPATH, so importlib.metadata discovers the plugin's dist-info as it would in a user's
environment. Without it, the same target is an unknown backend.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, Exported

SAMPLE = REPO / "samples" / "plugin_backend"
TARGET = SAMPLE / "ort-parallel.toml"
KILN = Path(sys.executable).with_name("kiln")


def pip_install(src: Path, site: Path) -> None:
    """Install the package at `src` into the folder `site`, as a user's pip would."""
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "-q"]
        + ["--target", str(site), str(src)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory) -> Path:
    """The sample installed with pip into a folder of its own; returns that folder."""
    root = tmp_path_factory.mktemp("plugin")
    src, site = root / "src", root / "site"
    shutil.copytree(
        SAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    pip_install(src, site)
    assert list(site.glob("kiln_ort_parallel-*.dist-info")), sorted(os.listdir(site))
    assert not list(SAMPLE.glob("build")) and not list(SAMPLE.glob("*.egg-info"))
    return site


def run(*args: object, site: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run a command with the plugin on PYTHONPATH (or, without `site`, with no PYTHONPATH)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if site is not None:
        env["PYTHONPATH"] = str(site)
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.fixture(scope="module")
def plugin_artifact(plugin_site, mlp_onnx, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("plugin-artifacts") / "mlp-parallel"
    proc = run(KILN, "export", mlp_onnx, "--target", TARGET, "-o", out, "-q", site=plugin_site)
    assert proc.returncode == 0, proc.stderr
    return out


def test_export_records_the_plugin_backend(plugin_artifact: Path) -> None:
    manifest = json.loads((plugin_artifact / "kiln.json").read_text())
    assert manifest["target"]["backend"] == "ort-parallel"
    assert manifest["target"]["name"] == "cpu-parallel"
    backend = manifest["backend"]
    assert backend["name"] == "ort-parallel"
    assert backend["files"] == {"model": "model.onnx"}
    assert backend["execution_mode"] == "parallel"
    assert (backend["inter_op_threads"], backend["intra_op_threads"]) == (2, 1)
    assert manifest["validation"]["passed"] is True


def test_validate_and_inspect_through_the_plugin(plugin_site, plugin_artifact) -> None:
    proc = run(KILN, "validate", plugin_artifact, site=plugin_site)
    assert proc.returncode == 0, proc.stderr
    proc = run(KILN, "inspect", plugin_artifact, "--json", site=plugin_site)
    assert proc.returncode == 0, proc.stderr
    assert "ort-parallel" in proc.stdout


LOAD_BOTH = """
import json, sys
import numpy as np
import modelkiln
plugin, ort = modelkiln.load(sys.argv[1]), modelkiln.load(sys.argv[2])
x = np.random.default_rng(3).standard_normal((5, 16)).astype(np.float32)
a, b = plugin.run({"x": x}), ort.run({"x": x})
print(json.dumps({
    "session": type(plugin).__module__,
    "outputs": sorted(a),
    "shape": list(a["y"].shape),
    "max_abs_diff": float(np.abs(a["y"] - b["y"]).max()),
}))
"""


def test_load_matches_the_onnxruntime_artifact(
    plugin_site, plugin_artifact, mlp_artifact: Exported
) -> None:
    proc = run(
        sys.executable, "-c", LOAD_BOTH, plugin_artifact, mlp_artifact.path, site=plugin_site
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["session"] == "kiln_ort_parallel"
    assert got["outputs"] == ["y"] and got["shape"] == [5, 32]
    assert got["max_abs_diff"] <= 1e-6


def test_plugin_checks_its_target_options(plugin_site, mlp_onnx, tmp_path) -> None:
    target = tmp_path / "bad.toml"
    target.write_text('backend = "ort-parallel"\n[options]\ninter_op_threads = 2\nthreads = 4\n')
    proc = run(KILN, "export", mlp_onnx, "--target", target, "-o", tmp_path / "o", site=plugin_site)
    assert proc.returncode == 2, proc.stderr
    assert "ort-parallel does not know option(s) threads" in proc.stderr
    assert "it knows inter_op_threads, intra_op_threads" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_without_the_plugin_the_backend_is_unknown(mlp_onnx, tmp_path) -> None:
    proc = run(KILN, "export", mlp_onnx, "--target", TARGET, "-o", tmp_path / "o")
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert "unknown backend 'ort-parallel'; installed backends:" in errors[0]
    assert "onnxruntime" in errors[0].split("installed backends:")[1]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "o").exists()


OLD_PLUGIN = '''
class OldBackend:
    """A plugin written before the contract was typed: build(model, target, out)."""

    name = "old-contract"
    precisions = ("fp32",)
    calibrated = ()

    def check(self, target):
        pass

    def build(self, model, target, out):
        raise AssertionError("an old-contract build must never be called")

    def load(self, artifact, **options):
        raise AssertionError("never loaded")
'''
OLD_PYPROJECT = """
[build-system]
requires = ["setuptools>=70"]
build-backend = "setuptools.build_meta"

[project]
name = "kiln-old-contract"
version = "0.0.1"

[project.entry-points."modelkiln.backends"]
old-contract = "kiln_old_contract:OldBackend"

[tool.setuptools]
packages = ["kiln_old_contract"]
"""


def test_a_plugin_on_the_old_build_contract_is_refused_in_one_line(mlp_onnx, tmp_path) -> None:
    src, site = tmp_path / "src", tmp_path / "site"
    (src / "kiln_old_contract").mkdir(parents=True)
    (src / "kiln_old_contract" / "__init__.py").write_text(OLD_PLUGIN)
    (src / "pyproject.toml").write_text(OLD_PYPROJECT)
    pip_install(src, site)
    target = tmp_path / "old.toml"
    target.write_text('backend = "old-contract"\n')
    proc = run(KILN, "export", mlp_onnx, "--target", target, "-o", tmp_path / "o", site=site)
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "build(model, target, out)" in errors[0] and "BuildRequest" in errors[0]
    assert not (tmp_path / "o").exists()
