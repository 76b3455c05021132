"""The evaluation set every reduced precision is measured on: samples kept apart from
calibration, with their fp32 reference outputs, computed once per export."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.artifact import sha256_file
from modelkiln.exporter import calibration as cal
from modelkiln.exporter.accuracy import measure
from modelkiln.exporter.sources import HFCheckpoint
from modelkiln.manifest import Accuracy
from modelkiln.precision.options import PrecisionOptions
from modelkiln.prepare import Prepared
from modelkiln.progress import Progress, iter_with_progress
from modelkiln.tensors import Runner


@dataclass
class Evaluation:
    """The evaluation samples, their fp32 reference outputs, and the calibration feeds."""

    task: str
    outputs: tuple[str, ...]
    names: list[str]
    feeds: list[dict[str, np.ndarray]]
    reference: list[dict[str, np.ndarray]]
    calibration: list[dict[str, np.ndarray]]
    origin: dict[str, Any]

    def measure(self, run: Runner) -> Accuracy:
        got = [run(f) for f in self.feeds]
        report = measure(self.task, self.outputs, self.names, self.feeds, self.reference, got)
        return Accuracy.from_json(report)


def load_evaluation(
    options: PrecisionOptions,
    prepared: Prepared,
    progress: Progress | None = None,
    max_length: int | None = None,
) -> Evaluation:
    """Read the data files, split them, and run the fp32 reference on the evaluation part.

    Texts are tokenized with the checkpoint folder's tokenizer; `max_length` truncates them
    (e.g. to the largest sequence every target accepts)."""
    spec = prepared.spec
    source = prepared.source
    tokenizer_dir = source.path if isinstance(source, HFCheckpoint) else None
    if options.calibration is not None:
        split = cal.load_split(
            options.calibration,
            spec,
            tokenizer_dir,
            evaluation=options.evaluation,
            calibration_size=options.calibration_size,
            max_length=max_length,
        )
        calib, evaluation, origin = split.calibration, split.evaluation, split.origin
    else:
        assert options.evaluation is not None
        path = Path(options.evaluation)
        evaluation = tuple(
            cal.load_samples(path, spec, tokenizer_dir, max_length=max_length, what="--eval")
        )
        record = {
            "file": str(path),
            "format": path.suffix.lower().lstrip("."),
            "sha256": sha256_file(path),
            "size": path.stat().st_size,
            "samples": len(evaluation),
        }
        calib, origin = (), {"evaluation_file": record, "counts": {"evaluation": len(evaluation)}}
    feeds = [dict(s.feeds) for s in evaluation]
    reference = prepared.reference_runner()
    ref = [reference(f) for f in iter_with_progress(feeds, progress, "fp32 reference")]
    return Evaluation(
        task=spec.task,
        outputs=tuple(spec.outputs),
        names=[s.name for s in evaluation],
        feeds=feeds,
        reference=ref,
        calibration=[dict(s.feeds) for s in calib],
        origin=origin,
    )
