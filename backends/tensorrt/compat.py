"""Whether an engine built elsewhere runs here: a pure comparison of two records.

TensorRT engines are tied to the TensorRT version and the GPU they were built with, unless
built with the compatibility flags (TensorRT's "Version Compatibility" and "Hardware
Compatibility"):
- by default the runtime must be the same TensorRT version and the GPU the same compute
  capability;
- `version_compatible` (BuilderFlag.VERSION_COMPATIBLE): any runtime of that version or
  later (a TensorRT 10 engine runs on 11, not the other way round);
- `hardware_compatibility_level` "ampere_plus": any GPU of compute capability 8.0 or newer;
  "same_compute_capability": any GPU of the same compute capability as the builder's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

HARDWARE_LEVELS = ("none", "ampere_plus", "same_compute_capability")


@dataclass(frozen=True)
class EngineRecord:
    """What an engine was built with (from the manifest), or what this machine has."""

    tensorrt_version: str
    compute_capability: str  # "8.6"
    gpu: str = ""
    cuda_version: str = ""
    version_compatible: bool = False
    hardware_compatibility_level: str = "none"

    def to_details(self) -> dict[str, Any]:
        return {
            "tensorrt_version": self.tensorrt_version,
            "compute_capability": self.compute_capability,
            "gpu": self.gpu,
            "cuda_version": self.cuda_version,
            "version_compatible": self.version_compatible,
            "hardware_compatibility_level": self.hardware_compatibility_level,
        }

    @classmethod
    def from_details(cls, details: Mapping[str, Any]) -> EngineRecord:
        return cls(
            tensorrt_version=str(details.get("tensorrt_version", "unknown")),
            compute_capability=str(details.get("compute_capability", "unknown")),
            gpu=str(details.get("gpu", "")),
            cuda_version=str(details.get("cuda_version", "")),
            version_compatible=bool(details.get("version_compatible", False)),
            hardware_compatibility_level=str(details.get("hardware_compatibility_level", "none")),
        )

    def describe(self) -> str:
        gpu = f", {self.gpu}" if self.gpu else ""
        return (
            f"TensorRT {self.tensorrt_version} on compute capability {self.compute_capability}{gpu}"
        )


def _numbers(text: str, count: int) -> tuple[int, ...] | None:
    """The first `count` dotted numbers of a version ("10.3.0.26" -> (10, 3, 0))."""
    parts = text.split(".")[:count]
    if len(parts) < count or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def load_problem(built: EngineRecord, here: EngineRecord) -> str | None:
    """Why the engine `built` cannot run on `here`, in words (None: it can)."""
    problems = []
    b_version, h_version = _numbers(built.tensorrt_version, 3), _numbers(here.tensorrt_version, 3)
    if built.version_compatible:
        if b_version is None or h_version is None or h_version < b_version:
            problems.append(
                "a version-compatible engine runs on its TensorRT version or later only"
            )
    elif b_version is None or b_version != h_version:
        problems.append(
            "the TensorRT versions differ (rebuild here, or build with version_compatible = true)"
        )
    b_cc, h_cc = _numbers(built.compute_capability, 2), _numbers(here.compute_capability, 2)
    level = built.hardware_compatibility_level
    if level == "ampere_plus":
        if h_cc is None or h_cc < (8, 0):
            problems.append("an ampere_plus engine needs compute capability 8.0 or newer")
    elif b_cc is None or b_cc != h_cc:
        hint = (
            "" if level != "none" else " (or build with hardware_compatibility_level = ampere_plus)"
        )
        problems.append(f"the compute capabilities differ{hint}")
    if not problems:
        return None
    return (
        f"built for {built.describe()}, but this machine has {here.describe()}: "
        f"{'; '.join(problems)}"
    )
