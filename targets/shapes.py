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
    dims = [dict(d) for d in defaults]
    for dim, (low, high) in common_ranges(targets).items():
        limit = limits.get(dim)
        if limit is not None and low > limit:
            raise UserInputError(
                f"the targets need {dim} >= {low}, but the model takes at most {limit}"
            )
        high = min(high, limit) if limit is not None else high
        sizes = [d[dim] for d in dims if dim in d]
        clamped = [min(max(s, low), high) for s in sizes]
        if len(set(clamped)) < len(set(sizes)) and low < high and len(clamped) == 2:
            if clamped[0] == high:  # both were above the range
                clamped[0] = (low + high) // 2
            else:  # both were below it
                clamped[1] = (low + high + 1) // 2
        for d, size in zip((d for d in dims if dim in d), clamped, strict=True):
            d[dim] = size
    return tuple(dims)
