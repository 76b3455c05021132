"""The TensorRT and cuda-python names this backend may use, and where each exists.

The `tensorrt` bindings are a compiled module without type stubs that needs CUDA libraries
to import, so neither mypy nor an import can check our calls on a machine without a GPU.
tests/test_tensorrt_backend.py walks the backend's source and fails on any `tensorrt` or
`cudart` attribute not listed here, so a typo cannot reach a user.

Sources (NVIDIA's TensorRT Python API reference and migration guides):
- Builder, IBuilderConfig, NetworkDefinitionCreationFlag: infer/Core/Builder.html and
  BuilderConfig.html (10.x and 11.x); STRONGLY_TYPED is deprecated and ignored in 11.0
  ("strongly typed mode is always enabled"), still present for API compatibility.
- OnnxParser / ParserError: parsers/Onnx/pyOnnx.html; IParserError gained nodeName() and
  nodeOperator() in 10.x (C++ reference 10.2), exposed as node_name()/node_operator().
- IProgressMonitor: infer/Core/ProgressMonitor.html (phase_start, step_complete,
  phase_finish; 10.0 and later).
- ITimingCache: infer/Core/TimingCache.html.
- Version/hardware compatibility: inference-library/advanced.html (10.x) and
  engine-compatibility.html (11.x): BuilderFlag.VERSION_COMPATIBLE, Runtime
  .engine_host_code_allowed, HardwareCompatibilityLevel NONE / AMPERE_PLUS /
  SAME_COMPUTE_CAPABILITY.
- Removed in 11: api/migration/tensorrt-10x-to-11x-python-api-reference.html.
- cuda-python: cuda.bindings.runtime (cuda-python 12.6+); every name below was checked to
  exist in cuda-bindings 13.5.0 (it imports without a driver; calls then return
  cudaErrorInsufficientDriver).
"""

from __future__ import annotations

BOTH = "10, 11"

# Qualified by the class the attribute belongs to; module-level names unqualified.
TENSORRT: dict[str, str] = {
    "__version__": BOTH,
    "nptype": BOTH,
    "Builder": BOTH,
    "Builder.create_network": BOTH,
    "Builder.create_builder_config": BOTH,
    "Builder.create_optimization_profile": BOTH,
    "Builder.build_serialized_network": BOTH,
    "NetworkDefinitionCreationFlag.STRONGLY_TYPED": BOTH + " (ignored in 11: always on)",
    "OnnxParser": BOTH,
    "OnnxParser.parse_from_file": BOTH,
    "OnnxParser.num_errors": BOTH,
    "OnnxParser.get_error": BOTH,
    "ParserError.node": BOTH,
    "ParserError.node_name": BOTH,
    "ParserError.node_operator": BOTH,
    "ParserError.desc": BOTH,
    "IBuilderConfig.set_memory_pool_limit": BOTH,
    "IBuilderConfig.builder_optimization_level": BOTH,
    "IBuilderConfig.set_flag": BOTH,
    "IBuilderConfig.hardware_compatibility_level": BOTH,
    "IBuilderConfig.add_optimization_profile": BOTH,
    "IBuilderConfig.progress_monitor": BOTH,
    "IBuilderConfig.create_timing_cache": BOTH,
    "IBuilderConfig.set_timing_cache": BOTH,
    "IBuilderConfig.get_timing_cache": BOTH,
    "ITimingCache.serialize": BOTH,
    "IOptimizationProfile.set_shape": BOTH,
    "MemoryPoolType.WORKSPACE": BOTH,
    "BuilderFlag.VERSION_COMPATIBLE": BOTH,
    "HardwareCompatibilityLevel.NONE": BOTH,
    "HardwareCompatibilityLevel.AMPERE_PLUS": BOTH,
    "HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY": BOTH + " (10: later 10.x releases)",
    "ILogger": BOTH,
    "ILogger.__init__": BOTH,
    "ILogger.log": BOTH,
    "ILogger.Severity.ERROR": BOTH,
    "ILogger.Severity.INTERNAL_ERROR": BOTH,
    "IProgressMonitor": BOTH,
    "IProgressMonitor.__init__": BOTH,
    "IProgressMonitor.phase_start": BOTH,
    "IProgressMonitor.step_complete": BOTH,
    "IProgressMonitor.phase_finish": BOTH,
    "Runtime": BOTH,
    "Runtime.engine_host_code_allowed": BOTH,
    "Runtime.deserialize_cuda_engine": BOTH,
    "ICudaEngine.create_execution_context": BOTH,
    "ICudaEngine.num_io_tensors": BOTH,
    "ICudaEngine.get_tensor_name": BOTH,
    "ICudaEngine.get_tensor_mode": BOTH,
    "ICudaEngine.get_tensor_dtype": BOTH,
    "TensorIOMode.INPUT": BOTH,
    "IExecutionContext.set_optimization_profile_async": BOTH,
    "IExecutionContext.set_input_shape": BOTH,
    "IExecutionContext.set_tensor_address": BOTH,
    "IExecutionContext.get_tensor_shape": BOTH,
    "IExecutionContext.execute_async_v3": BOTH,
    # Removed in TensorRT 11 (weak typing, implicit quantization): listed so the test can
    # assert the backend never relies on them.
    "BuilderFlag.FP16": "10",
    "BuilderFlag.BF16": "10",
    "BuilderFlag.INT8": "10",
    "BuilderFlag.FP8": "10",
    "BuilderFlag.INT4": "10",
    "BuilderFlag.FP4": "10",
    "BuilderFlag.OBEY_PRECISION_CONSTRAINTS": "10",
    "BuilderFlag.PREFER_PRECISION_CONSTRAINTS": "10",
    "BuilderFlag.DIRECT_IO": "10",
    "IBuilderConfig.int8_calibrator": "10",
    "IBuilderConfig.set_calibration_profile": "10",
    "IBuilderConfig.get_calibration_profile": "10",
    "IBuilderConfig.set_quantization_flag": "10",
    "IBuilderConfig.quantization_flags": "10",
    "IInt8Calibrator": "10",
    "IInt8EntropyCalibrator2": "10",
    "IInt8MinMaxCalibrator": "10",
    "ICudaEngine.device_memory_size": "10",
    "Builder.platform_has_fast_fp16": "10",
    "Builder.platform_has_fast_int8": "10",
}

# cuda.bindings.runtime: functions return (cudaError_t, *values).
CUDART: dict[str, str] = {
    "cudaGetDeviceCount": "12.6+",
    "cudaGetDeviceProperties": "12.6+",
    "cudaDeviceProp.major": "12.6+",
    "cudaDeviceProp.minor": "12.6+",
    "cudaDeviceProp.name": "12.6+",
    "cudaRuntimeGetVersion": "12.6+",
    "cudaGetErrorString": "12.6+",
    "cudaError_t.cudaSuccess": "12.6+",
    "cudaMalloc": "12.6+",
    "cudaFree": "12.6+",
    "cudaMemcpyAsync": "12.6+",
    "cudaMemcpyKind.cudaMemcpyHostToDevice": "12.6+",
    "cudaMemcpyKind.cudaMemcpyDeviceToHost": "12.6+",
    "cudaStreamCreate": "12.6+",
    "cudaStreamSynchronize": "12.6+",
    "cudaStreamDestroy": "12.6+",
}

# Variables (and attributes of self) that hold TensorRT / CUDA objects, by class: the
# test reads attribute accesses on them as `Class.attribute`.
TRT_MODULE_NAMES = ("trt", "self._trt")
CUDART_MODULE_NAMES = ("cudart", "self._cudart")
OBJECTS = {
    "builder": "Builder",
    "network": "INetworkDefinition",
    "parser": "OnnxParser",
    "error": "ParserError",
    "config": "IBuilderConfig",
    "cache": "ITimingCache",
    "profile": "IOptimizationProfile",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "self._engine": "ICudaEngine",
    "context": "IExecutionContext",
    "self._context": "IExecutionContext",
    "props": "cudaDeviceProp",
}
