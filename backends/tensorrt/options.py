"""The TensorRT target options, checked in one place (`check` and `build` read them here)."""

from __future__ import annotations

from dataclasses import dataclass

from modelkiln.backends.target_checks import (
    check_options,
    option_choice,
    option_flag,
    option_whole_number,
)
from modelkiln.backends.tensorrt.compat import HARDWARE_LEVELS
from modelkiln.backends.tensorrt.profiles import dim_ranges
from modelkiln.errors import UserInputError
from modelkiln.targets import Target
from modelkiln.targets.target import ShapeRange

KNOWN = {
    "workspace_mib",
    "builder_optimization_level",
    "version_compatible",
    "hardware_compatibility_level",
    "profiles",
    "timing_cache",
}
DEFAULT_OPTIMIZATION_LEVEL = 3  # TensorRT's own default


@dataclass(frozen=True)
class BuildOptions:
    workspace_mib: int | None  # None: TensorRT's default (the device's memory)
    builder_optimization_level: int
    version_compatible: bool
    hardware_compatibility_level: str
    timing_cache: bool
    profiles: list[dict[str, ShapeRange]]


def build_options(target: Target, backend: str = "tensorrt") -> BuildOptions:
    """The target's options, or UserInputError naming the first bad one."""
    check_options(target, backend, KNOWN)
    workspace = target.options.get("workspace_mib")
    if workspace is not None:
        workspace = option_whole_number(target, "workspace_mib", 0, minimum=1)
    level = option_whole_number(target, "builder_optimization_level", DEFAULT_OPTIMIZATION_LEVEL)
    if level > 5:
        raise UserInputError(
            f"target '{target.name}': builder_optimization_level must be 0..5, got {level}"
        )
    return BuildOptions(
        workspace_mib=workspace,
        builder_optimization_level=level,
        version_compatible=option_flag(target, "version_compatible", False),
        hardware_compatibility_level=option_choice(
            target, "hardware_compatibility_level", HARDWARE_LEVELS, "none"
        ),
        timing_cache=option_flag(target, "timing_cache", True),
        profiles=dim_ranges(target),
    )
