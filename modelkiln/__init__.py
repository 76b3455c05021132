"""modelkiln: compiler-style export and deployment of neural networks.

Runtime use (never imports torch or transformers)::

    import modelkiln
    session = modelkiln.load("out/minilm-cpu")
    outputs = session.run({"input_ids": ids, "attention_mask": mask, "token_type_ids": types})

Export (needs the `export` extra)::

    modelkiln.export("path/to/checkpoint", "out/minilm-cpu")
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkiln.backends.base import Session
from modelkiln.errors import (
    BackendUnavailable,
    CheckpointError,
    ExportError,
    FeedError,
    ModelkilnError,
    UserInputError,
    ValidationError,
)
from modelkiln.runtime import load
from modelkiln.tensors import TensorSpec

if TYPE_CHECKING:
    from modelkiln.pipeline import ExportResult

__version__ = "0.1.0"


def export(checkpoint: str | Path, output: str | Path, **options: Any) -> ExportResult:
    """Trace, optimize, build and validate; see `modelkiln.pipeline.export_targets` for
    options. Imports the exporter (torch, transformers) only when called."""
    from modelkiln.pipeline import export as export_one

    return export_one(checkpoint, output, **options)


def bench(artifacts: Any, **options: Any) -> dict[str, Any]:
    """Latency, throughput and memory of artifacts (and a PyTorch baseline); returns what
    `kiln bench --json` writes. See `modelkiln.benchmark.run.bench` for options."""
    from modelkiln.benchmark.run import bench as run_bench

    return run_bench(artifacts, **options)


__all__ = [
    "BackendUnavailable",
    "CheckpointError",
    "ExportError",
    "FeedError",
    "ModelkilnError",
    "Session",
    "TensorSpec",
    "UserInputError",
    "ValidationError",
    "bench",
    "export",
    "load",
]
