"""A modelkiln backend plugin: ONNX Runtime with parallel execution of independent nodes.

modelkiln finds this class through the `modelkiln.backends` entry point in pyproject.toml,
reads what it declares it builds (`precisions`, and `calibrated`: those that need calibration
samples), and calls, in order:

- `check(target)` before any work, to refuse a target it cannot build for (within seconds);
- `build(request)` to write the deployable files into the staging folder `request.out` and
  return the manifest's backend section (a `BackendSection`);
- `load(artifact, **options)` to open a built artifact, both to validate the export and
  later from `modelkiln.load()` and `kiln validate`.

Only modelkiln's public modules are used: the contract in `modelkiln.backends.base`
(`BuildRequest`, `Session`), `modelkiln.manifest.BackendSection`, `modelkiln.errors`,
`modelkiln.artifact`, `modelkiln.precision.Precision`, `modelkiln.targets` and the target
checks in `modelkiln.backends.target_checks` (they word refusals the way the built-in
backends do).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from modelkiln.artifact import Artifact
from modelkiln.backends.base import BuildRequest, Session
from modelkiln.backends.target_checks import (
    check_device,
    check_options,
    check_precision,
    option_whole_number,
)
from modelkiln.errors import (
    BackendUnavailable,
    BuildError,
    InferenceError,
    UserInputError,
    first_line,
)
from modelkiln.manifest import BackendSection
from modelkiln.precision import Precision
from modelkiln.targets import Target

MODEL_FILE = "model.onnx"
# Target options and their defaults; 0 lets ONNX Runtime choose the number of threads.
OPTIONS = {"inter_op_threads": 0, "intra_op_threads": 0}


class OrtParallelBackend:
    name = "ort-parallel"  # the entry-point name; recorded in the manifest for `load`
    precisions = (Precision.FP32,)  # what it builds
    calibrated: frozenset[Precision] = frozenset()  # none of them needs calibration

    def check(self, target: Target) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise BackendUnavailable(
                "backend 'ort-parallel' needs onnxruntime: pip install onnxruntime"
            ) from None
        check_options(target, self.name, OPTIONS)
        for key, default in OPTIONS.items():
            option_whole_number(target, key, default)
        check_device(target, self.name, ["cpu"])
        check_precision(target, self.name, self.precisions)

    def build(self, request: BuildRequest) -> BackendSection:
        import onnxruntime as ort

        target: Target = request.target
        out: Path = request.out
        # One self-contained file; models over 2 GiB would need ir.save(external_data=...).
        ir.save(request.model, out / MODEL_FILE)
        details = {
            "execution_mode": "parallel",
            **{key: int(target.options.get(key, default)) for key, default in OPTIONS.items()},
            "onnxruntime_version": ort.__version__,
        }
        # Files by role; "model" is what `kiln inspect` reads.
        return BackendSection(self.name, {"model": MODEL_FILE}, details)

    def load(self, artifact: Artifact, **options: Any) -> OrtParallelSession:
        unknown = sorted(set(options) - {"threads", "inter_op_threads"})
        if unknown:
            raise UserInputError(
                f"ort-parallel sessions take threads= and inter_op_threads=, "
                f"not {', '.join(unknown)}"
            )
        return OrtParallelSession(artifact, **options)


class OrtParallelSession(Session):
    """`Session.run` checks feeds against the manifest, then calls `_run`."""

    def __init__(
        self,
        artifact: Artifact,
        threads: int | None = None,
        inter_op_threads: int | None = None,
    ) -> None:
        super().__init__(artifact)
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(
                f"{artifact.path} needs onnxruntime: pip install onnxruntime"
            ) from None
        section = artifact.manifest.backend
        opts = ort.SessionOptions()
        opts.execution_mode = ort.ExecutionMode.ORT_PARALLEL
        opts.inter_op_num_threads = int(inter_op_threads or section.get("inter_op_threads", 0))
        opts.intra_op_num_threads = int(threads or section.get("intra_op_threads", 0))
        opts.log_severity_level = 3
        model = artifact.file("model")
        try:
            self._session = ort.InferenceSession(
                str(model), opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types
            raise BuildError(f"onnxruntime cannot load {model}: {first_line(exc)}") from None
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            values = self._session.run(self._output_names, feeds)
        except Exception as exc:  # ORT raises its own exception types
            raise InferenceError(
                f"onnxruntime failed running {self.artifact.path}: {first_line(exc)}"
            ) from None
        return dict(zip(self._output_names, values, strict=True))
