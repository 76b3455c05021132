"""The target-independent half of an export: load, trace, simplify, record the reference.

Everything here happens once per export however many targets follow. The result can come
from the build cache, in which case neither torch nor the checkpoint's weights are loaded.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkiln.cache import BuildCache, CacheEntry
from modelkiln.golden import Sample
from modelkiln.progress import Progress
from modelkiln.targets import Target
from modelkiln.targets.shapes import validation_dims


@dataclass
class Prepared:
    """What every target's build and validation needs."""

    source_info: dict[str, Any]
    spec: Any  # modelkiln.exporter.specs.TaskSpec
    model: Any  # onnx_ir.Model, simplified
    passes: list[dict[str, Any]]
    samples: list[Sample]  # reference inputs and outputs at check_dims
    reference: str  # what produced the samples
    preprocessing: list[Path] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)
    check_dims: tuple[dict[str, int], ...] = ()  # validation shapes, inside every target's ranges


def prepare(
    checkpoint: str,
    task: str | None,
    allow_pickle: bool,
    dump_dir: Path | None,
    progress: Progress,
    cache: BuildCache | None,
    reference: bool = True,
    targets: Sequence[Target] = (),
) -> Prepared:
    """`reference=False` (exports with --no-validate) skips running the reference model;
    such a result has no samples and is not stored in the cache.

    The validation shapes are the task's defaults moved inside the `targets`' shape ranges
    (`modelkiln.targets.shapes`). A cache entry's reference samples hold one set of shapes:
    the task's defaults under the plain key, other shapes under a key that includes them,
    so ranges that leave the defaults alone share the plain entry. An entry whose model is
    cached but whose samples are for other shapes only needs the reference re-run.
    """
    from modelkiln.exporter import sources
    from modelkiln.exporter.specs import TaskSpec

    with progress.stage("load", "loading the checkpoint") as stage:
        source = sources.load(checkpoint, allow_pickle=allow_pickle)
        check_task_fits(source, task)
        source_info = source.describe()  # hashes the weights
        parts = None
        model_entry = None  # a cache entry holding the model, with samples for other shapes
        # Only Hugging Face folders are cached: all their content is in files we can hash.
        if cache is not None and isinstance(source, sources.HFCheckpoint) and dump_dir is None:
            parts = {
                "weights": [w["sha256"] for w in source_info["weights"]],
                "config": hashlib.sha256((source.path / "config.json").read_bytes()).hexdigest(),
                "task": task,
            }
            entry = cache.get(_key(cache, parts, None))
            if entry is not None:
                spec = TaskSpec.from_json(entry.meta["spec"])
                dims = check_dims_for(spec, targets)
                if reference and not _holds(entry, spec, dims):
                    model_entry = entry
                    entry = cache.get(_key(cache, parts, dims))
                    if entry is not None and not _holds(entry, spec, dims):
                        entry = None
                if entry is not None:
                    stage.label = "loading the traced model from the build cache (no tracing)"
                    return Prepared(
                        source_info=source_info,
                        spec=spec,
                        model=entry.load_model(),
                        passes=entry.meta["passes"],
                        samples=entry.samples() if reference else [],
                        reference=entry.meta["reference"],
                        preprocessing=source.preprocessing,
                        cache={"key": entry.key, "hit": True},
                        check_dims=dims,
                    )
        spec, model, runner = model_for(source, task)
        dims = check_dims_for(spec, targets)
    if model_entry is not None and reference:
        prepared = _rerun_reference(source, source_info, spec, model_entry, runner, dims, progress)
    else:
        prepared = _trace_and_simplify(
            source,
            source_info,
            spec,
            model,
            runner if reference else None,
            dims,
            dump_dir,
            progress,
        )
    if parts is not None and cache is not None and reference:
        key = _key(cache, parts, dims if dims != tuple(spec.check_dims) else None)
        with progress.stage("cache", "storing the traced model in the build cache"):
            meta = {
                "spec": prepared.spec.to_json(),
                "passes": prepared.passes,
                "reference": prepared.reference,
                "source": source_info,
                "check_dims": [dict(d) for d in dims],
            }
            cache.put(key, prepared.model, meta, prepared.samples)
        prepared.cache = {"key": key, "hit": False}
        if model_entry is not None:
            prepared.cache["model_from"] = model_entry.key
    return prepared


def check_dims_for(spec: Any, targets: Sequence[Target]) -> tuple[dict[str, int], ...]:
    """The spec's validation shapes inside every target's ranges; refuses [shapes] names
    the model does not have."""
    dynamic = list(dict.fromkeys(a for d in spec.inputs for a in d.axes if isinstance(a, str)))
    return validation_dims(spec.check_dims, dynamic, spec.limits, targets)


def _key(cache: BuildCache, parts: dict[str, Any], dims: Sequence[Mapping[str, int]] | None) -> str:
    """The plain key for the task's default validation shapes, else one naming the shapes."""
    return cache.key(parts if dims is None else {**parts, "check_dims": [dict(d) for d in dims]})


def _holds(entry: CacheEntry, spec: Any, dims: Sequence[Mapping[str, int]]) -> bool:
    """Whether the entry's reference samples are at `dims` (older entries: the defaults)."""
    held = entry.meta.get("check_dims", [dict(d) for d in spec.check_dims])
    return bool(held == [dict(d) for d in dims])


def _rerun_reference(
    source: Any,
    source_info: dict[str, Any],
    spec: Any,
    entry: CacheEntry,
    runner: Any,
    dims: tuple[dict[str, int], ...],
    progress: Progress,
) -> Prepared:
    """The cached model with reference samples at new shapes: no tracing."""
    from modelkiln.exporter.reference import reference_samples

    with progress.stage("reference", "running the reference (traced model from the cache)"):
        samples = reference_samples(runner, spec, dims)
    return Prepared(
        source_info,
        spec,
        entry.load_model(),
        entry.meta["passes"],
        samples,
        entry.meta["reference"],
        source.preprocessing,
        check_dims=dims,
    )


def _trace_and_simplify(
    source: Any,
    source_info: dict[str, Any],
    spec: Any,
    model: Any,
    runner: Any,
    dims: tuple[dict[str, int], ...],
    dump_dir: Path | None,
    progress: Progress,
) -> Prepared:
    from modelkiln.exporter.passes import simplify
    from modelkiln.exporter.reference import reference_samples
    from modelkiln.exporter.sources import OnnxSource

    if not isinstance(source, OnnxSource):
        from modelkiln.exporter.specs import make_inputs
        from modelkiln.exporter.trace import trace

        with progress.stage("trace", "tracing to ONNX (torch.export, dynamo)"):
            model = trace(model, spec, make_inputs(spec, spec.trace_dims), source.model_type)
    with progress.stage("passes", "simplifying the graph"):
        model, log = simplify(model, dump_dir)
    samples = []
    if runner is not None:
        with progress.stage("reference", "running the reference"):
            samples = reference_samples(runner, spec, dims)
    reference = "onnx source (onnxruntime)" if isinstance(source, OnnxSource) else "pytorch"
    return Prepared(
        source_info, spec, model, log, samples, reference, source.preprocessing, check_dims=dims
    )


def reference_for(checkpoint: str, task: str | None, allow_pickle: bool = False) -> tuple[Any, Any]:
    """The task spec and reference runner for a checkpoint, without tracing it."""
    from modelkiln.exporter import sources

    spec, _, runner = model_for(sources.load(checkpoint, allow_pickle=allow_pickle), task)
    return spec, runner


def check_task_fits(source: Any, task: str | None) -> None:
    """Fail fast on a task the checkpoint cannot serve, before loading any weights."""
    from modelkiln.errors import UserInputError
    from modelkiln.exporter import sources, specs

    if isinstance(source, sources.HFCheckpoint):
        specs.auto_class_for(source.config, task)
    elif task is not None:
        raise UserInputError(
            f"--task applies to Hugging Face checkpoints; a {source.kind} source declares "
            "its own inputs and outputs"
        )


def model_for(source: Any, task: str | None) -> tuple[Any, Any, Any]:
    """(spec, model, reference runner): the model is a torch module to trace, or the
    already-loaded `onnx_ir.Model` of an ONNX source."""
    from modelkiln.exporter import sources, specs
    from modelkiln.exporter.reference import onnx_runner, torch_runner

    check_task_fits(source, task)
    if isinstance(source, sources.OnnxSource):
        import onnx_ir as ir
        from onnx_ir.passes.common import RemoveInitializersFromInputsPass

        model = ir.load(source.path)
        ir.external_data.load_to_model(model)  # in memory: the artifact must not point back
        RemoveInitializersFromInputsPass()(model)  # weights listed as inputs (old exporters)
        spec = specs.for_onnx(model, origin=str(source.path))
        return spec, model, onnx_runner(source.path)
    if isinstance(source, sources.FactorySource):
        module = source.load_module()
        spec = specs.for_factory(source.example_inputs, source.options, source.n_outputs)
        return spec, module, torch_runner(module, spec.outputs)
    from modelkiln.exporter.trace import OutputSelector

    loaded = source.load_module(specs.auto_class_for(source.config, task))
    spec = specs.for_hf(source.config, task, set(inspect.signature(loaded.forward).parameters))
    module = OutputSelector(loaded, tuple(d.name for d in spec.inputs), spec.outputs)
    return spec, module, torch_runner(module, spec.outputs)
