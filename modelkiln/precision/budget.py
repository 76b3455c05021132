"""The accuracy budget a reduced-precision artifact must keep against fp32.

One range check serves every place a budget comes from (command line, target file, API),
each naming the bound the way its user wrote it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from modelkiln.errors import UserInputError

BUDGET_KEYS = ("min_cosine", "min_top1_agreement")
CLASSIFIERS = ("text-classification", "image-classification", "token-classification")
# Tasks judged by top-1 agreement with fp32: classifiers' decisions, decoders' next tokens.
TOP1_TASKS = (*CLASSIFIERS, "text-generation")
# A quantized artifact built without a budget must still not be broken: this catches a
# quantization that went wrong, not one that is merely less accurate than wanted.
DEFAULT_FLOOR = 0.95


def check_bound(value: Any, label: str) -> float:
    """`value` as a bound in (0, 1]; `label` names it in the refusal."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 < value <= 1.0:
        raise UserInputError(f"{label} must be a number in (0, 1], got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Budget:
    """The accuracy a candidate must keep; None means no requirement on that measure."""

    min_cosine: float | None = None
    min_top1_agreement: float | None = None

    def __post_init__(self) -> None:
        for key in BUDGET_KEYS:
            if getattr(self, key) is not None:
                check_bound(getattr(self, key), key)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Budget:
        return cls(**{k: data.get(k) for k in BUDGET_KEYS})

    @property
    def empty(self) -> bool:
        return self.min_cosine is None and self.min_top1_agreement is None

    def check(self, report: Mapping[str, Any]) -> list[str]:
        """What an accuracy report misses (empty: it meets the budget)."""
        misses = []
        if self.min_cosine is not None:
            cosine = (report.get("cosine") or {}).get("min")
            if cosine is None:
                misses.append(f"no cosine measured for task {report.get('task')}")
            elif cosine < self.min_cosine:
                misses.append(f"min cosine {_exact(cosine, self.min_cosine)} < {self.min_cosine}")
        if self.min_top1_agreement is not None:
            agreement = report.get("top1_agreement")
            if agreement is None:
                misses.append(f"no top-1 agreement measured for task {report.get('task')}")
            elif agreement < self.min_top1_agreement:
                misses.append(
                    f"top-1 agreement {_exact(agreement, self.min_top1_agreement)} < "
                    f"{self.min_top1_agreement}"
                )
        return misses

    def fits(self, task: str) -> None:
        """Refuse a budget the task cannot be measured by, before any slow work."""
        if self.min_top1_agreement is not None and task not in TOP1_TASKS:
            raise UserInputError(
                f"--min-top1-agreement applies to classifiers and decoders "
                f"({', '.join(TOP1_TASKS)}); this model's task is {task}: use --min-cosine"
            )

    def text(self) -> str:
        parts = []
        if self.min_cosine is not None:
            parts.append(f"min cosine {self.min_cosine}")
        if self.min_top1_agreement is not None:
            parts.append(f"top-1 agreement {self.min_top1_agreement}")
        return ", ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"min_cosine": self.min_cosine, "min_top1_agreement": self.min_top1_agreement}


def default_floor(task: str) -> Budget:
    """What a quantized artifact must keep when nobody set a budget."""
    if task in TOP1_TASKS:
        return Budget(min_top1_agreement=DEFAULT_FLOOR)
    return Budget(min_cosine=DEFAULT_FLOOR)


def _exact(value: float, bound: float) -> str:
    """`value` with enough digits to show it is below `bound` (0.99997, not 1.0000)."""
    for digits in range(4, 10):
        text = f"{value:.{digits}f}"
        if float(text) < bound:
            return text
    return repr(value)
