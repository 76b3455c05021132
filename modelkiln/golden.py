"""golden.npz: inputs and reference outputs recorded at export, replayed by `kiln validate`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# (inputs, reference outputs) of one validation shape.
GoldenSample = tuple[dict[str, np.ndarray], dict[str, np.ndarray]]
_SEP = "__"


def save_golden(path: Path, samples: Sequence[GoldenSample]) -> None:
    arrays: dict[str, Any] = {}
    for i, (inputs, outputs) in enumerate(samples):
        arrays.update({f"c{i}{_SEP}in{_SEP}{k}": v for k, v in inputs.items()})
        arrays.update({f"c{i}{_SEP}out{_SEP}{k}": v for k, v in outputs.items()})
    np.savez_compressed(path, **arrays)


def load_golden(path: Path) -> list[GoldenSample]:
    samples: dict[int, GoldenSample] = {}
    with np.load(path, allow_pickle=False) as data:
        for key in data.files:
            index, kind, name = key.split(_SEP, 2)
            inputs, outputs = samples.setdefault(int(index[1:]), ({}, {}))
            (inputs if kind == "in" else outputs)[name] = data[key]
    return [samples[i] for i in sorted(samples)]
