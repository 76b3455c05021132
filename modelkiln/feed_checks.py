"""Checks feeds against the manifest before a backend sees them.

Backends give cryptic errors (or silently wrong results) for a wrong dtype, shape or value;
this turns each mistake into one sentence naming the input, what was given and what is
expected.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelkiln.errors import FeedError
from modelkiln.tensors import TensorSpec


def check_feeds(
    specs: Mapping[str, TensorSpec],
    feeds: Mapping[str, Any],
    ranges: Mapping[str, tuple[int, int]] | None = None,
    *,
    limits: Mapping[str, int] | None = None,
    id_bounds: Mapping[str, tuple[int, str]] | None = None,
) -> dict[str, np.ndarray]:
    """`ranges`: the sizes (min, max) each named dimension may take, from the artifact's
    target (a backend built for them may fail or be wrong outside); `limits`: the largest
    size the model itself takes per dimension (its position embeddings); `id_bounds`: per
    index input, (how many there are, what they index: "token", "token type" or
    "position"): values must lie in 0..count-1."""
    ranges = ranges or {}
    limits = limits or {}
    expected = ", ".join(f"{n}: {s}" for n, s in specs.items())
    missing = [name for name in specs if name not in feeds]
    if missing:
        raise FeedError(f"missing input(s) {', '.join(missing)}; the model expects {expected}")
    unknown = [name for name in feeds if name not in specs]
    if unknown:
        raise FeedError(f"unknown input(s) {', '.join(unknown)}; the model expects {expected}")
    arrays: dict[str, np.ndarray] = {}
    bound: dict[str, tuple[int, str]] = {}
    for name, spec in specs.items():
        value = feeds[name]
        if not isinstance(value, np.ndarray):
            raise FeedError(
                f"input '{name}' is a {type(value).__name__}; pass a numpy array {spec}"
            )
        if value.dtype != np.dtype(spec.dtype):
            raise FeedError(
                f"input '{name}' has dtype {value.dtype}; the model expects {spec.dtype} "
                f"(convert with .astype(np.{spec.dtype}))"
            )
        if value.ndim != len(spec.shape):
            raise FeedError(
                f"input '{name}' has rank {value.ndim} (shape {list(value.shape)}); "
                f"the model expects rank {len(spec.shape)}: {spec}"
            )
        for axis, (dim, size) in enumerate(zip(spec.shape, value.shape, strict=True)):
            if isinstance(dim, int):
                if dim != size:
                    raise FeedError(
                        f"input '{name}' has size {size} on axis {axis}; the model expects "
                        f"{dim} there: {spec} (got shape {list(value.shape)})"
                    )
            elif dim in bound and bound[dim][0] != size:
                other_size, other = bound[dim]
                raise FeedError(
                    f"dimension '{dim}' is {other_size} in input '{other}' but {size} in "
                    f"input '{name}'; inputs sharing a named dimension must agree"
                )
            else:
                bound.setdefault(dim, (size, name))
                where = f"input '{name}' has {dim} {size} (axis {axis}, shape {list(value.shape)})"
                low, high = ranges.get(dim, (size, size))
                if not low <= size <= high:
                    raise FeedError(f"{where}; this artifact takes {dim} from {low} to {high}")
                if dim in limits and size > limits[dim]:
                    raise FeedError(
                        f"{where}; the model takes at most {limits[dim]} (its position "
                        "embeddings): shorten or split the input"
                        if dim == "sequence"
                        else f"{where}; the model takes at most {limits[dim]}"
                    )
        if id_bounds and name in id_bounds:
            _check_ids(name, value, *id_bounds[name])
        arrays[name] = value
    return arrays


def _check_ids(name: str, value: np.ndarray, count: int, what: str) -> None:
    """Ids outside the table they index (token ids outside the vocabulary, positions past
    the position embeddings) read past it: ONNX Runtime fails with an opaque Gather error,
    other backends may read garbage."""
    if not value.size:
        return
    outside = (value < 0) | (value >= count)
    if outside.any():
        where = tuple(int(i) for i in np.argwhere(outside)[0])
        if what == "token":
            raise FeedError(
                f"input '{name}' holds token id {int(value[where])} at {list(where)}; the "
                f"vocabulary has {count} ids (0 to {count - 1}): use the artifact's own "
                "tokenizer"
            )
        if what == "token type":
            raise FeedError(
                f"input '{name}' holds token type {int(value[where])} at {list(where)}; the "
                f"model has {count} token types (0 to {count - 1})"
            )
        raise FeedError(
            f"input '{name}' holds position {int(value[where])} at {list(where)}; the model has "
            f"{count} positions (0 to {count - 1}): shorten the prompt or the generation"
        )
