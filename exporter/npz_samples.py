"""`.npz` samples: one array per model input, samples along the first axis, checked against
the model's inputs and cast only where no value changes meaning."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from modelkiln.errors import first_line
from modelkiln.exporter.data_samples import (
    NPZ_CONVENTION,
    CalibrationDataError,
    DataSample,
    describe_inputs,
)
from modelkiln.generated_feeds import InputDecl

if TYPE_CHECKING:
    from modelkiln.exporter.specs import TaskSpec


def npz_samples(path: Path, spec: TaskSpec, what: str) -> list[DataSample]:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, AttributeError) as exc:
        raise CalibrationDataError(
            f"{what} {path} is not a readable .npz of numeric arrays ({first_line(exc)}); "
            "write it with numpy.savez"
        ) from None
    expected = [d.name for d in spec.inputs]
    missing = [n for n in expected if n not in arrays]
    unexpected = sorted(n for n in arrays if n not in expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected {', '.join(unexpected)}")
        raise CalibrationDataError(
            f"{what} {path} does not match the model inputs ({'; '.join(parts)}); the model "
            f"takes {describe_inputs(spec.inputs)}: give {NPZ_CONVENTION}"
        )
    counts: dict[str, int] = {}
    dims: dict[str, tuple[int, str]] = {}
    cast: dict[str, np.ndarray] = {}
    for decl in spec.inputs:
        cast[decl.name] = _check_array(path, arrays[decl.name], decl, spec, dims, what)
        counts[decl.name] = cast[decl.name].shape[0]
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{n} {c}" for n, c in counts.items())
        raise CalibrationDataError(
            f"{what} {path}: the arrays hold different numbers of samples ({listed}); "
            "every input needs one row per sample"
        )
    count = next(iter(counts.values()))
    if count == 0:
        raise CalibrationDataError(
            f"{what} {path} holds 0 samples (empty first axis); it must hold at least one"
        )
    return [
        DataSample(f"{path.name}[{i}]", {n: a[i : i + 1] for n, a in cast.items()})
        for i in range(count)
    ]


def _check_array(
    path: Path,
    array: np.ndarray,
    decl: InputDecl,
    spec: TaskSpec,
    dims: dict[str, tuple[int, str]],
    what: str,
) -> np.ndarray:
    where = f"{what} {path}: array '{decl.name}'"
    takes = f"the model takes {describe_inputs([decl])}"
    if array.ndim != len(decl.axes):
        raise CalibrationDataError(
            f"{where} has rank {array.ndim} (shape {list(array.shape)}) but {takes}; give "
            f"rank {len(decl.axes)} with the samples along the first axis"
        )
    for axis, (want, got) in enumerate(zip(decl.axes, array.shape, strict=True)):
        if axis == 0:
            if isinstance(want, int) and want != 1:
                raise CalibrationDataError(
                    f"{where}: {takes}, a fixed first axis of {want}, but samples are fed one "
                    "row at a time; export the model with a dynamic (or size-1) first axis"
                )
            continue
        if isinstance(want, int) and got != want:
            raise CalibrationDataError(
                f"{where} has shape {list(array.shape)} but {takes}: axis {axis} must be {want}"
            )
        if isinstance(want, str):
            limit = spec.limits.get(want)
            if limit is not None and got > limit:
                raise CalibrationDataError(
                    f"{where} has {want} {got}, longer than the model's limit of {limit}; "
                    "cut the samples to at most that"
                )
            seen = dims.setdefault(want, (got, decl.name))
            if seen[0] != got:
                raise CalibrationDataError(
                    f"{where} has {want} {got} but '{seen[1]}' has {want} {seen[0]}; "
                    f"inputs sharing the '{want}' axis must agree"
                )
    return _cast(where, array, np.dtype(decl.dtype))


def _cast(where: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """`array` in `dtype` when no value changes meaning: no float->int, no ints as floats
    (unpreprocessed pixels), no overflow, no NaN."""
    src = array.dtype
    refuse = None
    if src.kind not in "biuf":
        refuse = "it holds non-numeric data"
    elif dtype.kind in "iu" and src.kind == "f":
        refuse = "float values cannot become integers without changing them"
    elif dtype.kind == "f" and src.kind in "biu":
        refuse = "integers here usually mean unpreprocessed data; give the float values"
    elif dtype.kind == "b" and src.kind == "f":
        refuse = "float values cannot become booleans without changing them"
    elif dtype.kind in "iub" and src.kind in "iu" and array.size:
        low, high = int(array.min()), int(array.max())
        info = (0, 1) if dtype.kind == "b" else (np.iinfo(dtype).min, np.iinfo(dtype).max)
        if low < info[0] or high > info[1]:
            refuse = f"its values {low}..{high} do not fit {dtype.name}"
    elif src.kind == "f" and array.size and not np.isfinite(array).all():
        refuse = "it holds NaN or infinite values"
    if refuse:
        raise CalibrationDataError(
            f"{where} is {src.name} but the model takes {dtype.name}: {refuse}"
        )
    return np.ascontiguousarray(array.astype(dtype, copy=False))
