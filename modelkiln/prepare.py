"""The target-independent half of an export: load, trace, simplify, record the reference.

Everything here happens once per export however many targets follow. The result can come
from the build cache, in which case neither torch nor the checkpoint's weights are loaded.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelkiln.cache import BuildCache
from modelkiln.golden import Sample
from modelkiln.progress import Progress


@dataclass
class Prepared:
    """What every target's build and validation needs."""

    source_info: dict[str, Any]
    spec: Any  # modelkiln.exporter.specs.TaskSpec
    model: Any  # onnx_ir.Model, simplified
    passes: list[dict[str, Any]]
    samples: list[Sample]  # reference inputs and outputs at spec.check_dims
    reference: str  # what produced the samples
    preprocessing: list[Path] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)


def prepare(
    checkpoint: str,
    task: str | None,
    allow_pickle: bool,
    dump_dir: Path | None,
    progress: Progress,
    cache: BuildCache | None,
    reference: bool = True,
) -> Prepared:
    """`reference=False` (exports with --no-validate) skips running the reference model;
    such a result has no samples and is not stored in the cache."""
    from modelkiln.exporter import sources
    from modelkiln.exporter.specs import TaskSpec

    with progress.stage("load", "loading the checkpoint") as stage:
        source = sources.load(checkpoint, allow_pickle=allow_pickle)
        check_task_fits(source, task)
        source_info = source.describe()  # hashes the weights
        key = None
        # Only Hugging Face folders are cached: all their content is in files we can hash.
        if cache is not None and isinstance(source, sources.HFCheckpoint) and dump_dir is None:
            key = cache.key(
                {
                    "weights": [w["sha256"] for w in source_info["weights"]],
                    "config": hashlib.sha256(
                        (source.path / "config.json").read_bytes()
                    ).hexdigest(),
                    "task": task,
                }
            )
            entry = cache.get(key)
            if entry is not None:
                stage.label = "loading the traced model from the build cache (no tracing)"
                return Prepared(
                    source_info=source_info,
                    spec=TaskSpec.from_json(entry.meta["spec"]),
                    model=entry.load_model(),
                    passes=entry.meta["passes"],
                    samples=entry.samples(),
                    reference=entry.meta["reference"],
                    preprocessing=source.preprocessing,
                    cache={"key": key, "hit": True},
                )
        spec, model, runner = model_for(source, task)
    prepared = _trace_and_simplify(
        source, source_info, spec, model, runner if reference else None, dump_dir, progress
    )
    if key is not None and cache is not None and reference:
        with progress.stage("cache", "storing the traced model in the build cache"):
            meta = {
                "spec": prepared.spec.to_json(),
                "passes": prepared.passes,
                "reference": prepared.reference,
                "source": source_info,
            }
            cache.put(key, prepared.model, meta, prepared.samples)
        prepared.cache = {"key": key, "hit": False}
    return prepared


def _trace_and_simplify(
    source: Any,
    source_info: dict[str, Any],
    spec: Any,
    model: Any,
    runner: Any,
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
            samples = reference_samples(runner, spec)
    reference = "onnx source (onnxruntime)" if isinstance(source, OnnxSource) else "pytorch"
    return Prepared(source_info, spec, model, log, samples, reference, source.preprocessing)


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
