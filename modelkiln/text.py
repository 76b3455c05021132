"""Text in and out of a decoder artifact, with the tokenizer.json it ships.

Uses the `tokenizers` library (no transformers, no torch), loaded only when text is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelkiln.errors import UserInputError

TOKENIZER = "tokenizer.json"


class TextCodec:
    """Encode prompts as the checkpoint's tokenizer does (special tokens included) and decode
    generated ids back to text."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

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

    def decode(self, ids: list[int]) -> str:
        return str(self._tokenizer.decode(ids, skip_special_tokens=True))
