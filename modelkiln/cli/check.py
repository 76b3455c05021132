"""`kiln check`: the static TensorRT check of an artifact's or an .onnx file's graph."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from modelkiln.artifact import open_artifact_or_onnx
from modelkiln.cli.common import handle_errors, out
from modelkiln.errors import ArtifactError, UserInputError, first_line
from modelkiln.targets import load_target

if TYPE_CHECKING:
    import onnx_ir as ir

WHAT = (
    "ops and domains its ONNX parser has no importer for, tensor types it lacks (DOUBLE, UINT8 "
    "inside the network, quantized types outside Q/DQ), inputs it needs as constants, non-zero "
    "quantization zero points and attribute values it does not take"
)


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--target",
    "target_name",
    default="nvidia-gpu",
    show_default=True,
    help="TensorRT target (built-in name or .toml file) to check against.",
)
@click.option(
    "--tensorrt-version",
    type=click.Choice(["10", "11"]),
    default=None,
    help="TensorRT major version whose operator support to use (default: the installed "
    "TensorRT's, else 10).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@handle_errors
def check(path: Path, target_name: str, tensorrt_version: str | None, as_json: bool) -> None:
    """Check that TensorRT can take the graph of PATH (an artifact folder or an .onnx file).

    \b
    Reports, node by node, everything TensorRT's ONNX parser would refuse: ops and domains
    it has no importer for (e.g. com.microsoft fusions, MatMulInteger, DynamicQuantizeLinear,
    Unique, Sequence ops), tensor types it lacks (DOUBLE, UINT8 inside the network, INT8/FP8
    outside Q/DQ), inputs it needs as constants (Reduce axes, Squeeze/Unsqueeze axes, ...),
    non-zero QuantizeLinear/DequantizeLinear zero points and attribute values it does not
    take, per TensorRT's published operator support matrix. Runs anywhere: no GPU and no
    TensorRT needed. Exit code 0 when the graph is clean, 1 when something is found.
    """
    from modelkiln.backends.tensorrt.lint import count_nodes, default_version, lint_model

    target = load_target(target_name)
    if target.backend != "tensorrt":
        raise UserInputError(
            f"target '{target.name}' uses backend '{target.backend}'; kiln check knows "
            f"TensorRT's static check only ({WHAT}): pass a TensorRT target such as nvidia-gpu"
        )
    model_file = _onnx_file(path)
    model = _load(model_file)
    version = int(tensorrt_version) if tensorrt_version else default_version()
    findings = lint_model(model, version)
    nodes = count_nodes(model)
    against = f"TensorRT {version}'s ONNX parser support"
    if as_json:
        result = {
            "path": str(path),
            "model": str(model_file),
            "target": target.name,
            "tensorrt_version": version,
            "nodes": nodes,
            "findings": [f.to_json() for f in findings],
            "passed": not findings,
        }
        click.echo(json.dumps(result, indent=2))
    elif findings:
        for finding in findings:
            out.print(str(finding), markup=False)
        noun = "problem" if len(findings) == 1 else "problems"
        out.print(f"FAILED: {len(findings)} {noun} in {nodes} nodes checked against {against}")
    else:
        out.print(f"clean: {nodes} nodes checked against {against}")
    sys.exit(1 if findings else 0)


def _onnx_file(path: Path) -> Path:
    """The ONNX file to check: PATH itself, or the ONNX model an artifact recorded."""
    artifact = open_artifact_or_onnx(path)
    if artifact is None:
        return path
    files = artifact.manifest.backend.files
    for role in ("onnx", "model", *files):
        if role in files and files[role].endswith(".onnx"):
            return path / files[role]
    listed = ", ".join(f"{role} {name}" for role, name in files.items()) or "none"
    raise ArtifactError(f"{path} holds no ONNX model to check (its files: {listed})")


def _load(path: Path) -> ir.Model:
    import onnx_ir as ir

    if not path.is_file():
        raise ArtifactError(f"{path} does not exist (the artifact records it)")
    try:
        return ir.load(path)
    except Exception as exc:  # protobuf, OSError, bad external data: one line for all
        raise ArtifactError(f"{path} is not a readable ONNX model: {first_line(exc)}") from None
