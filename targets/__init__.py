"""Target profiles: built-in TOML presets and users' own TOML files."""

from modelkiln.targets.target import ShapeRange, Target, load_target, preset_names

__all__ = ["ShapeRange", "Target", "load_target", "preset_names"]
