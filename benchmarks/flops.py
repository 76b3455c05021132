"""Arithmetic of one BERT encoder forward pass, and the fraction of the machine's peak a
measured latency reaches.

Counted, per layer, as multiply-adds × 2 (B: batch, S: sequence, H: hidden size, I:
intermediate size):

- projections: 2·B·S·(4·H² + 2·H·I): query, key, value and attention output (H × H each),
  and the feed-forward up (H × I) and down (I × H) matrices;
- attention: 2·2·B·S²·H: the scores Q·Kᵀ and the context P·V, over all heads together.

Not counted: embeddings (lookups), biases, layer norms, softmax, GELU, residual adds and
the pooler: a few percent at these sizes, and not multiply-add work. Every subject does
at least this much arithmetic, so the fraction of peak undercounts all of them alike.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def bert_layer_flops(hidden: int, intermediate: int, batch: int, seq: int) -> int:
    tokens = batch * seq
    projections = 2 * tokens * (4 * hidden * hidden + 2 * hidden * intermediate)
    attention = 2 * 2 * batch * seq * seq * hidden
    return projections + attention


def bert_forward_flops(config: Mapping[str, Any], batch: int, seq: int) -> int:
    """FLOPs of the encoder stack for `config` (a Hugging Face config.json as a dict)."""
    layer = bert_layer_flops(
        int(config["hidden_size"]), int(config["intermediate_size"]), batch, seq
    )
    return int(config["num_hidden_layers"]) * layer


def read_config(checkpoint: str | Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((Path(checkpoint) / "config.json").read_text())
    return data


def peak_kind(precision: str | None, runs_as: str | None = None) -> str:
    """Which peak a subject is held to: int8 for int8 compute (dynamic or static
    quantization), bf16 where the subject computes in bf16 (`runs_as`: the inference
    precision its runtime reports, e.g. OpenVINO's default on CPUs with AVX512-BF16), fp32
    for everything else (weight-only int8/int4 dequantizes to float)."""
    p = (precision or "fp32").lower()
    if p.startswith("int8") and "weights" not in p:
        return "int8"
    ran = (runs_as or p).lower()
    return "bf16" if ran == "bf16" else "fp32"


def fraction_of_peak(flops: int, seconds: float, peak_gops: float | None) -> float | None:
    if not peak_gops or seconds <= 0:
        return None
    return flops / seconds / (peak_gops * 1e9)
