"""ONNX Runtime backend (entry point `onnxruntime`): build, session, reduced precisions."""

from modelkiln.backends.onnxruntime.backend import PRECISIONS, OnnxRuntimeBackend
from modelkiln.backends.onnxruntime.session import OnnxRuntimeSession

__all__ = ["PRECISIONS", "OnnxRuntimeBackend", "OnnxRuntimeSession"]
