"""What calibration and evaluation files become: named batch-1 feeds, and the error type
every problem with such a file raises."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from modelkiln.errors import UserInputError
from modelkiln.generated_feeds import InputDecl

FORMATS = (".txt", ".jsonl", ".npz")
NAME_CHARS = 60
NPZ_CONVENTION = "one array per model input, named after it, samples along the first axis"


class CalibrationDataError(UserInputError):
    """A calibration or evaluation file is missing, unreadable, or does not fit the model."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


@dataclass(frozen=True, eq=False)
class DataSample:
    """One input example from a user's data file, at batch 1 and its own length; `name`
    labels it in reports (its text, or file[index]).

    Compared and hashed by identity (numpy arrays have no single truth value);
    `modelkiln.exporter.data_split.sample_key` compares content."""

    name: str
    feeds: dict[str, np.ndarray]


def describe_inputs(decls: Iterable[InputDecl]) -> str:
    """`pixel_values (float32 [batch,3,224,224])`, comma-separated, for error messages."""
    return ", ".join(f"{d.name} ({d.dtype} [{','.join(map(str, d.axes))}])" for d in decls)


def short_name(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= NAME_CHARS else text[: NAME_CHARS - 1].rstrip() + "…"


def check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise CalibrationDataError(
            f"{what} {path} does not exist; give a {', '.join(FORMATS)} file"
        )
    if path.is_dir():
        raise CalibrationDataError(f"{what} {path} is a folder; give a file: {', '.join(FORMATS)}")
    if path.suffix.lower() not in FORMATS:
        raise CalibrationDataError(
            f"{what} {path} has suffix '{path.suffix}', which modelkiln does not read; "
            'give .txt (one text per line), .jsonl (objects with a "text" field) or '
            f".npz ({NPZ_CONVENTION})"
        )
    if path.stat().st_size == 0:
        raise CalibrationDataError(f"{what} {path} is empty; it must hold at least one sample")
