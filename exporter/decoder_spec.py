"""The text-generation task: one graph for prefill and decode with a key/value cache.

Inputs `input_ids` [batch, sequence], `attention_mask` [batch, total_sequence] (past and new
tokens), `position_ids` [batch, sequence] (when the model takes them) and per layer
`past_key_values.{i}.key|value` [batch, kv_heads, past_sequence, head_dim]; outputs `logits`
[batch, sequence, vocab] and `present.{i}.key|value` [batch, kv_heads, total_sequence,
head_dim]. Names and order are ours, whatever the transformers version calls its cache.
Grouped-query attention keeps its small number of KV heads in the cache.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelkiln.compare import Tolerance
from modelkiln.generated_feeds import InputDecl
from modelkiln.hf_config import position_limit

TASK = "text-generation"
CACHE_DTYPE = "float32"
# Two validation prompts shapes: batch 1 with 9 tokens, and batch 2 left-padded (7 and 4).
PROMPT_DIMS = ({"batch": 1, "sequence": 9}, {"batch": 2, "sequence": 7})
DECODE_STEPS = 3  # after each prefill, compared step by step with PyTorch
GOLDEN_NEW_TOKENS = 32  # greedy tokens that must equal transformers' generate()
GOLDEN_PROMPT_LENGTHS = (7, 4)


@dataclass(frozen=True)
class DecoderInfo:
    """What generating needs beyond the graph: layers and the special tokens."""

    layers: int
    pad_token_id: int
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "pad_token_id": self.pad_token_id,
            "eos_token_ids": list(self.eos_token_ids),
            "bos_token_id": self.bos_token_id,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecoderInfo:
        return cls(
            int(data["layers"]),
            int(data["pad_token_id"]),
            tuple(int(t) for t in data.get("eos_token_ids") or ()),
            data.get("bos_token_id"),
        )


def cache_names(layers: int) -> list[tuple[str, str, str, str]]:
    """(past key, past value, present key, present value) per layer."""
    return [
        (
            f"past_key_values.{i}.key",
            f"past_key_values.{i}.value",
            f"present.{i}.key",
            f"present.{i}.value",
        )
        for i in range(layers)
    ]


def special_tokens(
    config: Mapping[str, Any], generation: Mapping[str, Any]
) -> tuple[int, list[int], int | None]:
    """(pad, eos ids, bos) as transformers' generate() uses them: generation_config.json
    first, then config.json; no pad token means the first eos token (else 0)."""

    def pick(key: str) -> Any:
        value = generation.get(key)
        return config.get(key) if value is None else value

    eos = pick("eos_token_id")
    eos_ids = [] if eos is None else [int(e) for e in (eos if isinstance(eos, list) else [eos])]
    pad = pick("pad_token_id")
    pad_id = int(pad) if pad is not None else (eos_ids[0] if eos_ids else 0)
    bos = pick("bos_token_id")
    return pad_id, eos_ids, None if bos is None else int(bos)


def decoder_inputs(
    config: Mapping[str, Any], forward_args: set[str], layout: Sequence[tuple[int, int]]
) -> tuple[list[InputDecl], list[str], dict[str, int]]:
    """(inputs, outputs, limits) of the graph for a model whose cache holds, per layer,
    (kv_heads, head_dim) = `layout[i]`."""
    vocab = int(config["vocab_size"])
    positions = position_limit(config)
    inputs = [
        InputDecl(
            "input_ids", "int64", ("batch", "sequence"), "token_ids", min(1000, vocab // 2), vocab
        ),
        InputDecl("attention_mask", "int64", ("batch", "total_sequence"), "mask"),
    ]
    if "position_ids" in forward_args:
        inputs.append(
            InputDecl(
                "position_ids", "int64", ("batch", "sequence"), "positions", 0, positions or 0
            )
        )
    outputs = ["logits"]
    for (past_k, past_v, present_k, present_v), (heads, dim) in zip(
        cache_names(len(layout)), layout, strict=True
    ):
        axes = ("batch", heads, "past_sequence", dim)
        inputs += [
            InputDecl(past_k, CACHE_DTYPE, axes, "zeros"),
            InputDecl(past_v, CACHE_DTYPE, axes, "zeros"),
        ]
        outputs += [present_k, present_v]
    limits = {} if positions is None else {"sequence": positions, "total_sequence": positions}
    return inputs, outputs, limits


def decoder_tolerance() -> Tolerance:
    return Tolerance(atol=1e-4)
