"""The one thing the pipeline asks about precision, per target: build it (searching first
for `auto`), then hold the artifact to the tolerance its precision calls for and measure its
accuracy where that is the evidence."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.backends.base import Backend
from modelkiln.compare import Tolerance
from modelkiln.exporter.reference import compare_samples
from modelkiln.generation import check_generation, generate
from modelkiln.manifest import Accuracy, BackendSection, Validation
from modelkiln.precision.budget import default_floor
from modelkiln.precision.candidates import build_request
from modelkiln.precision.evaluation import Evaluation
from modelkiln.precision.names import AUTO, is_quantized, loosened
from modelkiln.precision.options import PrecisionOptions
from modelkiln.precision.request import (
    budget_source,
    candidate_precisions,
    effective_budget,
    needs_evaluation,
)
from modelkiln.precision.search import SearchResult, run_search
from modelkiln.prepare import Prepared
from modelkiln.progress import Progress
from modelkiln.targets import Target
from modelkiln.tensors import Runner

REPLAY_TOLERANCE_SOURCE = (
    "measured at build: 2x the quantized artifact's max abs diff from the reference; "
    "accuracy against fp32 is in the manifest's accuracy section"
)


@dataclass
class Built:
    """A target built at its precision (for `auto`: the chosen one) in the staging folder."""

    target: Target
    section: BackendSection
    options: PrecisionOptions
    evaluation: Evaluation | None
    search: SearchResult | None = None

    def validate(self, prepared: Prepared, run: Runner) -> Validation:
        """The golden samples through `run`. fp32 and half precisions are held to the task's
        tolerance (loosened for half precision). A quantized artifact differs from fp32 by
        design (its accuracy is judged on the evaluation set), so its replay tolerance is
        what this build measured, doubled, with a floor: `kiln validate` then checks the
        artifact still behaves as built on another machine or runtime version."""
        samples, dims = prepared.samples, prepared.check_dims
        if not is_quantized(self.target.precision):
            tolerance = loosened(prepared.spec.tolerance, self.target.precision)
            report = compare_samples(samples, run, tolerance, dims)
            return Validation.from_json(report | {"reference": prepared.reference})
        outputs = {id(feeds): run(feeds) for feeds, _ in samples}  # run once, compare twice

        def replay(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
            return outputs[id(feeds)]

        measured = compare_samples(samples, replay, Tolerance(atol=1e30), dims)
        atol = float(f"{max(2 * measured['max_abs_diff'], 1e-3):.3g}")
        report = compare_samples(samples, replay, Tolerance(atol=atol), dims)
        report |= {"tolerance_source": REPLAY_TOLERANCE_SOURCE, "reference": prepared.reference}
        return Validation.from_json(report)

    def generation(self, prepared: Prepared, session: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(golden tokens for the artifact, the check for its validation) of a decoder. An
        fp32/half artifact must make transformers' tokens exactly; a quantized one differs
        by design (its agreement with fp32 is in the accuracy section), so its golden tokens
        are its own at build: `kiln validate` then checks it still generates as built."""
        golden = prepared.generation
        assert golden is not None
        if not is_quantized(self.target.precision):
            return golden, check_generation(session, golden)
        own = generate(
            session,
            golden["prompts"],
            max_new_tokens=int(golden["max_new_tokens"]),
            eos_token_id=golden["eos_token_ids"],
        )
        reference = f"this artifact at build ({self.target.precision})"
        recorded = {**golden, "sequences": own.sequences.tolist(), "reference": reference}
        check = {
            "passed": True,
            "prompts": len(golden["prompts"]),
            "max_new_tokens": int(golden["max_new_tokens"]),
            "reference": reference,
            "failures": [],
        }
        return recorded, check

    def accuracy(self, session: Any) -> Accuracy | None:
        """The manifest's accuracy section where accuracy is the evidence (quantized and
        auto always, fp16/bf16 when data was given), checked against the budget: the user's,
        else a floor for quantized precisions."""
        evaluation, options, target = self.evaluation, self.options, self.target
        wanted = self.search is not None or needs_evaluation(target.precision, options)
        if evaluation is None or not wanted:
            return None
        chosen = self.search.chosen if self.search is not None else None
        measured = chosen.accuracy if chosen is not None and chosen.accuracy else None
        report = measured or evaluation.measure(session)
        budget = effective_budget(options, target)
        source: str | None = budget_source(options)
        if budget.empty and is_quantized(target.precision):
            budget, source = default_floor(evaluation.task), "default floor"
        misses = budget.check(report.to_json())
        section = dataclasses.replace(
            report,
            reference="fp32 PyTorch",
            budget={**budget.to_json(), "source": source if not budget.empty else None},
            misses=misses,
            data=evaluation.origin,
        )
        if self.search is not None:
            section.search = self.search.record()
            if self.search.kept_best and misses:
                # --keep-best: written although it misses; the misses stay on record.
                section.kept_best, section.missed, section.misses = True, misses, []
        return section


def build_target(
    prepared: Prepared,
    target: Target,
    backend: Backend,
    stage: Path,
    out: Path,
    options: PrecisionOptions,
    evaluation: Evaluation | None,
    progress: Progress,
) -> Built:
    """Build `target` into `stage` (the staging folder of `out`). For `auto`, first search
    the candidates (beside `out`) and adopt the chosen one's files."""
    search = None
    if target.precision == AUTO:
        assert evaluation is not None
        search = run_search(
            prepared,
            out,
            target,
            backend,
            candidate_precisions(target, backend),
            effective_budget(options, target),
            options.keep_best,
            evaluation,
            progress,
        )
        target = dataclasses.replace(target, precision=search.chosen.precision)
    with progress.stage("build", f"building for target {target.name} ({backend.name})"):
        if search is not None:
            section = search.adopt(stage)
        else:
            section = backend.build(build_request(prepared, target, backend, stage, evaluation))
    return Built(target, section, options, evaluation, search)
