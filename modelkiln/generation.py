"""Text generation over a decoder artifact's Session: prefill, then one token per step with
the key/value cache fed back, torch-free.

The graph takes `input_ids` [batch, sequence], `attention_mask` [batch, past + sequence],
`position_ids` [batch, sequence] and per layer `past_key_values.{i}.key|value`
[batch, kv_heads, past, head_dim]; it returns `logits` [batch, sequence, vocab] and
`present.{i}.key|value` [batch, kv_heads, past + sequence, head_dim]. The same graph does the
prefill (past length 0). Prompts are left-padded, and positions and masks are made exactly as
transformers' `generate` makes them, so greedy decoding gives the same tokens.

How the cache travels between steps is the session's business (`Session.cache_stepper`):
the base session passes numpy arrays; ONNX Runtime keeps them as its own buffers (IOBinding),
so the cache is never copied into Python between steps.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from modelkiln.errors import FeedError, UserInputError
from modelkiln.manifest import DecoderSection
from modelkiln.sampling import Sampling, TokenChooser
from modelkiln.tensors import Runner, TensorSpec

Streamer = Callable[[np.ndarray], None]  # called with each step's new token per row


class CacheStepper(Protocol):
    """Runs a decoder one call at a time, keeping its key/value cache between calls; each
    call returns the last position's logits [batch, vocab]."""

    def prefill(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray: ...

    def next(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray: ...


class Decodable(Protocol):
    """What generation needs of a session (`modelkiln.backends.base.Session` has it)."""

    artifact: Any

    def cache_stepper(self, decoder: DecoderSection) -> CacheStepper: ...


@dataclass
class Generated:
    """`sequences`: prompt (left-padded) and new tokens per row; `prompt_length`: the padded
    prompt's length; `text`: each row's new tokens decoded, when the prompts were text."""

    sequences: np.ndarray
    prompt_length: int
    text: list[str] | None = None

    @property
    def new_tokens(self) -> np.ndarray:
        return self.sequences[:, self.prompt_length :]


def left_pad(
    prompts: Sequence[Sequence[int]] | np.ndarray, pad_token_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """Token id lists of different lengths as one left-padded batch and its mask."""
    if isinstance(prompts, np.ndarray) and prompts.ndim == 1:
        prompts = prompts[None, :]  # one prompt
    elif any(isinstance(p, int | np.integer) for p in prompts):
        raise UserInputError(
            "give the prompts as a list of token-id lists, one per row (a single prompt: "
            "[[1, 2, 3]]), not a flat list of ids"
        )
    rows = [_int_row(p) for p in prompts]
    if not rows or any(r.size == 0 for r in rows):
        raise UserInputError("give at least one prompt, each of at least one token")
    width = max(r.size for r in rows)
    ids = np.full((len(rows), width), pad_token_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, width - row.size :] = row
        mask[i, width - row.size :] = 1
    return ids, mask


def _int_row(prompt: Sequence[int] | np.ndarray) -> np.ndarray:
    row = np.asarray(prompt)
    if row.size and row.dtype.kind not in "iu":
        raise UserInputError(f"token ids must be integers, got {row.dtype} ({row.ravel()[:4]} ...)")
    return row.astype(np.int64).reshape(-1)


def positions(mask: np.ndarray) -> np.ndarray:
    """Position ids for a left-padded mask: 0.. on real tokens, 0 on padding, as transformers
    5.24's `generate` makes them (older versions put 1 there; padding is masked either way)."""
    pos = np.cumsum(mask, axis=-1) - 1
    return np.where(mask == 0, 0, pos).astype(np.int64)


def generate(
    session: Decodable,
    input_ids: Sequence[Sequence[int]] | np.ndarray,
    attention_mask: np.ndarray | None = None,
    *,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    streamer: Streamer | None = None,
) -> Generated:
    """Generate up to `max_new_tokens` per row (rows that produced an end-of-sequence token
    continue with the pad token, as in transformers). `input_ids` is a list of prompts of any
    lengths (left-padded here), or a left-padded array with its `attention_mask`.
    `eos_token_id` defaults to the artifact's; pass [] to never stop early."""
    decoder = session.artifact.manifest.decoder
    if decoder is None:
        raise UserInputError(
            f"{session.artifact.path} is a {session.artifact.manifest.task} artifact, not a "
            "text-generation one: it has no key/value cache to generate with"
        )
    return generate_with(
        session.cache_stepper(decoder),
        decoder,
        input_ids,
        attention_mask,
        max_new_tokens=max_new_tokens,
        sampling=sampling,
        eos_token_id=eos_token_id,
        streamer=streamer,
    )


def generate_with(
    step: CacheStepper,
    decoder: DecoderSection,
    input_ids: Sequence[Sequence[int]] | np.ndarray,
    attention_mask: np.ndarray | None = None,
    *,
    max_new_tokens: int,
    sampling: Sampling | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    streamer: Streamer | None = None,
) -> Generated:
    """`generate` over any cache stepper (a session's, or a reference model's runner)."""
    if max_new_tokens < 1:
        raise UserInputError(f"max new tokens must be at least 1, got {max_new_tokens}")
    if attention_mask is None:
        ids, mask = left_pad(input_ids, decoder.pad_token_id)
    else:
        ids, mask = np.asarray(input_ids), np.asarray(attention_mask)
        _check_padded(ids, mask)
    stops = decoder.eos_token_ids if eos_token_id is None else _ids(eos_token_id)
    check_room(ids.shape[1], max_new_tokens, decoder.max_positions)
    choose = TokenChooser(sampling or Sampling())
    logits = step.prefill(ids, mask, positions(mask))
    sequences = ids
    finished = np.zeros(ids.shape[0], dtype=bool)
    pos = positions(mask)[:, -1:]
    for done in range(1, max_new_tokens + 1):
        token = choose(sequences, logits)
        token = np.where(finished, decoder.pad_token_id, token).astype(np.int64)
        sequences = np.concatenate([sequences, token[:, None]], axis=1)
        if streamer is not None:
            streamer(token)
        finished |= np.isin(token, stops)
        if finished.all() or done == max_new_tokens:
            break
        mask = np.concatenate([mask, np.ones((mask.shape[0], 1), dtype=mask.dtype)], axis=1)
        pos = pos + 1
        logits = step.next(token[:, None], mask, pos)
    return Generated(sequences, ids.shape[1])


def check_room(prompt: int, new: int, limit: int | None, flag: str = "max new tokens") -> None:
    """The last new token is never fed back, so a prompt of `prompt` tokens leaves room for
    `limit - prompt + 1` new ones."""
    if limit is not None and prompt + new - 1 > limit:
        raise UserInputError(
            f"a prompt of {prompt} tokens plus {new} new ones exceeds the model's {limit} "
            f"positions; shorten the prompt or ask for at most {max(limit - prompt + 1, 0)} "
            f"new tokens ({flag})"
        )


def _check_padded(ids: np.ndarray, mask: np.ndarray) -> None:
    """A batch given with its mask: [batch, sequence] integers, left-padded, every row with
    a token (generation continues after each row's last position)."""
    if ids.shape != mask.shape or ids.ndim != 2 or ids.shape[1] == 0:
        raise FeedError(
            f"input_ids {list(ids.shape)} and attention_mask {list(mask.shape)} must both be "
            "[batch, sequence] with at least one token"
        )
    if ids.dtype.kind not in "iu":
        raise FeedError(f"input_ids must be integer token ids, got {ids.dtype}")
    last = np.flatnonzero(mask[:, -1] == 0)
    if last.size:
        raise FeedError(
            f"attention_mask of row {int(last[0])} ends in padding; generation needs prompts "
            "padded on the left (the last column all ones)"
        )


def _ids(value: int | Sequence[int]) -> list[int]:
    return [int(value)] if isinstance(value, int | np.integer) else [int(v) for v in value]


class ArrayCacheStepper:
    """The cache as numpy arrays passed through `run` (a session's checks every step, or a
    reference model's runner)."""

    def __init__(
        self, inputs: Mapping[str, TensorSpec], run: Runner, decoder: DecoderSection
    ) -> None:
        self.inputs = inputs
        self.run = run
        self.decoder = decoder
        self.cache: dict[str, np.ndarray] = {}

    def prefill(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        self.cache = empty_cache(self.inputs, self.decoder, ids.shape[0])
        return self.next(ids, mask, pos)

    def next(self, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray) -> np.ndarray:
        feeds = {**step_feeds(self.inputs, ids, mask, pos), **self.cache}
        out = self.run(feeds)
        self.cache = {}
        for layer in self.decoder.layers:
            self.cache[layer.past_key] = out[layer.present_key]
            self.cache[layer.past_value] = out[layer.present_value]
        return out["logits"][:, -1]


def step_feeds(
    inputs: Mapping[str, TensorSpec], ids: np.ndarray, mask: np.ndarray, pos: np.ndarray
) -> dict[str, np.ndarray]:
    """A step's token inputs (position ids only for models that take them, e.g. not BLOOM)."""
    feeds = {"input_ids": ids, "attention_mask": mask}
    if "position_ids" in inputs:
        feeds["position_ids"] = pos
    return feeds


def empty_cache(
    inputs: Mapping[str, TensorSpec], decoder: DecoderSection, batch: int
) -> dict[str, np.ndarray]:
    """A past of length 0 for every cache input: the same graph then does the prefill."""
    cache = {}
    for layer in decoder.layers:
        for name in (layer.past_key, layer.past_value):
            spec = inputs[name]
            _, heads, _, dim = spec.shape  # [batch, kv_heads, past, head_dim]
            cache[name] = np.zeros((batch, int(heads), 0, int(dim)), dtype=spec.dtype)
    return cache


def check_generation(session: Decodable, golden: dict[str, Any]) -> dict[str, Any]:
    """Greedy generation on the golden prompts must give exactly the recorded tokens (the
    reference's own, e.g. transformers' generate); every differing prompt is listed."""
    got = generate(
        session,
        golden["prompts"],
        max_new_tokens=int(golden["max_new_tokens"]),
        eos_token_id=golden.get("eos_token_ids", []),
    ).sequences
    expected = np.asarray(golden["sequences"], dtype=np.int64)
    reference = golden.get("reference", "the reference")
    failures = []
    if got.shape != expected.shape:
        failures.append(
            f"generation: {got.shape[1]} tokens per row where {reference} made {expected.shape[1]}"
        )
    else:
        for row, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
            differ = np.flatnonzero(ours != theirs)
            if differ.size:
                at = int(differ[0])
                failures.append(
                    f"generation of prompt {row}: token {at} is {int(ours[at])} where "
                    f"{reference} has {int(theirs[at])} ({differ.size} tokens differ)"
                )
    return {
        "passed": not failures,
        "prompts": len(golden["prompts"]),
        "max_new_tokens": int(golden["max_new_tokens"]),
        "reference": reference,
        "failures": failures,
    }
