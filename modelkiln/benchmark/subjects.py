"""Loading what `kiln bench` measures: backend checks, artifacts, the PyTorch baseline and
OpenVINO's own conversion, each load timed apart from its library imports and with the
resident memory it added."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.artifact import Artifact
from modelkiln.backends.registry import get_backend, install_hint
from modelkiln.benchmark.measure import PeakMeter, mb, rss
from modelkiln.errors import (
    BackendUnavailable,
    CheckpointError,
    UnknownBackendError,
    UserInputError,
)
from modelkiln.runtime import load
from modelkiln.tensors import Runner

BASELINE_ID = "pytorch"
OPENVINO_DIRECT_ID = "openvino-direct"


def check_numbers(threads: int | None, warmup: int, rounds: int, min_time: float) -> None:
    if threads is not None and threads < 1:
        raise UserInputError(f"--threads {threads}: give at least 1")
    if warmup < 0:
        raise UserInputError(f"--warmup {warmup}: give 0 or more")
    if rounds < 1:
        raise UserInputError(f"--rounds {rounds}: give at least 1")
    if min_time < 0:
        raise UserInputError(f"--min-time {min_time}: give 0 or more seconds")


def prepare_backend(artifact: Artifact, label: str) -> float:
    """Fail now, in one line, if this machine cannot run the artifact; import its backend
    library. Returns the seconds that took (the import time, for the first of a backend)."""
    target = artifact.manifest.target
    name = artifact.backend
    start = time.perf_counter()
    try:
        get_backend(name).check(target)
    except (BackendUnavailable, UnknownBackendError) as exc:
        message = str(exc)
        if "pip install" not in message:
            message += f"; {install_hint(name, target.device)}"
        raise BackendUnavailable(
            f"cannot bench {label}: it was built for backend '{name}' on {target.device}, which "
            f"this machine cannot run: {message}"
        ) from None
    return time.perf_counter() - start


def check_checkpoint(checkpoint: str) -> None:
    path = Path(checkpoint)
    if not path.exists() and not (":" in checkpoint and not path.suffix == ".onnx"):
        raise CheckpointError(
            f"--baseline {checkpoint}: no such checkpoint (the path does not exist)"
        )


def artifact_info(art: Artifact, label: str, import_s: float) -> dict[str, Any]:
    manifest = art.manifest
    return {
        "id": label,
        "kind": "artifact",
        "path": str(art.path.resolve()),
        "name": manifest.name,
        "task": manifest.task,
        "target": manifest.target.name,
        "backend": art.backend,
        "device": manifest.target.device,
        "precision": manifest.precision,
        # what the backend recorded at build time (e.g. the precision a compiled model reports)
        "backend_info": {k: v for k, v in manifest.backend.to_json().items() if k != "files"},
        "import_s": round(import_s, 3),
    }


def _measure_load(meter: PeakMeter, load: Callable[[], Any]) -> tuple[Any, dict[str, Any], int]:
    base = rss() or 0
    meter.start()
    start = time.perf_counter()
    value = load()
    seconds = time.perf_counter() - start
    peak, after = meter.peak_since_start(), rss()
    stats = {
        "load_s": round(seconds, 3),
        "load_rss_mb": mb(None if after is None else after - base),
        "load_peak_rss_mb": mb(None if peak is None else peak - base),
    }
    return value, stats, base


def load_artifact(
    art: Artifact, label: str, threads: int, meter: PeakMeter
) -> tuple[Runner, dict[str, Any]]:
    """The session's `run` and its load figures (`_base`: RSS before the load, in bytes)."""

    def open_session() -> Any:
        try:
            return load(art.path, threads=threads)
        except BackendUnavailable as exc:
            raise BackendUnavailable(f"cannot bench {label}: {exc}") from None

    session, stats, base = _measure_load(meter, open_session)
    return session.run, {"threads": threads, **stats, "_base": base}


def load_baseline(
    checkpoint: str,
    art: Artifact,
    label: str,
    threads: int,
    allow_pickle: bool,
    stock_architecture: bool,
    meter: PeakMeter,
) -> tuple[dict[str, Any], Runner, Any]:
    """Info, runner and model of the PyTorch baseline; PyTorch is imported only here.

    The model is the torch module (or, for an ONNX checkpoint, the ONNX model) the runner
    calls, so `--vs-openvino` converts exactly what the baseline runs."""
    start = time.perf_counter()
    try:
        import torch

        from modelkiln.exporter import sources
        from modelkiln.prepare import model_for  # the exporter: only with --baseline
    except ImportError as exc:
        raise BackendUnavailable(
            f"--baseline needs PyTorch ({exc}); install it with: pip install 'modelkiln[export]'"
        ) from None
    try:
        import transformers  # noqa: F401  (imported here so its import is not load time)
    except ImportError:
        pass
    import_s = time.perf_counter() - start
    torch.set_num_threads(threads)
    manifest = art.manifest
    stock = stock_architecture or manifest.source.stock_architecture
    try:
        (spec, model, runner), stats, base = _measure_load(
            meter,
            lambda: model_for(
                sources.load(checkpoint, allow_pickle=allow_pickle, stock_architecture=stock),
                None if manifest.task == "custom" else manifest.task,
            ),
        )
    except UserInputError as exc:  # say which option it was about
        exc.args = (f"--baseline: {exc}",)
        raise
    names = sorted(d.name for d in spec.inputs)
    if names != sorted(manifest.inputs):
        raise UserInputError(
            f"--baseline {checkpoint} takes inputs {', '.join(names)} but {label} takes "
            f"{', '.join(manifest.inputs)}; give the checkpoint the artifact came from"
        )
    onnx_source = Path(checkpoint).suffix == ".onnx"
    info = {
        "id": BASELINE_ID,
        "kind": "baseline",
        "checkpoint": checkpoint,
        "runtime": "ONNX source in onnxruntime, optimizations off"
        if onnx_source
        else "PyTorch eager (torch.inference_mode)",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "import_s": round(import_s, 3),
        **stats,
        "_base": base,
    }
    return info, runner, model


def load_openvino_direct(
    checkpoint: str,
    model: Any,
    outputs: Sequence[str],
    example: Mapping[str, np.ndarray],
    threads: int,
    meter: PeakMeter,
) -> tuple[dict[str, Any], Runner]:
    """The baseline's model converted by OpenVINO itself, as its users do without modelkiln:
    the yardstick for what our ONNX route to OpenVINO costs or gains."""
    start = time.perf_counter()
    try:
        from modelkiln.backends.openvino import convert_direct, direct_runner, no_telemetry

        with no_telemetry():
            import openvino  # noqa: F401  (timed apart from the conversion)
    except ImportError:
        raise BackendUnavailable(
            f"--vs-openvino needs openvino: {install_hint('openvino')}"
        ) from None
    import_s = time.perf_counter() - start
    source = checkpoint if Path(checkpoint).suffix == ".onnx" else model
    converted, stats, base = _measure_load(meter, lambda: convert_direct(source, example, threads))
    what = f"--vs-openvino: OpenVINO's conversion of {checkpoint}"
    run, compiled = direct_runner(converted, example, outputs, what)
    info = {
        "id": OPENVINO_DIRECT_ID,
        "kind": "reference",
        "checkpoint": checkpoint,
        "runtime": "OpenVINO, ov.convert_model from "
        + ("the ONNX file" if Path(checkpoint).suffix == ".onnx" else "the PyTorch module")
        + ", default compile settings",
        **compiled,
        "threads": threads,
        "import_s": round(import_s, 3),
        **stats,
        "_base": base,
    }
    return info, run
