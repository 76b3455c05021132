"""Builds the peer graphs `peers.py` times, one per process, as their tools' users would.

    python benchmarks/peer_export.py onnxscript CHECKPOINT OUT.onnx
    python benchmarks/peer_export.py transformers CHECKPOINT OUT.onnx
    python benchmarks/peer_export.py check CHECKPOINT NAME=PATH.onnx ...

- `onnxscript`: `torch.onnx.export(..., dynamo=True)` of the checkpoint's AutoModel
  (returning `last_hidden_state`), then `onnxscript.rewriter.ort_fusions.optimize_for_ort`;
- `transformers`: `transformers.exporters.OnnxExporter` with `OnnxConfig(dynamic=True,
  ort_fusions="cpu")` (transformers >= 5.24), the model built without its pooler so that it
  returns `last_hidden_state` only, like the artifacts;
- `check`: each graph in ONNX Runtime against PyTorch eager on one feed (batch 2 × 16
  tokens, attention mask of ones): the largest absolute difference of `last_hidden_state`.

Each prints one JSON line on stdout; an export that cannot run here exits 3 with the reason
on stderr (so `peers.py` skips it with that reason).
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

BATCH, SEQ = 2, 16


def sample(config: Any) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(1000, int(config.vocab_size), (BATCH, SEQ), dtype=np.int64)
    return {
        "input_ids": ids,
        "attention_mask": np.ones_like(ids),
        "token_type_ids": np.zeros_like(ids),
    }


def torch_inputs(feeds: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def load_model(checkpoint: str, pooler: bool = True) -> Any:
    from transformers import AutoModel

    if not pooler:
        try:
            return AutoModel.from_pretrained(checkpoint, add_pooling_layer=False).eval()
        except TypeError:  # a model class without a pooler option
            pass
    return AutoModel.from_pretrained(checkpoint).eval()


def export_onnxscript(checkpoint: str, out: Path) -> dict[str, Any]:
    import onnx_ir
    import torch
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = load_model(checkpoint)

    class LastHiddenState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            return self.model(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    feeds = sample(model.config)
    axes = {name: {0: "batch", 1: "sequence"} for name in feeds}
    start = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            LastHiddenState().eval(),
            (),
            kwargs=torch_inputs(feeds),
            dynamo=True,
            dynamic_shapes=axes,
            input_names=list(feeds),
            output_names=["last_hidden_state"],
            optimize=True,
            verbose=False,
        )
    traced = time.perf_counter() - start
    assert program is not None
    start = time.perf_counter()
    fused, counts = optimize_for_ort(program.model)
    fusing = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx_ir.save(fused, str(out))
    return {
        "stages": {"torch.onnx.export": round(traced, 3), "optimize_for_ort": round(fusing, 3)},
        "fusions": {k: v for k, v in counts.items() if v},
    }


def export_transformers(checkpoint: str, out: Path) -> dict[str, Any]:
    import transformers

    try:
        from transformers.exporters import OnnxConfig, OnnxExporter
    except ImportError:
        print(
            f"transformers {transformers.__version__} has no transformers.exporters (new in 5.24)",
            file=sys.stderr,
        )
        raise SystemExit(3) from None
    model = load_model(checkpoint, pooler=False)
    feeds = sample(model.config)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exported = OnnxExporter().export(
            model, torch_inputs(feeds), OnnxConfig(dynamic=True, ort_fusions="cpu")
        )
    seconds = time.perf_counter() - start
    out.parent.mkdir(parents=True, exist_ok=True)
    OnnxExporter.save_program(exported.program, out)
    return {"stages": {"OnnxExporter.export (ort_fusions=cpu)": round(seconds, 3)}}


def check(checkpoint: str, peers: list[str]) -> dict[str, Any]:
    import onnxruntime as ort
    import torch

    model = load_model(checkpoint)
    feeds = sample(model.config)
    with torch.inference_mode():
        reference = model(**torch_inputs(feeds)).last_hidden_state.numpy()
    result: dict[str, Any] = {}
    for item in peers:
        name, _, path = item.partition("=")
        try:
            session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
            taken = [i.name for i in session.get_inputs()]
            names = [o.name for o in session.get_outputs()]
            outputs = dict(zip(names, session.run(None, {k: feeds[k] for k in taken}), strict=True))
        except Exception as exc:  # noqa: BLE001  (ORT's own exception types)
            result[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            continue
        got = outputs.get("last_hidden_state", outputs[names[0]])
        if got.shape != reference.shape:
            result[name] = {
                "error": f"output shape {list(got.shape)}, PyTorch gives {list(reference.shape)}"
            }
            continue
        diff = float(np.max(np.abs(got.astype(np.float64) - reference)))
        result[name] = {"max_abs_diff": float(f"{diff:.3g}"), "inputs": taken}
    return result


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[1] not in ("onnxscript", "transformers", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    kind, checkpoint = sys.argv[1], sys.argv[2]
    if kind == "check":
        print(json.dumps(check(checkpoint, sys.argv[3:])))
        return 0
    build = export_onnxscript if kind == "onnxscript" else export_transformers
    print(json.dumps(build(checkpoint, Path(sys.argv[3]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
