"""Versions of the tools that shaped an artifact, recorded in its manifest."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

TOOLS = ("modelkiln", "torch", "transformers", "onnx", "onnx-ir", "onnxscript", "onnxruntime")


def tool_versions(names: tuple[str, ...] = TOOLS) -> dict[str, str | None]:
    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
