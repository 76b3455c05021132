"""OpenVINO backend: the ONNX model from our passes, saved as OpenVINO IR (`model.xml`/`.bin`).

Build converts the same portable ONNX model the ONNX Runtime backend ships (never the torch
module), saves it as IR with an explicit fp16-weight-compression choice and compiles it once
to check it and record what the device makes of the target's precision. Load compiles with
`PERFORMANCE_HINT` and an explicit `INFERENCE_PRECISION_HINT` from the target: OpenVINO would
otherwise pick bf16 on CPUs that support it and silently change the numerics.

Compiled blobs are cached outside the artifact (`~/.cache/modelkiln/openvino`, or
`$MODELKILN_CACHE_DIR/openvino`), so the second load skips compilation.

openvino is imported inside functions only: importing modelkiln, or loading an artifact built
for another backend, never imports it. Neither importing it nor converting a model sends
OpenVINO's usage telemetry (`no_telemetry`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelkiln.backends.base import (
    check_device,
    check_options,
    check_precision,
    option_choice,
    option_flag,
)
from modelkiln.errors import BackendUnavailable, BuildError, UserInputError

if TYPE_CHECKING:
    import numpy as np
    import onnx_ir as ir

    from modelkiln.artifact import Artifact
    from modelkiln.backends.openvino_session import OpenVinoSession
    from modelkiln.targets import ShapeRange, Target

XML_FILE = "model.xml"
BIN_FILE = "model.bin"
INSTALL = "pip install 'modelkiln[openvino]'"
OPTIONS = {"performance_hint", "compress_to_fp16", "smooth_quant"}
QUANTIZED = ("int8-weights", "int8-static", "int4-weights")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT")
# Our precision names -> OpenVINO's INFERENCE_PRECISION_HINT values.
# Our precision names -> the INFERENCE_PRECISION_HINT each compiles with. Quantized models
# keep f32 for what stays floating point (bf16 would silently change those numerics too).
PRECISIONS = {
    "fp32": "f32",
    "bf16": "bf16",
    "int8-weights": "f32",
    "int8-static": "f32",
    "int4-weights": "f32",
}


_telemetry_lock = threading.Lock()
_telemetry_depth = 0
_telemetry_saved: str | None = None


@contextlib.contextmanager
def no_telemetry() -> Iterator[None]:
    """Keep OpenVINO's Python tools from sending usage telemetry on the user's behalf.

    Importing openvino and every `convert_model` call report to Google Analytics and write
    `~/intel/` (a client id, usage counts) unless the user opted out with
    `opt_in_out --opt_out`, which is global and permanent. The one scoped opt-out is the
    telemetry package's CI switch: the model conversion tools initialise it with
    `disable_in_ci=True`, and it then declines when `CI=true`. So `CI` is set for the
    duration of the block (nesting and threads share one setting) and restored afterwards;
    the user's own later conversions re-initialise telemetry with their own choice.
    """
    global _telemetry_depth, _telemetry_saved
    with _telemetry_lock:
        if _telemetry_depth == 0:
            _telemetry_saved = os.environ.get("CI")
            os.environ["CI"] = "true"
        _telemetry_depth += 1
    try:
        yield
    finally:
        with _telemetry_lock:
            _telemetry_depth -= 1
            if _telemetry_depth == 0:
                if _telemetry_saved is None:
                    os.environ.pop("CI", None)
                else:
                    os.environ["CI"] = _telemetry_saved


def import_openvino() -> Any:
    try:
        with no_telemetry():  # importing openvino sends an "import" event
            import openvino
    except ImportError:
        raise BackendUnavailable(f"openvino is not installed: {INSTALL}") from None
    return openvino


def ov_device(device: str) -> str:
    """Our device names are lower case ("cpu", "gpu.0"); OpenVINO's are upper case."""
    return device.upper()


def ov_message(exc: BaseException) -> str:
    """One useful line from an OpenVINO exception.

    Its messages start with "Exception from src/…/file.cpp:123:" lines (sometimes nested)
    before the actual reason, so the first line alone says nothing.
    """
    text = str(exc).replace("\x1b", "")
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("Exception from ", "Check '")) or line.endswith(".cpp"):
            continue
        return line
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


def compile_config(
    performance_hint: str, precision_hint: str, threads: int | None = None
) -> dict[str, Any]:
    """The properties every compile sets explicitly (also what the build records)."""
    config: dict[str, Any] = {
        "PERFORMANCE_HINT": performance_hint,
        "INFERENCE_PRECISION_HINT": precision_hint,
    }
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return config


def reported_properties(compiled: Any) -> dict[str, Any]:
    """What the compiled model reports back: a CPU without bf16 runs f32 whatever we ask."""

    def prop(name: str) -> Any:
        try:
            return compiled.get_property(name)
        except Exception:  # not every device reports every property
            return None

    precision = prop("INFERENCE_PRECISION_HINT")
    devices = prop("EXECUTION_DEVICES")
    return {
        "inference_precision": precision.to_string() if precision is not None else None,
        "performance_hint": str(prop("PERFORMANCE_HINT")) if prop("PERFORMANCE_HINT") else None,
        "num_streams": _int_or_none(prop("NUM_STREAMS")),
        "inference_num_threads": _int_or_none(prop("INFERENCE_NUM_THREADS")),
        "optimal_number_of_infer_requests": _int_or_none(prop("OPTIMAL_NUMBER_OF_INFER_REQUESTS")),
        "execution_devices": list(devices) if devices else None,
    }


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def port_names(ports: Any, wanted: list[str], kind: str, where: str) -> dict[str, int]:
    """Map each manifest name to the index of the OpenVINO port carrying it.

    OpenVINO keeps ONNX tensor names as port names but may reorder or add aliases, so
    outputs are matched by name, never by position.
    """
    found: dict[str, int] = {}
    for index, port in enumerate(ports):
        for name in port.get_names():
            if name in wanted and name not in found:
                found[name] = index
    missing = [n for n in wanted if n not in found]
    if missing and kind == "output":
        have = sorted({n for p in ports for n in p.get_names()})
        raise BuildError(
            f"{where}: OpenVINO lost the output name(s) {', '.join(missing)} "
            f"(its outputs are named {', '.join(have) or 'nothing'})"
        )
    return found


def bounded_shapes(ov: Any, model: ir.Model, shapes: Mapping[str, ShapeRange]) -> dict[str, Any]:
    """An OpenVINO PartialShape per input with a dimension the target's [shapes] bounds.

    Dimensions are named as in the manifest (an unnamed one `<input>_dim<axis>`); bounded
    dimensions let the CPU plugin size its buffers and pick kernels for the range.
    """
    result = {}
    for value in model.graph.inputs:
        if value.shape is None or not value.name:
            continue
        dims, bounded = [], False
        for axis, dim in enumerate(value.shape):
            name = None if isinstance(dim, int) else str(dim.value or f"{value.name}_dim{axis}")
            if name is None:
                dims.append(ov.Dimension(dim))
            elif name in shapes:
                rng = shapes[name]
                dims.append(
                    ov.Dimension(rng.min) if rng.min == rng.max else ov.Dimension(rng.min, rng.max)
                )
                bounded = True
            else:
                dims.append(ov.Dimension())
        if bounded:
            result[value.name] = ov.PartialShape(dims)
    return result


class OpenVinoBackend:
    name = "openvino"
    precisions = tuple(PRECISIONS)  # the order `--precision auto` tries them
    calibrated = ("int8-static",)

    def __init__(self) -> None:
        # NNCF-quantized models by (model, precision, calibration): the mixed-precision
        # search builds one model many times with different nodes kept float.
        self._quantized: dict[tuple[int, str, int], tuple[Any, dict[str, Any]]] = {}

    def check(self, target: Target) -> None:
        ov = import_openvino()
        check_options(target, self.name, OPTIONS)
        option_choice(target, "performance_hint", PERFORMANCE_HINTS, "LATENCY", ignore_case=True)
        option_flag(target, "compress_to_fp16", False)
        option_flag(target, "smooth_quant", False)
        if target.precision in QUANTIZED:
            from modelkiln.backends.openvino_quantize import import_nncf

            import_nncf()
        check_precision(target, self.name, list(PRECISIONS))
        try:
            available = list(ov.Core().available_devices)
        except Exception as exc:  # a broken install or plugin
            raise BackendUnavailable(
                f"openvino cannot list its devices: {ov_message(exc)}"
            ) from None
        check_device(
            target, self.name, [d.lower() for d in available], available=True, ignore_case=True
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

        ov = import_openvino()
        quantization: dict[str, Any] | None = None
        compress = option_flag(target, "compress_to_fp16", False)
        hint = option_choice(target, "performance_hint", PERFORMANCE_HINTS, "LATENCY", True)
        precision_hint = PRECISIONS[target.precision]
        device = ov_device(target.device)
        # The ONNX file is an intermediate: it lives in a hidden folder inside `out` (same
        # disk as the artifact) that is removed whatever happens, since every file left in
        # `out` becomes part of the artifact. Weights go to external data, so models over
        # protobuf's 2 GiB limit convert too.
        scratch = Path(tempfile.mkdtemp(prefix=".openvino-build-", dir=out))
        try:
            onnx_path = scratch / "model.onnx"
            ir.save(model, onnx_path, external_data="model.onnx.data", size_threshold_bytes=1024)
            try:
                with no_telemetry():
                    ov_model = ov.convert_model(onnx_path)
            except Exception as exc:  # OpenVINO raises its own exception types
                raise BuildError(
                    f"openvino cannot convert the ONNX model: {ov_message(exc)}"
                ) from None
            # Inputs OpenVINO dropped (unused by the graph) have nothing to bound.
            present = {n for port in ov_model.inputs for n in port.get_names()}
            bounds = {
                k: v for k, v in bounded_shapes(ov, model, target.shapes).items() if k in present
            }
            if bounds:
                try:
                    ov_model.reshape(bounds)
                except Exception as exc:  # OpenVINO raises its own exception types
                    ranges = ", ".join(f"{k} {v}" for k, v in bounds.items())
                    raise BuildError(
                        f"openvino cannot bound the inputs of target '{target.name}' to "
                        f"{ranges}: {ov_message(exc)}"
                    ) from None
            input_shapes = {
                port.get_any_name(): port.get_partial_shape().to_string()
                for port in ov_model.inputs
            }
            if target.precision in QUANTIZED:
                ov_model, quantization = self._quantize(model, ov_model, target, calibration, keep)
            try:
                ov.save_model(ov_model, out / XML_FILE, compress_to_fp16=compress)
            except Exception as exc:  # OpenVINO raises its own exception types
                for name in (XML_FILE, BIN_FILE):  # a partial save
                    (out / name).unlink(missing_ok=True)
                raise BuildError(f"openvino cannot save the model: {ov_message(exc)}") from None
            del ov_model
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

        # Compile once (no cache: this folder is a staging folder) so a model the device
        # cannot run fails the build, and record what the device makes of our hints.
        core = ov.Core()
        try:
            compiled = core.compile_model(
                str(out / XML_FILE), device, compile_config(hint, precision_hint)
            )
        except Exception as exc:  # OpenVINO raises its own exception types
            raise BuildError(
                f"openvino cannot compile the model for {device}: {ov_message(exc)}"
            ) from None
        outputs = [v.name for v in model.graph.outputs if v.name]
        port_names(compiled.outputs, outputs, "output", "openvino build")
        reported = reported_properties(compiled)
        del compiled
        return {
            "name": self.name,
            "files": {"model": XML_FILE, "weights": BIN_FILE},
            "device": device,
            "compress_to_fp16": compress,
            # The IR's input shapes: the target's [shapes] ranges become bounded dimensions
            # ("1..256"), a range with min == max a static one.
            "input_shapes": input_shapes,
            "performance_hint": hint,
            "inference_precision_hint": precision_hint,
            # Properties as reported by the build machine's compiled model; a machine that
            # loads the artifact may report others (e.g. f32 on a CPU without bf16).
            "compiled": reported,
            "openvino_version": ov.get_version(),
            **({"quantization": quantization} if quantization else {}),
        }

    def _quantize(
        self,
        model: ir.Model,
        ov_model: Any,
        target: Target,
        calibration: Sequence[Mapping[str, np.ndarray]] | None,
        keep: Sequence[str],
    ) -> tuple[Any, dict[str, Any]]:
        from modelkiln.backends.openvino_quantize import keep_float, quantize

        key = (id(model), target.precision, id(calibration))
        if key not in self._quantized:
            self._quantized[key] = quantize(
                ov_model,
                target.precision,
                calibration=calibration,
                smooth_quant=option_flag(target, "smooth_quant", False),
            )
        quantized, record = self._quantized[key]
        mixed, missing = keep_float(quantized, keep)
        if missing:
            raise BuildError(
                f"cannot keep {', '.join(missing)} in floating point: the model has no such node"
            )
        return mixed, {**record, "kept_fp32": sorted(keep)}

    def load(self, artifact: Artifact, **options: Any) -> OpenVinoSession:
        from modelkiln.backends.openvino_session import OpenVinoSession

        return OpenVinoSession(artifact, **options)


# --------------------------------------------------------------------------- compiled-blob cache


def default_cache_dir() -> Path:
    root = os.environ.get("MODELKILN_CACHE_DIR")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "modelkiln"
    return base / "openvino"


def cache_key(artifact: Artifact, section: dict[str, Any]) -> str | None:
    """A folder name for this artifact's compiled blobs, or None if it cannot be keyed.

    OpenVINO keys CPU blobs on the model path and the device name only, not on the compile
    properties, so without a folder per (model content, device, precision hint) a blob
    compiled for f32 could be reused for bf16 or for a rebuilt artifact at the same path.
    An artifact still being exported (no file hashes in its manifest yet) is not cached:
    its staging path disappears when it is published.
    """
    files = artifact.manifest.get("files") or {}
    hashes = [files.get(section["files"][role], {}).get("sha256") for role in ("model", "weights")]
    if not all(hashes):
        return None
    material = json.dumps(
        [hashes, section.get("device"), section.get("inference_precision_hint")], sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()[:20]


_DEFAULT: Any = object()


def resolve_cache_dir(artifact: Artifact, section: dict[str, Any], cache_dir: Any) -> Path | None:
    """Where this load keeps compiled blobs; None disables the cache.

    An explicit folder that cannot be created is an error; the default folder silently
    falls back to no cache (read-only home directories in containers are common).
    """
    if cache_dir is None or cache_dir is False:
        return None
    explicit = cache_dir is not _DEFAULT
    root = Path(cache_dir).expanduser() if explicit else default_cache_dir()
    art, resolved = artifact.path.resolve(), root.resolve()
    if resolved == art or art in resolved.parents:
        raise UserInputError(
            f"cache_dir {root} is inside the artifact {artifact.path}, which holds only what "
            "its manifest lists; choose a folder outside it"
        )
    key = cache_key(artifact, section)
    if key is None:
        return None
    folder = root / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if explicit:
            raise UserInputError(
                f"cannot create cache_dir {folder}: {exc.strerror or exc}; pass another "
                "cache_dir, or cache_dir=None to compile without a cache"
            ) from None
        return None
    return folder
