"""Targets name where an artifact runs: backend, device, precision, options, shape ranges.

Built-in presets are TOML files in `presets/`; users pass their own TOML file by path.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType
from typing import Any

from modelkiln.errors import UnknownTargetError, UserInputError
from modelkiln.precision.budget import BUDGET_KEYS, check_bound
from modelkiln.precision.names import AUTO, CHOICES


@dataclass(frozen=True)
class ShapeRange:
    min: int
    opt: int
    max: int

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class Target:
    name: str
    backend: str
    device: str = "cpu"
    precision: str = "fp32"
    description: str = ""
    shapes: Mapping[str, ShapeRange] = field(default_factory=lambda: MappingProxyType({}))
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    # Accuracy budget for reduced precisions (min_cosine / min_top1_agreement); the
    # command line's --min-cosine / --min-top1-agreement take precedence.
    budget: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    # With precision "auto": the precisions to try (default: all the backend offers).
    candidates: tuple[str, ...] = ()

    @property
    def ranges(self) -> dict[str, tuple[int, int]]:
        """(min, max) per named dimension: the sizes sessions of this target accept."""
        return {dim: (r.min, r.max) for dim, r in self.shapes.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "backend": self.backend,
            "device": self.device,
            "precision": self.precision,
            "description": self.description,
            "shapes": {k: v.to_json() for k, v in self.shapes.items()},
            "options": dict(self.options),
            "budget": dict(self.budget),
            "candidates": list(self.candidates),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Target:
        """The target as a manifest records it (keys added later default as in a file)."""
        shapes = {
            dim: ShapeRange(int(r["min"]), int(r["opt"]), int(r["max"]))
            for dim, r in (data.get("shapes") or {}).items()
        }
        return cls(
            name=str(data["name"]),
            backend=str(data["backend"]),
            device=str(data.get("device", "cpu")),
            precision=str(data.get("precision", "fp32")),
            description=str(data.get("description", "")),
            shapes=MappingProxyType(shapes),
            options=MappingProxyType(dict(data.get("options") or {})),
            budget=MappingProxyType(dict(data.get("budget") or {})),
            candidates=tuple(data.get("candidates") or ()),
        )


def preset_names() -> list[str]:
    return sorted(
        p.name[:-5]
        for p in files("modelkiln.targets").joinpath("presets").iterdir()
        if p.name.endswith(".toml")
    )


def load_target(name_or_path: str) -> Target:
    """A built-in preset by name, or a user's TOML file by path."""
    if name_or_path.endswith(".toml") or "/" in name_or_path:
        path = Path(name_or_path)
        if not path.is_file():
            raise UnknownTargetError(f"target file {path} does not exist")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserInputError(f"cannot read target file {path}: {exc}") from None
        return _parse(text, str(path), default_name=path.stem)
    if name_or_path not in preset_names():
        raise UnknownTargetError(
            f"unknown target '{name_or_path}'; built-in targets: {', '.join(preset_names())} "
            "(or pass a path to a target .toml file)"
        )
    text = files("modelkiln.targets").joinpath("presets", f"{name_or_path}.toml").read_text()
    return _parse(text, f"preset {name_or_path}", default_name=name_or_path)


def _parse(text: str, origin: str, default_name: str) -> Target:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserInputError(f"malformed target {origin}: {exc}") from None
    known = {
        "name",
        "backend",
        "device",
        "precision",
        "description",
        "shapes",
        "options",
        "budget",
        "candidates",
    }
    extra = sorted(set(data) - known)
    if extra:
        raise UserInputError(
            f"target {origin}: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(known))}"
        )
    if "backend" not in data:
        raise UserInputError(f"target {origin} has no 'backend' key")
    precision = data.get("precision", "fp32")
    if precision not in CHOICES:
        raise UserInputError(
            f"target {origin}: unknown precision '{precision}'; one of {', '.join(CHOICES)}"
        )
    for table in ("shapes", "options", "budget"):
        if not isinstance(data.get(table, {}), dict):
            raise UserInputError(f"target {origin}: '{table}' must be a table, like [{table}]")
    shapes = {}
    for dim, rng in data.get("shapes", {}).items():
        try:
            shapes[dim] = ShapeRange(int(rng["min"]), int(rng["opt"]), int(rng["max"]))
        except (KeyError, TypeError, ValueError):
            raise UserInputError(
                f"target {origin}: shapes.{dim} needs integer min, opt and max"
            ) from None
        if not 1 <= shapes[dim].min <= shapes[dim].opt <= shapes[dim].max:
            raise UserInputError(f"target {origin}: shapes.{dim} needs 1 <= min <= opt <= max")
    budget = {}
    for key, value in data.get("budget", {}).items():
        if key not in BUDGET_KEYS:
            raise UserInputError(
                f"target {origin}: unknown budget key '{key}'; known: {', '.join(BUDGET_KEYS)}"
            )
        budget[key] = check_bound(value, f"target {origin}: budget.{key}")
    candidates = data.get("candidates", [])
    if not isinstance(candidates, list) or any(c not in CHOICES or c == AUTO for c in candidates):
        raise UserInputError(
            f"target {origin}: candidates must be a list of precisions from "
            f"{', '.join(p for p in CHOICES if p != AUTO)}"
        )
    return Target(
        name=str(data.get("name", default_name)),
        backend=str(data["backend"]),
        device=str(data.get("device", "cpu")),
        precision=precision,
        description=str(data.get("description", "")),
        shapes=MappingProxyType(shapes),
        options=MappingProxyType(dict(data.get("options", {}))),
        budget=MappingProxyType(budget),
        candidates=tuple(candidates),
    )
