"""TensorRT optimization profiles from a target's shape ranges.

An engine with dynamic inputs needs, per profile, a (min, opt, max) shape for every input.
The sizes come from the target: its `[shapes]` table (one profile), or the backend option
`profiles`, a list of tables of the same form (several profiles, each inside `[shapes]`
where that names the dimension). A named dimension no range covers gets a default range, so
a preset without `[shapes]` still builds; fixed sizes are fixed in every profile. Pure
functions over plain data, so they are tested without TensorRT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelkiln.errors import UserInputError
from modelkiln.targets import Target
from modelkiln.targets.target import ShapeRange
from modelkiln.tensors import TensorSpec

Shape = tuple[int, ...]
DimRanges = Mapping[str, ShapeRange]

# Named dimensions without a range: batch 1..32 tuned for 1, anything else 1..512 tuned
# for 128 (text models' sequence); a decoder's past may be empty (the prefill).
DEFAULT_RANGES = {
    "batch": ShapeRange(1, 1, 32),
    "past_sequence": ShapeRange(0, 128, 512),
}
DEFAULT_RANGE = ShapeRange(1, 128, 512)


@dataclass(frozen=True)
class InputProfile:
    min: Shape
    opt: Shape
    max: Shape

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputProfile:
        return cls(tuple(data["min"]), tuple(data["opt"]), tuple(data["max"]))

    def holds(self, shape: Sequence[int]) -> bool:
        return len(shape) == len(self.min) and all(
            lo <= size <= hi for lo, size, hi in zip(self.min, shape, self.max, strict=True)
        )


Profile = dict[str, InputProfile]  # input name -> its shapes


def dim_ranges(target: Target) -> list[dict[str, ShapeRange]]:
    """The named dimensions' ranges of each profile the target asks for: the `profiles`
    option, else its `[shapes]` as the one profile (empty: defaults only)."""
    listed = target.options.get("profiles")
    if listed is None:
        return [dict(target.shapes)]
    if not isinstance(listed, list) or not listed:
        raise UserInputError(
            f"target '{target.name}': profiles must be a non-empty list of tables like "
            "[[options.profiles]] with batch = {min = 1, opt = 4, max = 8}"
        )
    profiles = []
    for index, table in enumerate(listed):
        if not isinstance(table, dict) or not table:
            raise UserInputError(
                f"target '{target.name}': profiles[{index}] must be a table of dimensions, "
                "each {min, opt, max}"
            )
        ranges = {}
        for dim, value in table.items():
            ranges[dim] = _range(target, f"profiles[{index}].{dim}", value)
            outer = target.shapes.get(dim)
            if (
                outer is not None
                and not outer.min <= ranges[dim].min <= ranges[dim].max <= outer.max
            ):
                raise UserInputError(
                    f"target '{target.name}': profiles[{index}].{dim} "
                    f"{ranges[dim].min}..{ranges[dim].max} leaves [shapes] {dim} "
                    f"{outer.min}..{outer.max}"
                )
        profiles.append({**dict(target.shapes), **ranges})
    return profiles


def _range(target: Target, where: str, value: Any) -> ShapeRange:
    try:
        bounds = ShapeRange(int(value["min"]), int(value["opt"]), int(value["max"]))
    except (KeyError, TypeError, ValueError):
        raise UserInputError(
            f"target '{target.name}': {where} needs integer min, opt and max"
        ) from None
    if not 1 <= bounds.min <= bounds.opt <= bounds.max:
        raise UserInputError(f"target '{target.name}': {where} needs 1 <= min <= opt <= max")
    return bounds


def build_profiles(inputs: Mapping[str, TensorSpec], ranges: Sequence[DimRanges]) -> list[Profile]:
    """Per profile, each input's (min, opt, max) shape. Raises UserInputError for a range
    naming a dimension no input has (the message lists the ones they have)."""
    named = list(dict.fromkeys(d for s in inputs.values() for d in s.shape if isinstance(d, str)))
    profiles = []
    for index, dims in enumerate(ranges or [{}]):
        unknown = [d for d in dims if d not in named]
        if unknown:
            raise UserInputError(
                f"profile {index} names dimension(s) {', '.join(unknown)}, which the model's "
                f"inputs do not have; its dynamic dimensions: {', '.join(named) or 'none'}"
            )
        chosen = {d: dims.get(d) or DEFAULT_RANGES.get(d, DEFAULT_RANGE) for d in named}
        profile = {}
        for name, spec in inputs.items():
            lo, opt, hi = (
                tuple(d if isinstance(d, int) else getattr(chosen[d], which) for d in spec.shape)
                for which in ("min", "opt", "max")
            )
            profile[name] = InputProfile(lo, opt, hi)
        profiles.append(profile)
    return profiles


def profile_ranges(
    profiles: Sequence[Profile], inputs: Mapping[str, TensorSpec]
) -> dict[str, tuple[int, int]]:
    """(min, max) per named dimension over all profiles: what a session may be fed."""
    ranges: dict[str, tuple[int, int]] = {}
    for profile in profiles:
        for name, spec in inputs.items():
            for axis, dim in enumerate(spec.shape):
                if isinstance(dim, str):
                    lo, hi = profile[name].min[axis], profile[name].max[axis]
                    old = ranges.get(dim, (lo, hi))
                    ranges[dim] = (min(old[0], lo), max(old[1], hi))
    return ranges


def pick_profile(profiles: Sequence[Profile], shapes: Mapping[str, Sequence[int]]) -> int | None:
    """The first profile that holds every input shape (None: none does)."""
    for index, profile in enumerate(profiles):
        if all(profile[name].holds(shape) for name, shape in shapes.items() if name in profile):
            return index
    return None
