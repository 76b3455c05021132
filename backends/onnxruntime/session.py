"""The ONNX Runtime session: ORT's own graph fusions happen here, at the artifact's level."""

from __future__ import annotations

import numpy as np

from modelkiln.artifact import Artifact
from modelkiln.backends.base import Session
from modelkiln.backends.registry import install_hint
from modelkiln.errors import BackendUnavailable, BuildError, InferenceError, first_line


class OnnxRuntimeSession(Session):
    def __init__(
        self,
        artifact: Artifact,
        threads: int | None = None,
        providers: list[str] | None = None,
    ) -> None:
        super().__init__(artifact)
        import onnxruntime as ort

        section = artifact.manifest.backend
        providers = providers or [section.get("provider", "CPUExecutionProvider")]
        missing = [p for p in providers if p not in ort.get_available_providers()]
        if missing:
            raise BackendUnavailable(
                f"execution provider(s) {', '.join(missing)} not available; this onnxruntime "
                f"has {', '.join(ort.get_available_providers())}; "
                f"{install_hint('onnxruntime', section.get('device'))}"
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
