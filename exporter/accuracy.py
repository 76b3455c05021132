"""How close a reduced-precision artifact stays to fp32 PyTorch, in the task's own terms.

Max abs diff alone says little about an int8 embedding model, so each task family gets the
measure its users judge by: sentence embeddings (mean-pooled over the attention mask, as
sentence-transformers does) by cosine, classifiers by top-1 agreement with fp32. The worst
inputs are named, because quantization tends to break on a few (very short sentences).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelkiln.precision.budget import TOP1_TASKS

Outputs = Mapping[str, np.ndarray]
WORST = 5


def pooled(outputs: Outputs, feeds: Outputs, names: Sequence[str]) -> np.ndarray:
    """One vector per sample from the first output: mean over the sequence (attention mask
    respected) for [batch, sequence, hidden], as is for [batch, hidden], else flattened."""
    value = np.asarray(outputs[names[0]], dtype=np.float64)
    if value.ndim == 3:
        mask = feeds.get("attention_mask")
        if mask is not None and mask.shape == value.shape[:2]:
            weights = mask.astype(np.float64)[..., None]
            return (value * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        return value.mean(axis=1)
    return value.reshape(value.shape[0], -1)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine; two zero rows count as identical, NaN anywhere as -1 (a failure)."""
    dot = (a * b).sum(axis=1)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = (np.linalg.norm(a, axis=1) == 0) & (np.linalg.norm(b, axis=1) == 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(both_zero, 1.0, dot / norms)
    return np.where(np.isfinite(cos), np.clip(cos, -1.0, 1.0), -1.0)


def _agreement(reference: np.ndarray, candidate: np.ndarray, feeds: Outputs) -> tuple[int, int]:
    """(agreeing, total) arg-max decisions: per sample, or per real token for taggers."""
    ref, cand = reference.argmax(axis=-1), candidate.argmax(axis=-1)
    if ref.ndim == 2:  # token classification: [batch, sequence]
        mask = feeds.get("attention_mask")
        keep = mask.astype(bool) if mask is not None and mask.shape == ref.shape else None
        if keep is not None:
            return int((ref == cand)[keep].sum()), int(keep.sum())
    return int((ref == cand).sum()), int(ref.size)


def measure(
    task: str,
    output_names: Sequence[str],
    names: Sequence[str],
    feeds: Sequence[Outputs],
    reference: Sequence[Outputs],
    candidate: Sequence[Outputs],
) -> dict[str, Any]:
    """Compare `candidate` outputs with fp32 `reference` outputs, sample by sample.

    `names[i]` labels sample i (its text, or file[index]); every sequence has one entry per
    evaluation sample, each holding a batch of one or more rows.
    """
    if not (len(names) == len(feeds) == len(reference) == len(candidate)) or not names:
        raise ValueError("measure() needs one name, feed, reference and candidate per sample")
    cosines: list[tuple[float, str]] = []
    agree = total = 0
    per_sample_agreement: list[tuple[float, str]] = []
    max_diff = 0.0
    for name, feed, ref, cand in zip(names, feeds, reference, candidate, strict=True):
        for out in output_names:
            r = np.asarray(ref[out], dtype=np.float64)
            c = np.asarray(cand[out], dtype=np.float64)
            if r.shape != c.shape:
                raise ValueError(f"output {out} of {name}: shape {c.shape} vs reference {r.shape}")
            diff = np.abs(r - c)
            if np.isnan(diff).any():
                max_diff = float("inf")
            elif diff.size:
                max_diff = max(max_diff, float(diff.max()))
        if task in TOP1_TASKS:
            a, n = _agreement(
                np.asarray(ref[output_names[0]]), np.asarray(cand[output_names[0]]), feed
            )
            agree, total = agree + a, total + n
            per_sample_agreement.append((a / n if n else 1.0, name))
        else:
            rows = cosine_rows(pooled(ref, feed, output_names), pooled(cand, feed, output_names))
            cosines.append((float(rows.min()), name))
    report: dict[str, Any] = {
        "task": task,
        "samples": len(names),
        "max_abs_diff": float(f"{max_diff:.4g}"),
    }
    if task in TOP1_TASKS:
        report["metric"] = "top1_agreement"
        report["top1_agreement"] = round(agree / total, 6) if total else None
        report["decisions"] = total
        worst = sorted(per_sample_agreement)[:WORST]
        report["worst"] = [{"name": n, "agreement": round(v, 6)} for v, n in worst if v < 1.0]
    else:
        values = np.array([c for c, _ in cosines])
        report["metric"] = "cosine"
        report["cosine"] = {
            "min": round(float(values.min()), 6),
            "mean": round(float(values.mean()), 6),
            "pooling": "mean over attention mask" if task == "feature-extraction" else "flatten",
        }
        worst = sorted(cosines)[:WORST]
        report["worst"] = [{"name": n, "cosine": round(v, 6)} for v, n in worst]
    return report
