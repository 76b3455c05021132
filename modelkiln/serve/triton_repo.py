"""Triton Inference Server model repositories from artifacts (`kiln triton`).

Each artifact becomes `<repo>/<name>/config.pbtxt` and version folder `1/` with the model
files, hard-linked (or copied) from the artifact, which is never modified: onnxruntime ones as
`platform: "onnxruntime_onnx"` with `1/model.onnx` (Triton's folder form
`1/model.onnx/model.onnx` when it has external data), openvino ones as `backend: "openvino"`
with `1/model.xml` + `model.bin`. Configurations are complete (no auto-complete needed) and
follow each backend's batching rules: ONNX Runtime batches models whose tensors share a named
first dimension; Triton's OpenVINO backend fixes the batch to `max_batch_size` and pads smaller
ones, which needs every other dimension static (other OpenVINO models get `max_batch_size: 0`),
and cannot load dimensions bounded by `[shapes]` ranges. The repository is built in a staging
folder and renamed into place: a failure never leaves a half-written repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

from modelkiln.artifact import Artifact, blocking_file, staging
from modelkiln.errors import ArtifactError, OutputExistsError, UserInputError
from modelkiln.manifest import Manifest
from modelkiln.serve import MODEL_VERSION
from modelkiln.serve.pbtxt import Message, Token, format_message, message
from modelkiln.tensors import TensorSpec

DEFAULT_MAX_BATCH_SIZE = 8
DEFAULT_QUEUE_DELAY_US = 100
MARKER = ".kiln-triton.json"  # Triton reads only the repository's subfolders
ONNX_PLATFORM = "onnxruntime_onnx"
OPENVINO_BACKEND = "openvino"
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
# numpy dtype name -> Triton data type (the table in Triton's model configuration docs)
_SAME = ("bool", "uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64")
DATA_TYPES = {n: f"TYPE_{n.upper()}" for n in _SAME} | {
    f"float{b}": f"TYPE_FP{b}" for b in (16, 32, 64)
}
DATA_TYPES |= {"bfloat16": "TYPE_BF16", "object": "TYPE_STRING"}
# Our graph_optimization_level -> the ONNX Runtime backend's `optimization.graph.level`
# ("all" is the backend's default and is not written).
ORT_LEVELS = {"disable": 2, "basic": -1, "extended": 1}


# --------------------------------------------------------------------------- planning


@dataclass(frozen=True)
class TritonModel:
    """One model of the repository: what `kiln triton` prints and `--json` reports."""

    name: str
    artifact: Path
    path: Path  # <repo>/<name>
    runtime: tuple[str, str]  # ("platform", "onnxruntime_onnx") or ("backend", "openvino")
    max_batch_size: int
    instances: int
    instance_kind: str  # KIND_CPU (KIND_GPU for onnxruntime artifacts on cuda)
    parameters: dict[str, str]
    files: tuple[str, ...]  # relative to `path`, config.pbtxt first
    notes: tuple[str, ...]
    config: str = field(repr=False)  # the config.pbtxt text
    sources: tuple[Path, ...] = field(repr=False)  # the artifact file of each of files[1:]

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        del data["config"], data["sources"], data["runtime"]
        kind, value = self.runtime
        return data | {
            "artifact": str(self.artifact),
            "path": str(self.path),
            "platform": value if kind == "platform" else None,
            "backend": value if kind == "backend" else None,
            "dynamic_batching": self.max_batch_size > 0,
            "files": list(self.files),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class Settings:
    max_batch_size: int  # 0: no Triton batching
    max_queue_delay_us: int
    instances: int
    threads: int | None  # overrides the target's `threads` option


@dataclass
class _Layout:
    """What one backend contributes to a model: its files and its own configuration."""

    runtime: tuple[str, str]  # ("platform", ...) or ("backend", ...)
    kind: str
    inputs: dict[str, TensorSpec]  # the manifest's inputs the model file still has
    files: list[tuple[Path, Path]]  # (artifact file, path in the model folder)
    parameters: dict[str, str]
    notes: list[str]
    extra: list[tuple[str, Any]] = field(default_factory=list)  # more config fields
    fixed_batches: bool = False  # OpenVINO: batches of exactly max_batch_size
    shapes: dict[str, str] = field(default_factory=dict)  # OpenVINO: input -> IR shape text


def _whole(value: Any, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserInputError(f"{what} must be a whole number >= {minimum}, got {value!r}")
    return value


def _threads(manifest: Manifest, settings: Settings, where: str) -> int | None:
    if settings.threads is not None:
        return settings.threads
    value = manifest.target.options.get("threads")
    return None if value is None else _whole(value, f"{where}: target option threads", 1)


def _dims(spec: TensorSpec, ranges: Mapping[str, tuple[int, int]]) -> list[int]:
    """Triton dims: -1 for a dynamic dimension, the size for one a range pins (min == max)."""
    dims = []
    for dim in spec.shape:
        if isinstance(dim, int):
            dims.append(dim if dim >= 0 else -1)
        else:
            low, high = ranges.get(dim, (0, -1))
            dims.append(low if low == high else -1)
    return dims


def _batch_dim(specs: Sequence[TensorSpec]) -> str | None:
    """The named first dimension every input and output shares, if any."""
    firsts = {spec.shape[0] if spec.shape else None for spec in specs}
    first = firsts.pop() if len(firsts) == 1 else None
    return first if isinstance(first, str) else None


def _tensor(name: str, spec: TensorSpec, dims: list[int], where: str) -> Message:
    data_type = DATA_TYPES.get(spec.dtype)
    if data_type is None:
        raise UserInputError(f"{where}: {name} is {spec.dtype}, which Triton has no type for")
    if dims:
        return message(("name", name), ("data_type", Token(data_type)), ("dims", dims))
    # Triton shapes need a rank >= 1: [1] for clients, the model's own rank inside.
    shape = ("reshape", message(("shape", [])))
    return message(("name", name), ("data_type", Token(data_type)), ("dims", [1]), shape)


def _unchecked(manifest: Manifest, batch_dim: str | None) -> list[str]:
    """Notes on sizes the artifact bounds but a Triton configuration cannot express."""
    used = {d for s in (*manifest.inputs.values(), *manifest.outputs.values()) for d in s.shape}
    notes = []
    for dim, (low, high) in manifest.shape_ranges.items():
        if dim in used and dim != batch_dim and low != high:
            notes.append(f"Triton does not check {dim} against the target's range {low}..{high}")
    for dim, limit in manifest.limits.items():
        if dim in used and dim not in manifest.shape_ranges:
            notes.append(f"Triton does not check the model's limit {dim} <= {limit}")
    return notes


def _onnxruntime(artifact: Artifact, threads: int | None) -> _Layout:
    section, model = artifact.manifest.backend, artifact.file("model")
    data = [artifact.file(role) for role in section.files if role != "model"]
    files = [(model, Path(MODEL_VERSION, "model.onnx"))]
    if data:  # Triton's folder form: 1/model.onnx/model.onnx beside its external data
        files = [(model, Path(MODEL_VERSION, "model.onnx", "model.onnx"))]
        for path in data:
            if not path.is_relative_to(model.parent):
                raise ArtifactError(f"{artifact.path}: {path} is not beside {model.name}")
            files.append((path, Path(MODEL_VERSION, "model.onnx", path.relative_to(model.parent))))
    layout = _Layout(
        ("platform", ONNX_PLATFORM),
        "KIND_GPU" if section.get("device") == "cuda" else "KIND_CPU",
        dict(artifact.manifest.inputs),
        files,
        {"intra_op_thread_count": str(threads)} if threads else {},
        [],
    )
    level = ORT_LEVELS.get(str(section.get("graph_optimization_level", "all")))
    if level is not None:
        layout.extra.append(("optimization", message(("graph", message(("level", level))))))
    return layout


def ir_inputs(xml: Path) -> dict[str, str]:
    """Every name of an OpenVINO IR's inputs (Parameter ports) -> its shape text, such as
    '?,16' or '1..4,16'. OpenVINO drops inputs the graph does not use."""
    try:
        root = ElementTree.parse(xml).getroot()
    except (OSError, ElementTree.ParseError) as exc:
        raise ArtifactError(f"cannot read the OpenVINO model {xml}: {exc}") from None
    found = {}
    for layer in root.iter("layer"):
        if layer.get("type") == "Parameter":
            data = layer.find("data")
            shape = "" if data is None else data.get("shape", "")
            names = {layer.get("name", "")}
            for port in layer.iterfind("output/port"):
                names.update(n.strip() for n in port.get("names", "").split(","))
            found.update(dict.fromkeys(names - {""}, shape))
    return found


def _openvino(artifact: Artifact, threads: int | None) -> _Layout:
    manifest, section = artifact.manifest, artifact.manifest.backend
    xml = artifact.file("model")
    weights = artifact.file("weights") if "weights" in section.files else xml.with_suffix(".bin")
    shapes = ir_inputs(xml)
    notes = [
        f"input {n} is not in the config: OpenVINO dropped it (the graph does not use it)"
        for n in manifest.inputs
        if n not in shapes
    ]
    parameters = {}
    if section.get("performance_hint"):
        parameters["PERFORMANCE_HINT"] = str(section.get("performance_hint"))
    if threads:
        parameters["INFERENCE_NUM_THREADS"] = str(threads)
    if section.get("inference_precision_hint") == "bf16":
        parameters["HINT_BF16"] = "YES"
    else:
        notes.append(
            "Triton's OpenVINO backend cannot pin f32: CPUs with bf16 (AMX, AVX512-BF16) "
            "compute in bf16, which this artifact was not validated for"
        )
    device = str(section.get("device") or "CPU")
    if device.upper() != "CPU":
        parameters["TARGET_DEVICE"] = device
    return _Layout(
        ("backend", OPENVINO_BACKEND),
        "KIND_CPU",  # the backend's only kind; TARGET_DEVICE picks the device
        {n: s for n, s in manifest.inputs.items() if n in shapes},
        [(xml, Path(MODEL_VERSION, "model.xml")), (weights, Path(MODEL_VERSION, "model.bin"))],
        parameters,
        notes,
        fixed_batches=True,
        shapes=shapes,
    )


def _batching(manifest: Manifest, layout: _Layout, settings: Settings, where: str) -> int:
    """max_batch_size for the model (0: no Triton batching); adds the notes it implies."""
    ranges, notes = manifest.shape_ranges, layout.notes
    specs = {**layout.inputs, **manifest.outputs}
    dim = _batch_dim(list(specs.values())) if settings.max_batch_size > 0 else None
    static = all(d >= 0 for s in specs.values() for d in _dims(s, ranges)[1:])
    if dim is not None and layout.fixed_batches and not static:
        notes.append(
            f"not batched by Triton: its OpenVINO backend runs fixed batches, which need every "
            f"dimension but {dim} static; requests carry their own {dim} dimension"
        )
        dim = None
    batch = 0
    if dim is not None:
        low, high = ranges.get(dim, (1, settings.max_batch_size))
        batch = max(min(settings.max_batch_size, high), low)
        if batch != settings.max_batch_size:
            notes.append(f"max_batch_size {batch}: the target's range for {dim} is {low}..{high}")
    if layout.fixed_batches and batch:
        layout.parameters["ENABLE_BATCH_PADDING"] = "YES"
        notes.append(f"Triton's OpenVINO backend pads every batch to {batch} rows")
    bounded = [
        f"{n} [{layout.shapes[n]}]" for n in layout.inputs if ".." in layout.shapes.get(n, "")
    ]
    if layout.fixed_batches and not batch and bounded:
        raise UserInputError(
            f"{where}: Triton's OpenVINO backend cannot load dimensions bounded by the "
            f"target's [shapes] ranges ({', '.join(bounded)}); export an openvino target "
            "without ranges, or serve an onnxruntime artifact"
        )
    notes += _unchecked(manifest, dim if batch else None)
    return batch


def plan_model(artifact: Artifact, repo: Path, settings: Settings) -> TritonModel:
    """The configuration and files of one artifact's model; refuses what Triton cannot serve
    from this artifact (one line each)."""
    manifest, where = artifact.manifest, str(artifact.path)
    if manifest.decoder is not None or manifest.task == "text-generation":
        raise UserInputError(
            f"{where} is a text-generation (decoder) artifact with a key/value cache: Triton "
            "serving of decoder artifacts is not supported by this exporter; use `kiln serve`"
        )
    if not NAME.fullmatch(manifest.name):
        raise UserInputError(
            f"{where}: model name {manifest.name!r} is not a valid Triton model folder name "
            "(letters, digits, '_', '-' and '.'); re-export it under another name"
        )
    builders = {"onnxruntime": _onnxruntime, "openvino": _openvino}
    if manifest.backend.name not in builders:
        raise UserInputError(
            f"{where}: kiln triton writes onnxruntime and openvino artifacts, not "
            f"{manifest.backend.name} ones"
        )
    layout = builders[manifest.backend.name](artifact, _threads(manifest, settings, where))
    batch = _batching(manifest, layout, settings, where)
    tensors = [
        [_tensor(n, s, _dims(s, manifest.shape_ranges)[1 if batch else 0 :], where) for n, s in g]
        for g in (layout.inputs.items(), manifest.outputs.items())
    ]
    fields: list[tuple[str, Any]] = [("name", manifest.name), layout.runtime]
    fields += [("max_batch_size", batch), ("input", tensors[0]), ("output", tensors[1])]
    if batch:
        delay = ("max_queue_delay_microseconds", settings.max_queue_delay_us)
        fields.append(("dynamic_batching", message(delay)))
    group = message(("count", settings.instances), ("kind", Token(layout.kind)))
    fields.append(("instance_group", [group]))
    if layout.parameters:
        entries = [
            message(("key", k), ("value", message(("string_value", v))))
            for k, v in layout.parameters.items()
        ]
        fields.append(("parameters", entries))
    header = (
        f"# kiln triton: {manifest.name} ({manifest.task}, target {manifest.target.name}, "
        f"{manifest.precision}) from {artifact.path.resolve()}"
    ).replace("\n", " ")
    config = "\n".join([header, *format_message(Message((*fields, *layout.extra)))]) + "\n"
    return TritonModel(
        name=manifest.name,
        artifact=artifact.path,
        path=repo / manifest.name,
        runtime=layout.runtime,
        max_batch_size=batch,
        instances=settings.instances,
        instance_kind=layout.kind,
        parameters=layout.parameters,
        files=("config.pbtxt", *(relative.as_posix() for _, relative in layout.files)),
        notes=tuple(layout.notes),
        config=config,
        sources=tuple(source for source, _ in layout.files),
    )


# --------------------------------------------------------------------------- writing


def check_output(out: Path, artifacts: Sequence[Path], force: bool) -> None:
    """Refuse a repository path that cannot or must not be (re)written."""
    resolved, cwd = out.resolve(), Path.cwd()
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; choose another output path")
    blocker = blocking_file(out)
    if blocker is not None:
        raise OutputExistsError(f"cannot create {out}: {blocker} is a file, not a folder")
    if resolved.parent == resolved or resolved == cwd or resolved in cwd.parents:
        raise OutputExistsError(
            f"{out} is the current folder or one of its parents; name a new folder for the "
            "repository"
        )
    for path in artifacts:
        source = path.resolve()
        if source == resolved or source in resolved.parents or resolved in source.parents:
            raise OutputExistsError(f"{out} and the artifact {path} are inside one another")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise OutputExistsError(f"{out} exists and is not empty; pass --force to replace it")
        if not (out / MARKER).is_file():
            raise OutputExistsError(
                f"{out} holds files but is not a repository written by kiln triton; --force "
                f"replaces only such a repository (with {MARKER}) or an empty folder"
            )


def _place(source: Path, target: Path) -> None:
    """Hard-link `source` to `target`, or copy it across file systems."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def write_repository(
    artifacts: Sequence[Path],
    out: Path,
    *,
    max_batch_size: int | None = None,
    max_queue_delay_us: int = DEFAULT_QUEUE_DELAY_US,
    instances: int = 1,
    force: bool = False,
    threads: int | None = None,
) -> list[TritonModel]:
    """Write a Triton model repository at `out`, one model per artifact, after checking
    everything. `max_batch_size` None: DEFAULT_MAX_BATCH_SIZE, 0: no Triton batching;
    `threads` overrides the targets' `threads` option; `force` replaces an earlier one."""
    batch = DEFAULT_MAX_BATCH_SIZE if max_batch_size is None else max_batch_size
    settings = Settings(
        _whole(batch, "--max-batch-size", 0),
        _whole(max_queue_delay_us, "--max-queue-delay-us", 0),
        _whole(instances, "--instances", 1),
        None if threads is None else _whole(threads, "--threads", 1),
    )
    if not artifacts:
        raise UserInputError("give at least one artifact")
    out = Path(out)
    opened = [Artifact.open(path) for path in artifacts]
    models = [plan_model(artifact, out.resolve(), settings) for artifact in opened]
    seen: dict[str, Path] = {}
    for model in models:
        if model.name in seen:
            raise UserInputError(
                f"{seen[model.name]} and {model.artifact} are both named {model.name!r}; "
                "one repository holds one model per name (re-export one under another name)"
            )
        seen[model.name] = model.artifact
    check_output(out, [a.path for a in opened], force)
    with staging(out, force, checked=True) as stage:
        for model in models:
            folder = stage / model.name
            folder.mkdir()
            (folder / "config.pbtxt").write_text(model.config)
            for source, relative in zip(model.sources, model.files[1:], strict=True):
                _place(source, folder / relative)
        record = {"written_by": "kiln triton", "models": [m.to_json() for m in models]}
        (stage / MARKER).write_text(json.dumps(record, indent=2) + "\n")
    return models
