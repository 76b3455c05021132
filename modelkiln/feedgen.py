"""Generated inputs: what values each input takes, and deterministic feeds of any size.

Shared by export-time validation (from task specs) and benchmarking (from manifests), so
both feed a model the same kind of data: token ids inside the vocabulary, right-padded
attention masks, normal-distributed pixels.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelkiln.errors import UserInputError

Axis = int | str
FILLS = ("token_ids", "mask", "zeros", "normal", "ints", "bools")


@dataclass(frozen=True)
class InputDecl:
    name: str
    dtype: str
    axes: tuple[Axis, ...]
    fill: str  # one of FILLS
    low: int = 0
    high: int = 2

    def values_json(self) -> dict[str, Any]:
        return {"kind": self.fill, "low": self.low, "high": self.high}


def decls_from_manifest(inputs: Mapping[str, Mapping[str, Any]]) -> list[InputDecl]:
    """Input declarations from a manifest's `inputs` (older manifests: guessed from dtype)."""
    decls = []
    for name, spec in inputs.items():
        values = spec.get("values") or {}
        dtype = str(spec["dtype"])
        default = "normal" if np.issubdtype(np.dtype(dtype), np.floating) else "ints"
        decls.append(
            InputDecl(
                name,
                dtype,
                tuple(spec["shape"]),
                str(values.get("kind", default)),
                int(values.get("low", 0)),
                int(values.get("high", 2)),
            )
        )
    return decls


def generate_feeds(
    decls: Iterable[InputDecl], dims: Mapping[str, int], seed: int = 0
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for decl in decls:
        try:
            shape = tuple(a if isinstance(a, int) else int(dims[a]) for a in decl.axes)
        except KeyError as exc:
            raise UserInputError(
                f"no size given for dimension {exc} of input '{decl.name}'"
            ) from None
        value: np.ndarray
        if decl.fill == "token_ids":
            value = rng.integers(decl.low, decl.high, size=shape)
        elif decl.fill == "mask":
            value = np.ones(shape)
            if shape[0] > 1 and shape[-1] > 2:
                value[-1, shape[-1] // 2 :] = 0  # right padding on the last row, as tokenizers do
        elif decl.fill == "zeros":
            value = np.zeros(shape)
        elif decl.fill in ("ints", "bools"):
            value = rng.integers(decl.low, max(decl.high, decl.low + 1), size=shape)
        else:
            value = rng.standard_normal(shape)
        feeds[decl.name] = value.astype(decl.dtype)
    return feeds
