"""The TensorRT session: the engine, device buffers and a stream through cuda-python.

No torch at run time: inputs are copied to device buffers with cudaMemcpyAsync on the
session's own stream, the engine runs with execute_async_v3, outputs come back the same
way. Buffers are kept between runs and grown when a larger shape needs more.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modelkiln.artifact import Artifact
from modelkiln.backends.base import Session
from modelkiln.backends.tensorrt.build import collecting_logger
from modelkiln.backends.tensorrt.compat import EngineRecord, load_problem
from modelkiln.backends.tensorrt.profiles import (
    InputProfile,
    Profile,
    pick_profile,
    profile_ranges,
)
from modelkiln.backends.tensorrt.runtime_info import (
    cuda_call,
    import_cudart,
    import_tensorrt,
    this_machine,
)
from modelkiln.errors import BackendUnavailable, BuildError, FeedError, InferenceError


def recorded_profiles(details: dict[str, Any]) -> list[Profile]:
    return [
        {name: InputProfile.from_json(io) for name, io in recorded.items()}
        for recorded in details.get("profiles") or []
    ]


class TensorRtSession(Session):
    _cudart: Any = None  # set once CUDA is in use: what close() releases
    _stream: Any = None
    _buffers: dict[str, tuple[int, int]] = {}

    def __init__(self, artifact: Artifact) -> None:
        super().__init__(artifact)
        section = artifact.manifest.backend
        trt = import_tensorrt()
        cudart = import_cudart()
        here = this_machine(trt, cudart)
        problem = load_problem(EngineRecord.from_details(section.details), here)
        if problem is not None:
            raise BackendUnavailable(f"{artifact.path} was {problem}")
        self._trt, self._cudart = trt, cudart
        self.profiles = recorded_profiles(section.details)
        self.shape_ranges = {**profile_ranges(self.profiles, self.inputs), **self.shape_ranges}
        self._logger = collecting_logger(trt)
        runtime = trt.Runtime(self._logger)
        if section.get("version_compatible"):
            runtime.engine_host_code_allowed = True  # the plan carries its lean runtime
        engine = runtime.deserialize_cuda_engine(artifact.file("model").read_bytes())
        if engine is None:
            why = self._logger.errors[-1] if self._logger.errors else "no reason given"
            raise BuildError(f"TensorRT cannot load {artifact.file('model')}: {why}")
        self._runtime, self._engine = runtime, engine
        self._context = engine.create_execution_context()
        self._stream = cuda_call(cudart, cudart.cudaStreamCreate)
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor -> (device pointer, bytes)
        self._profile = 0
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._input_names = [
            n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT
        ]
        self._output_names = [n for n in names if n not in self._input_names]

    def _device(self, name: str, nbytes: int) -> int:
        pointer, size = self._buffers.get(name, (0, 0))
        if size < nbytes:
            if pointer:
                cuda_call(self._cudart, self._cudart.cudaFree, pointer)
            pointer = int(cuda_call(self._cudart, self._cudart.cudaMalloc, max(nbytes, 1)))
            self._buffers[name] = (pointer, nbytes)
        return pointer

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        trt, cudart, context, engine = self._trt, self._cudart, self._context, self._engine
        shapes = {name: feeds[name].shape for name in self._input_names}
        index = pick_profile(self.profiles, shapes) if self.profiles else 0
        if index is None:
            given = ", ".join(f"{k}{list(v)}" for k, v in shapes.items())
            raise FeedError(f"no optimization profile of {self.artifact.path} holds {given}")
        if index != self._profile:
            context.set_optimization_profile_async(index, self._stream)
            self._profile = index
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        host = {}
        for name in self._input_names:
            array = np.ascontiguousarray(
                feeds[name], dtype=trt.nptype(engine.get_tensor_dtype(name))
            )
            host[name] = array  # kept alive until the stream has copied it
            context.set_input_shape(name, array.shape)
            pointer = self._device(name, array.nbytes)
            cuda_call(
                cudart,
                cudart.cudaMemcpyAsync,
                pointer,
                array.ctypes.data,
                array.nbytes,
                h2d,
                self._stream,
            )
            context.set_tensor_address(name, pointer)
        outputs = {}
        for name in self._output_names:
            shape = tuple(context.get_tensor_shape(name))
            outputs[name] = np.empty(shape, dtype=trt.nptype(engine.get_tensor_dtype(name)))
            context.set_tensor_address(name, self._device(name, outputs[name].nbytes))
        if not context.execute_async_v3(self._stream):
            why = self._logger.errors[-1] if self._logger.errors else "no reason given"
            raise InferenceError(f"TensorRT failed running {self.artifact.path}: {why}")
        for name, array in outputs.items():
            pointer = self._buffers[name][0]
            cuda_call(
                cudart,
                cudart.cudaMemcpyAsync,
                array.ctypes.data,
                pointer,
                array.nbytes,
                d2h,
                self._stream,
            )
        cuda_call(cudart, cudart.cudaStreamSynchronize, self._stream)
        return outputs

    def close(self) -> None:
        cudart = self._cudart
        if cudart is None:
            return
        for pointer, _ in self._buffers.values():
            cudart.cudaFree(pointer)
        self._buffers = {}
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self) -> None:
        self.close()
