"""What a Hugging Face `config.json` says about the inputs a model takes."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def position_limit(config: Mapping[str, Any]) -> int | None:
    """The longest sequence the model takes (its position embeddings), if it says."""
    positions = config.get("max_position_embeddings", config.get("n_positions"))
    if not isinstance(positions, int) or isinstance(positions, bool) or positions <= 0:
        return None
    if "roberta" in str(config.get("model_type")):  # positions start after the padding index
        positions -= int(config.get("pad_token_id") or 0) + 1
    return max(positions, 2)
