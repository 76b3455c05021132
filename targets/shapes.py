"""Targets' shape ranges applied to an export: one set of validation shapes for all targets.

Every target of an export is validated against the same reference samples (computed once,
before any build), so those samples must have sizes each target accepts. This module
intersects the targets' ranges, refuses ranges no target can share or dimension names the
model does not have, and moves the task's default validation shapes into the ranges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from modelkiln.errors import UserInputError
from modelkiln.targets.target import Target

Range = tuple[int, int]


def common_ranges(targets: Sequence[Target]) -> dict[str, Range]:
    """Per named dimension, the sizes (min, max) every target accepts.

    Needs only the targets, so disjoint ranges fail before the checkpoint is even loaded.
    """
    ranges: dict[str, Range] = {}
    for dim in dict.fromkeys(d for t in targets for d in t.shapes):
        bounded = [t for t in targets if dim in t.shapes]
        low = max(t.shapes[dim].min for t in bounded)
        high = min(t.shapes[dim].max for t in bounded)
        if low > high:
            each = ", ".join(
                f"'{t.name}' {t.shapes[dim].min}..{t.shapes[dim].max}" for t in bounded
            )
            raise UserInputError(
                f"the targets accept no common {dim} size ({each}); every target is validated "
                f"on the same shapes, so export targets with disjoint ranges separately"
            )
        ranges[dim] = (low, high)
    return ranges


def clamp(dims: Mapping[str, int], ranges: Mapping[str, Range]) -> dict[str, int]:
    """`dims` with each size moved inside its (min, max) range, where it has one."""
    return {
        d: min(max(size, ranges[d][0]), ranges[d][1]) if d in ranges else size
        for d, size in dims.items()
    }


def validation_dims(
    defaults: Sequence[Mapping[str, int]],
    dynamic: Sequence[str],
    limits: Mapping[str, int],
    targets: Sequence[Target],
) -> tuple[dict[str, int], ...]:
    """The task's default validation shapes moved inside every target's ranges.

    `dynamic` lists the model's named dimensions, `limits` the largest size the model takes
    per dimension (e.g. max_position_embeddings). Two shapes whose sizes differ keep
    differing after clamping when the range allows it, so dynamic shapes stay exercised.
    """
    for target in targets:
        unknown = [d for d in target.shapes if d not in dynamic]
        if unknown:
            raise UserInputError(
                f"target '{target.name}': [shapes] names dimension(s) {', '.join(unknown)}, "
                f"which the model's inputs do not have; its dynamic dimensions: "
                f"{', '.join(dynamic) or 'none'}"
            )
    ranges: dict[str, Range] = {}
    for dim, (low, high) in common_ranges(targets).items():
        limit = limits.get(dim)
        if limit is not None and low > limit:
            raise UserInputError(
                f"the targets need {dim} >= {low}, but the model takes at most {limit}"
            )
        ranges[dim] = (low, min(high, limit) if limit is not None else high)
    dims = [clamp(d, ranges) for d in defaults]
    for dim, (low, high) in ranges.items():
        sizes = [d[dim] for d in defaults if dim in d]
        clamped = [d[dim] for d in dims if dim in d]
        if len(set(clamped)) < len(set(sizes)) and low < high and len(clamped) == 2:
            shapes = [d for d in dims if dim in d]
            if clamped[0] == high:  # both were above the range
                shapes[0][dim] = (low + high) // 2
            else:  # both were below it
                shapes[1][dim] = (low + high + 1) // 2
    return tuple(dims)
