"""Tensor specs as stored in the manifest: numpy dtype names and shapes with named dynamic dims."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

Dim = int | str
# A model as a function: feeds by input name -> outputs by name (a session's `run`, the
# PyTorch reference, a benchmark subject).
Runner = Callable[[Mapping[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass(frozen=True)
class TensorSpec:
    dtype: str
    shape: tuple[Dim, ...]

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(dtype=str(data["dtype"]), shape=tuple(data["shape"]))

    def __str__(self) -> str:
        dims = ", ".join(str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"


def specs_to_json(specs: Mapping[str, TensorSpec]) -> dict[str, Any]:
    return {name: spec.to_json() for name, spec in specs.items()}


def specs_from_json(data: Mapping[str, Any]) -> dict[str, TensorSpec]:
    return {name: TensorSpec.from_json(value) for name, value in data.items()}
