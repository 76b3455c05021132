"""`kiln inspect`: what an artifact or an .onnx file holds, without running it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.artifact import MANIFEST, Artifact
from modelkiln.errors import ArtifactError
from modelkiln.onnx_proto import iter_graphs, load_proto


def describe(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir() and (path / MANIFEST).is_file():
        artifact = Artifact.open(path)
        m = artifact.manifest
        info = {
            "kind": "artifact",
            "path": str(path),
            "name": m.get("name"),
            "task": m.get("task"),
            "target": m.get("target", {}).get("name"),
            "backend": artifact.backend,
            "precision": m.get("precision"),
            "source": m.get("source", {}).get("path"),
            "inputs": m["inputs"],
            "outputs": m["outputs"],
            "passes": m.get("passes", []),
            "validation": _validation_summary(m.get("validation", {})),
            "accuracy": m.get("accuracy"),
            "size_bytes": sum(int(e["size"]) for e in m.get("files", {}).values()),
            "files": m.get("files", {}),
        }
        model_file = artifact.file("model")
        if model_file.suffix == ".onnx":
            stats = _graph_stats(model_file)
            del stats["inputs"], stats["outputs"]
            info["graph"] = stats
        return info
    if path.suffix == ".onnx" and path.is_file():
        stats = _graph_stats(path)
        return {
            "kind": "onnx",
            "path": str(path),
            "inputs": stats.pop("inputs"),
            "outputs": stats.pop("outputs"),
            "graph": stats,
            "size_bytes": path.stat().st_size,
        }
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    raise ArtifactError(
        f"{path} is neither a modelkiln artifact (folder with {MANIFEST}) nor an .onnx file"
    )


def _validation_summary(report: dict[str, Any]) -> dict[str, Any]:
    if report.get("skipped"):
        return {"skipped": True, "reason": report.get("reason")}
    return {k: report.get(k) for k in ("passed", "max_abs_diff", "tolerance", "reference")}


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
