"""`kiln inspect`: what an artifact or an .onnx file holds, without running it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.artifact import open_artifact_or_onnx
from modelkiln.errors import ArtifactError
from modelkiln.manifest import Validation
from modelkiln.onnx_proto import iter_graphs, load_proto
from modelkiln.tensors import specs_to_json


def describe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    artifact = open_artifact_or_onnx(path)
    if artifact is not None:
        m = artifact.manifest
        raw = m.to_json()
        info = {
            "kind": "artifact",
            "path": str(path),
            "name": m.name,
            "task": m.task,
            "target": m.target.name,
            "backend": artifact.backend,
            "precision": m.precision,
            "source": m.source.path,
            "inputs": raw["inputs"],
            "outputs": specs_to_json(m.outputs),
            "passes": [p.to_json() for p in m.passes]
            + [{**p.to_json(), "backend": m.backend.name} for p in m.backend.passes],
            "validation": _validation_summary(m.validation),
            "accuracy": None if m.accuracy is None else m.accuracy.to_json(),
            "size_bytes": m.size_bytes,
            "files": raw.get("files", {}),
        }
        model_file = artifact.file("model")
        if model_file.suffix == ".onnx":
            stats = _graph_stats(model_file)
            del stats["inputs"], stats["outputs"]
            info["graph"] = stats
        return info
    stats = _graph_stats(path)
    return {
        "kind": "onnx",
        "path": str(path),
        "inputs": stats.pop("inputs"),
        "outputs": stats.pop("outputs"),
        "graph": stats,
        "size_bytes": path.stat().st_size,
    }


def _validation_summary(report: Validation | None) -> dict[str, Any]:
    if report is None:
        return {"passed": None, "max_abs_diff": None, "tolerance": None, "reference": None}
    if report.skipped:
        return {"skipped": True, "reason": report.reason}
    return {
        "passed": report.passed,
        "max_abs_diff": report.max_abs_diff,
        "tolerance": report.tolerance,
        "reference": report.reference,
    }


def validation_lines(summary: dict[str, Any]) -> list[str]:
    """The validation summary as lines a person reads (not a dict repr)."""
    if summary.get("skipped"):
        return [f"skipped ({summary.get('reason')})"]
    if summary.get("passed") is None:
        return ["not recorded"]
    tolerance = summary.get("tolerance") or {}
    limits = [f"atol {tolerance['atol']:g}"] if "atol" in tolerance else []
    if tolerance.get("min_cosine") is not None:
        limits.append(f"min cosine {tolerance['min_cosine']:g}")
    verdict = "passed" if summary["passed"] else "FAILED"
    lines = [f"{verdict}, max abs diff {summary['max_abs_diff']:.2e}"]
    if limits:
        lines.append(f"tolerance {', '.join(limits)}")
    if summary.get("reference"):
        lines.append(f"against {summary['reference']}")
    return lines


def _graph_stats(path: Path) -> dict[str, Any]:
    proto = load_proto(path, ArtifactError)
    ops: Counter[str] = Counter()
    for graph in iter_graphs(proto.graph):
        for node in graph.node:
            domain = node.domain if node.domain not in ("", "ai.onnx") else ""
            ops[f"{domain}::{node.op_type}" if domain else node.op_type] += 1
    params = sum(int(np.prod(t.dims)) for t in proto.graph.initializer)
    init_names = {t.name for t in proto.graph.initializer}
    return {
        "opset": {o.domain or "ai.onnx": o.version for o in proto.opset_import},
        "nodes": sum(ops.values()),
        "parameters": params,
        "ops": dict(ops.most_common()),
        "inputs": {i.name: _value_info(i) for i in proto.graph.input if i.name not in init_names},
        "outputs": {o.name: _value_info(o) for o in proto.graph.output},
    }


def _value_info(value: Any) -> dict[str, Any]:
    import onnx

    kind = value.type.WhichOneof("value")
    if kind != "tensor_type":
        return {"dtype": kind or "unknown", "shape": None}
    tensor = value.type.tensor_type
    dims = [
        d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim
    ]
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)).name
    except (KeyError, TypeError, ValueError):
        dtype = onnx.TensorProto.DataType.Name(tensor.elem_type).lower()
    return {"dtype": dtype, "shape": dims if tensor.HasField("shape") else None}
