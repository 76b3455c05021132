"""The export driver: source -> spec -> trace -> passes -> (per target) build -> validate.

One straight line: no stage reaches back into an earlier one, the model stays in memory
between passes, tracing happens once however many targets follow, and each artifact
appears at its output path only after it validated.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkiln.artifact import (
    GOLDEN,
    SCHEMA_VERSION,
    Artifact,
    check_output_free,
    check_side_path,
    file_entries,
    staging,
    write_manifest,
)
from modelkiln.backends import Backend, get_backend
from modelkiln.cache import BuildCache
from modelkiln.errors import UserInputError, ValidationError
from modelkiln.exporter.accuracy import check_budget_fits
from modelkiln.golden import save_golden
from modelkiln.precision import (
    QUANTIZED,
    Evaluation,
    PrecisionOptions,
    accuracy_section,
    build_arguments,
    check_backend,
    check_request,
    effective_budget,
    load_evaluation,
    needs_evaluation,
    replay_validation,
    run_search,
    with_precision,
)
from modelkiln.precision import probe_ms as measure_latency
from modelkiln.prepare import Prepared, prepare, reference_for
from modelkiln.progress import Progress
from modelkiln.targets import Target, load_target
from modelkiln.targets.shapes import common_ranges
from modelkiln.tensors import TensorSpec, specs_to_json
from modelkiln.versions import tool_versions

__all__ = ["ExportResult", "export", "export_many", "export_targets", "reference_for"]


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]
    times: dict[str, float] = field(default_factory=dict)
    probe_ms: float | None = None  # median run time on the first validation shape

    @property
    def size_bytes(self) -> int:
        return sum(int(e["size"]) for e in self.manifest["files"].values())


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


def export_targets(
    checkpoint: str | Path,
    plan: Sequence[tuple[Path, str | Target]],
    *,
    task: str | None = None,
    force: bool = False,
    allow_pickle: bool = False,
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
    and the accuracy budget (see `modelkiln.precision`)."""
    from modelkiln.exporter.specs import check_task

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
        raise UserInputError("two targets would write the same artifact; give them distinct names")
    for out, _ in resolved:
        check_output_free(out, force, protected=protected)
        if dump_dir is not None:
            check_side_path(dump_dir, out, "--dump-passes", folder=True)
    check_task(task)
    backends = []
    for _, tgt in resolved:
        backend = get_backend(tgt.backend)
        check_backend(backend, tgt)
        backends.append(backend)
    check_request(options, [(tgt, b) for (_, tgt), b in zip(resolved, backends, strict=True)])
    if not validate and any(needs_evaluation(t.precision, options) for _, t in resolved):
        raise UserInputError(
            "--no-validate cannot be combined with reduced precisions: their accuracy is "
            "what validation measures"
        )
    common_ranges([tgt for _, tgt in resolved])  # disjoint shape ranges: one line, exit 2
    cache = BuildCache(Path(cache_dir) if cache_dir else None) if use_cache else None
    prepared = prepare(
        str(checkpoint),
        task,
        allow_pickle,
        dump_dir,
        progress,
        cache,
        reference=validate,
        targets=[tgt for _, tgt in resolved],
    )
    evaluation = None
    if any(needs_evaluation(t.precision, options) for _, t in resolved):
        for _, tgt in resolved:
            check_budget_fits(effective_budget(options, tgt), prepared.spec.task)
        with progress.stage("data", "reading calibration and evaluation data; fp32 reference"):
            runner = reference_for(str(checkpoint), task, allow_pickle)[1]
            folder = checkpoint_path(str(checkpoint))
            # Texts longer than a target's [shapes] range would be refused by its sessions.
            longest = common_ranges([t for _, t in resolved]).get("sequence", (0, None))[1]
            evaluation = load_evaluation(
                options,
                prepared.spec,
                folder if folder.is_dir() else None,
                runner,
                progress,
                max_length=longest,
            )
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
    spec = prepared.spec
    probe_ms = None
    search = None
    if tgt.precision == "auto":
        assert evaluation is not None
        search = run_search(
            prepared, out, tgt, backend, options, evaluation, progress, _candidate_manifest
        )
        tgt = dataclasses.replace(tgt, precision=search.chosen.precision)
    with staging(out, force) as stage:
        with progress.stage("build", f"building for target {tgt.name} ({backend.name})"):
            if search is not None:
                backend_section = search.adopt(stage)
            else:
                backend_section = backend.build(
                    prepared.model, tgt, stage, **build_arguments(backend, tgt, evaluation)
                )
            for f in prepared.preprocessing:
                shutil.copy2(f, stage / f.name)
        manifest = _candidate_manifest(prepared, out.name, tgt, backend_section)
        write_manifest(stage, manifest)
        if validate:
            from modelkiln.exporter.reference import compare_samples

            tolerance = spec.tolerance_for(tgt.precision)
            with progress.stage("validate", f"validating {tgt.name} against the reference"):
                session = backend.load(Artifact(stage, manifest))
                if tgt.precision in QUANTIZED:
                    report = replay_validation(prepared, session.run)
                else:
                    report = compare_samples(
                        prepared.samples, session.run, tolerance, prepared.check_dims
                    )
                probe_ms = measure_latency(session.run, prepared.samples[0][0], runs=5)
                if evaluation is not None and (
                    search is not None or needs_evaluation(tgt.precision, options)
                ):
                    manifest["accuracy"] = accuracy_section(
                        tgt, session.run, options, evaluation, search
                    )
            report["reference"] = prepared.reference
            if not report["passed"]:
                raise ValidationError(
                    f"{len(report['failures'])} output check(s) of target {tgt.name} differ "
                    f"from the reference ({report['reference']}); nothing was written",
                    report,
                )
            misses = (manifest.get("accuracy") or {}).get("misses") or []
            if misses:
                raise ValidationError(
                    f"target {tgt.name} ({tgt.precision}) misses its accuracy budget: "
                    f"{'; '.join(misses)}; nothing was written",
                    {"accuracy": manifest["accuracy"], "failures": misses},
                )
        else:
            report = {"skipped": True, "reason": "--no-validate"}
        with progress.stage("finalize", "writing golden samples and manifest"):
            if validate:
                save_golden(stage / GOLDEN, prepared.samples)
            manifest["validation"] = report
            times = {**shared_times, **progress.times}
            manifest["timings"] = {k: round(v, 3) for k, v in times.items()}
            manifest["files"] = file_entries(stage)
            write_manifest(stage, manifest)
    return ExportResult(out, manifest, {**shared_times, **progress.times}, probe_ms)


def _candidate_manifest(
    prepared: Prepared, name: str, tgt: Target, backend_section: dict[str, Any]
) -> dict[str, Any]:
    """The manifest of an artifact being built (files and validation come later)."""
    spec = prepared.spec
    return {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "task": spec.task,
        "source": prepared.source_info,
        "target": tgt.to_json(),
        "backend": backend_section,
        "precision": tgt.precision,
        "opset": prepared.model.opset_imports.get(""),
        "versions": tool_versions(),
        "passes": prepared.passes,
        "cache": prepared.cache,
        "inputs": _inputs_json(prepared.model.graph.inputs, spec),
        "outputs": specs_to_json(_io_specs(prepared.model.graph.outputs)),
        "preprocessing": [f.name for f in prepared.preprocessing],
    }


def checkpoint_path(checkpoint: str) -> Path:
    """The file or folder a checkpoint reference names (the .py file of a factory)."""
    path = Path(checkpoint)
    if not path.exists() and ":" in checkpoint:
        return Path(checkpoint.rpartition(":")[0])
    return path


def _inputs_json(values: Any, spec: Any) -> dict[str, Any]:
    """Input specs plus the kind of values each takes, so tools can generate valid feeds."""
    data = specs_to_json(_io_specs(values))
    for decl in spec.inputs:
        if decl.name in data:
            data[decl.name]["values"] = decl.values_json()
    return data


def _io_specs(values: Any) -> dict[str, TensorSpec]:
    from modelkiln.exporter.specs import tensor_spec_of

    return {value.name: tensor_spec_of(value) for value in values}
