"""Task specs: what a task's model takes and returns, how to make inputs, how close is close.

One small declarative spec per task family. Inputs are listed one by one with named axes, so a
decoder spec can list `past_key_values.{i}.key` inputs (axes batch, heads, past_sequence,
head_dim) per layer the same way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from modelkiln.compare import Tolerance
from modelkiln.errors import UnknownTaskError, UserInputError
from modelkiln.exporter import decoder_spec
from modelkiln.exporter.decoder_spec import DecoderInfo
from modelkiln.generated_feeds import Axis, InputDecl, generate_feeds
from modelkiln.hf_config import position_limit
from modelkiln.tensors import TensorSpec


@dataclass(frozen=True)
class TaskSpec:
    task: str
    inputs: tuple[InputDecl, ...]
    outputs: tuple[str, ...]
    tolerance: Tolerance
    trace_dims: Mapping[str, int]
    check_dims: tuple[Mapping[str, int], ...]
    limits: Mapping[str, int] = field(default_factory=dict)  # largest size per named dim
    decoder: DecoderInfo | None = None  # text generation: cache layers and special tokens

    def fit(self, dims: Mapping[str, int]) -> dict[str, int]:
        """`dims` with each size capped at the model's limit (e.g. max_position_embeddings)."""
        return {d: min(v, self.limits.get(d, v)) for d, v in dims.items()}

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "inputs": [
                {"name": d.name, "dtype": d.dtype, "axes": list(d.axes), **d.values.to_json()}
                for d in self.inputs
            ],
            "outputs": list(self.outputs),
            "tolerance": self.tolerance.to_json(),
            "trace_dims": dict(self.trace_dims),
            "check_dims": [dict(c) for c in self.check_dims],
            "limits": dict(self.limits),
            "decoder": None if self.decoder is None else self.decoder.to_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskSpec:
        inputs = tuple(
            InputDecl(d["name"], d["dtype"], tuple(d["axes"]), d["kind"], d["low"], d["high"])
            for d in data["inputs"]
        )
        return cls(
            task=data["task"],
            inputs=inputs,
            outputs=tuple(data["outputs"]),
            tolerance=Tolerance.from_json(data["tolerance"]),
            trace_dims=dict(data["trace_dims"]),
            check_dims=tuple(dict(c) for c in data["check_dims"]),
            limits=dict(data["limits"]),
            decoder=DecoderInfo.from_json(data["decoder"]) if data.get("decoder") else None,
        )

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            d.name: {i: a for i, a in enumerate(d.axes) if isinstance(a, str)} for d in self.inputs
        }


TEXT_TASKS = {
    "feature-extraction": ("AutoModel", ("last_hidden_state",)),
    "text-classification": ("AutoModelForSequenceClassification", ("logits",)),
    "token-classification": ("AutoModelForTokenClassification", ("logits",)),
    decoder_spec.TASK: ("AutoModelForCausalLM", ("logits",)),
}
IMAGE_TASKS = {
    "feature-extraction": ("AutoModel", ("last_hidden_state",)),
    "image-classification": ("AutoModelForImageClassification", ("logits",)),
}
TASKS = sorted(set(TEXT_TASKS) | set(IMAGE_TASKS))
_ARCH_SUFFIX_TO_TASK = {  # in order: "GPT2LMHeadModel" is a decoder, not a "Model"
    "ForCausalLM": decoder_spec.TASK,
    "LMHeadModel": decoder_spec.TASK,
    "ForSequenceClassification": "text-classification",
    "ForTokenClassification": "token-classification",
    "ForImageClassification": "image-classification",
    "Model": "feature-extraction",
}
TEXT_CHECK_DIMS = ({"batch": 1, "sequence": 16}, {"batch": 3, "sequence": 37})
BATCH_CHECK_DIMS = ({"batch": 1}, {"batch": 3})


def infer_task(config: Mapping[str, Any]) -> str:
    for arch in config.get("architectures") or []:
        for suffix, task in _ARCH_SUFFIX_TO_TASK.items():
            if arch.endswith(suffix):
                return task
    archs = ", ".join(config.get("architectures") or []) or "none"
    raise UnknownTaskError(
        f"cannot infer the task from config.json (architectures: {archs}); "
        f"pass --task, one of: {', '.join(TASKS)}"
    )


def auto_class_for(config: Mapping[str, Any], task: str | None) -> str:
    """The transformers Auto class that loads a checkpoint for `task` (or its inferred task)."""
    task = task or infer_task(config)
    check_task(task)
    table = TEXT_TASKS if "vocab_size" in config else IMAGE_TASKS
    if task not in table:
        kind = "text" if table is TEXT_TASKS else "image"
        raise UnknownTaskError(
            f"task '{task}' does not fit {kind} model type {config.get('model_type')}; "
            f"{kind} tasks: {', '.join(table)}"
        )
    if task == decoder_spec.TASK:
        archs = config.get("architectures") or []
        heads = ("ForCausalLM", "LMHeadModel")
        if archs and not any(a.endswith(heads) for a in archs):
            raise UnknownTaskError(
                f"task {task} needs a checkpoint with a causal language-model head "
                f"(*ForCausalLM, *LMHeadModel); this one is {', '.join(archs)}: pick another --task"
            )
    return table[task][0]


def for_hf(
    config: Mapping[str, Any],
    task: str | None,
    forward_args: set[str],
    layout: Sequence[tuple[int, int]] = (),
    generation: Mapping[str, Any] | None = None,
) -> TaskSpec:
    """Spec for a Hugging Face checkpoint; `forward_args` are the model's forward parameters.
    For text generation, `layout` is the cache's (kv_heads, head_dim) per layer and
    `generation` the checkpoint's generation_config.json."""
    task = task or infer_task(config)
    if task not in TASKS:
        raise UnknownTaskError(f"unknown task '{task}'; known tasks: {', '.join(TASKS)}")
    if task == decoder_spec.TASK:
        return _decoder_spec(config, forward_args, layout, generation or {})
    if "vocab_size" in config and "pixel_values" not in forward_args:
        return _text_spec(config, task, forward_args)
    if "image_size" in config or "pixel_values" in forward_args:
        return _image_spec(config, task)
    raise UnknownTaskError(
        f"cannot tell the input modality of model type {config.get('model_type')}"
    )


def check_task(task: str | None) -> None:
    if task is not None and task not in TASKS:
        raise UnknownTaskError(f"unknown task '{task}'; known tasks: {', '.join(TASKS)}")


def _text_spec(config: Mapping[str, Any], task: str, forward_args: set[str]) -> TaskSpec:
    if task not in TEXT_TASKS:
        raise UnknownTaskError(
            f"task '{task}' does not fit text model type {config.get('model_type')}; "
            f"text tasks: {', '.join(TEXT_TASKS)}"
        )
    outputs = TEXT_TASKS[task][1]
    axes = ("batch", "sequence")
    vocab = int(config["vocab_size"])
    inputs = [
        InputDecl("input_ids", "int64", axes, "token_ids", low=min(1000, vocab // 2), high=vocab)
    ]
    if "attention_mask" in forward_args:
        inputs.append(InputDecl("attention_mask", "int64", axes, "mask"))
    types = int(config.get("type_vocab_size", 0))
    if "token_type_ids" in forward_args and types >= 2:
        inputs.append(InputDecl("token_type_ids", "int64", axes, "token_types", high=types))
    limits = {}
    positions = position_limit(config)
    if positions is not None:
        limits["sequence"] = positions
    longest = limits.get("sequence", 1 << 30)
    checks = tuple(
        {"batch": dims["batch"], "sequence": min(dims["sequence"], longest // (2 - i))}
        for i, dims in enumerate(TEXT_CHECK_DIMS)
    )
    return TaskSpec(
        task=task,
        inputs=tuple(inputs),
        outputs=outputs,
        tolerance=Tolerance(atol=1e-4, min_cosine=0.9999 if task == "feature-extraction" else None),
        trace_dims={"batch": 2, "sequence": min(8, longest)},
        check_dims=checks,
        limits=limits,
    )


def _decoder_spec(
    config: Mapping[str, Any],
    forward_args: set[str],
    layout: Sequence[tuple[int, int]],
    generation: Mapping[str, Any],
) -> TaskSpec:
    inputs, outputs, limits = decoder_spec.decoder_inputs(config, forward_args, layout)
    pad, eos, bos = decoder_spec.special_tokens(config, generation)
    vocab = int(config["vocab_size"])
    if not 0 <= pad < vocab:
        raise UserInputError(
            f"the checkpoint's pad token (pad_token_id, else the first eos_token_id) is {pad}, "
            f"outside its vocabulary of {vocab} ids; fix config.json / generation_config.json"
        )
    eos = [e for e in eos if 0 <= e < vocab]  # an id the model cannot produce never stops it
    longest = limits.get("sequence", 1 << 30)
    return TaskSpec(
        task=decoder_spec.TASK,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        tolerance=decoder_spec.decoder_tolerance(),
        trace_dims={"batch": 2, "sequence": 3, "past_sequence": 5, "total_sequence": 8},
        check_dims=tuple(
            {"batch": d["batch"], "sequence": min(d["sequence"], longest // 4)}
            for d in decoder_spec.PROMPT_DIMS
        ),
        limits=limits,
        decoder=DecoderInfo(len(layout), pad, tuple(eos), bos),
    )


def _image_spec(config: Mapping[str, Any], task: str) -> TaskSpec:
    if task not in IMAGE_TASKS:
        raise UnknownTaskError(
            f"task '{task}' does not fit image model type {config.get('model_type')}; "
            f"image tasks: {', '.join(IMAGE_TASKS)}"
        )
    outputs = IMAGE_TASKS[task][1]
    size = config.get("image_size", 224)
    height, width = (size, size) if isinstance(size, int) else (size[0], size[1])
    channels = int(config.get("num_channels", 3))
    pixels = InputDecl(
        "pixel_values", "float32", ("batch", channels, int(height), int(width)), "normal"
    )
    return TaskSpec(
        task=task,
        inputs=(pixels,),
        outputs=outputs,
        tolerance=Tolerance(atol=1e-4, min_cosine=0.9999 if task == "feature-extraction" else None),
        trace_dims={"batch": 2},
        check_dims=BATCH_CHECK_DIMS,
    )


def for_factory(
    example_inputs: Mapping[str, Any], options: Mapping[str, Any], n_outputs: int
) -> TaskSpec:
    """Spec for a module factory: shapes and value ranges come from its example inputs."""
    dynamic = options.get("dynamic_axes") or {name: {0: "batch"} for name in example_inputs}
    inputs = []
    trace_dims: dict[str, int] = {}
    for name, tensor in example_inputs.items():
        array = tensor.detach().cpu().numpy()
        named = {int(k): str(v) for k, v in dynamic.get(name, {}).items()}
        axes = tuple(named.get(i, size) for i, size in enumerate(array.shape))
        for i, axis in named.items():
            trace_dims.setdefault(axis, int(array.shape[i]))
        if array.dtype == np.bool_:
            fill, low, high = "bools", 0, 2
        elif np.issubdtype(array.dtype, np.integer):
            fill, low, high = "ints", int(array.min()), int(array.max()) + 1
        else:
            fill, low, high = "normal", 0, 0
        inputs.append(InputDecl(name, array.dtype.name, axes, fill, low, high))
    names = options.get("output_names") or [f"output_{i}" for i in range(n_outputs)]
    if len(names) != n_outputs:
        raise UserInputError(
            f"output_names lists {len(names)} names but the module returns {n_outputs} outputs"
        )
    # Every named dim varies: batch takes 1 and 3, others one less and one more than traced.
    checks = tuple(
        {d: (1, 3)[i] if d == "batch" else (max(1, n - 1), n + 1)[i] for d, n in trace_dims.items()}
        for i in range(2)
    )
    return TaskSpec(
        task="custom",
        inputs=tuple(inputs),
        outputs=tuple(names),
        tolerance=Tolerance(atol=float(options.get("atol", 1e-4))),
        trace_dims=trace_dims,
        check_dims=checks,
    )


def tensor_spec_of(value: Any, origin: str = "the model") -> TensorSpec:
    """Manifest spec of an `onnx_ir.Value`; refuses what the runtime cannot feed or compare."""
    import onnx_ir as ir

    if not isinstance(value.type, ir.TensorType):
        raise UserInputError(
            f"{origin}: '{value.name}' is a {value.type}; modelkiln handles tensors only"
        )
    if value.shape is None:
        raise UserInputError(
            f"{origin}: '{value.name}' has no known rank; give the graph typed shapes "
            "(e.g. with onnx.shape_inference) before exporting"
        )
    try:
        dtype = np.dtype(value.dtype.numpy())
    except (TypeError, ValueError, NotImplementedError):
        dtype = None
    if dtype is None or dtype.kind not in "biuf":
        raise UserInputError(
            f"{origin}: '{value.name}' has element type {value.dtype}; modelkiln handles "
            "numeric and bool tensors only"
        )
    dims: list[Axis] = []
    for i, dim in enumerate(value.shape):
        if isinstance(dim, int):
            dims.append(dim)
        else:
            dims.append(str(dim.value) if dim.value else f"{value.name}_dim{i}")
    return TensorSpec(dtype.name, tuple(dims))


def for_onnx(model: Any, origin: str = "the ONNX model") -> TaskSpec:
    """Spec read from an ONNX graph (an `onnx_ir.Model`): named dims are the dynamic axes."""
    inputs = []
    dims: set[str] = set()
    for value in model.graph.outputs:
        tensor_spec_of(value, origin)
    for value in model.graph.inputs:
        spec = tensor_spec_of(value, origin)
        dims.update(d for d in spec.shape if isinstance(d, str))
        kind = np.dtype(spec.dtype).kind
        fill = "normal" if kind == "f" else ("bools" if kind == "b" else "ints")
        inputs.append(InputDecl(value.name, spec.dtype, spec.shape, fill))
    return TaskSpec(
        task="custom",
        inputs=tuple(inputs),
        outputs=tuple(v.name for v in model.graph.outputs),
        tolerance=Tolerance(atol=1e-4),
        trace_dims={d: 2 for d in dims},
        check_dims=({d: 1 for d in dims}, {d: 3 for d in dims}),
    )


def make_inputs(spec: TaskSpec, dims: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Deterministic inputs for the given named-dim sizes: valid token ids, padded masks."""
    return generate_feeds(spec.inputs, dims, seed)
