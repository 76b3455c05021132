"""What a precision request needs before anything slow starts: the target's precision after
`--precision`, the budget that applies, the candidates `auto` tries, and every refusal."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from modelkiln.backends.base import Backend
from modelkiln.errors import UserInputError
from modelkiln.exporter.data_samples import check_file
from modelkiln.precision.budget import Budget
from modelkiln.precision.names import AUTO, Precision, is_half, is_quantized, is_reduced
from modelkiln.precision.options import PrecisionOptions
from modelkiln.targets import Target


def with_precision(target: Target, options: PrecisionOptions) -> Target:
    """The target with `--precision` applied (it overrides the target file's precision)."""
    if options.precision is None or options.precision == target.precision:
        return target
    return dataclasses.replace(target, precision=options.precision)


def check_backend(backend: Backend, target: Target) -> None:
    """`backend.check`, for `auto` once per precision the backend offers."""
    if target.precision != AUTO:
        backend.check(target)
        return
    for precision in backend.precisions:
        backend.check(dataclasses.replace(target, precision=precision))


def effective_budget(options: PrecisionOptions, target: Target) -> Budget:
    """The command line's budget, else the target file's [budget] table."""
    if not options.budget.empty:
        return options.budget
    return Budget.from_json(target.budget)


def budget_source(options: PrecisionOptions) -> str:
    return "command line" if not options.budget.empty else "target file"


def candidate_precisions(target: Target, backend: Backend) -> tuple[Precision, ...]:
    """What `auto` tries: the target's `candidates`, else every precision of the backend."""
    if target.candidates:
        return tuple(Precision(c) for c in target.candidates)
    return tuple(backend.precisions)


def needs_evaluation(precision: str, options: PrecisionOptions) -> bool:
    """Quantized and auto always; fp16/bf16 when the user gave data to measure them on."""
    return is_quantized(precision) or precision == AUTO or (is_half(precision) and options.has_data)


def check_request(
    options: PrecisionOptions, targets: Sequence[tuple[Target, Backend]], validate: bool
) -> None:
    """Refuse what cannot work before anything slow starts: (target, backend) pairs, the
    targets with `--precision` applied."""
    for path, what in ((options.calibration, "--calibration"), (options.evaluation, "--eval")):
        if path is not None:
            check_file(Path(path), what)
    if options.calibration_size is not None and options.calibration_size < 1:
        raise UserInputError(
            f"--calibration-size must be at least 1, got {options.calibration_size}"
        )
    reduced = [t for t, _ in targets if is_reduced(t.precision) or t.precision == AUTO]
    if not options.budget.empty and not reduced:
        raise UserInputError(
            "--min-cosine / --min-top1-agreement judge reduced precisions, and every target "
            "here is fp32 (which is validated against the reference directly); add "
            "--precision (e.g. int8-dynamic or auto)"
        )
    if options.keep_best and all(effective_budget(options, t).empty for t, _ in targets):
        raise UserInputError("--keep-best applies to an accuracy budget: add --min-cosine X")
    for target, backend in targets:
        _check_target(options, target, backend)
    if not validate and any(needs_evaluation(t.precision, options) for t, _ in targets):
        raise UserInputError(
            "--no-validate cannot be combined with reduced precisions: their accuracy is "
            "what validation measures"
        )


def _check_target(options: PrecisionOptions, target: Target, backend: Backend) -> None:
    precision = target.precision
    offered = [str(p) for p in backend.precisions]
    if precision == AUTO:
        if len(offered) < 2:
            raise UserInputError(
                f"target '{target.name}': --precision auto needs a backend with reduced "
                f"precisions; {backend.name} builds {', '.join(offered)} only"
            )
        if effective_budget(options, target).empty:
            raise UserInputError(
                "--precision auto needs an accuracy budget: --min-cosine X (embeddings) "
                "or --min-top1-agreement X (classifiers), or a [budget] table in the "
                "target file"
            )
        unknown = [c for c in target.candidates if c not in offered]
        if unknown:
            raise UserInputError(
                f"target '{target.name}': candidates {', '.join(unknown)} are not built "
                f"by {backend.name}, which builds {', '.join(offered)}"
            )
    elif precision not in offered:
        raise UserInputError(
            f"target '{target.name}': {backend.name} builds {', '.join(offered)}, not {precision}"
        )
    calibrated = set(backend.calibrated)
    tried = set(candidate_precisions(target, backend)) if precision == AUTO else {precision}
    if calibrated & tried and options.calibration is None:
        needy = " and ".join(sorted(calibrated & tried))
        which = precision if precision != AUTO else f"auto (it tries {needy})"
        raise UserInputError(
            f"target '{target.name}': precision {which} needs calibration data: "
            "--calibration FILE (.txt/.jsonl texts or .npz of inputs); modelkiln never "
            "calibrates on random data"
        )
    if (is_quantized(precision) or precision == AUTO) and not options.has_data:
        raise UserInputError(
            f"target '{target.name}': precision {precision} is measured against fp32 on "
            "real inputs: give --eval FILE (or --calibration FILE, of which a share is "
            "held back)"
        )
