"""The wheel: one top-level package `modelkiln` holding the exporter, backends and targets.

The source folders `exporter/`, `backends/` and `targets/` are mapped into `modelkiln.*` by
pyproject.toml; a mistake there ships a wheel that imports fine in the editable checkout and
breaks everywhere else. The wheel is built from a copy of the tree so the build leaves no
`build/` or `*.egg-info` behind in the repository.
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
import sys
import zipfile
from importlib.metadata import entry_points

import pytest
from conftest import REPO

IGNORED = shutil.ignore_patterns(
    ".venv",
    ".git",
    "out",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    "tests",
    "benchmarks",
    "samples",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    shutil.copytree(REPO, src, ignore=IGNORED)
    dist = root / "dist"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            ".",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
        ],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = list(dist.glob("modelkiln-*.whl"))
    assert len(wheels) == 1, wheels
    with zipfile.ZipFile(wheels[0]) as zf:
        yield zf


def names(wheel: zipfile.ZipFile) -> list[str]:
    return wheel.namelist()


def test_wheel_has_only_the_modelkiln_top_level(wheel: zipfile.ZipFile) -> None:
    tops = {name.split("/", 1)[0] for name in names(wheel)}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert len(dist_info) == 1
    assert tops - dist_info == {"modelkiln"}


@pytest.mark.parametrize(
    "path",
    [
        "modelkiln/__init__.py",
        "modelkiln/cli/__init__.py",
        "modelkiln/cli/export.py",
        "modelkiln/precision/__init__.py",
        "modelkiln/benchmark/run.py",
        "modelkiln/manifest.py",
        "modelkiln/runtime.py",
        "modelkiln/py.typed",
        "modelkiln/exporter/__init__.py",
        "modelkiln/exporter/sources.py",
        "modelkiln/exporter/trace.py",
        "modelkiln/exporter/passes.py",
        "modelkiln/backends/__init__.py",
        "modelkiln/backends/registry.py",
        "modelkiln/backends/onnxruntime/backend.py",
        "modelkiln/backends/openvino/__init__.py",
        "modelkiln/targets/__init__.py",
        "modelkiln/targets/target.py",
        "modelkiln/targets/presets/cpu.toml",
    ],
)
def test_wheel_holds(wheel: zipfile.ZipFile, path: str) -> None:
    assert path in names(wheel)


def test_wheel_ships_every_preset_and_module_of_the_source_tree(wheel: zipfile.ZipFile) -> None:
    shipped = set(names(wheel))
    mapping = {
        "modelkiln": "modelkiln",
        "exporter": "modelkiln/exporter",
        "backends": "modelkiln/backends",
        "targets": "modelkiln/targets",
    }
    for folder, package in mapping.items():
        for source in (REPO / folder).rglob("*"):
            if source.suffix in (".py", ".toml") and "__pycache__" not in source.parts:
                rel = source.relative_to(REPO / folder).as_posix()
                assert f"{package}/{rel}" in shipped, f"{folder}/{rel} is not in the wheel"


def test_wheel_declares_the_onnxruntime_backend_entry_point(wheel: zipfile.ZipFile) -> None:
    [ep_file] = [n for n in names(wheel) if n.endswith(".dist-info/entry_points.txt")]
    parser = configparser.ConfigParser()
    parser.read_string(wheel.read(ep_file).decode())
    assert parser["modelkiln.backends"]["onnxruntime"].strip() == (
        "modelkiln.backends.onnxruntime:OnnxRuntimeBackend"
    )
    assert parser["console_scripts"]["kiln"].strip() == "modelkiln.cli:run"


def test_installed_entry_point_resolves_to_a_backend() -> None:
    from modelkiln.backends import Backend, backend_names, get_backend

    eps = {ep.name: ep for ep in entry_points(group="modelkiln.backends")}
    assert "onnxruntime" in eps
    assert "onnxruntime" in backend_names()
    backend = get_backend("onnxruntime")
    assert isinstance(backend, Backend)
    assert backend.name == "onnxruntime"


def test_unknown_backend_is_a_user_error() -> None:
    from modelkiln.backends import get_backend
    from modelkiln.errors import UserInputError

    with pytest.raises(UserInputError, match="onnxruntime"):  # the message lists what exists
        get_backend("no-such-backend")


def test_presets_are_readable_as_package_resources() -> None:
    from modelkiln.targets import load_target, preset_names

    assert "cpu" in preset_names()
    target = load_target("cpu")
    assert target.backend == "onnxruntime"
    assert target.precision == "fp32"
