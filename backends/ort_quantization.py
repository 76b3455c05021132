"""What every backend that calls `onnxruntime.quantization` needs around it: the calibration
samples as its data reader, and its logging kept quiet (modelkiln reports what matters)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence

import numpy as np


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """The quantization tools log advice and progress on the root logger, and ORT's
    quantizers on their own loggers (MatMulNBits logs every node at INFO)."""
    loggers = [logging.getLogger()] + [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith("onnxruntime.quantization")
    ]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


class CalibrationReader:
    """onnxruntime.quantization.CalibrationDataReader over in-memory feed dicts."""

    def __init__(self, samples: Sequence[Mapping[str, np.ndarray]]) -> None:
        self._samples = samples
        self._it: Iterator[Mapping[str, np.ndarray]] = iter(samples)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._it, None)
        return None if item is None else dict(item)

    def rewind(self) -> None:
        self._it = iter(self._samples)
