"""The arithmetic `benchmarks/minilm.py` divides by: BERT forward FLOPs against a hand count,
which peak a subject is held to, and that the peak kernel's C source still compiles."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import flops  # noqa: E402
import peak  # noqa: E402


def test_bert_flops_against_a_hand_count() -> None:
    config = {"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 2}
    # one layer, batch 1, 3 tokens, in multiply-adds:
    #   per token: q, k, v, o 4 × (4·4) = 64; feed-forward up 4·8 = 32, down 8·4 = 32 -> 128
    #   3 tokens -> 384; scores 3·3·4 = 36 and context 3·3·4 = 36 -> 72; layer 456 MACs
    layer_macs = 3 * (4 * 16 + 32 + 32) + 36 + 36
    assert flops.bert_forward_flops(config, batch=1, seq=3) == 2 * 2 * layer_macs == 1824
    assert flops.bert_forward_flops(config, batch=5, seq=3) == 5 * 1824  # linear in batch
    # attention grows with the square of the sequence, projections linearly
    one, two = (flops.bert_layer_flops(4, 8, 1, s) for s in (3, 6))
    assert two - 2 * one == 2 * 2 * (6 * 6 - 2 * 3 * 3) * 4  # 2·2·(S₂² - 2·S₁²)·H


def test_minilm_forward_is_about_three_gflop_at_128_tokens() -> None:
    minilm = {"hidden_size": 384, "intermediate_size": 1536, "num_hidden_layers": 6}
    assert flops.bert_forward_flops(minilm, 1, 128) == 2_868_903_936


def test_fraction_of_peak_and_which_peak() -> None:
    assert flops.fraction_of_peak(2 * 10**9, 0.01, 400.0) == pytest.approx(0.5)
    assert flops.fraction_of_peak(10**9, 0.01, None) is None
    assert flops.peak_kind("int8-dynamic") == flops.peak_kind("int8-static") == "int8"
    for precision in ("fp32", "fp16", "int8-weights", "int4-weights", None):
        assert flops.peak_kind(precision) == "fp32"
    assert flops.peak_kind("bf16") == flops.peak_kind("fp32", runs_as="bf16") == "bf16"
    assert flops.peak_kind("bf16", runs_as="fp32") == "fp32"  # a CPU without bf16 runs f32
    assert flops.peak_kind("int8-static", runs_as="fp32") == "int8"


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_peak_kernel_compiles_and_reports_json(tmp_path: Path) -> None:
    if not {"avx2", "fma"} <= peak.cpu_flags():
        pytest.skip("this CPU lacks AVX2/FMA")
    binary = peak.compile_kernel(tmp_path)
    result = peak.run_kind(binary, "fp32", 1, 0.01)
    assert set(result) == {"kind", "threads", "ops", "seconds", "gops"}
    assert result["kind"] == "fp32" and result["threads"] == 1 and result["ops"] > 0
    bad = subprocess.run([str(binary), "nope", "1", "1"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown kind" in bad.stderr
    json.dumps(result)
