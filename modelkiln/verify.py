"""`kiln validate`: file hashes, golden replay through the runtime, fresh reference run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelkiln.artifact import GOLDEN, Artifact, verify_files
from modelkiln.backends.base import Session
from modelkiln.compare import Tolerance, compare_outputs, summarize
from modelkiln.cpu_kernels import mismatch_note
from modelkiln.errors import BuildError, InferenceError
from modelkiln.exporter.reference import compare_samples, reference_samples
from modelkiln.generation import check_generation
from modelkiln.golden import load_golden
from modelkiln.precision.names import loosened
from modelkiln.runtime import load
from modelkiln.targets.shapes import clamp

FRESH_DIMS = ({"batch": 2, "sequence": 23}, {"batch": 4, "sequence": 61})
# What `kiln validate` shows of the accuracy measured at export (it is not re-measured).
ACCURACY_KEYS = ("metric", "cosine", "top1_agreement", "greedy", "samples", "worst", "budget")


def verify_artifact(
    path: str | Path,
    reference: str | None = None,
    allow_pickle: bool = False,
    stock_architecture: bool = False,
) -> dict[str, Any]:
    """Every check's result; `passed` is False if any check failed. `stock_architecture`
    lets the `reference` checkpoint declare custom code (as an export with the same flag;
    artifacts exported that way record it and need no flag here)."""
    artifact = Artifact.open(path)
    manifest = artifact.manifest
    report: dict[str, Any] = {"artifact": str(artifact.path), "checks": {}}
    checks = report["checks"]
    problems = verify_files(artifact.path, manifest.files)
    checks["files"] = {"passed": not problems, "problems": problems, "count": len(manifest.files)}
    if problems:
        report["passed"] = False
        return report  # a tampered artifact is not loaded
    try:
        session = load(artifact.path)
    except BuildError as exc:  # missing backends or providers propagate: exit 2, not a failure
        checks["load"] = {"passed": False, "problems": [str(exc)]}
        report["passed"] = False
        return report
    checks["load"] = {"passed": True}
    validation = manifest.validation
    recorded = validation.tolerance if validation is not None else None
    tolerance = recorded or {"atol": 1e-4}
    golden = artifact.path / GOLDEN
    if golden.is_file():
        results = []
        for inputs, expected in load_golden(golden):
            dims = {n: list(v.shape) for n, v in inputs.items()}
            try:
                outputs = compare_outputs(expected, session.run(inputs), tolerance)
            except InferenceError as exc:
                outputs = {n: {"passed": False, "problem": str(exc)} for n in expected}
            results.append({"dims": {"shapes": dims}, "outputs": outputs})
        checks["golden"] = summarize(results, tolerance)
        if not checks["golden"]["passed"]:
            quantization = manifest.backend.get("quantization") or {}
            note = mismatch_note(quantization.get("cpu_int8_kernels"))
            if note:
                checks["golden"].setdefault("problems", []).append(note)
    elif validation is not None and validation.skipped:
        checks["golden"] = {
            "passed": True,
            "skipped": "artifact has no golden.npz (exported with --no-validate)",
        }
    else:
        checks["golden"] = {
            "passed": False,
            "problems": [f"{GOLDEN} is missing, although the manifest records a validation"],
        }
    decoder = manifest.decoder
    if decoder is not None and decoder.golden is not None:
        golden_tokens = artifact.path / decoder.golden
        try:
            recorded = json.loads(golden_tokens.read_text())
        except (OSError, ValueError) as exc:
            checks["generation"] = {"passed": False, "problems": [f"{decoder.golden}: {exc}"]}
        else:
            checks["generation"] = check_generation(session, recorded)
    if reference is not None:
        checks["reference"] = _fresh_reference(
            artifact, session, reference, allow_pickle, stock_architecture
        )
    report["passed"] = all(c["passed"] for c in checks.values())
    if manifest.accuracy is not None:  # measured at build against fp32 PyTorch
        accuracy = manifest.accuracy.to_json()
        report["accuracy"] = {k: accuracy[k] for k in ACCURACY_KEYS if k in accuracy}
        report["precision"] = manifest.precision
    return report


def _fresh_reference(
    artifact: Artifact, session: Session, checkpoint: str, allow_pickle: bool, stock: bool
) -> dict[str, Any]:
    """Re-run the PyTorch model on new inputs of shapes the export never checked."""
    from modelkiln.exporter.decoder import reference_steps  # only for --reference
    from modelkiln.prepare import reference_for  # onnx-ir's passes: only for --reference

    manifest = artifact.manifest
    source = manifest.source
    task = manifest.task if source.kind == "hf" else None
    spec, runner = reference_for(
        checkpoint, task, allow_pickle, stock_architecture=stock or source.stock_architecture
    )
    named = {d for decl in spec.inputs for d in decl.axes if isinstance(d, str)}
    dims_list = [
        clamp(
            spec.fit(
                {d: v for d, v in dims.items() if d in named} | {d: 2 for d in named - set(dims)}
            ),
            manifest.shape_ranges,
        )
        for dims in FRESH_DIMS
    ]  # inside the artifact's [shapes] ranges, which its sessions enforce
    # A quantized artifact differs from fp32 by design: it is held to the tolerance its
    # build measured (its accuracy against fp32 is the manifest's accuracy section).
    validation = manifest.validation
    if validation is not None and validation.tolerance and validation.tolerance_source:
        tolerance = Tolerance.from_json(validation.tolerance)
    else:
        tolerance = loosened(spec.tolerance, manifest.precision)
    if spec.decoder is not None:  # fresh prompts: prefill and decode steps at new shapes
        samples, step_dims = reference_steps(runner, spec, dims_list, seed=1000)
        return compare_samples(samples, session.run, tolerance, step_dims)
    samples = reference_samples(runner, spec, dims_list, seed=1000)
    return compare_samples(samples, session.run, tolerance, dims_list)
