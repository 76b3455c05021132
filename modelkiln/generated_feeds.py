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
from modelkiln.tensors import TensorSpec

Axis = int | str
FILLS = ("token_ids", "token_types", "mask", "zeros", "normal", "ints", "bools", "positions")


@dataclass(frozen=True)
class ValueKind:
    """What values an input takes (the manifest's `inputs.<name>.values`).

    For `token_ids`, `high` is the vocabulary size (ids 0..high-1 are valid) and `low` only
    where generated ids start; for `token_types` (BERT's segment ids, generated as zeros),
    `high` is the number of types; for `positions`, `high` is the number of positions (0: not
    known); for `ints` (module factories) both are what the example inputs held, not
    limits."""

    kind: str  # one of FILLS
    low: int = 0
    high: int = 2

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "low": self.low, "high": self.high}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ValueKind:
        return cls(str(data["kind"]), int(data.get("low", 0)), int(data.get("high", 2)))


@dataclass(frozen=True)
class InputDecl:
    name: str
    dtype: str
    axes: tuple[Axis, ...]
    fill: str  # one of FILLS
    low: int = 0
    high: int = 2

    @property
    def values(self) -> ValueKind:
        return ValueKind(self.fill, self.low, self.high)

    @classmethod
    def of(cls, name: str, spec: TensorSpec, values: ValueKind | None) -> InputDecl:
        """A declaration from a manifest's input (older manifests: guessed from the dtype)."""
        if values is None:
            floating = np.issubdtype(np.dtype(spec.dtype), np.floating)
            values = ValueKind("normal" if floating else "ints")
        return cls(name, spec.dtype, spec.shape, values.kind, values.low, values.high)


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
        elif decl.fill in ("zeros", "token_types"):
            value = np.zeros(shape)
        elif decl.fill == "positions":
            value = np.broadcast_to(np.arange(shape[-1]), shape)
        elif decl.fill in ("ints", "bools"):
            value = rng.integers(decl.low, max(decl.high, decl.low + 1), size=shape)
        else:
            value = rng.standard_normal(shape)
        feeds[decl.name] = value.astype(decl.dtype)
    return feeds
