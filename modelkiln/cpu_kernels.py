"""Which int8 dot-product instructions this CPU offers ONNX Runtime's u8 x s8 kernels.

The class matters for what an int8 artifact computes, not only for its speed: with VNNI
(`vpdpbusd`) or AMX the products are summed exactly in int32, while on AVX2 alone
(`vpmaddubsw`) adjacent products are first summed in int16 with saturation (a lone
MatMulInteger with full-range inputs measured up to 18 % off on such a CPU). An int8
artifact's accuracy is measured on the machine that builds it, so its manifest records the
class, and `kiln validate` names the difference when the artifact fails on another one.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

__all__ = ["int8_kernels", "mismatch_note"]

# Most exact first; names as /proc/cpuinfo spells the flags.
_CLASSES = (
    ("amx", ("amx_int8",)),
    ("vnni", ("avx512_vnni", "avx_vnni")),
    ("avx2", ("avx2",)),
)
_EXACT = {"amx", "vnni"}  # int32 sums of u8 x s8 products, no saturation


def int8_kernels(flags: Iterable[str] | None = None) -> str:
    """The class: `amx`, `vnni`, `avx2`, `other` (an x86 CPU without AVX2, or not x86) or
    `unknown` (no /proc/cpuinfo to read); of `flags` instead of this CPU's when given."""
    have = frozenset(flags) if flags is not None else _cpu_flags()
    if have is None:
        return "unknown"
    for name, needs in _CLASSES:
        if any(flag in have for flag in needs):
            return name
    return "other"


def mismatch_note(recorded: object, current: str | None = None) -> str | None:
    """Why an int8 artifact built where its manifest says (`recorded`) may compute otherwise
    here, or None when the classes match or either is not known."""
    here = current or int8_kernels()
    if not isinstance(recorded, str) or recorded == here or "unknown" in (recorded, here):
        return None
    if {recorded, here} <= _EXACT:
        return None  # both exact: the same int32 sums
    why = (
        "AVX2 without VNNI sums pairs of u8 x s8 products in saturating int16"
        if "avx2" in (recorded, here)
        else "their int8 kernels differ"
    )
    return (
        f"this int8 artifact was built and measured on a CPU with {recorded} int8 kernels; this "
        f"CPU has {here} ones ({why}), so its outputs differ from the build's: re-export it on "
        "this kind of CPU to measure and validate it here"
    )


@lru_cache(maxsize=1)
def _cpu_flags() -> frozenset[str] | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()
