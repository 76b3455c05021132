"""Text in and out of an artifact, with the tokenizer.json it ships: prompts and generated
text for decoders, padded batches of sentences for encoders (`kiln serve`'s text input).

Uses the `tokenizers` library (no transformers, no torch), loaded only when text is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.errors import UserInputError

TOKENIZER = "tokenizer.json"


class TextCodec:
    """Encode prompts as the checkpoint's tokenizer does (special tokens included) and decode
    generated ids back to text."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer
        self._padded: Any = None

    @classmethod
    def open(cls, artifact: Path) -> TextCodec:
        path = Path(artifact) / TOKENIZER
        if not path.is_file():
            raise UserInputError(
                f"{artifact} has no {TOKENIZER} (the checkpoint had none), so it takes token "
                "ids only (kiln generate --ids 1,2,3; Session.generate([[1, 2, 3]]))"
            )
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UserInputError(
                "text prompts need the tokenizers package: pip install tokenizers (or pass "
                "token ids with --ids)"
            ) from None
        try:
            return cls(Tokenizer.from_file(str(path)))
        except Exception as exc:  # the tokenizers library raises its own exception type
            raise UserInputError(f"{path} does not load as a tokenizer: {exc}") from None

    def encode(self, text: str) -> list[int]:
        ids = list(self._tokenizer.encode(text).ids)
        if not ids:
            raise UserInputError(f"the prompt {text!r} encodes to no tokens")
        return ids

    def encode_batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        """`input_ids`, `attention_mask` and `token_type_ids` (int64) for `texts`, padded to
        the longest of them with the tokenizer's own pad token (its truncation applies, its
        fixed-length padding does not: short batches stay short)."""
        if self._padded is None:
            padded = type(self._tokenizer).from_str(self._tokenizer.to_str())
            config = padded.padding or {}
            padded.no_padding()
            padded.enable_padding(
                pad_id=int(config.get("pad_id", 0)),
                pad_type_id=int(config.get("pad_type_id", 0)),
                pad_token=str(config.get("pad_token", "[PAD]")),
            )
            self._padded = padded
        encodings = self._padded.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64),
        }

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))
