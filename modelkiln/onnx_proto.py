"""Reading ONNX files as protobuf without their weights (for checks and statistics)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from modelkiln.errors import ModelkilnError


def load_proto(path: Path, error: type[ModelkilnError]) -> Any:
    """The `onnx.ModelProto` at `path` without external data; `error` if it is not ONNX."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise error(f"{path} is not a readable ONNX model: {exc}") from None


def iter_graphs(graph: Any) -> Iterator[Any]:
    """`graph` and every sub-graph nested in its nodes' attributes (If, Loop, Scan bodies)."""
    pending = [graph]
    while pending:
        current = pending.pop()
        yield current
        for node in current.node:
            for attr in node.attribute:
                if attr.HasField("g"):
                    pending.append(attr.g)
                pending.extend(attr.graphs)
