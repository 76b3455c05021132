"""Choosing the next token from logits, in numpy, the way transformers' `generate` does.

Greedy decoding takes the arg-max (ties: the lowest id, as torch.argmax). Sampling applies,
in transformers' order, the repetition penalty, the temperature, top-k (50 unless given, as
transformers defaults) and top-p, then draws from the softmax with a seeded numpy generator
(the draws differ from torch's, the distribution does not).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modelkiln.errors import UserInputError

DEFAULT_TOP_K = 50  # transformers' generate() samples from the 50 most likely by default


@dataclass(frozen=True)
class Sampling:
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.do_sample and not self.temperature > 0:
            raise UserInputError(
                f"temperature must be above 0 when sampling, got {self.temperature}"
            )
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserInputError(f"top-p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise UserInputError(f"top-k must be at least 1, got {self.top_k}")
        if self.repetition_penalty is not None and not self.repetition_penalty > 0:
            raise UserInputError(
                f"repetition penalty must be above 0, got {self.repetition_penalty}"
            )

    def to_json(self) -> dict[str, object]:
        return {
            "do_sample": self.do_sample,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
            "seed": self.seed,
        }


class TokenChooser:
    """The next token per row from the last position's logits [batch, vocab]."""

    def __init__(self, sampling: Sampling) -> None:
        self.sampling = sampling
        self.rng = np.random.default_rng(sampling.seed)

    def __call__(self, sequences: np.ndarray, logits: np.ndarray) -> np.ndarray:
        scores = logits.astype(np.float32, copy=True)
        s = self.sampling
        if s.repetition_penalty is not None and s.repetition_penalty != 1.0:
            scores = repetition_penalty(scores, sequences, s.repetition_penalty)
        if not s.do_sample:
            return scores.argmax(axis=-1).astype(np.int64)
        if s.temperature != 1.0:
            scores = scores / np.float32(s.temperature)
        scores = top_k(scores, DEFAULT_TOP_K if s.top_k is None else s.top_k)
        if s.top_p is not None and s.top_p < 1.0:
            scores = top_p(scores, s.top_p)
        probs = softmax(scores)
        return np.array([self.rng.choice(probs.shape[-1], p=row) for row in probs], dtype=np.int64)


def repetition_penalty(scores: np.ndarray, sequences: np.ndarray, penalty: float) -> np.ndarray:
    """Every id already in the row: positive logits divided by `penalty`, negative ones
    multiplied (transformers' RepetitionPenaltyLogitsProcessor)."""
    out = scores.copy()
    rows = np.arange(scores.shape[0])[:, None]
    ids = np.clip(sequences, 0, scores.shape[-1] - 1)
    seen = scores[rows, ids]
    out[rows, ids] = np.where(seen < 0, seen * penalty, seen / penalty)
    return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, scores.shape[-1])
    kth = np.sort(scores, axis=-1)[:, -k][:, None]
    return np.where(scores < kth, -np.inf, scores)


def top_p(scores: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability reaches `p` (at least
    one)."""
    order = np.argsort(scores, axis=-1, kind="stable")  # ascending, as transformers sorts
    ascending = np.take_along_axis(scores, order, axis=-1)
    cumulative = np.cumsum(softmax(ascending), axis=-1)
    remove_sorted = cumulative <= (1 - p)
    remove_sorted[:, -1] = False
    remove = np.zeros_like(remove_sorted)
    np.put_along_axis(remove, order, remove_sorted, axis=-1)
    return np.where(remove, -np.inf, scores)


def softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max(axis=-1, keepdims=True)
    e = np.exp(shifted.astype(np.float64))
    return e / e.sum(axis=-1, keepdims=True)
