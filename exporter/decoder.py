"""Decoders in PyTorch: the cache's layout, tracing to one prefill+decode graph, and the
reference every artifact is held to (logits step by step, and transformers' own greedy
generation).

Tracing goes through `transformers.exporters` (transformers >= 5.24), which carries the
model-specific export patches (cache pytrees, SDPA, masks, sliding windows). Its graph is then
given this project's interface (`modelkiln.exporter.decoder_spec`): inputs and outputs named
and ordered by layer, and dimensions named. The cache traced is a plain DynamicCache, which
keeps every past token also for sliding-window models (their masks apply the window), so
the graph's cache has no leaves but keys and values.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from modelkiln.errors import ExportError, ModelkilnError, UserInputError, first_line
from modelkiln.exporter.decoder_spec import (
    DECODE_STEPS,
    GOLDEN_NEW_TOKENS,
    GOLDEN_PROMPT_LENGTHS,
    cache_names,
)
from modelkiln.exporter.specs import TaskSpec
from modelkiln.exporter.torch_onnx_fast import fast_torch_onnx
from modelkiln.exporter.trace import quiet, root_cause
from modelkiln.generation import left_pad, positions
from modelkiln.golden import GoldenSample
from modelkiln.tensors import Runner

_CACHE_LEAF = re.compile(r"^(?:input\.|output\.)?(?:cache|past_key_values)\.layers\.(\d+)\.(\w+)$")


def cache_argument(model: Any) -> str:
    """The forward argument that takes the cache: `cache` (transformers >= 5.24) or
    `past_key_values` (older)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _empty_cache(model: Any) -> Any:
    """A cache that keeps every past token, also for sliding-window models (their masks still
    apply the window), as the exported graph does: references and graph see the same past."""
    from transformers import DynamicCache

    return DynamicCache()


def _forward(model: Any, **kwargs: Any) -> Any:
    import torch

    arg = cache_argument(model)
    if "cache" in kwargs and arg != "cache":
        kwargs[arg] = kwargs.pop("cache")
    with torch.inference_mode():
        out = model(**kwargs, use_cache=True, return_dict=True)
    return out.logits, getattr(out, "cache", None) or out.past_key_values


def cache_layout(model: Any) -> list[tuple[int, int]]:
    """(kv_heads, head_dim) of each layer's cache, from a two-token forward pass."""
    import torch

    _, cache = _forward(
        model, input_ids=torch.zeros((1, 2), dtype=torch.long), cache=_empty_cache(model)
    )
    return [(int(layer.keys.shape[1]), int(layer.keys.shape[3])) for layer in cache.layers]


def _accepts_positions(spec: TaskSpec) -> bool:
    return any(d.name == "position_ids" for d in spec.inputs)


def trace_decoder(model: Any, spec: TaskSpec, model_type: str) -> Any:
    """One graph for prefill and decode, as an `onnx_ir.Model` with our interface."""
    import torch

    try:
        from transformers.exporters import OnnxConfig, OnnxExporter
        from transformers.exporters.exporter_dynamo import register_cache_pytrees_for_model
        from transformers.exporters.utils import get_leaf_tensors
    except ImportError:
        raise UserInputError(
            "exporting text-generation models needs transformers >= 5.24 (transformers.exporters)"
            ": pip install -U transformers"
        ) from None
    # A real decode step with every dimension >= 2, so the trace specialises none of them.
    batch, past, new = 2, 5, 3
    vocab = int(model.config.vocab_size)
    ids = torch.randint(0, vocab, (batch, past + new), generator=torch.Generator().manual_seed(0))
    _, cache = _forward(model, input_ids=ids[:, :past], cache=_empty_cache(model))
    sample: dict[str, Any] = {
        "input_ids": ids[:, past:],
        "attention_mask": torch.ones((batch, past + new), dtype=torch.long),
        cache_argument(model): cache,
    }
    # Every axis dynamic without bounds (named bounds trip guards of some models, e.g.
    # GPT-Neo's local attention): torch.export fails loudly if it must specialise one, and
    # `to_interface` names the axes afterwards.
    any_size = torch.export.Dim.DYNAMIC
    dims = {name: any_size for name in ("batch", "sequence", "past_sequence", "total_sequence")}
    dynamic: dict[str, Any] = {
        "input_ids": {0: dims["batch"], 1: dims["sequence"]},
        "attention_mask": {0: dims["batch"], 1: dims["total_sequence"]},
    }
    if _accepts_positions(spec):
        sample["position_ids"] = torch.arange(past, past + new).repeat(batch, 1)
        dynamic["position_ids"] = {0: dims["batch"], 1: dims["sequence"]}
    register_cache_pytrees_for_model(model)
    leaves = get_leaf_tensors({"cache": cache})
    dynamic[cache_argument(model)] = [
        {0: dims["batch"], 2: dims["past_sequence"]} if t.dim() == 4 else None
        for t in leaves.values()
    ]
    config = OnnxConfig(dynamic_shapes=dynamic, prefer_deferred_runtime_asserts_over_guards=True)
    try:
        with quiet(), _size_oblivious(), fast_torch_onnx():
            program, _ = OnnxExporter().export_program(model, sample, config)
    except Exception as exc:
        root = root_cause(exc)
        raise ExportError(
            f"tracing {model_type} for task {spec.task} failed (transformers.exporters): "
            f"{type(root).__name__}: {first_line(root)} (run with --debug for the full error)"
        ) from exc
    return to_interface(program, spec)


@contextlib.contextmanager
def _size_oblivious() -> Iterator[None]:
    """What torch.onnx does internally for data-dependent sizes: without it, named bounds
    fail with guards such as `sequence != 8`."""
    from torch.fx.experimental import _config

    with _config.patch(backed_size_oblivious=True):  # type: ignore[attr-defined]
        yield


def to_interface(model: Any, spec: TaskSpec) -> Any:
    """The exporter's graph with our names, order and dimension names."""
    import onnx_ir as ir

    graph = model.graph
    wanted_inputs = [d.name for d in spec.inputs]
    wanted_outputs = list(spec.outputs)

    def renamed(values: list[ir.Value], cache: str, what: str) -> dict[str, ir.Value]:
        by_name: dict[str, ir.Value] = {}
        for value in values:
            name = _our_name(value.name or "", cache)
            if name is None:
                raise ExportError(
                    f"the traced decoder has an {what} '{value.name}' modelkiln does not know"
                )
            value.name = name
            by_name[name] = value
        return by_name

    renamed_in = renamed(list(graph.inputs), "past", "input")
    renamed_out = renamed(list(graph.outputs), "present", "output")
    missing = [n for n in wanted_inputs if n not in renamed_in] + [
        n for n in wanted_outputs if n not in renamed_out
    ]
    if missing or len(renamed_in) != len(wanted_inputs) or len(renamed_out) != len(wanted_outputs):
        raise ExportError(
            f"the traced decoder has inputs {sorted(renamed_in)} and outputs "
            f"{sorted(renamed_out)}; expected {wanted_inputs} and {wanted_outputs}"
        )
    graph.inputs.clear()
    graph.inputs.extend(renamed_in[n] for n in wanted_inputs)
    graph.outputs.clear()
    graph.outputs.extend(renamed_out[n] for n in wanted_outputs)
    axes = {d.name: d.axes for d in spec.inputs}
    for name, value in renamed_in.items():
        value.shape = ir.Shape([ir.SymbolicDim(a) if isinstance(a, str) else a for a in axes[name]])
    vocab = int(next(d for d in spec.inputs if d.name == "input_ids").high)
    for name, value in renamed_out.items():
        if name == "logits":
            dims: Sequence[Any] = ("batch", "sequence", _size(value, 2, vocab))
        else:
            past = axes[name.replace("present.", "past_key_values.")]
            dims = ("batch", past[1], "total_sequence", past[3])
        value.shape = ir.Shape([ir.SymbolicDim(a) if isinstance(a, str) else a for a in dims])
    return model


def _size(value: Any, axis: int, default: int) -> int:
    dim = value.shape[axis] if value.shape is not None and len(value.shape) > axis else None
    return dim if isinstance(dim, int) else default


def _our_name(name: str, kind: str) -> str | None:
    """`input.cache.layers.3.keys` -> past_key_values.3.key (kind "past"), the outputs'
    -> present.3.key; other inputs and `logits` keep their names; None for anything else."""
    match = _CACHE_LEAF.match(name)
    if match is None:
        return name if kind == "past" or name == "logits" else None
    part = {"keys": "key", "values": "value"}.get(match[2])
    if part is None:
        return None
    return f"past_key_values.{match[1]}.{part}" if kind == "past" else f"present.{match[1]}.{part}"


# --------------------------------------------------------------------------- the reference


def decoder_runner(model: Any, spec: TaskSpec) -> Any:
    """The PyTorch model as a function of the graph's feeds (the past as arrays), returning
    the graph's outputs: what a reference run of one step looks like from outside."""
    import torch

    decoder = spec.decoder
    assert decoder is not None
    names = cache_names(decoder.layers)

    def run(feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        cache = _empty_cache(model)
        past = feeds[names[0][0]] if names else None
        if past is not None and past.shape[2] > 0:
            for i, (past_k, past_v, _, _) in enumerate(names):
                cache.update(torch.from_numpy(feeds[past_k]), torch.from_numpy(feeds[past_v]), i)
        kwargs = {
            k: torch.from_numpy(np.ascontiguousarray(feeds[k]))
            for k in ("input_ids", "attention_mask", "position_ids")
            if k in feeds
        }
        logits, cache = _forward(model, **kwargs, cache=cache)
        batch = int(kwargs["input_ids"].shape[0])
        outputs = {"logits": logits.numpy().copy()}
        for (_, _, present_k, present_v), (k, v) in zip(
            names, _layers(cache, spec, batch), strict=True
        ):
            outputs[present_k], outputs[present_v] = k, v
        return outputs

    return run


def prompt_ids(spec: TaskSpec, lengths: Sequence[int], seed: int) -> list[list[int]]:
    """Deterministic prompts of token ids from the upper half of the vocabulary, clear of
    the special tokens."""
    ids = next(d for d in spec.inputs if d.name == "input_ids")
    decoder = spec.decoder
    assert decoder is not None
    special = {decoder.pad_token_id, decoder.bos_token_id, *decoder.eos_token_ids}
    pool = np.array([t for t in range(ids.low, ids.high) if t not in special], dtype=np.int64)
    rng = np.random.default_rng(seed)
    return [rng.choice(pool, size=n).tolist() for n in lengths]


def plan_lengths(dims: Mapping[str, int]) -> list[int]:
    """Prompt lengths of a validation shape: the longest first, then 3 tokens shorter each
    row (left padding), at least one token."""
    return [max(1, int(dims["sequence"]) - 3 * i) for i in range(int(dims["batch"]))]


def _layers(cache: Any, spec: TaskSpec, batch: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each layer's (keys, values) as numpy; a layer not filled yet as zero-length arrays."""
    shapes = {d.name: d.axes for d in spec.inputs}
    held = getattr(cache, "layers", [])
    out = []
    for i, (past_k, _, _, _) in enumerate(cache_names(spec.decoder.layers if spec.decoder else 0)):
        keys = getattr(held[i], "keys", None) if i < len(held) else None
        if keys is not None and keys.numel():
            out.append((keys.numpy().copy(), held[i].values.numpy().copy()))
        else:
            _, heads, _, dim = shapes[past_k]
            empty = np.zeros((batch, int(heads), 0, int(dim)), dtype=np.float32)
            out.append((empty, empty))
    return out


@contextlib.contextmanager
def reference_errors(what: str) -> Iterator[None]:
    """PyTorch failing on the reference run is an export failure in one line, not a trace."""
    try:
        yield
    except ModelkilnError:
        raise
    except Exception as exc:
        raise ExportError(
            f"the PyTorch reference failed {what}: {type(exc).__name__}: {first_line(exc)}"
        ) from exc


def reference_steps(
    runner: Runner, spec: TaskSpec, plans: Sequence[Mapping[str, int]], seed: int = 0
) -> tuple[list[GoldenSample], list[dict[str, int]]]:
    """For each validation shape: the prefill of left-padded prompts (past length 0), then
    DECODE_STEPS greedy steps, each as (inputs incl. the reference's own past, the
    reference's outputs); `runner` is the reference as a function of the graph's feeds.
    Returns the samples and each one's dimension sizes."""
    decoder = spec.decoder
    assert decoder is not None
    layers = cache_names(decoder.layers)
    axes = {d.name: d.axes for d in spec.inputs}
    samples: list[GoldenSample] = []
    dims: list[dict[str, int]] = []
    with reference_errors("on the prefill and decode steps"):
        for index, plan in enumerate(plans):
            prompts = prompt_ids(spec, plan_lengths(plan), seed + index)
            ids, mask = left_pad(prompts, decoder.pad_token_id)
            pos = positions(mask)
            batch = ids.shape[0]
            past: dict[str, np.ndarray] = {}
            for past_k, past_v, _, _ in layers:
                _, heads, _, dim = axes[past_k]
                past[past_k] = past[past_v] = np.zeros((batch, int(heads), 0, int(dim)), np.float32)
            for _step in range(1 + DECODE_STEPS):
                feeds = {"input_ids": ids, "attention_mask": mask}
                if _accepts_positions(spec):
                    feeds["position_ids"] = pos
                feeds |= past
                outputs = runner(feeds)
                samples.append((feeds, outputs))
                dims.append(
                    {
                        "batch": batch,
                        "sequence": int(ids.shape[1]),
                        "past_sequence": int(past[layers[0][0]].shape[2]) if layers else 0,
                        "total_sequence": int(mask.shape[1]),
                    }  # fmt: skip
                )
                past = {}
                for past_k, past_v, present_k, present_v in layers:
                    past[past_k], past[past_v] = outputs[present_k], outputs[present_v]
                ids = outputs["logits"][:, -1].argmax(-1)[:, None].astype(np.int64)
                mask = np.concatenate([mask, np.ones((batch, 1), dtype=mask.dtype)], axis=1)
                pos = pos[:, -1:] + 1
    return samples, dims


def golden_generation(model: Any, spec: TaskSpec, seed: int = 0) -> dict[str, Any]:
    """Left-padded prompts of different lengths and the tokens transformers' greedy
    `generate` makes of them: what every artifact of this model must reproduce exactly."""
    import torch
    from transformers import GenerationConfig

    decoder = spec.decoder
    assert decoder is not None
    prompts = prompt_ids(spec, GOLDEN_PROMPT_LENGTHS, seed + 100)
    ids, mask = left_pad(prompts, decoder.pad_token_id)
    config = GenerationConfig(
        do_sample=False,
        max_new_tokens=GOLDEN_NEW_TOKENS,
        pad_token_id=decoder.pad_token_id,
        eos_token_id=list(decoder.eos_token_ids) or None,
        bos_token_id=decoder.bos_token_id,
    )
    with (
        torch.inference_mode(),
        quiet(),
        reference_errors("generating"),
        plain_greedy(model, config),
    ):
        out = model.generate(
            input_ids=torch.from_numpy(ids),
            attention_mask=torch.from_numpy(mask),
            generation_config=config,
        )
    return {
        "prompts": prompts,
        "max_new_tokens": GOLDEN_NEW_TOKENS,
        "eos_token_ids": list(decoder.eos_token_ids),
        "sequences": out.numpy().tolist(),
        "reference": f"transformers {_version('transformers')} generate(do_sample=False)",
    }


@contextlib.contextmanager
def plain_greedy(model: Any, config: Any) -> Iterator[None]:
    """`config` as the model's generation config for the call: transformers otherwise fills
    every field `config` leaves unset from the checkpoint's generation_config.json
    (repetition_penalty, no_repeat_ngram_size, suppress_tokens, ...), and the golden would
    not be the plain greedy decoding it stands for."""
    saved = model.generation_config
    model.generation_config = config
    try:
        yield
    finally:
        model.generation_config = saved


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)
