"""Calibration and evaluation data: user files turned into batch-1 feeds, split apart.

Static quantization picks activation ranges from real inputs, and the accuracy report must be
measured on other inputs than those, so both come from here and nothing is ever made up:
there is no fallback to random feeds. Each sample is one example at batch 1 with its own
length, because padding every text to the longest one would calibrate attention and
normalization ranges on padding that real traffic rarely has.

Accepted files:
- `.txt`: one text per line (UTF-8, blank lines skipped);
- `.jsonl`: one JSON object per line with a "text" string, plus "text_pair" for pairs;
- `.npz`: one array per model input, named exactly like the input, with the samples along the
  first axis (the batch axis): sample i is `array[i:i+1]` of every array. All arrays hold the
  same number of samples; ranks and fixed sizes are the model's own (`np.savez(f,
  pixel_values=images)` with images of shape [N, 3, 224, 224]).

Texts are tokenized one at a time with the checkpoint's own tokenizer (transformers is
imported only then); they need a model whose inputs declare token ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from modelkiln.artifact import sha256_file
from modelkiln.errors import first_line
from modelkiln.exporter.data_samples import CalibrationDataError, DataSample, check_file
from modelkiln.exporter.data_split import DataSplit, split
from modelkiln.exporter.npz_samples import npz_samples
from modelkiln.exporter.text_samples import read_texts, text_samples

if TYPE_CHECKING:
    from modelkiln.exporter.specs import TaskSpec

T = TypeVar("T")


def load_samples(
    path: str | Path,
    spec: TaskSpec,
    tokenizer_dir: Path | None,
    *,
    max_length: int | None = None,
    what: str = "--calibration",
) -> list[DataSample]:
    """Samples from a `.txt`, `.jsonl` or `.npz` file, checked against the model's inputs.

    `what` is the option the file came from; every error names it and the path.
    `max_length` caps tokenized texts (never above the model's sequence limit or the
    tokenizer's own maximum).
    """
    return _load(Path(path), spec, tokenizer_dir, max_length, what)[0]


def load_split(
    calibration: str | Path,
    spec: TaskSpec,
    tokenizer_dir: Path | None,
    *,
    evaluation: str | Path | None = None,
    calibration_size: int | None = None,
    max_length: int | None = None,
    eval_fraction: float = 0.2,
    seed: int = 0,
) -> DataSplit:
    """`--calibration FILE [--eval FILE]` loaded and split, with the files recorded in origin."""
    samples, calib_record = _load(
        Path(calibration), spec, tokenizer_dir, max_length, "--calibration"
    )
    files: dict[str, Any] = {"calibration_file": calib_record}
    held_out = None
    if evaluation is not None:
        held_out, eval_record = _load(Path(evaluation), spec, tokenizer_dir, max_length, "--eval")
        files["evaluation_file"] = eval_record
    return split(
        samples,
        evaluation=held_out,
        calibration_size=calibration_size,
        eval_fraction=eval_fraction,
        seed=seed,
        origin=files,
    )


def _load(
    path: Path, spec: TaskSpec, tokenizer_dir: Path | None, max_length: int | None, what: str
) -> tuple[list[DataSample], dict[str, Any]]:
    check_file(path, what)
    tokenizer_dir = None if tokenizer_dir is None else Path(tokenizer_dir)
    suffix = path.suffix.lower()
    record: dict[str, Any] = {"file": str(path), "format": suffix[1:]}
    if suffix == ".npz":
        record |= {"sha256": _readable(path, what, sha256_file), "size": path.stat().st_size}
        samples = npz_samples(path, spec, what)
    else:
        data = _readable(path, what, Path.read_bytes)
        record |= {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
        texts = read_texts(path, data, suffix, what)
        samples, text_record = text_samples(path, texts, spec, tokenizer_dir, max_length, what)
        record |= text_record
    record["samples"] = len(samples)
    return samples, record


def _readable(path: Path, what: str, read: Callable[[Path], T]) -> T:
    try:
        return read(path)
    except OSError as exc:
        reason = exc.strerror or first_line(exc)
        raise CalibrationDataError(
            f"{what} {path} cannot be read ({reason}); check its permissions"
        ) from None
