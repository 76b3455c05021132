"""What this machine has for TensorRT: the tensorrt module, the GPU, CUDA (via cuda-python).

Imports happen here and only when asked, so importing the backend works without TensorRT;
every missing piece becomes one BackendUnavailable line saying what to install.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from modelkiln.backends.registry import install_hint
from modelkiln.backends.tensorrt.compat import EngineRecord
from modelkiln.errors import BackendUnavailable, first_line

SUPPORTED_MAJORS = (10, 11)


def _needs() -> str:
    return f"{install_hint('tensorrt')}; needs an NVIDIA GPU and its driver"


def import_tensorrt() -> Any:
    """The tensorrt module, or BackendUnavailable (not installed, cannot load its libraries,
    or a major version this backend does not build with)."""
    if importlib.util.find_spec("tensorrt") is None:
        raise BackendUnavailable(f"TensorRT is not installed ({_needs()})")
    try:
        import tensorrt as trt
    except Exception as exc:  # its native libraries (libnvinfer, CUDA) are missing
        raise BackendUnavailable(
            f"TensorRT cannot be loaded: {first_line(exc)} ({_needs()})"
        ) from None
    major = tensorrt_major(trt)
    if major not in SUPPORTED_MAJORS:
        raise BackendUnavailable(
            f"TensorRT {trt.__version__} is installed; modelkiln builds with TensorRT "
            f"{' or '.join(map(str, SUPPORTED_MAJORS))} ({_needs()})"
        )
    return trt


def tensorrt_major(trt: Any) -> int:
    head = str(trt.__version__).split(".")[0]
    return int(head) if head.isdigit() else 0


def import_cudart() -> Any:
    """cuda-python's runtime bindings (device buffers and streams without torch)."""
    try:
        from cuda.bindings import runtime as cudart
    except Exception as exc:
        raise BackendUnavailable(
            f"cuda-python is not usable ({first_line(exc)}): pip install 'cuda-python>=12.6' "
            f"({_needs()})"
        ) from None
    return cudart


def cuda_call(cudart: Any, fn: Any, *args: Any) -> Any:
    """Call a cuda-python function: its value(s) on success, else BackendUnavailable."""
    result = fn(*args)
    err, values = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if err != cudart.cudaError_t.cudaSuccess:
        text = cudart.cudaGetErrorString(err)[1]
        text = text.decode() if isinstance(text, bytes) else str(text)
        raise BackendUnavailable(f"CUDA {fn.__name__} failed: {text}")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def this_machine(trt: Any, cudart: Any, device: int = 0) -> EngineRecord:
    """This machine's TensorRT version, GPU, compute capability and CUDA runtime."""
    count = cuda_call(cudart, cudart.cudaGetDeviceCount)
    if not count:
        raise BackendUnavailable(f"no NVIDIA GPU is visible to CUDA here ({_needs()})")
    props = cuda_call(cudart, cudart.cudaGetDeviceProperties, device)
    runtime = int(cuda_call(cudart, cudart.cudaRuntimeGetVersion))
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else props.name
    return EngineRecord(
        tensorrt_version=str(trt.__version__),
        compute_capability=f"{props.major}.{props.minor}",
        gpu=str(name).strip("\x00 "),
        cuda_version=f"{runtime // 1000}.{runtime % 1000 // 10}",
    )
