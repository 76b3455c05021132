"""The auto search's candidate table, as printed at export."""

from __future__ import annotations

from collections.abc import Sequence

from modelkiln.precision.candidates import Candidate


def table_text(candidates: Sequence[Candidate], chosen: Candidate) -> str:
    head = ("candidate", "latency ms", "size MB", "accuracy", "budget")
    rows = []
    for c in candidates:
        verdict = "chosen" if c is chosen else ("pass" if c.passed else "fail")
        if c.error:
            accuracy = c.error.split(":")[0]
        else:
            accuracy = "-" if c.accuracy is None else c.accuracy.short()
        rows.append(
            (
                c.label,
                "-" if c.latency_ms is None else f"{c.latency_ms:.2f}",
                "-" if c.size_bytes is None else f"{c.size_bytes / 1e6:.1f}",
                accuracy,
                verdict,
            )
        )
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in (head, *rows)
    ]
    return "\n".join(lines)


def accuracy_text(candidate: Candidate | None) -> str:
    if candidate is None or candidate.accuracy is None:
        return "not measured"
    return candidate.accuracy.headline()
