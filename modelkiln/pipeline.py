"""The export driver: source -> spec -> trace -> passes -> (per target) build -> validate.

One straight line: no stage reaches back into an earlier one, the model stays in memory
between passes, tracing happens once however many targets follow, and each artifact
appears at its output path only after it validated.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkiln.artifact import (
    GOLDEN,
    Artifact,
    check_output_free,
    check_side_path,
    file_entries,
    staging,
    write_manifest,
)
from modelkiln.backends.base import Backend, StaticCheck
from modelkiln.backends.registry import get_backend
from modelkiln.cache import BuildCache
from modelkiln.collection import Deferred
from modelkiln.errors import BackendUnavailable, UserInputError, ValidationError
from modelkiln.exporter.specs import check_task
from modelkiln.golden import save_golden
from modelkiln.manifest import Manifest, Validation
from modelkiln.precision.build import build_target
from modelkiln.precision.evaluation import Evaluation, load_evaluation
from modelkiln.precision.options import PrecisionOptions
from modelkiln.precision.request import (
    check_backend,
    check_request,
    effective_budget,
    needs_evaluation,
    with_precision,
)
from modelkiln.precision.search import probe_ms
from modelkiln.prepare import GENERATION, Prepared, prepare
from modelkiln.progress import Progress
from modelkiln.targets import Target, load_target
from modelkiln.targets.shapes import common_ranges

__all__ = ["ExportResult", "export", "export_many", "export_targets"]


@dataclass
class ExportResult:
    path: Path
    manifest: Manifest
    times: dict[str, float] = field(default_factory=dict)
    probe_ms: float | None = None  # median run time on the first validation shape

    @property
    def size_bytes(self) -> int:
        return self.manifest.size_bytes


def export(
    checkpoint: str | Path,
    output: str | Path,
    *,
    target: str | Target = "cpu",
    **options: Any,
) -> ExportResult:
    """Export one artifact to `output`; options as for `export_targets`."""
    return export_targets(checkpoint, [(Path(output), target)], **options)[0]


def export_many(
    checkpoint: str | Path,
    output_dir: str | Path,
    targets: Sequence[str | Target],
    *,
    name: str | None = None,
    **options: Any,
) -> list[ExportResult]:
    """Trace once, then build `output_dir/<name>-<target>` for every target."""
    name = name or default_name(str(checkpoint))
    resolved = [load_target(t) if isinstance(t, str) else t for t in targets]
    plan = [(Path(output_dir) / f"{name}-{t.name}", t) for t in resolved]
    return export_targets(checkpoint, plan, **options)


def default_name(checkpoint: str) -> str:
    """Artifact base name from the checkpoint: folder name, file stem or factory module."""
    path = checkpoint_path(checkpoint)
    stem = path.stem if path.suffix in (".onnx", ".py") else path.name
    return stem.replace(".", "-") or "model"


def checkpoint_path(checkpoint: str) -> Path:
    """The file or folder a checkpoint reference names (the .py file of a factory)."""
    path = Path(checkpoint)
    if not path.exists() and ":" in checkpoint:
        return Path(checkpoint.rpartition(":")[0])
    return path


def export_targets(
    checkpoint: str | Path,
    plan: Sequence[tuple[Path, str | Target]],
    *,
    task: str | None = None,
    force: bool = False,
    allow_pickle: bool = False,
    stock_architecture: bool = False,
    validate: bool = True,
    dump_passes: str | Path | None = None,
    cache_dir: str | Path | None = None,
    use_cache: bool = True,
    precision: PrecisionOptions | None = None,
    progress: Progress | None = None,
) -> list[ExportResult]:
    """Trace and simplify `checkpoint` once, then build and validate one artifact per
    (output path, target). Every input is checked before any slow work starts.

    `precision` overrides the targets' precision and brings calibration/evaluation data
    and the accuracy budget (see `modelkiln.precision`); `stock_architecture` exports a
    checkpoint that declares custom code with the stock transformers class."""
    # No cyclic collections while torch and transformers are imported and the model traced: a
    # growing heap of long-lived objects, rescanned in full for nothing (see collection.py).
    with Deferred() as collection:
        options = precision or PrecisionOptions()
        progress = progress or Progress(quiet=True)
        protected = checkpoint_path(str(checkpoint))
        dump_dir = Path(dump_passes) if dump_passes else None
        resolved = [
            (Path(out), with_precision(load_target(t) if isinstance(t, str) else t, options))
            for out, t in plan
        ]
        outs = [out.resolve() for out, _ in resolved]
        if len(set(outs)) != len(outs):
            raise UserInputError(
                "two targets would write the same artifact; give them distinct names"
            )
        for out, _ in resolved:
            check_output_free(out, force, protected=protected)
            if dump_dir is not None:
                check_side_path(dump_dir, out, "--dump-passes", folder=True)
        check_task(task)
        targets = [tgt for _, tgt in resolved]
        backends = []
        held: list[BackendUnavailable] = []  # raised once the graph passed the static checks
        for tgt in targets:
            backends.append(get_backend(tgt.backend))
            try:
                check_backend(backends[-1], tgt)
            except BackendUnavailable as exc:
                if not isinstance(backends[-1], StaticCheck):
                    raise
                held.append(exc)
        pairs = list(zip(targets, backends, strict=True))
        check_request(options, pairs, validate)
        ranges = common_ranges(targets)  # disjoint shape ranges: one line, exit 2
        linted = any(isinstance(b, StaticCheck) for b in backends)
        early = _onnx_source(protected) if linted else None  # checked before anything else
        if early is not None:
            _static_checks(early, pairs, progress)
            if held:
                raise held[0]
        cache = BuildCache(Path(cache_dir) if cache_dir else None) if use_cache else None
        prepared = prepare(
            str(checkpoint),
            task,
            allow_pickle,
            dump_dir,
            progress,
            cache,
            reference=validate,
            targets=targets,
            stock_architecture=stock_architecture,
        )
        prepared.cache_dir = cache.root if cache is not None else None
        collection.resume()  # builds and searches make garbage of their own
        if linted and early is None:
            _static_checks(prepared.model, pairs, progress)
            if held:
                raise held[0]
        evaluation = None
        if any(needs_evaluation(t.precision, options) for t in targets):
            for tgt in targets:
                effective_budget(options, tgt).fits(prepared.spec.task)
            with progress.stage("data", "reading calibration and evaluation data; fp32 reference"):
                # Texts longer than a target's [shapes] range would be refused by its sessions.
                longest = ranges.get("sequence", (0, None))[1]
                evaluation = load_evaluation(options, prepared, progress, max_length=longest)
        shared = dict(progress.times)
        results = []
        for (out, tgt), backend in zip(resolved, backends, strict=True):
            own = Progress(quiet=progress.quiet, console=progress.console)
            results.append(
                _build_one(
                    prepared, out, tgt, backend, force, validate, own, shared, options, evaluation
                )
            )
        return results


def _onnx_source(path: Path) -> Any:
    """The graph of an .onnx source, for the static checks (None: not one, or unreadable,
    which loading it properly reports)."""
    if path.suffix != ".onnx" or not path.is_file():
        return None
    import onnx_ir as ir

    try:
        return ir.load(path)
    except Exception:  # onnx raises many types on a corrupt file
        return None


def _static_checks(model: Any, pairs: Sequence[tuple[Target, Backend]], progress: Progress) -> None:
    """Each backend's static check of the graph (`StaticCheck`), one stage per target; any
    finding fails the export with every finding listed, before anything is built."""
    nodes = sum(1 for _ in model.graph)
    for tgt, backend in pairs:
        if not isinstance(backend, StaticCheck):
            continue
        label = f"{backend.name} static check of {tgt.name}"
        with progress.stage("static_check", label) as stage:
            findings = backend.lint(model, tgt)
            stage.label = f"{label}: " + (
                f"{len(findings)} problem(s)" if findings else f"clean ({nodes} nodes)"
            )
            if findings:
                raise ValidationError(
                    f"the {label} found {len(findings)} problem(s) {backend.name} would refuse; "
                    "nothing was built",
                    {"failures": findings, "static_check": backend.name},
                )


def _build_one(
    prepared: Prepared,
    out: Path,
    tgt: Target,
    backend: Backend,
    force: bool,
    validate: bool,
    progress: Progress,
    shared_times: dict[str, float],
    options: PrecisionOptions,
    evaluation: Evaluation | None,
) -> ExportResult:
    probe = None
    golden_tokens: dict[str, Any] | None = None
    with staging(out, force) as stage:
        built = build_target(prepared, tgt, backend, stage, out, options, evaluation, progress)
        for f in prepared.preprocessing:
            shutil.copy2(f, stage / f.name)
        manifest = prepared.manifest(out.name, built.target, built.section)
        write_manifest(stage, manifest)
        if validate:
            with progress.stage("validate", f"validating {tgt.name} against the reference"):
                session = backend.load(Artifact(stage, manifest))
                report = built.validate(prepared, session.run)
                golden_tokens = None
                if prepared.generation is not None:
                    golden_tokens, check = built.generation(prepared, session)
                    report.add_generation(check)
                probe = probe_ms(session.run, prepared.samples[0][0], runs=5)
                manifest.accuracy = built.accuracy(session)
            _raise_failures(built.target, report, manifest)
        else:
            report = Validation.skipped_because("--no-validate")
        with progress.stage("finalize", "writing golden samples and manifest"):
            if validate:
                save_golden(stage / GOLDEN, prepared.samples)
            if validate and golden_tokens is not None:
                (stage / GENERATION).write_text(json.dumps(golden_tokens) + "\n")
            manifest.validation = report
            times = {**shared_times, **progress.times}
            manifest.timings = {k: round(v, 3) for k, v in times.items()}
            manifest.files = file_entries(stage)
            write_manifest(stage, manifest)
    return ExportResult(out, manifest, {**shared_times, **progress.times}, probe)


def _raise_failures(target: Target, report: Validation, manifest: Manifest) -> None:
    """Refuse an artifact whose outputs differ from the reference, or that misses its
    accuracy budget: every failing output (every miss) is listed."""
    if not report.passed:
        raise ValidationError(
            f"{len(report.failures)} check(s) of target {target.name} differ from the "
            f"reference ({report.reference}); nothing was written",
            report.to_json(),
        )
    misses = manifest.accuracy.misses if manifest.accuracy is not None else None
    if misses:
        assert manifest.accuracy is not None
        raise ValidationError(
            f"target {target.name} ({target.precision}) misses its accuracy budget: "
            f"{'; '.join(misses)}; nothing was written",
            {"accuracy": manifest.accuracy.to_json(), "failures": misses},
        )
