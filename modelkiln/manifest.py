"""The artifact's manifest (`kiln.json`) as one typed record, to and from JSON.

Everything that reads an artifact (runtime, `kiln validate`, `kiln inspect`, `kiln bench`)
reads these attributes, never the JSON's string keys. Keys this version does not know are
kept (`extra`) and written back at the top level and in the source, backend, validation and
accuracy sections; the small fixed records (target, passes, files, tensor specs) hold
exactly their fields.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from modelkiln.generated_feeds import ValueKind
from modelkiln.targets.target import Target
from modelkiln.tensors import TensorSpec, specs_from_json, specs_to_json

MANIFEST = "kiln.json"
SCHEMA_VERSION = 1


def _known(cls: type, data: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(keys that are fields of `cls`, the others)."""
    names = {f.name for f in fields(cls)} - {"extra"}
    return (
        {k: v for k, v in data.items() if k in names},
        {k: v for k, v in data.items() if k not in names},
    )


def _compact(data: Mapping[str, Any], keep: tuple[str, ...] = ()) -> dict[str, Any]:
    """`data` without None values (except the keys in `keep`)."""
    return {k: v for k, v in data.items() if v is not None or k in keep}


@dataclass
class FileEntry:
    sha256: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PassRecord:
    """What one graph pass did (`--dump-passes` writes the model after each)."""

    name: str
    nodes_before: int
    nodes_after: int
    modified: bool
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PassRecord:
        return cls(
            str(data["name"]),
            int(data["nodes_before"]),
            int(data["nodes_after"]),
            bool(data["modified"]),
            float(data["seconds"]),
        )


@dataclass
class SourceRecord:
    """Where the model came from: `kind` hf | factory | onnx, with the weights' hashes."""

    kind: str
    path: str
    model_type: str | None = None
    weights: list[dict[str, Any]] = field(default_factory=list)
    architectures: list[str] | None = None
    # The checkpoint declares custom code and was exported with the stock class
    # (`--stock-architecture`); a fresh reference run does the same.
    stock_architecture: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "path": self.path, "model_type": self.model_type}
        if self.architectures is not None:
            data["architectures"] = self.architectures
        data["weights"] = self.weights
        if self.stock_architecture:
            data["stock_architecture"] = True
        return data | self.extra

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SourceRecord:
        known, extra = _known(cls, data)
        return cls(**known, extra=extra)


@dataclass
class BackendSection:
    """What a backend recorded at build time: its name, its files by role ("model",
    "weights"), its own details (versions, options, what the device reported) and the graph
    passes it ran on its copy of the model after the shared ones (`Manifest.passes`)."""

    name: str
    files: dict[str, str]
    details: dict[str, Any] = field(default_factory=dict)
    passes: list[PassRecord] = field(default_factory=list)

    def get(self, key: str, default: Any = None) -> Any:
        """One of the backend's own details."""
        return self.details.get(key, default)

    def to_json(self) -> dict[str, Any]:
        passes = {"passes": [p.to_json() for p in self.passes]} if self.passes else {}
        return {"name": self.name, "files": dict(self.files), **self.details, **passes}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BackendSection:
        details = {k: v for k, v in data.items() if k not in ("name", "files", "passes")}
        passes = [PassRecord.from_json(p) for p in data.get("passes", [])]
        return cls(str(data["name"]), dict(data["files"]), details, passes)


@dataclass
class Validation:
    """The comparison with the reference at export (or why there was none)."""

    passed: bool = True
    tolerance: dict[str, Any] | None = None
    max_abs_diff: float = 0.0
    checks: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    reference: str | None = None  # what produced the expected outputs
    tolerance_source: str | None = None  # set when the tolerance was measured at build
    generation: dict[str, Any] | None = None  # decoders: the greedy tokens check
    skipped: bool = False
    reason: str | None = None  # why it was skipped
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def skipped_because(cls, reason: str) -> Validation:
        return cls(skipped=True, reason=reason)

    def to_json(self) -> dict[str, Any]:
        if self.skipped:
            return {"skipped": True, "reason": self.reason, **self.extra}
        data = {
            "passed": self.passed,
            "tolerance": self.tolerance,
            "max_abs_diff": self.max_abs_diff,
            "checks": self.checks,
            "failures": self.failures,
            "tolerance_source": self.tolerance_source,
            "reference": self.reference,
            "generation": self.generation,
        }
        return _compact(data, keep=("tolerance",)) | self.extra

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Validation:
        known, extra = _known(cls, data)
        return cls(**known, extra=extra)

    def add_generation(self, check: dict[str, Any]) -> None:
        """Fold the greedy-generation check in: its failures fail the validation."""
        self.generation = check
        self.failures = [*self.failures, *check["failures"]]
        self.passed = self.passed and bool(check["passed"])

    @property
    def min_cosine(self) -> float | None:
        """The smallest per-row cosine over every check (None: none was compared)."""
        cosines = [
            r["cosine_min"] for c in self.checks for r in c["outputs"].values() if "cosine_min" in r
        ]
        return min(cosines) if cosines else None


@dataclass
class Accuracy:
    """A reduced-precision artifact measured against fp32 on evaluation data.

    Also the shape of one measurement (`modelkiln.exporter.accuracy.measure`), which has the
    metric fields only; the manifest's section adds the budget, its misses and the data."""

    task: str
    samples: int
    metric: str  # "cosine" or "top1_agreement"
    max_abs_diff: float | None = None
    cosine: dict[str, Any] | None = None  # min, mean, pooling
    top1_agreement: float | None = None  # None also when there were no decisions
    decisions: int | None = None
    greedy: dict[str, Any] | None = None  # decoders: greedy tokens vs fp32's (agreement)
    worst: list[dict[str, Any]] = field(default_factory=list)
    reference: str | None = None
    budget: dict[str, Any] | None = None  # min_cosine, min_top1_agreement, source
    misses: list[str] | None = None
    data: dict[str, Any] | None = None  # where the evaluation samples came from
    search: dict[str, Any] | None = None  # after --precision auto: chosen and candidates
    kept_best: bool | None = None  # --keep-best wrote it although it missed
    missed: list[str] | None = None  # with kept_best: what it missed
    extra: dict[str, Any] = field(default_factory=dict)
    nulls: frozenset[str] = frozenset()  # fields the JSON held as null (kept as null)

    # The JSON's key order: the measurement's, then what the manifest adds.
    ORDER = (
        "task",
        "samples",
        "max_abs_diff",
        "metric",
        "cosine",
        "top1_agreement",
        "decisions",
        "greedy",
        "worst",
        "reference",
        "budget",
        "misses",
        "data",
        "search",
        "kept_best",
        "missed",
    )

    def to_json(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.ORDER}
        return {k: v for k, v in data.items() if v is not None or k in self.nulls} | self.extra

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Accuracy:
        known, extra = _known(cls, data)
        known.pop("nulls", None)
        nulls = frozenset(k for k, v in known.items() if v is None)
        return cls(**known, extra=extra, nulls=nulls)

    @property
    def score(self) -> float:
        """One number to rank measurements by (higher is closer to fp32)."""
        if self.metric == "top1_agreement":
            return float(self.top1_agreement or 0.0)
        return float((self.cosine or {}).get("min", float("-inf")))

    def headline(self) -> str:
        """One line for tables and logs."""
        text = self.short(worded=True)
        if self.greedy and self.greedy.get("agreement") is not None:
            text += (
                f", greedy tokens {self.greedy['agreement']:.4f} equal "
                f"({self.greedy['new_tokens']} per prompt)"
            )
        if self.worst:
            text += f", worst: {self.worst[0]['name']!r}"
        return f"{text} over {self.samples} samples"

    def short(self, worded: bool = False) -> str:
        if self.metric == "top1_agreement":
            label = "top-1 agreement" if worded else "top-1"
            agreement = self.top1_agreement
            return f"{label} {'n/a' if agreement is None else f'{agreement:.4f}'}"
        cos = self.cosine or {}
        label = "cosine" if worded else "cos"
        return f"{label} min {cos['min']:.4f} mean {cos['mean']:.4f}"


@dataclass
class CacheLayer:
    """One layer's key/value cache: the graph inputs it reads and the outputs it writes."""

    past_key: str
    past_value: str
    present_key: str
    present_value: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class DecoderSection:
    """How to generate with a text-generation artifact (`modelkiln.generation`)."""

    layers: list[CacheLayer]
    pad_token_id: int
    eos_token_ids: list[int] = field(default_factory=list)
    bos_token_id: int | None = None
    max_positions: int | None = None  # prompt + new tokens may not exceed it
    golden: str | None = None  # file of prompts and the tokens transformers generated
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        data["layers"] = [layer.to_json() for layer in self.layers]
        return data | self.extra

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecoderSection:
        known, extra = _known(cls, data)
        known["layers"] = [CacheLayer(**layer) for layer in known["layers"]]
        return cls(**known, extra=extra)


@dataclass
class Manifest:
    name: str
    task: str
    source: SourceRecord
    target: Target
    backend: BackendSection
    precision: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    input_values: dict[str, ValueKind] = field(default_factory=dict)
    created: str = ""
    opset: int | None = None
    versions: dict[str, str | None] = field(default_factory=dict)
    passes: list[PassRecord] = field(default_factory=list)
    cache: dict[str, Any] = field(default_factory=dict)  # build cache key, hit, model_from
    preprocessing: list[str] = field(default_factory=list)
    limits: dict[str, int] = field(default_factory=dict)  # largest size per named dimension
    decoder: DecoderSection | None = None  # text generation: the cache and special tokens
    accuracy: Accuracy | None = None
    validation: Validation | None = None
    timings: dict[str, float] = field(default_factory=dict)
    files: dict[str, FileEntry] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def shape_ranges(self) -> dict[str, tuple[int, int]]:
        """(min, max) per named dimension, from the target's [shapes] (none: unbounded)."""
        return self.target.ranges

    @property
    def size_bytes(self) -> int:
        return sum(e.size for e in self.files.values())

    def to_json(self) -> dict[str, Any]:
        inputs = specs_to_json(self.inputs)
        for name, values in self.input_values.items():
            inputs[name]["values"] = values.to_json()
        data: dict[str, Any] = {
            "schema_version": self.schema_version,
            "name": self.name,
            "created": self.created,
            "task": self.task,
            "source": self.source.to_json(),
            "target": self.target.to_json(),
            "backend": self.backend.to_json(),
            "precision": self.precision,
            "opset": self.opset,
            "versions": self.versions,
            "passes": [p.to_json() for p in self.passes],
            "cache": self.cache,
            "inputs": inputs,
            "outputs": specs_to_json(self.outputs),
            "preprocessing": self.preprocessing,
        }
        if self.limits:
            data["limits"] = self.limits
        if self.decoder is not None:
            data["decoder"] = self.decoder.to_json()
        if self.accuracy is not None:
            data["accuracy"] = self.accuracy.to_json()
        if self.validation is not None:
            data["validation"] = self.validation.to_json()
        if self.timings:
            data["timings"] = self.timings
        if self.files:
            data["files"] = {k: e.to_json() for k, e in self.files.items()}
        return data | self.extra

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Manifest:
        """Raises KeyError/TypeError/ValueError on a malformed manifest."""
        known, extra = _known(cls, data)
        inputs = known.pop("inputs")
        accuracy, validation = known.pop("accuracy", None), known.pop("validation", None)
        decoder = known.pop("decoder", None)
        return cls(
            **known
            | {
                "source": SourceRecord.from_json(data["source"]),
                "target": Target.from_json(data["target"]),
                "backend": BackendSection.from_json(data["backend"]),
                "inputs": specs_from_json(inputs),
                "outputs": specs_from_json(data["outputs"]),
                "input_values": {
                    n: ValueKind.from_json(s["values"])
                    for n, s in inputs.items()
                    if s.get("values")
                },
                "passes": [PassRecord.from_json(p) for p in data.get("passes") or []],
                "files": {
                    k: FileEntry(str(e["sha256"]), int(e["size"]))
                    for k, e in (data.get("files") or {}).items()
                },
                "decoder": None if decoder is None else DecoderSection.from_json(decoder),
                "accuracy": None if accuracy is None else Accuracy.from_json(accuracy),
                "validation": None if validation is None else Validation.from_json(validation),
            },
            extra=extra,
        )
