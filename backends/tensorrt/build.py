"""ONNX -> serialized TensorRT engine, with the same calls on TensorRT 10 and 11.

The network is strongly typed on both (precision is in the ONNX graph: see cast_pass and
quantize), so no precision flag is ever set; TensorRT 11 ignores the STRONGLY_TYPED flag
(always on), TensorRT 10 needs it. Every `trt.` name used here is listed in api_names.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelkiln.backends.tensorrt.options import BuildOptions
from modelkiln.backends.tensorrt.profiles import Profile
from modelkiln.errors import BuildError, first_line


@dataclass(frozen=True)
class ParsedError:
    """One error of TensorRT's ONNX parser."""

    node: int  # index in the graph, -1 when the error is not about a node
    name: str
    op: str
    desc: str

    def line(self, node_names: Sequence[tuple[str, str]] = ()) -> str:
        name, op = self.name, self.op
        if (not name or not op) and 0 <= self.node < len(node_names):
            name, op = name or node_names[self.node][0], op or node_names[self.node][1]
        if self.node < 0 and not name:
            return self.desc.strip()
        label = f"'{name}'" if name else f"#{self.node}"
        return f"node {label} ({op or '?'}): {self.desc.strip()}"


def parser_message(errors: Sequence[ParsedError], node_names: Sequence[tuple[str, str]]) -> str:
    """One line: the first error naming node, op and reason, and how many more there are."""
    if not errors:
        return "TensorRT's ONNX parser rejected the model without saying why"
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    return f"TensorRT cannot parse the model: {errors[0].line(node_names)}{more}"


def collecting_logger(trt: Any) -> Any:
    """A TensorRT logger that keeps errors for our one-line messages and prints nothing."""

    class Collecting(trt.ILogger):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)

    return Collecting()


def _monitor(trt: Any, report: Any) -> Any:
    """TensorRT's progress monitor: `report(phase, step, steps)` per finished step of a
    top-level phase; phase durations are kept for the manifest."""

    class Monitor(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)
            self.steps: dict[str, int] = {}
            self.started: dict[str, float] = {}
            self.seconds: dict[str, float] = {}
            self.top: set[str] = set()

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            self.steps[phase_name] = num_steps
            self.started[phase_name] = time.perf_counter()
            if parent_phase is None:
                self.top.add(phase_name)

        def step_complete(self, phase_name: str, step: int) -> bool:
            if phase_name in self.top:
                report(phase_name, step + 1, self.steps.get(phase_name, 0))
            return True  # False would cancel the build

        def phase_finish(self, phase_name: str) -> None:
            if phase_name in self.top:
                start = self.started.get(phase_name, time.perf_counter())
                self.seconds[phase_name] = round(time.perf_counter() - start, 3)

    return Monitor()


def build_engine(
    trt: Any,
    onnx_path: Path,
    profiles: Sequence[Profile],
    options: BuildOptions,
    node_names: Sequence[tuple[str, str]],
    timing_cache: Path | None,
    report: Any,
) -> tuple[bytes, dict[str, Any]]:
    """(the serialized engine, what the build recorded). Parser and build failures are one
    BuildError line."""
    logger = collecting_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = []
        for index in range(parser.num_errors):
            error = parser.get_error(index)
            errors.append(
                ParsedError(error.node(), error.node_name(), error.node_operator(), error.desc())
            )
        raise BuildError(parser_message(errors, node_names))
    config = builder.create_builder_config()
    if options.workspace_mib is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    config.builder_optimization_level = options.builder_optimization_level
    if options.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    config.hardware_compatibility_level = {
        "none": trt.HardwareCompatibilityLevel.NONE,
        "ampere_plus": trt.HardwareCompatibilityLevel.AMPERE_PLUS,
        "same_compute_capability": trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY,
    }[options.hardware_compatibility_level]
    for shapes in profiles:
        profile = builder.create_optimization_profile()
        for name, io in shapes.items():
            profile.set_shape(name, io.min, io.opt, io.max)
        config.add_optimization_profile(profile)
    monitor = _monitor(trt, report)
    config.progress_monitor = monitor
    reused = False
    if timing_cache is not None:
        blob = timing_cache.read_bytes() if timing_cache.is_file() else b""
        cache = config.create_timing_cache(blob)
        reused = bool(blob) and config.set_timing_cache(cache, False)
        if not reused:
            config.set_timing_cache(config.create_timing_cache(b""), False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        why = logger.errors[-1] if logger.errors else "no reason given"
        raise BuildError(f"TensorRT could not build the engine: {first_line(Exception(why))}")
    if timing_cache is not None:
        cache = config.get_timing_cache()
        _store(timing_cache, bytes(cache.serialize()))
    details = {
        "timing_cache": {"path": str(timing_cache), "reused": reused} if timing_cache else None,
        "build_phases": dict(monitor.seconds),
    }
    return bytes(plan), details


def _store(path: Path, blob: bytes) -> None:
    """Write the timing cache atomically; a failure only means no reuse next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
        os.replace(tmp, path)
    except OSError:
        pass
