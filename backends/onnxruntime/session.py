"""The ONNX Runtime session: ORT's own graph fusions happen here, at the artifact's level."""

from __future__ import annotations

from typing import Any

import numpy as np

from modelkiln.artifact import Artifact
from modelkiln.backends.base import Session
from modelkiln.backends.registry import install_hint
from modelkiln.errors import BackendUnavailable, BuildError, InferenceError, first_line
from modelkiln.generation import CacheStepper, empty_cache, step_feeds
from modelkiln.manifest import DecoderSection


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
        # Load-time fusions the build turned off (see backends/onnxruntime/fusions.py).
        disabled = [str(name) for name in section.get("disabled_optimizers", [])]
        extra = {"disabled_optimizers": disabled} if disabled else {}
        try:
            self._session = ort.InferenceSession(
                str(artifact.file("model")), opts, providers=providers, **extra
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

    def cache_stepper(self, decoder: DecoderSection) -> CacheStepper:
        return IoBindingStepper(self, decoder)


class IoBindingStepper:
    """Generation steps with the cache kept in ONNX Runtime's own buffers: each step's
    present key/values are bound as the next step's past (IOBinding), never copied into
    numpy. The prompt's feeds are checked like `run`'s; later steps are the loop's own."""

    def __init__(self, session: OnnxRuntimeSession, decoder: DecoderSection) -> None:
        import onnxruntime as ort

        self.session = session
        self.decoder = decoder
        self.past: dict[str, Any] = {}
        self._ort = ort

    def prefill(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        feeds = step_feeds(self.session.inputs, ids, mask, pos)
        checked = self.session.check(
            {**feeds, **empty_cache(self.session.inputs, self.decoder, len(ids))}
        )
        values = self._ort.OrtValue
        self.past = {n: values.ortvalue_from_numpy(a) for n, a in checked.items() if n not in feeds}
        return self._step({n: checked[n] for n in feeds})

    def next(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        return self._step(step_feeds(self.session.inputs, ids, mask, pos))

    def _step(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        ort_session = self.session._session
        binding = ort_session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name, value in self.past.items():
            binding.bind_ortvalue_input(name, value)
        names = self.session._output_names
        for name in names:
            binding.bind_output(name, "cpu")
        try:
            ort_session.run_with_iobinding(binding, self.session._run_options)
        except Exception as exc:  # ORT raises its own exception types per failure
            shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
            raise InferenceError(
                f"onnxruntime failed generating with {self.session.artifact.path} on {shapes}: "
                f"{first_line(exc)}"
            ) from None
        outputs = dict(zip(names, binding.get_outputs(), strict=True))
        self.past = {}
        for layer in self.decoder.layers:
            self.past[layer.past_key] = outputs[layer.present_key]
            self.past[layer.past_value] = outputs[layer.present_value]
        return np.asarray(outputs["logits"].numpy()[:, -1])
