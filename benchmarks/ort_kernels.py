"""ONNX Runtime's CPU normalization kernels: fused Skip*Normalization against Add + the plain norm.

Why the onnxruntime backend leaves residual add + LayerNorm unfused for the CPU execution
provider (backends/onnxruntime/fusions.py). Each pair computes the same thing on MiniLM-sized
tensors (hidden 384, and 576 for the RMSNorm pair, as SmolLM); sessions run with every graph
optimization off so each subject is the kernel named, 2 threads, interleaved rounds (the host
is noisy: compare the ratio). Writes benchmarks/results/ort_kernels.{json,md}.

    .venv/bin/python benchmarks/ort_kernels.py [--rounds 5] [--min-time 0.5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, git_revision, machine_info, write_json  # noqa: E402

SHAPES = ((1, 16), (1, 128), (32, 16), (32, 128))
# name: (hidden size, fused op, the unfused pair's norm op, its domain, has beta)
PAIRS = {
    "LayerNorm": (384, "SkipLayerNormalization", "LayerNormalization", "", True),
    "RMSNorm": (576, "SkipSimplifiedLayerNormalization", "SimplifiedLayerNormalization", "", False),
}


def _model(pair: str, fused: bool, batch: int, seq: int) -> bytes:
    hidden, fused_op, norm_op, domain, beta = PAIRS[pair]
    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.random(hidden, dtype=np.float32), "gamma")]
    if beta:
        weights.append(numpy_helper.from_array(rng.random(hidden, dtype=np.float32), "beta"))
    norm_inputs = ["gamma", "beta"] if beta else ["gamma"]
    if fused:
        nodes = [
            helper.make_node(
                fused_op, ["x", "skip", *norm_inputs], ["y"], domain="com.microsoft", epsilon=1e-6
            )
        ]
    else:
        nodes = [
            helper.make_node("Add", ["x", "skip"], ["sum"]),
            helper.make_node(norm_op, ["sum", *norm_inputs], ["y"], axis=-1, epsilon=1e-6),
        ]
    shape = [batch, seq, hidden]
    graph = helper.make_graph(
        nodes,
        "norm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n in ("x", "skip")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        weights,
    )
    opsets = [helper.make_opsetid("", 18), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    return model.SerializeToString()


def _session(data: bytes, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def measure(pair: str, batch: int, seq: int, rounds: int, min_time: float, threads: int) -> dict:
    hidden = PAIRS[pair][0]
    rng = np.random.default_rng(1)
    feeds = {n: rng.standard_normal((batch, seq, hidden), dtype=np.float32) for n in ("x", "skip")}
    sessions = {
        kind: _session(_model(pair, kind == "fused", batch, seq), threads)
        for kind in ("fused", "unfused")
    }
    outputs = {kind: s.run(None, feeds)[0] for kind, s in sessions.items()}
    medians: dict[str, list[float]] = {"fused": [], "unfused": []}
    for _ in range(rounds):
        for kind, session in sessions.items():
            times, end = [], time.perf_counter() + min_time / rounds
            while time.perf_counter() < end or len(times) < 5:
                start = time.perf_counter()
                session.run(None, feeds)
                times.append(time.perf_counter() - start)
            medians[kind].append(statistics.median(times) * 1e3)
    fused, unfused = (statistics.median(medians[k]) for k in ("fused", "unfused"))
    return {
        "pair": pair,
        "batch": batch,
        "seq": seq,
        "fused_op": PAIRS[pair][1],
        "fused_ms": round(fused, 4),
        "unfused_ms": round(unfused, 4),
        "fused_over_unfused": round(fused / unfused, 3),
        "max_abs_diff": float(np.abs(outputs["fused"] - outputs["unfused"]).max()),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| norm | batch × seq | fused op ms | Add + norm ms | fused / unfused | max abs diff |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['pair']} ({r['fused_op']}) | {r['batch']}×{r['seq']} | {r['fused_ms']:.3f} | "
            f"{r['unfused_ms']:.3f} | {r['fused_over_unfused']:.2f} | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-time", type=float, default=0.5, help="seconds per subject")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", type=Path, default=RESULTS / "ort_kernels.json")
    args = parser.parse_args()
    rows = [
        measure(pair, b, s, args.rounds, args.min_time, args.threads)
        for pair in PAIRS
        for b, s in SHAPES
    ]
    table = markdown(rows)
    print(table)
    write_json(
        args.output,
        {
            "rows": rows,
            "threads": args.threads,
            "rounds": args.rounds,
            "machine": machine_info(("onnxruntime", "numpy")),
            "git": git_revision(),
        },
    )
    args.output.with_suffix(".md").write_text(table)


if __name__ == "__main__":
    main()
