"""The export driver: source -> spec -> trace -> passes -> build -> validate -> artifact.

One straight line: no stage reaches back into an earlier one, the model stays in memory
between passes, and the artifact appears at the output path only after it validated.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import shutil
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
from modelkiln.backends import get_backend
from modelkiln.errors import ValidationError
from modelkiln.golden import save_golden
from modelkiln.progress import Progress
from modelkiln.targets import Target, load_target
from modelkiln.tensors import TensorSpec, specs_to_json
from modelkiln.versions import tool_versions


@dataclass
class ExportResult:
    path: Path
    manifest: dict[str, Any]
    times: dict[str, float] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(int(e["size"]) for e in self.manifest["files"].values())


@dataclass
class Prepared:
    """Everything the trace produced that the build and validation need."""

    source: Any
    source_info: dict[str, Any]
    spec: Any
    model: Any
    reference: Any
    passes: list[dict[str, Any]]


def export(
    checkpoint: str | Path,
    output: str | Path,
    *,
    task: str | None = None,
    target: str | Target = "cpu",
    force: bool = False,
    allow_pickle: bool = False,
    validate: bool = True,
    dump_passes: str | Path | None = None,
    progress: Progress | None = None,
) -> ExportResult:
    from modelkiln.exporter.specs import check_task

    progress = progress or Progress(quiet=True)
    out = Path(output)
    check_output_free(out, force, protected=_checkpoint_path(str(checkpoint)))
    dump_dir = Path(dump_passes) if dump_passes else None
    if dump_dir is not None:
        check_side_path(dump_dir, out, "--dump-passes", folder=True)
    check_task(task)
    tgt = load_target(target) if isinstance(target, str) else target
    backend = get_backend(tgt.backend)
    backend.check(tgt)

    prepared = _prepare(str(checkpoint), task, allow_pickle, dump_dir, progress)
    spec, source = prepared.spec, prepared.source
    with staging(out, force) as stage:
        with progress.stage("build", f"building for target {tgt.name} ({backend.name})"):
            backend_section = backend.build(prepared.model, tgt, stage)
            for f in source.preprocessing:
                shutil.copy2(f, stage / f.name)
        manifest: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "name": out.name,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "task": spec.task,
            "source": prepared.source_info,
            "target": tgt.to_json(),
            "backend": backend_section,
            "precision": tgt.precision,
            "opset": _opset(prepared.model),
            "versions": tool_versions(),
            "passes": prepared.passes,
            "inputs": _inputs_json(prepared.model.graph.inputs, spec),
            "outputs": specs_to_json(_io_specs(prepared.model.graph.outputs)),
            "preprocessing": [f.name for f in source.preprocessing],
        }
        write_manifest(stage, manifest)
        if validate:
            from modelkiln.exporter.reference import validate as run_validation

            with progress.stage("validate", "validating against the reference"):
                session = backend.load(Artifact(stage, manifest))
                report, samples = run_validation(prepared.reference, session.run, spec)
            report["reference"] = (
                "pytorch" if source.kind != "onnx" else "onnx source (onnxruntime)"
            )
            if not report["passed"]:
                raise ValidationError(
                    f"{len(report['failures'])} output check(s) differ from the reference "
                    f"({report['reference']}); nothing was written",
                    report,
                )
        else:
            report, samples = {"skipped": True, "reason": "--no-validate"}, []
        with progress.stage("finalize", "writing golden samples and manifest"):
            if samples:
                save_golden(stage / GOLDEN, samples)
            manifest["validation"] = report
            manifest["timings"] = {k: round(v, 3) for k, v in progress.times.items()}
            manifest["files"] = file_entries(stage)
            write_manifest(stage, manifest)
    return ExportResult(out, manifest, dict(progress.times))


def reference_for(checkpoint: str, task: str | None, allow_pickle: bool = False) -> tuple[Any, Any]:
    """The task spec and reference runner for a checkpoint, without tracing it."""
    _, spec, _, reference = _load_source(checkpoint, task, allow_pickle)
    return spec, reference


def _load_source(
    checkpoint: str, task: str | None, allow_pickle: bool
) -> tuple[Any, Any, Any, Any]:
    """(source, spec, model, reference runner): model is a torch module to trace, or the
    already-loaded `onnx_ir.Model` of an ONNX source."""
    from modelkiln.exporter import sources, specs
    from modelkiln.exporter.reference import onnx_runner, torch_runner

    source = sources.load(checkpoint, allow_pickle=allow_pickle)
    if isinstance(source, sources.OnnxSource):
        import onnx_ir as ir
        from onnx_ir.passes.common import RemoveInitializersFromInputsPass

        model = ir.load(source.path)
        ir.external_data.load_to_model(model)  # in memory: the artifact must not point back
        RemoveInitializersFromInputsPass()(model)  # weights listed as inputs (old exporters)
        spec = specs.for_onnx(model, origin=str(source.path))
        return source, spec, model, onnx_runner(source.path)
    if isinstance(source, sources.FactorySource):
        module = source.load_module()
        spec = specs.for_factory(source.example_inputs, source.options, source.n_outputs)
        return source, spec, module, torch_runner(module, spec.outputs)
    from modelkiln.exporter.trace import OutputSelector

    model = source.load_module(specs.auto_class_for(source.config, task))
    spec = specs.for_hf(source.config, task, set(inspect.signature(model.forward).parameters))
    module = OutputSelector(model, tuple(d.name for d in spec.inputs), spec.outputs)
    return source, spec, module, torch_runner(module, spec.outputs)


def _checkpoint_path(checkpoint: str) -> Path:
    """The file or folder a checkpoint reference names (the .py file of a factory)."""
    path = Path(checkpoint)
    if not path.exists() and ":" in checkpoint:
        return Path(checkpoint.rpartition(":")[0])
    return path


def _prepare(
    checkpoint: str,
    task: str | None,
    allow_pickle: bool,
    dump_dir: Path | None,
    progress: Progress,
) -> Prepared:
    from modelkiln.exporter.passes import simplify
    from modelkiln.exporter.sources import OnnxSource

    with progress.stage("load", "loading checkpoint"):
        source, spec, model, reference = _load_source(checkpoint, task, allow_pickle)
        source_info = source.describe()  # hashes the weights
    if not isinstance(source, OnnxSource):
        from modelkiln.exporter.specs import make_inputs
        from modelkiln.exporter.trace import trace

        with progress.stage("trace", "tracing to ONNX (torch.export, dynamo)"):
            model = trace(model, spec, make_inputs(spec, spec.trace_dims), source.model_type)
    with progress.stage("passes", "simplifying the graph"):
        model, log = simplify(model, dump_dir)
    return Prepared(source, source_info, spec, model, reference, log)


def _opset(model: Any) -> int | None:
    return model.opset_imports.get("")


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
