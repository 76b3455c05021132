"""Loading what `kiln bench` measures: backend checks, artifacts and the PyTorch baseline,
each load timed apart from its library imports and with the resident memory it added."""

from __future__ import annotations

import os
import platform
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.artifact import Artifact
from modelkiln.bench_measure import PeakMeter, mb, rss
from modelkiln.errors import (
    BackendUnavailable,
    CheckpointError,
    UnknownBackendError,
    UserInputError,
)

BASELINE_ID = "pytorch"
OPENVINO_DIRECT_ID = "openvino-direct"
Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for name in ("modelkiln", "numpy", "onnxruntime", "torch", "transformers"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def check_numbers(threads: int | None, warmup: int, rounds: int, min_time: float) -> None:
    if threads is not None and threads < 1:
        raise UserInputError(f"--threads {threads}: give at least 1")
    if warmup < 0:
        raise UserInputError(f"--warmup {warmup}: give 0 or more")
    if rounds < 1:
        raise UserInputError(f"--rounds {rounds}: give at least 1")
    if min_time < 0:
        raise UserInputError(f"--min-time {min_time}: give 0 or more seconds")


def install_hint(backend: str, device: str) -> str:
    if backend == "onnxruntime" and device == "cuda":
        return "install onnxruntime-gpu instead of onnxruntime (pip install onnxruntime-gpu)"
    if backend == "onnxruntime":
        return "pip install onnxruntime"
    return f"pip install 'modelkiln[{backend}]'"


def prepare_backend(artifact: Artifact, label: str) -> float:
    """Fail now, in one line, if this machine cannot run the artifact; import its backend
    library. Returns the seconds that took (the import time, for the first of a backend)."""
    from modelkiln.backends import get_backend
    from modelkiln.targets import Target

    section = artifact.manifest.get("target") or {}
    name = artifact.backend
    device = str(section.get("device", artifact.manifest["backend"].get("device", "cpu")))
    start = time.perf_counter()
    try:
        backend = get_backend(name)
        backend.check(
            Target(
                name=str(section.get("name", name)),
                backend=name,
                device=device,
                precision=str(section.get("precision", artifact.manifest.get("precision", "fp32"))),
                options=dict(section.get("options") or {}),
            )
        )
    except (BackendUnavailable, UnknownBackendError) as exc:
        message = str(exc)
        if "pip install" not in message:
            message += f"; {install_hint(name, device)}"
        raise BackendUnavailable(
            f"cannot bench {label}: it was built for backend '{name}' on {device}, which this "
            f"machine cannot run: {message}"
        ) from None
    return time.perf_counter() - start


def check_checkpoint(checkpoint: str) -> None:
    path = Path(checkpoint)
    if not path.exists() and not (":" in checkpoint and not path.suffix == ".onnx"):
        raise CheckpointError(
            f"--baseline {checkpoint}: no such checkpoint (the path does not exist)"
        )


def artifact_info(art: Artifact, label: str, import_s: float) -> dict[str, Any]:
    target = art.manifest.get("target") or {}
    return {
        "id": label,
        "kind": "artifact",
        "path": str(art.path.resolve()),
        "name": art.manifest.get("name"),
        "task": art.manifest.get("task"),
        "target": target.get("name"),
        "backend": art.backend,
        "device": target.get("device", "cpu"),
        "precision": art.manifest.get("precision"),
        # what the backend recorded at build time (e.g. the precision a compiled model reports)
        "backend_info": {
            k: v for k, v in (art.manifest.get("backend") or {}).items() if k != "files"
        },
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
    from modelkiln.runtime import load

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
    meter: PeakMeter,
) -> tuple[dict[str, Any], Runner, Any]:
    """Info, runner and model of the PyTorch baseline; PyTorch is imported only here.

    The model is the torch module (or, for an ONNX checkpoint, the ONNX model) the runner
    calls, so `--vs-openvino` converts exactly what the baseline runs."""
    start = time.perf_counter()
    try:
        import torch

        from modelkiln.exporter import sources
        from modelkiln.prepare import model_for
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
    task = art.manifest.get("task")
    try:
        (spec, model, runner), stats, base = _measure_load(
            meter,
            lambda: model_for(
                sources.load(checkpoint, allow_pickle=allow_pickle),
                None if task == "custom" else task,
            ),
        )
    except UserInputError as exc:  # say which option it was about
        exc.args = (f"--baseline: {exc}",)
        raise
    names = sorted(d.name for d in spec.inputs)
    if names != sorted(art.manifest["inputs"]):
        raise UserInputError(
            f"--baseline {checkpoint} takes inputs {', '.join(names)} but {label} takes "
            f"{', '.join(art.manifest['inputs'])}; give the checkpoint the artifact came from"
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
    """The baseline's model converted by OpenVINO itself, as its users do without modelkiln.

    `ov.convert_model` straight from the torch module (from the file for an ONNX checkpoint),
    compiled for the CPU with OpenVINO's defaults except the thread count every subject
    shares: the yardstick for what our ONNX route to OpenVINO costs or gains.
    """
    start = time.perf_counter()
    from modelkiln.backends.openvino import import_openvino, no_telemetry, reported_properties

    try:
        ov = import_openvino()  # without telemetry
    except BackendUnavailable:
        raise BackendUnavailable(
            "--vs-openvino needs openvino: pip install 'modelkiln[openvino]'"
        ) from None

    import_s = time.perf_counter() - start

    def convert_and_compile() -> Any:
        # torch.jit tracing inside convert_model warns about every data-dependent branch.
        with no_telemetry(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if Path(checkpoint).suffix == ".onnx":
                converted = ov.convert_model(checkpoint)
            else:
                import torch

                torch_example = {
                    k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in example.items()
                }
                with torch.no_grad():
                    converted = ov.convert_model(model, example_input=torch_example)
        return ov.Core().compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": threads})

    compiled, stats, base = _measure_load(meter, convert_and_compile)
    names = {name for port in compiled.inputs for name in port.get_names()}
    missing = sorted(set(example) - names)
    if missing:
        raise UserInputError(
            f"--vs-openvino: OpenVINO's conversion of {checkpoint} has no input(s) "
            f"{', '.join(missing)} (it has {', '.join(sorted(names))})"
        )
    request = compiled.create_infer_request()

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        request.infer({k: np.ascontiguousarray(v) for k, v in feeds.items()})
        return {name: request.get_output_tensor(i).data.copy() for i, name in enumerate(outputs)}

    info = {
        "id": OPENVINO_DIRECT_ID,
        "kind": "reference",
        "checkpoint": checkpoint,
        "runtime": "OpenVINO, ov.convert_model from "
        + ("the ONNX file" if Path(checkpoint).suffix == ".onnx" else "the PyTorch module")
        + ", default compile settings",
        "openvino": ov.get_version(),
        "compiled": reported_properties(compiled),
        "threads": threads,
        "import_s": round(import_s, 3),
        **stats,
        "_base": base,
    }
    return info, run
