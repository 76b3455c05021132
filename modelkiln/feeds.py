"""Checks feeds against the manifest before a backend sees them.

Backends give cryptic errors (or silently wrong results) for a wrong dtype or shape; this
turns each mistake into one sentence naming the input, what was given and what is expected.
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
) -> dict[str, np.ndarray]:
    """`ranges`: the sizes (min, max) each named dimension may take, from the artifact's
    target; a backend built for them may fail or be wrong outside."""
    ranges = ranges or {}
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
                low, high = ranges.get(dim, (size, size))
                if not low <= size <= high:
                    raise FeedError(
                        f"input '{name}' has {dim} {size} (axis {axis}, shape "
                        f"{list(value.shape)}); this artifact takes {dim} from {low} to {high}"
                    )
        arrays[name] = value
    return arrays
