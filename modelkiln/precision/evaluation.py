"""The evaluation set every reduced precision is measured on: samples kept apart from
calibration, with their fp32 reference outputs, computed once per export."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.artifact import sha256_file
from modelkiln.exporter import calibration as cal
from modelkiln.exporter.accuracy import measure
from modelkiln.exporter.sources import HFCheckpoint
from modelkiln.generation import ArrayCacheStepper, generate_with
from modelkiln.manifest import Accuracy, DecoderSection
from modelkiln.precision.options import PrecisionOptions
from modelkiln.prepare import Prepared
from modelkiln.progress import Progress, iter_with_progress
from modelkiln.tensors import TensorSpec

GREEDY_TOKENS = 16  # decoders: new tokens per evaluation prompt compared with fp32's


@dataclass
class Evaluation:
    """The evaluation samples, their fp32 reference outputs, and the calibration feeds;
    for decoders also fp32's greedy continuation of each prompt."""

    task: str
    outputs: tuple[str, ...]
    names: list[str]
    feeds: list[dict[str, np.ndarray]]
    reference: list[dict[str, np.ndarray]]
    calibration: list[dict[str, np.ndarray]]
    origin: dict[str, Any]
    decoder: DecoderSection | None = None
    greedy: list[list[int]] = field(default_factory=list)

    def measure(self, session: Any) -> Accuracy:
        """The session's outputs against fp32 (`session.run`; decoders: also its greedy
        tokens through `session.cache_stepper`)."""
        got = [session.run(f) for f in self.feeds]
        report = measure(self.task, self.outputs, self.names, self.feeds, self.reference, got)
        if self.decoder is not None:
            ours = [self._continue(session.cache_stepper(self.decoder), f) for f in self.feeds]
            report["greedy"] = greedy_agreement(ours, self.greedy)
        return Accuracy.from_json(report)

    def _continue(self, stepper: Any, feeds: dict[str, np.ndarray]) -> list[int]:
        assert self.decoder is not None
        prompt = [feeds["input_ids"][0].tolist()]
        generated = generate_with(
            stepper, self.decoder, prompt, max_new_tokens=GREEDY_TOKENS, eos_token_id=[]
        )
        return generated.new_tokens[0].tolist()


def greedy_agreement(ours: list[list[int]], fp32: list[list[int]]) -> dict[str, Any]:
    """Greedy continuations against fp32's: the share of positions with the same token, and
    of prompts continued identically."""
    same = [
        sum(a == b for a, b in zip(x, y, strict=True)) / len(y)
        for x, y in zip(ours, fp32, strict=True)
    ]
    return {
        "new_tokens": len(fp32[0]) if fp32 else 0,
        "agreement": round(float(np.mean(same)), 6) if same else None,
        "identical": round(sum(s == 1.0 for s in same) / len(same), 6) if same else None,
    }


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
    result = Evaluation(
        task=spec.task,
        outputs=tuple(spec.outputs),
        names=[s.name for s in evaluation],
        feeds=feeds,
        reference=ref,
        calibration=[dict(s.feeds) for s in calib],
        origin=origin,
        decoder=prepared.decoder_section(),
    )
    if result.decoder is not None:
        inputs = {d.name: TensorSpec(d.dtype, d.axes) for d in spec.inputs}
        stepper = ArrayCacheStepper(inputs, reference, result.decoder)
        result.greedy = [result._continue(stepper, f) for f in feeds]
    return result
