"""Peer subjects of `kiln bench`: plain ONNX graphs made by other tools (Optimum, onnxscript's
fusions, ...), run by ONNX Runtime beside the artifacts.

A peer is what a user of that tool would run: the graph as the tool wrote it, in an
`InferenceSession` with every graph optimization on (ORT_ENABLE_ALL) and the same intra-op
thread count as every other subject. It gets the very same feeds as the first artifact;
inputs the graph does not take (a BERT exported without token_type_ids, say) are left out,
and integer inputs are cast when the graph declares another width. A graph input the feeds
do not have is refused: there is nothing fair to feed it.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.benchmark.measure import PeakMeter, mb, rss
from modelkiln.errors import BackendUnavailable, UserInputError, first_line
from modelkiln.tensors import Runner

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


def parse_peer(text: str) -> tuple[str, Path]:
    """`"optimum-O2=out/model.onnx"` -> ("optimum-O2", Path("out/model.onnx"))."""
    name, sep, path = text.partition("=")
    name, path = name.strip(), path.strip()
    if not sep or not path or not NAME.match(name):
        raise UserInputError(
            f"--peer {text!r}: write it as NAME=PATH.onnx, e.g. optimum-O2=out/model.onnx "
            "(NAME: letters, digits, '.', '_', '+', '-')"
        )
    return name, Path(path)


def check_peers(
    peers: Mapping[str, str | os.PathLike[str]], taken: Sequence[str]
) -> dict[str, Path]:
    """Every peer names an existing .onnx file and an id no other subject has; before any
    load, so a typo costs nothing."""
    checked: dict[str, Path] = {}
    for name, raw in peers.items():
        path = Path(raw)
        if not NAME.match(name):
            raise UserInputError(
                f"--peer {name}={raw}: the name may hold letters, digits, '.', '_', '+', '-'"
            )
        if name in taken:
            raise UserInputError(
                f"--peer {name}={raw}: '{name}' is already the id of another subject; "
                "give the peer another name"
            )
        if not path.exists():
            raise UserInputError(f"--peer {name}={raw}: no such file")
        if not path.is_file() or path.suffix != ".onnx":
            raise UserInputError(f"--peer {name}={raw}: give an .onnx file")
        checked[name] = path
    return checked


def load_peer(
    name: str,
    path: Path,
    feeds: Mapping[str, np.ndarray],
    threads: int,
    meter: PeakMeter,
) -> tuple[dict[str, Any], Runner]:
    """Info and runner of one peer graph; `feeds` is one configuration's feeds, to settle
    which inputs the graph takes (`_base`: RSS before the load, in bytes)."""
    start = time.perf_counter()
    try:
        import onnxruntime as ort
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        raise BackendUnavailable("--peer needs onnxruntime: pip install onnxruntime") from None
    import_s = time.perf_counter() - start
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 4  # failures surface as exceptions
    base = rss() or 0
    meter.start()
    begin = time.perf_counter()
    try:
        session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types per failure
        raise UserInputError(
            f"--peer {name}={path}: onnxruntime cannot load it: {first_line(exc)}"
        ) from None
    load_s = time.perf_counter() - begin
    peak, after = meter.peak_since_start(), rss()
    inputs = {i.name: i.type for i in session.get_inputs()}
    missing = [n for n in inputs if n not in feeds]
    if missing:
        raise UserInputError(
            f"--peer {name}={path}: the graph takes input(s) {', '.join(missing)}, which the "
            f"artifacts do not (they take {', '.join(feeds)})"
        )
    casts = {n: ORT_TYPES[t] for n, t in inputs.items() if t in ORT_TYPES}
    outputs = [o.name for o in session.get_outputs()]

    def run(given: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        chosen = {}
        for n in inputs:
            value = given[n]
            want = casts.get(n)
            chosen[n] = value if want is None or value.dtype == want else value.astype(want)
        try:
            values = session.run(outputs, chosen)
        except Exception as exc:  # ORT raises its own exception types per failure
            shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in chosen.items())
            raise UserInputError(
                f"--peer {name}={path}: onnxruntime failed on {shapes}: {first_line(exc)}"
            ) from None
        return dict(zip(outputs, values, strict=True))

    info = {
        "id": name,
        "kind": "peer",
        "path": str(path.resolve()),
        "runtime": f"onnxruntime {ort.__version__}, ORT_ENABLE_ALL, CPUExecutionProvider",
        "inputs": list(inputs),
        "inputs_left_out": [n for n in feeds if n not in inputs],
        "outputs": outputs,
        "threads": threads,
        "import_s": round(import_s, 3),
        "load_s": round(load_s, 3),
        "load_rss_mb": mb(None if after is None else after - base),
        "load_peak_rss_mb": mb(None if peak is None else peak - base),
        "_base": base,
    }
    return info, run
