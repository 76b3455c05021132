"""Target profiles: built-in TOML presets and users' own TOML files."""

from modelkiln.targets.target import PRECISIONS, ShapeRange, Target, load_target, preset_names

__all__ = ["PRECISIONS", "ShapeRange", "Target", "load_target", "preset_names"]
