"""One build of one precision, opened for measuring: what the auto search compares and the
pipeline ships. Every reduced-precision build goes through `build_request`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkiln.artifact import Artifact
from modelkiln.backends.base import Backend, BuildRequest, Session
from modelkiln.manifest import Accuracy, BackendSection
from modelkiln.precision.evaluation import Evaluation
from modelkiln.prepare import Prepared
from modelkiln.targets import Target


def build_request(
    prepared: Prepared,
    target: Target,
    backend: Backend,
    out: Path,
    evaluation: Evaluation | None,
    keep: Iterable[str] = (),
) -> BuildRequest:
    """The request for `target`'s precision: calibration samples for those that need them
    (the same list object every time, so backends can cache per calibration set)."""
    calibration = (
        evaluation.calibration
        if evaluation is not None and target.precision in backend.calibrated
        else ()
    )
    return BuildRequest(
        prepared.model, target, out, calibration, frozenset(keep), prepared.cache_dir
    )


def build_and_open(
    prepared: Prepared, backend: Backend, request: BuildRequest
) -> tuple[BackendSection, Session]:
    """Build `request` and open the result as the artifact it would become."""
    section = backend.build(request)
    manifest = prepared.manifest(request.out.name, request.target, section)
    return section, backend.load(Artifact(request.out, manifest))


# Where each op quantization touches keeps its constant weight: MatMul/Gemm/Conv their second
# input, Gather (embedding tables, quantized by int8-dynamic and int8-static) its first.
WEIGHT_INPUT = {"MatMul": 1, "Gemm": 1, "Conv": 1, "Gather": 0}


def quantizable_nodes(model: Any) -> list[str]:
    """Names of the nodes quantization touches (those ops with a constant floating-point
    weight), in graph order: the units mixed precision can keep in floating point."""
    names = []
    for node in model.graph:
        position = WEIGHT_INPUT.get(node.op_type)
        if position is None or not node.name or len(node.inputs) <= position:
            continue
        weight = node.inputs[position]
        const = weight.const_value if weight is not None else None
        if const is not None and const.dtype.is_floating_point():
            names.append(node.name)
    return names


@dataclass
class Candidate:
    precision: str
    keep: tuple[str, ...] = ()
    folder: Path | None = None
    section: BackendSection | None = None
    accuracy: Accuracy | None = None
    latency_ms: float | None = None
    size_bytes: int | None = None
    misses: list[str] = field(default_factory=list)
    error: str | None = None

    @property
    def label(self) -> str:
        if self.keep:
            return f"{self.precision} mixed ({len(self.keep)} kept float)"
        return self.precision

    @property
    def passed(self) -> bool:
        return self.error is None and not self.misses and self.accuracy is not None

    def row(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "label": self.label,
            "kept_float": list(self.keep),
            "latency_ms": None if self.latency_ms is None else round(self.latency_ms, 3),
            "size_bytes": self.size_bytes,
            "accuracy": None if self.accuracy is None else self.accuracy.to_json(),
            "passed": self.passed,
            "misses": self.misses,
            "error": self.error,
        }
