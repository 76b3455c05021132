"""Calibration and evaluation sets that share no sample, compared by content: deduplicated,
with a seeded held-back share when no evaluation file is given."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from modelkiln.exporter.data_samples import CalibrationDataError, DataSample

T = TypeVar("T")


@dataclass(frozen=True)
class DataSplit:
    """Calibration and evaluation samples, disjoint; `origin` goes into the manifest."""

    calibration: tuple[DataSample, ...]
    evaluation: tuple[DataSample, ...]
    origin: dict[str, Any]


def sample_key(sample: DataSample) -> str:
    """Content hash of a sample's feeds: equal texts (or rows) give equal keys, whatever
    their names, and long texts sharing their first 60 characters do not."""
    digest = hashlib.sha256()
    for name in sorted(sample.feeds):
        value = np.ascontiguousarray(sample.feeds[name])
        digest.update(f"{name}\0{value.dtype.str}\0{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _dedupe(samples: Iterable[DataSample]) -> tuple[list[DataSample], list[str]]:
    kept: list[DataSample] = []
    keys: list[str] = []
    seen: set[str] = set()
    for sample in samples:
        key = sample_key(sample)
        if key not in seen:
            seen.add(key)
            kept.append(sample)
            keys.append(key)
    return kept, keys


def _spread(items: Sequence[T], k: int | None) -> list[T]:
    """`k` items evenly spaced over `items` (all when k is None or large enough)."""
    n = len(items)
    if k is None or k >= n:
        return list(items)
    return [items[(2 * i + 1) * n // (2 * k)] for i in range(k)]


def split(
    samples: Sequence[DataSample],
    *,
    evaluation: Sequence[DataSample] | None = None,
    calibration_size: int | None = None,
    eval_fraction: float = 0.2,
    min_eval: int = 1,
    seed: int = 0,
    origin: Mapping[str, Any] | None = None,
) -> DataSplit:
    """Calibration and evaluation sets that share no sample (compared by content).

    With `evaluation`, every other sample may calibrate; otherwise a seeded `eval_fraction`
    (at least `min_eval`, leaving at least one to calibrate) is held back. The held-back set
    does not depend on `calibration_size`, which then keeps an even spread of the rest.
    `origin` (e.g. the files) is merged into the recorded origin.
    """
    if calibration_size is not None and calibration_size < 1:
        raise CalibrationDataError(f"--calibration-size must be at least 1, got {calibration_size}")
    if not 0.0 < eval_fraction < 1.0:
        raise CalibrationDataError(f"eval fraction must be in (0, 1), got {eval_fraction}")
    if min_eval < 1:
        raise CalibrationDataError(f"min eval must be at least 1, got {min_eval}")
    unique, keys = _dedupe(samples)
    duplicates = len(samples) - len(unique)
    counts: dict[str, Any] = {"loaded": len(samples), "duplicates_dropped": duplicates}
    how: dict[str, Any]
    if evaluation is not None:
        held, held_keys = _dedupe(evaluation)
        if not held:
            raise CalibrationDataError("--eval holds no samples; it must hold at least one")
        counts["evaluation_loaded"] = len(evaluation)
        counts["evaluation_duplicates_dropped"] = len(evaluation) - len(held)
        taken = set(held_keys)
        pool = [s for s, k in zip(unique, keys, strict=True) if k not in taken]
        counts["also_in_evaluation_dropped"] = len(unique) - len(pool)
        if not pool:
            raise CalibrationDataError(
                f"every --calibration sample ({len(unique)}) is also in --eval; calibration "
                "and evaluation must differ: give different files"
            )
        how = {"method": "explicit evaluation set"}
    else:
        n = len(unique)
        if n < 2:
            raise CalibrationDataError(
                f"--calibration holds {n} distinct sample(s) ({duplicates} duplicate(s) "
                "dropped); holding some back for evaluation needs at least 2: add samples "
                "or give --eval FILE"
            )
        n_eval = min(max(min_eval, int(n * eval_fraction + 0.5)), n - 1)
        chosen = set(np.random.default_rng(seed).permutation(n)[:n_eval].tolist())
        held = [s for i, s in enumerate(unique) if i in chosen]
        pool = [s for i, s in enumerate(unique) if i not in chosen]
        how = {
            "method": "held back from --calibration",
            "eval_fraction": eval_fraction,
            "min_eval": min_eval,
            "seed": seed,
        }
    calibration = _spread(pool, calibration_size)
    how |= {
        "calibration_size": calibration_size,
        "selection": "all" if len(calibration) == len(pool) else "evenly spaced",
    }
    counts |= {
        "calibration_available": len(pool),
        "calibration": len(calibration),
        "evaluation": len(held),
    }
    record = {**(origin or {}), "split": how, "counts": counts}
    return DataSplit(tuple(calibration), tuple(held), json.loads(json.dumps(record)))
