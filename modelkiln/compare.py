"""Output comparison shared by export-time validation and `kiln validate`.

Every output of every check is compared and reported, so a failure lists all mismatches at
once instead of stopping at the first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """How close an output must stay to the reference."""

    atol: float = 1e-4
    min_cosine: float | None = None  # compared per row of the last axis (embeddings)

    def to_json(self) -> dict[str, Any]:
        return {"atol": self.atol, "min_cosine": self.min_cosine}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Tolerance:
        return cls(atol=float(data["atol"]), min_cosine=data.get("min_cosine"))


def cosine_min(reference: np.ndarray, actual: np.ndarray) -> float:
    """Smallest cosine similarity between matching rows of the last axis."""
    a = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    b = actual.reshape(-1, actual.shape[-1]).astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = norms == 0
    cos = np.where(both_zero, 1.0, (a * b).sum(axis=1) / np.where(both_zero, 1.0, norms))
    return float(cos.min()) if cos.size else 1.0


def compare_outputs(
    reference: Mapping[str, np.ndarray],
    actual: Mapping[str, np.ndarray],
    tolerance: Mapping[str, Any],
) -> dict[str, dict[str, Any]]:
    atol = float(tolerance["atol"])
    min_cos = tolerance.get("min_cosine")
    results: dict[str, dict[str, Any]] = {}
    for name, ref in reference.items():
        if name not in actual:
            results[name] = {"passed": False, "problem": "output missing"}
            continue
        got = np.asarray(actual[name])
        if got.shape != ref.shape:
            results[name] = {
                "passed": False,
                "problem": f"shape {list(got.shape)} != reference {list(ref.shape)}",
            }
            continue
        if ref.dtype.kind in "iub":
            mismatches = int(np.count_nonzero(ref != got))
            results[name] = {"mismatches": mismatches, "passed": mismatches == 0}
            continue
        # Non-finite values must sit at the same places with the same values (NaN = NaN);
        # the numeric difference is taken over the places where both are finite.
        ref64, got64 = ref.astype(np.float64), got.astype(np.float64)
        ref_ok, got_ok = np.isfinite(ref64), np.isfinite(got64)
        same_special = (ref_ok == got_ok) & (
            ref_ok | (np.isnan(ref64) & np.isnan(got64)) | (ref64 == got64)
        )
        special_mismatches = int(np.count_nonzero(~same_special))
        both = ref_ok & got_ok
        diff = float(np.max(np.abs(ref64[both] - got64[both]))) if both.any() else 0.0
        entry: dict[str, Any] = {"max_abs_diff": diff, "atol": atol}
        passed = special_mismatches == 0 and diff <= atol
        if min_cos is not None and ref.ndim >= 2:
            entry["cosine_min"] = cosine_min(np.where(both, ref64, 0.0), np.where(both, got64, 0.0))
            passed = passed and entry["cosine_min"] >= float(min_cos)
        if special_mismatches:
            entry["problem"] = f"{special_mismatches} non-finite value(s) differ from the reference"
        entry["passed"] = passed
        results[name] = entry
    return results


def summarize(checks: Sequence[Mapping[str, Any]], tolerance: Mapping[str, Any]) -> dict[str, Any]:
    """Fold per-check results into a report with an overall verdict and every failure listed."""
    failures = []
    worst = 0.0
    for check in checks:
        dims = ",".join(f"{k}={v}" for k, v in check["dims"].items())
        for name, result in check["outputs"].items():
            worst = max(worst, result.get("max_abs_diff", 0.0))
            if not result["passed"]:
                failures.append(f"{name} at {dims or 'fixed shape'}: {describe(result)}")
    return {
        "passed": not failures,
        "tolerance": dict(tolerance),
        "max_abs_diff": worst,
        "checks": list(checks),
        "failures": failures,
    }


def describe(result: Mapping[str, Any]) -> str:
    if "problem" in result and "max_abs_diff" not in result:
        return str(result["problem"])
    if "mismatches" in result:
        return f"{result['mismatches']} element(s) differ"
    text = f"max abs diff {result['max_abs_diff']:.3g} (atol {result['atol']:g})"
    if "cosine_min" in result:
        text += f", min cosine {result['cosine_min']:.6f}"
    if "problem" in result:
        text += f"; {result['problem']}"
    return text
