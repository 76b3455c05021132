"""What the user asked for: `kiln export --precision ... --calibration ... --min-cosine ...`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from modelkiln.precision.budget import Budget


@dataclass(frozen=True)
class PrecisionOptions:
    precision: str | None = None  # overrides every target's own precision
    calibration: Path | None = None
    evaluation: Path | None = None
    calibration_size: int | None = None
    budget: Budget = field(default_factory=Budget)
    keep_best: bool = False

    @property
    def has_data(self) -> bool:
        return self.calibration is not None or self.evaluation is not None
