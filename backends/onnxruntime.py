"""ONNX Runtime backend: the fallback that runs everywhere.

The artifact holds the portable ONNX model from our passes; ORT's own fusions happen when a
session is created (at the target's graph optimization level), so they never leak into the
model shared with other backends.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelkiln.backends.base import (
    check_device,
    check_options,
    check_precision,
    option_choice,
    option_whole_number,
)
from modelkiln.errors import BackendUnavailable, BuildError, InferenceError, first_line
from modelkiln.runtime import Session

if TYPE_CHECKING:
    import onnx_ir as ir

    from modelkiln.artifact import Artifact
    from modelkiln.targets import Target

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"
DEFAULT_EXTERNAL_DATA_THRESHOLD = 1 << 30  # protobuf cannot hold more than 2 GiB
LEVELS = ("disable", "basic", "extended", "all")
OPTIONS = {"graph_optimization_level", "external_data_threshold_bytes"}
DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# Every precision this backend builds, in the order `--precision auto` tries them.
PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static", "int4-weights")


class OnnxRuntimeBackend:
    name = "onnxruntime"
    precisions = PRECISIONS
    calibrated = ("int8-static",)  # precisions that need calibration samples

    def check(self, target: Target) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(
                "onnxruntime is not installed: pip install onnxruntime"
            ) from None
        check_options(target, self.name, OPTIONS)
        option_choice(target, "graph_optimization_level", LEVELS, "all")
        option_whole_number(target, "external_data_threshold_bytes", 0)
        check_precision(target, self.name, PRECISIONS)
        check_device(target, self.name, DEVICES)
        provider = DEVICES[target.device]
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(
                f"target '{target.name}' needs {provider}, which this onnxruntime lacks "
                f"(it has {', '.join(ort.get_available_providers())})"
            )

    def build(
        self,
        model: ir.Model,
        target: Target,
        out: Path,
        *,
        calibration: Sequence[Mapping[str, np.ndarray]] | None = None,
        keep: Sequence[str] = (),
    ) -> dict[str, Any]:
        import onnx_ir as ir

        if target.precision != "fp32":
            return self._build_reduced(model, target, out, calibration, keep)
        threshold = int(
            target.options.get("external_data_threshold_bytes", DEFAULT_EXTERNAL_DATA_THRESHOLD)
        )
        weight_bytes = sum(
            v.const_value.nbytes
            for v in model.graph.initializers.values()
            if v.const_value is not None
        )
        files = {"model": MODEL_FILE}
        if weight_bytes > threshold:
            ir.save(model, out / MODEL_FILE, external_data=WEIGHTS_FILE, size_threshold_bytes=1024)
            files["weights"] = WEIGHTS_FILE
        else:
            ir.save(model, out / MODEL_FILE)
        return self._section(target, files)

    def _section(self, target: Target, files: dict[str, str], **extra: Any) -> dict[str, Any]:
        """The manifest's backend section, whatever the precision."""
        import onnxruntime as ort

        return {
            "name": self.name,
            "files": files,
            "device": target.device,
            "provider": DEVICES[target.device],
            "graph_optimization_level": target.options.get("graph_optimization_level", "all"),
            "onnxruntime_version": ort.__version__,
            **extra,
        }

    def _build_reduced(
        self,
        model: ir.Model,
        target: Target,
        out: Path,
        calibration: Sequence[Mapping[str, np.ndarray]] | None,
        keep: Sequence[str],
    ) -> dict[str, Any]:
        import onnx_ir as ir

        from modelkiln.backends.ort_quantize import quantize

        record = quantize(
            ir.serde.serialize_model(model),
            target.precision,
            out / MODEL_FILE,
            calibration=calibration,
            keep=keep,
            calibration_cache=self._calibration_cache(model, calibration),
        )
        return self._section(target, {"model": MODEL_FILE}, quantization=record)

    def _calibration_cache(
        self, model: ir.Model, calibration: Sequence[Mapping[str, np.ndarray]] | None
    ) -> Path | None:
        """A per-process JSON file of activation ranges for this model and calibration set:
        the mixed-precision search rebuilds one model many times with the same samples."""
        if not calibration:
            return None
        if getattr(self, "_scratch", None) is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="kiln-ort-calibration-")
        shapes = [tuple(sorted((k, v.shape) for k, v in f.items())) for f in calibration]
        key = hashlib.sha256(repr((id(model), id(calibration), shapes)).encode()).hexdigest()
        return Path(self._scratch.name) / f"{key[:20]}.json"

    def load(self, artifact: Artifact, **options: Any) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(artifact, **options)


class OnnxRuntimeSession(Session):
    def __init__(
        self,
        artifact: Artifact,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        super().__init__(artifact)
        import onnxruntime as ort

        section = artifact.manifest["backend"]
        providers = providers or [section.get("provider", "CPUExecutionProvider")]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(
                f"execution provider(s) {', '.join(missing)} not available; this onnxruntime "
                f"has {', '.join(ort.get_available_providers())}"
            )
        opts = ort.SessionOptions()
        level = section.get("graph_optimization_level", "all")
        opts.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.log_severity_level = 4  # failures surface as exceptions, not log lines
        try:
            self._session = ort.InferenceSession(
                str(artifact.file("model")), opts, providers=providers
            )
        except Exception as exc:  # ORT raises its own exception types per failure
            raise BuildError(
                f"onnxruntime cannot load {artifact.file('model')}: {first_line(exc)}"
            ) from None
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._output_names, feeds, self._run_options)
        except Exception as exc:  # ORT raises its own exception types per failure
            shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
            raise InferenceError(
                f"onnxruntime failed running {self.artifact.path} on {shapes}: {first_line(exc)}"
            ) from None
        return dict(zip(self._output_names, values, strict=True))
