"""The target-independent half of an export: load, trace, simplify, record the reference.

Everything here happens once per export however many targets follow. The result can come
from the build cache, in which case neither torch nor the checkpoint's weights are loaded
unless something asks for the reference model itself (`Prepared.reference_runner`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.cache import BuildCache, CacheEntry
from modelkiln.errors import UserInputError
from modelkiln.exporter import decoder_spec, sources, specs
from modelkiln.exporter.decoder import (
    cache_layout,
    decoder_runner,
    golden_generation,
    reference_steps,
    trace_decoder,
)
from modelkiln.exporter.decoder_spec import cache_names
from modelkiln.exporter.reference import onnx_runner, reference_samples, torch_runner
from modelkiln.exporter.specs import TaskSpec, make_inputs, tensor_spec_of
from modelkiln.exporter.trace import OutputSelector, trace
from modelkiln.golden import GoldenSample
from modelkiln.manifest import (
    BackendSection,
    CacheLayer,
    DecoderSection,
    Manifest,
    PassRecord,
    SourceRecord,
)
from modelkiln.progress import Progress
from modelkiln.targets import Target
from modelkiln.targets.shapes import clamp, validation_dims
from modelkiln.tensors import Runner
from modelkiln.versions import tool_versions

GENERATION = "generation.json"  # a decoder artifact's prompts and the tokens to reproduce


@dataclass
class Prepared:
    """What every target's build and validation needs."""

    source: sources.Source
    task: str | None  # as asked (None: inferred)
    source_info: dict[str, Any]
    spec: TaskSpec
    model: Any  # onnx_ir.Model, simplified
    passes: list[dict[str, Any]]
    samples: list[GoldenSample]  # reference inputs and outputs at check_dims
    reference: str  # what produced the samples
    cache: dict[str, Any] = field(default_factory=dict)
    check_dims: tuple[dict[str, int], ...] = ()  # each sample's shape, inside the targets' ranges
    runner: Runner | None = None  # the reference model, once loaded
    generation: dict[str, Any] | None = None  # decoders: prompts and transformers' tokens
    cache_dir: Path | None = None  # the build cache folder (None: --no-cache)

    @property
    def preprocessing(self) -> list[Path]:
        return list(self.source.preprocessing)

    def reference_runner(self) -> Runner:
        """The reference model (PyTorch, or the ONNX source in ONNX Runtime): kept from
        tracing, else (a cache hit) loaded now, once."""
        if self.runner is None:
            self.runner = model_for(self.source, self.task)[2]
        return self.runner

    def manifest(self, name: str, target: Target, backend: BackendSection) -> Manifest:
        """The manifest of an artifact built from this model (accuracy, validation, timings
        and files are filled in as the build goes)."""
        graph = self.model.graph
        decls = {d.name: d for d in self.spec.inputs}
        inputs = {v.name: tensor_spec_of(v) for v in graph.inputs}
        return Manifest(
            name=name,
            created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            task=self.spec.task,
            source=SourceRecord.from_json(self.source_info),
            target=target,
            backend=backend,
            precision=target.precision,
            opset=self.model.opset_imports.get(""),
            versions=tool_versions(),
            passes=[PassRecord.from_json(p) for p in self.passes],
            cache=dict(self.cache),
            inputs=inputs,
            input_values={n: decls[n].values for n in inputs if n in decls},
            outputs={v.name: tensor_spec_of(v) for v in graph.outputs},
            preprocessing=[f.name for f in self.preprocessing],
            limits=dict(self.spec.limits),
            decoder=self.decoder_section(),
        )

    def decoder_section(self) -> DecoderSection | None:
        """How to generate with this model (None: not a decoder)."""
        info = self.spec.decoder
        if info is None:
            return None
        return DecoderSection(
            layers=[CacheLayer(*names) for names in cache_names(info.layers)],
            pad_token_id=info.pad_token_id,
            eos_token_ids=list(info.eos_token_ids),
            bos_token_id=info.bos_token_id,
            max_positions=self.spec.limits.get("sequence"),
            golden=GENERATION if self.generation is not None else None,
        )

    def probe_feeds(self, ranges: Mapping[str, tuple[int, int]]) -> dict[str, np.ndarray]:
        """Inputs of one batch row and 128 tokens (where the model has those dimensions),
        kept inside `ranges` and the model's limits: what candidates are timed on."""
        dims = dict(self.check_dims[0])
        dims.update({d: v for d, v in (("sequence", 128), ("batch", 1)) if d in dims})
        return make_inputs(self.spec, self.spec.fit(clamp(dims, ranges)))


def prepare(
    checkpoint: str,
    task: str | None,
    allow_pickle: bool,
    dump_dir: Path | None,
    progress: Progress,
    cache: BuildCache | None,
    reference: bool = True,
    targets: Sequence[Target] = (),
    stock_architecture: bool = False,
) -> Prepared:
    """`reference=False` (exports with --no-validate) skips running the reference model;
    such a result has no samples and is not stored in the cache.

    The validation shapes are the task's defaults moved inside the `targets`' shape ranges
    (`modelkiln.targets.shapes`). A cache entry's reference samples hold one set of shapes:
    the task's defaults under the plain key, other shapes under a key that includes them,
    so ranges that leave the defaults alone share the plain entry. An entry whose model is
    cached but whose samples are for other shapes only needs the reference re-run.
    """
    with progress.stage("load", "loading the checkpoint") as stage:
        source = sources.load(
            checkpoint, allow_pickle=allow_pickle, stock_architecture=stock_architecture
        )
        check_task_fits(source, task)
        if isinstance(source, sources.HFCheckpoint):
            _check_decoder_targets(task or specs.infer_task(source.config), targets)
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
            generation_file = source.path / "generation_config.json"
            if generation_file.is_file():  # its special tokens shape a decoder's reference
                parts["generation"] = hashlib.sha256(generation_file.read_bytes()).hexdigest()
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
                        source=source,
                        task=task,
                        source_info=source_info,
                        spec=spec,
                        model=entry.load_model(),
                        passes=entry.meta["passes"],
                        samples=entry.samples() if reference else [],
                        reference=entry.meta["reference"],
                        cache={"key": entry.key, "hit": True},
                        check_dims=tuple(entry.meta.get("sample_dims") or dims),
                        generation=entry.meta.get("generation") if reference else None,
                    )
        spec, model, runner = model_for(source, task)
        dims = check_dims_for(spec, targets)
    if model_entry is not None and reference:
        with progress.stage("reference", "running the reference (traced model from the cache)"):
            samples, sample_dims, generation = _reference(spec, model, runner, dims)
        prepared = Prepared(
            source,
            task,
            source_info,
            spec,
            model_entry.load_model(),
            model_entry.meta["passes"],
            samples,
            model_entry.meta["reference"],
            check_dims=sample_dims,
            runner=runner,
            generation=generation,
        )
    else:
        prepared = _trace_and_simplify(
            source, task, source_info, spec, model, runner, dims, dump_dir, progress, reference
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
            if prepared.generation is not None:
                meta["sample_dims"] = [dict(d) for d in prepared.check_dims]
                meta["generation"] = prepared.generation
            cache.put(key, prepared.model, meta, prepared.samples)
        prepared.cache = {"key": key, "hit": False}
        if model_entry is not None:
            prepared.cache["model_from"] = model_entry.key
    return prepared


def _check_decoder_targets(task: str, targets: Sequence[Target]) -> None:
    """What text-generation artifacts do not support yet, refused before any weights load."""
    if task != decoder_spec.TASK:
        return
    for target in targets:
        if target.shapes:
            raise UserInputError(
                f"target '{target.name}': [shapes] ranges are not supported for "
                "text-generation artifacts yet"
            )


def check_dims_for(spec: TaskSpec, targets: Sequence[Target]) -> tuple[dict[str, int], ...]:
    """The spec's validation shapes inside every target's ranges; refuses [shapes] names
    the model does not have."""
    dynamic = list(dict.fromkeys(a for d in spec.inputs for a in d.axes if isinstance(a, str)))
    return validation_dims(spec.check_dims, dynamic, spec.limits, targets)


def _key(cache: BuildCache, parts: dict[str, Any], dims: Sequence[Mapping[str, int]] | None) -> str:
    """The plain key for the task's default validation shapes, else one naming the shapes."""
    return cache.key(parts if dims is None else {**parts, "check_dims": [dict(d) for d in dims]})


def _holds(entry: CacheEntry, spec: TaskSpec, dims: Sequence[Mapping[str, int]]) -> bool:
    """Whether the entry's reference samples are at `dims` (older entries: the defaults)."""
    held = entry.meta.get("check_dims", [dict(d) for d in spec.check_dims])
    return bool(held == [dict(d) for d in dims])


def _trace_and_simplify(
    source: sources.Source,
    task: str | None,
    source_info: dict[str, Any],
    spec: TaskSpec,
    model: Any,
    runner: Runner,
    dims: tuple[dict[str, int], ...],
    dump_dir: Path | None,
    progress: Progress,
    reference: bool,
) -> Prepared:
    module = model
    if spec.decoder is not None:
        with progress.stage("trace", "tracing to ONNX (transformers.exporters, prefill + decode)"):
            model = trace_decoder(module, spec, source.model_type)
    elif not isinstance(source, sources.OnnxSource):
        with progress.stage("trace", "tracing to ONNX (torch.export, dynamo)"):
            model = trace(module, spec, make_inputs(spec, spec.trace_dims), source.model_type)
    with progress.stage("passes", "simplifying the graph"):
        from modelkiln.exporter.passes import simplify  # onnx-ir's passes: timed here

        model, log = simplify(model, dump_dir)
    samples: list[GoldenSample] = []
    sample_dims, generation = dims, None
    if reference:
        with progress.stage("reference", "running the reference"):
            samples, sample_dims, generation = _reference(spec, module, runner, dims)
    origin = "onnx source (onnxruntime)" if isinstance(source, sources.OnnxSource) else "pytorch"
    return Prepared(
        source,
        task,
        source_info,
        spec,
        model,
        log,
        samples,
        origin,
        check_dims=sample_dims,
        runner=runner,
        generation=generation,
    )


def _reference(
    spec: TaskSpec, module: Any, runner: Runner, dims: Sequence[dict[str, int]]
) -> tuple[list[GoldenSample], tuple[dict[str, int], ...], dict[str, Any] | None]:
    """(samples, each sample's shape, generation golden): generated inputs through the
    reference runner, or for decoders the prefill and decode steps of left-padded prompts
    and transformers' own greedy generation."""
    if spec.decoder is None:
        return reference_samples(runner, spec, dims), tuple(dims), None
    samples, step_dims = reference_steps(runner, spec, dims)
    return samples, tuple(step_dims), golden_generation(module, spec)


def reference_for(
    checkpoint: str, task: str | None, allow_pickle: bool = False, stock_architecture: bool = False
) -> tuple[TaskSpec, Runner]:
    """The task spec and reference runner for a checkpoint, without tracing it."""
    source = sources.load(
        checkpoint, allow_pickle=allow_pickle, stock_architecture=stock_architecture
    )
    spec, _, runner = model_for(source, task)
    return spec, runner


def check_task_fits(source: sources.Source, task: str | None) -> None:
    """Fail fast on a task the checkpoint cannot serve, before loading any weights."""
    if isinstance(source, sources.HFCheckpoint):
        specs.auto_class_for(source.config, task)
    elif task is not None:
        raise UserInputError(
            f"--task applies to Hugging Face checkpoints; a {source.kind} source declares "
            "its own inputs and outputs"
        )


def model_for(source: sources.Source, task: str | None) -> tuple[TaskSpec, Any, Runner]:
    """(spec, model, reference runner): the model is a torch module to trace, or the
    already-loaded `onnx_ir.Model` of an ONNX source."""
    check_task_fits(source, task)
    if isinstance(source, sources.OnnxSource):
        import onnx_ir as ir  # ~1 s to import: inside the timed load stage
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
    loaded = source.load_module(specs.auto_class_for(source.config, task))
    forward_args = set(inspect.signature(loaded.forward).parameters)
    if (task or specs.infer_task(source.config)) == decoder_spec.TASK:
        spec = specs.for_hf(
            source.config, task, forward_args, cache_layout(loaded), source.generation_config
        )
        return spec, loaded, decoder_runner(loaded, spec)
    spec = specs.for_hf(source.config, task, forward_args)
    module = OutputSelector(loaded, tuple(d.name for d in spec.inputs), spec.outputs)
    return spec, module, torch_runner(module, spec.outputs)
