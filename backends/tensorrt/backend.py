"""TensorRT backend: the ONNX model from our passes built into a TensorRT engine.

Precision lives in the ONNX graph, the same way on TensorRT 10 and 11 (11 removed the
precision builder flags and the int8 calibrator): fp16/bf16 by a cast pass
(`cast_pass`), int8 as Q/DQ from calibration (`quantize`), built as a strongly typed
network. Optimization profiles come from the target's shape ranges (`profiles`), the
timing cache lives in the build cache folder (`--cache-dir`; none with `--no-cache`) and is
reused by later builds, and the
manifest records TensorRT, CUDA, GPU, compute capability and the compatibility flags that
`load` checks (`compat`). `import tensorrt` happens only when a method needs it, so this
module (and `kiln targets`) works on a machine without it.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkiln.backends.base import BuildRequest
from modelkiln.backends.target_checks import check_device, check_precision
from modelkiln.backends.tensorrt.build import build_engine
from modelkiln.backends.tensorrt.options import build_options
from modelkiln.backends.tensorrt.profiles import build_profiles
from modelkiln.backends.tensorrt.runtime_info import (
    import_cudart,
    import_tensorrt,
    tensorrt_major,
    this_machine,
)
from modelkiln.manifest import BackendSection
from modelkiln.precision.names import Precision
from modelkiln.tensors import TensorSpec

if TYPE_CHECKING:
    import onnx_ir as ir

    from modelkiln.artifact import Artifact
    from modelkiln.backends.tensorrt.session import TensorRtSession
    from modelkiln.targets import Target

ENGINE_FILE = "model.engine"
PRECISIONS = (Precision.FP32, Precision.FP16, Precision.BF16, Precision.INT8_STATIC)
DEVICES = ("cuda",)


def input_specs(model: ir.Model) -> dict[str, TensorSpec]:
    """The graph inputs as TensorSpecs, unnamed dynamic dims named as the manifest names
    them (`<input>_dim<i>`)."""
    specs = {}
    for value in model.graph.inputs:
        dims: list[int | str] = []
        for i, dim in enumerate(value.shape or ()):
            if isinstance(dim, int):
                dims.append(dim)
            else:
                dims.append(str(dim.value) if dim.value else f"{value.name}_dim{i}")
        dtype = value.dtype.numpy().name if value.dtype is not None else "float32"
        specs[str(value.name)] = TensorSpec(dtype, tuple(dims))
    return specs


def timing_cache_path(
    cache_dir: Path, tensorrt_version: str, compute_capability: str, gpu: str
) -> Path:
    """One timing cache per TensorRT version and GPU, beside the build cache's models."""
    slug = re.sub(r"[^A-Za-z0-9.]+", "-", gpu).strip("-").lower() or "gpu"
    name = f"timing-{tensorrt_version}-sm{compute_capability}-{slug}.cache"
    return cache_dir / "tensorrt" / name


class TensorRtBackend:
    name = "tensorrt"
    precisions = PRECISIONS
    calibrated = frozenset({Precision.INT8_STATIC})

    def check(self, target: Target) -> None:
        # Whether this machine can run TensorRT at all first, as the other backends do: an
        # artifact's check (kiln bench, serve) asks exactly that.
        trt, cudart = import_tensorrt(), import_cudart()
        build_options(target, self.name)
        check_precision(target, self.name, self.precisions)
        check_device(target, self.name, DEVICES)
        this_machine(trt, cudart)

    def lint(self, model: ir.Model, target: Target) -> list[str]:
        """The static check: what TensorRT's ONNX parser would refuse, one line each."""
        from modelkiln.backends.tensorrt.lint import default_version, lint_model

        # The installed TensorRT's operator support, else TensorRT 10's.
        return [str(finding) for finding in lint_model(model, trt_major=default_version())]

    def build(self, request: BuildRequest) -> BackendSection:
        import onnx_ir as ir

        trt = import_tensorrt()
        here = this_machine(trt, import_cudart())
        target = request.target
        options = build_options(target, self.name)
        model, method = self._with_precision(request)
        profiles = build_profiles(input_specs(model), options.profiles)
        timing = (
            timing_cache_path(
                request.cache_dir, here.tensorrt_version, here.compute_capability, here.gpu
            )
            if options.timing_cache and request.cache_dir is not None
            else None
        )
        scratch = Path(tempfile.mkdtemp(prefix=".tensorrt-build-", dir=request.out))
        try:  # the ONNX file is an intermediate: nothing of it stays in the artifact
            onnx_path = scratch / "model.onnx"
            ir.save(model, onnx_path, external_data="model.onnx.data", size_threshold_bytes=1024)
            node_names = [(n.name or "", n.op_type) for n in model.graph]
            plan, recorded = build_engine(
                trt, onnx_path, profiles, options, node_names, timing, _report
            )
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        (request.out / ENGINE_FILE).write_bytes(plan)
        record = here.__class__(
            **{
                **here.to_details(),
                "version_compatible": options.version_compatible,
                "hardware_compatibility_level": options.hardware_compatibility_level,
            }
        )
        details = {
            "device": target.device,
            **record.to_details(),
            "tensorrt_major": tensorrt_major(trt),
            "builder_optimization_level": options.builder_optimization_level,
            "workspace_mib": options.workspace_mib,
            "profiles": [{n: io.to_json() for n, io in p.items()} for p in profiles],
            "precision_method": method,
            **recorded,
        }
        return BackendSection(self.name, {"model": ENGINE_FILE}, details)

    def _with_precision(self, request: BuildRequest) -> tuple[ir.Model, dict[str, Any]]:
        """A copy of the model with the precision written into it, and how."""
        import onnx_ir as ir

        precision = request.precision
        model = ir.from_proto(ir.to_proto(request.model))  # the shared model stays as it is
        if precision is Precision.FP32:
            return model, {"kind": "fp32"}
        if precision.half:
            from modelkiln.backends.tensorrt.cast_pass import KEEP_FLOAT, CastToHalf

            dtype = ir.DataType.FLOAT16 if precision is Precision.FP16 else ir.DataType.BFLOAT16
            CastToHalf(dtype, keep_nodes=request.keep_float)(model)
            return model, {
                "kind": "cast pass (strongly typed network)",
                "dtype": dtype.name.lower(),
                "fp32_ops": sorted(KEEP_FLOAT),
                "fp32_nodes": sorted(request.keep_float),
            }
        from modelkiln.backends.tensorrt.quantize import quantize_qdq

        quantized, record = quantize_qdq(
            ir.serde.serialize_model(model).SerializeToString(),
            request.calibration,
            sorted(request.keep_float),
        )
        import onnx

        return ir.from_proto(onnx.load_from_string(quantized)), {"kind": "Q/DQ", **record}

    def load(self, artifact: Artifact, threads: int | None = None) -> TensorRtSession:
        """`threads` is accepted like other backends' and has no effect on a GPU."""
        from modelkiln.backends.tensorrt.session import TensorRtSession

        return TensorRtSession(artifact)


def _report(phase: str, step: int, steps: int) -> None:
    import logging

    logging.getLogger("modelkiln.tensorrt").info("%s: %d/%d", phase, step, steps)
