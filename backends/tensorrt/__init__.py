"""TensorRT backend (entry point `tensorrt`, extra `modelkiln[tensorrt]`)."""

from modelkiln.backends.tensorrt.backend import TensorRtBackend

__all__ = ["TensorRtBackend"]
