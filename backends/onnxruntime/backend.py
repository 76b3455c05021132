"""ONNX Runtime backend: the fallback that runs everywhere.

The artifact holds the model from the shared passes plus this backend's own: ONNX Runtime's
contrib-op fusions (`fusions.py`, target option `ort_fusions`) on a copy, so they never reach
the model other backends build from; ORT's load-time optimizer runs on top when a session is
created (at the target's graph optimization level). Reduced precisions quantize the fused
graph (int8-smooth first splits the feed-forward blocks' outlier channels off in float,
`outlier_split.py`, and smooths the other MatMul inputs, `smooth_quant.py`; target option
`outlier_channels`, default 8 per block, 0 turns the split off).
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import modelkiln.backends.onnxruntime.fusions as fusions
import modelkiln.backends.onnxruntime.unpadded_attention as unpadded_attention
from modelkiln.backends.base import BuildRequest
from modelkiln.backends.onnxruntime.outlier_split import DEFAULT_CHANNELS
from modelkiln.backends.onnxruntime.quantize import Int4Settings, quantize, smoothed_for_int8
from modelkiln.backends.onnxruntime.session import OnnxRuntimeSession
from modelkiln.backends.registry import install_hint
from modelkiln.backends.target_checks import (
    check_device,
    check_options,
    check_precision,
    option_choice,
    option_flag,
    option_whole_number,
)
from modelkiln.errors import BackendUnavailable, UserInputError
from modelkiln.manifest import BackendSection, PassRecord
from modelkiln.precision.names import Precision

if TYPE_CHECKING:
    from modelkiln.artifact import Artifact
    from modelkiln.targets import Target

MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "model.onnx.data"
DEFAULT_EXTERNAL_DATA_THRESHOLD = 1 << 30  # protobuf cannot hold more than 2 GiB
LEVELS = ("disable", "basic", "extended", "all")
OPTIONS = {
    "graph_optimization_level",
    "external_data_threshold_bytes",
    "int4_block_size",
    "int4_accuracy_level",
    "ort_fusions",
    "smooth_quant_alpha",
    "outlier_channels",
    "unpadded_attention",
}
BLOCK_SIZES = (16, 32, 64, 128, 256)
DEVICES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
# Every precision this backend builds, in the order `--precision auto` tries them.
PRECISIONS = (
    Precision.FP32,
    Precision.FP16,
    Precision.INT8_DYNAMIC,
    Precision.INT8_SMOOTH,
    Precision.INT8_STATIC,
    Precision.INT4_WEIGHTS,
)


def _int4_settings(target: Target) -> Int4Settings:
    """`int4_block_size` (16..256, a power of two) and `int4_accuracy_level` (0, 1, 2, 4)."""
    default = Int4Settings()
    block = option_whole_number(target, "int4_block_size", default.block_size, minimum=16)
    if block not in BLOCK_SIZES:
        raise UserInputError(
            f"target '{target.name}': int4_block_size must be one of "
            f"{', '.join(map(str, BLOCK_SIZES))}, got {block}"
        )
    level = option_whole_number(target, "int4_accuracy_level", default.accuracy_level)
    if level not in (0, 1, 2, 4):
        raise UserInputError(
            f"target '{target.name}': int4_accuracy_level must be 0, 1, 2 or 4, got {level}"
        )
    return Int4Settings(block, level)


# SmoothQuant's migration strength: `auto` builds each and keeps the best on the calibration
# samples (0.7 won on MiniLM; the paper's default is 0.5).
ALPHAS = (0.5, 0.6, 0.7, 0.8)


def _alphas(target: Target) -> tuple[float, ...]:
    value = target.options.get("smooth_quant_alpha", "auto")
    if value == "auto":
        return ALPHAS
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise UserInputError(
            f"target '{target.name}': smooth_quant_alpha must be \"auto\" or a number in "
            f"(0, 1], got {value!r}"
        )
    return (float(value),)


def _wrap_file(path: Path, passes: list[PassRecord]) -> None:
    """`unpadded_attention` on a model the quantization tools wrote (one file: they keep
    weights inline), rewritten only when it has a node to wrap."""
    import onnx_ir as ir

    if path.stat().st_size >= DEFAULT_EXTERNAL_DATA_THRESHOLD:
        return
    model = ir.load(path)
    if unpadded_attention.applies(model):
        passes.append(unpadded_attention.wrap(model))
        ir.save(model, path)


class OnnxRuntimeBackend:
    name = "onnxruntime"
    precisions = PRECISIONS
    calibrated = frozenset({Precision.INT8_STATIC, Precision.INT8_SMOOTH})

    def __init__(self) -> None:
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        # Per model and calibration set: (channel maxima and fp32 outputs, the chosen alpha).
        self._smoothing: dict[Path, tuple[Any, float]] = {}

    def check(self, target: Target) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BackendUnavailable(
                f"onnxruntime is not installed: {install_hint(self.name)}"
            ) from None
        check_options(target, self.name, OPTIONS)
        option_choice(target, "graph_optimization_level", LEVELS, "all")
        option_whole_number(target, "external_data_threshold_bytes", 0)
        option_choice(target, "ort_fusions", fusions.CHOICES, fusions.AUTO)
        _int4_settings(target)
        _alphas(target)
        option_whole_number(target, "outlier_channels", DEFAULT_CHANNELS, minimum=0)
        option_flag(target, "unpadded_attention", True)
        check_precision(target, self.name, PRECISIONS)
        check_device(target, self.name, DEVICES)
        provider = DEVICES[target.device]
        if provider not in ort.get_available_providers():
            raise BackendUnavailable(
                f"target '{target.name}' needs {provider}, which this onnxruntime lacks "
                f"(it has {', '.join(ort.get_available_providers())}); "
                f"{install_hint(self.name, target.device)}"
            )

    def build(self, request: BuildRequest) -> BackendSection:
        import onnx_ir as ir  # for building only: loading an artifact does not need it

        target, model, out = request.target, request.model, request.out
        precision = request.precision
        extra: dict[str, Any] = {}
        asked = option_choice(target, "ort_fusions", fusions.CHOICES, fusions.AUTO)
        level = fusions.resolve(asked, precision)
        on_cpu = DEVICES[target.device] == "CPUExecutionProvider"
        fused = fusions.fuse(model, level, skip_norms=not on_cpu)
        model, passes = fused.model, fused.passes
        extra["ort_fusions"] = {"level": level, "asked": asked, **fused.record()}
        float_nodes: list[str] = []
        if precision is Precision.INT8_SMOOTH:  # on the fused graph: it rewrites BiasGelu blocks
            model, extra["smooth_quant"], float_nodes = self._smoothed(request, model)
        if on_cpu:  # see fusions: the CPU kernels of Skip*Normalization are the slow ones
            extra["disabled_optimizers"] = list(fusions.CPU_DISABLED_OPTIMIZERS)
        unpadded = on_cpu and option_flag(target, "unpadded_attention", True)
        if precision is not Precision.FP32:
            extra["quantization"] = quantize(
                ir.serde.serialize_model(model),
                precision,
                out / MODEL_FILE,
                calibration=request.calibration,
                keep=sorted(request.keep_float),
                also_float=float_nodes,
                calibration_cache=self._calibration_cache(request),
                int4=_int4_settings(target),
            )
            if unpadded:
                _wrap_file(out / MODEL_FILE, passes)
            return self._section(target, {"model": MODEL_FILE}, passes, **extra)
        if unpadded and unpadded_attention.applies(model):
            if model is request.model:  # unfused: the shared graph, which others build from
                model = model.clone()
            passes.append(unpadded_attention.wrap(model))
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
        return self._section(target, files, passes, **extra)

    def _smoothed(self, request: BuildRequest, model: Any) -> tuple[Any, dict[str, Any], list[str]]:
        """`model` (the fused graph) prepared for int8-smooth, its record and the nodes to
        leave float. The mixed-precision search rebuilds one model many times with the same
        calibration set: after the first build, this process reuses its calibration
        statistics and the alpha it chose."""
        alphas = _alphas(request.target)
        channels = option_whole_number(
            request.target, "outlier_channels", DEFAULT_CHANNELS, minimum=0
        )
        key = self._calibration_cache(request)
        stats, chosen = self._smoothing.get(key, (None, None)) if key else (None, None)
        if chosen is not None and len(alphas) > 1:
            alphas = (chosen,)
        model, record, stats, float_nodes = smoothed_for_int8(
            model, request.calibration, sorted(request.keep_float), alphas, stats, channels
        )
        if key is not None:
            self._smoothing[key] = (stats, chosen if chosen is not None else record["alpha"])
        return model, record, float_nodes

    def _section(
        self, target: Target, files: dict[str, str], passes: list[PassRecord], **extra: Any
    ) -> BackendSection:
        """The manifest's backend section, whatever the precision."""
        import onnxruntime as ort

        details = {
            "device": target.device,
            "provider": DEVICES[target.device],
            "graph_optimization_level": target.options.get("graph_optimization_level", "all"),
            "onnxruntime_version": ort.__version__,
            **extra,
        }
        return BackendSection(self.name, files, details, passes=passes)

    def _calibration_cache(self, request: BuildRequest) -> Path | None:
        """A per-process JSON file of activation ranges for this model and calibration set:
        the mixed-precision search rebuilds one model many times with the same samples."""
        calibration = request.calibration
        if not calibration:
            return None
        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="kiln-ort-calibration-")
        shapes = [tuple(sorted((k, v.shape) for k, v in f.items())) for f in calibration]
        material = repr((id(request.model), id(calibration), shapes))
        key = hashlib.sha256(material.encode()).hexdigest()
        return Path(self._scratch.name) / f"{key[:20]}.json"

    def load(self, artifact: Artifact, **options: Any) -> OnnxRuntimeSession:
        return OnnxRuntimeSession(artifact, **options)
