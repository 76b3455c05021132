"""The precision names, once: what targets ask for and backends declare they build.

A leaf module (it imports nothing of modelkiln's but the comparison tolerance), so targets,
backends, the exporter and the precision search all declare against the same names.
"""

from __future__ import annotations

from enum import StrEnum

from modelkiln.compare import Tolerance


class Precision(StrEnum):
    """A precision an artifact is built at. Members are strings (`Precision.FP32 == "fp32"`),
    so manifests and target files hold plain names."""

    FP32 = "fp32"
    FP16 = "fp16"
    BF16 = "bf16"
    INT8_DYNAMIC = "int8-dynamic"
    INT8_SMOOTH = "int8-smooth"
    INT8_STATIC = "int8-static"
    INT8_WEIGHTS = "int8-weights"
    INT4_WEIGHTS = "int4-weights"

    @property
    def half(self) -> bool:
        """Floating point in 16 bits: validated against fp32 with a looser tolerance."""
        return self in (Precision.FP16, Precision.BF16)

    @property
    def quantized(self) -> bool:
        """Integer weights (and maybe activations): judged by accuracy on evaluation data."""
        return self not in (Precision.FP32, Precision.FP16, Precision.BF16)

    @property
    def reduced(self) -> bool:
        return self is not Precision.FP32

    @property
    def mixable(self) -> bool:
        """Whether layers can be kept in float one by one (activation quantization);
        weight-only compression has no per-layer activation quantizers to remove."""
        return self in (Precision.INT8_STATIC, Precision.INT8_DYNAMIC, Precision.INT8_SMOOTH)


# Not a precision: a target setting that asks the search to pick one (modelkiln.precision).
AUTO = "auto"
# Every value a target's `precision` (and `--precision`) may take.
CHOICES: tuple[str, ...] = (*(p.value for p in Precision), AUTO)

HALF_TOLERANCE = {
    Precision.FP16: Tolerance(atol=2e-2, min_cosine=0.999),
    Precision.BF16: Tolerance(atol=1e-1, min_cosine=0.995),
}


def loosened(tolerance: Tolerance, precision: str) -> Tolerance:
    """A task's tolerance, loosened for half-precision inference (as is for other precisions)."""
    loose = HALF_TOLERANCE.get(Precision(precision)) if precision in _VALUES else None
    if loose is None:
        return tolerance
    cosine = tolerance.min_cosine
    return Tolerance(
        atol=max(tolerance.atol, loose.atol),
        min_cosine=None if cosine is None else min(cosine, loose.min_cosine or cosine),
    )


def is_quantized(name: str) -> bool:
    """`name` (a target's precision, maybe "auto") is a quantized precision."""
    return name in _VALUES and Precision(name).quantized


def is_reduced(name: str) -> bool:
    return name in _VALUES and Precision(name).reduced


def is_half(name: str) -> bool:
    return name in _VALUES and Precision(name).half


_VALUES = frozenset(p.value for p in Precision)
