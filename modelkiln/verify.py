"""`kiln validate`: file hashes, golden replay through the runtime, fresh reference run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelkiln.artifact import GOLDEN, Artifact, verify_files
from modelkiln.compare import compare_outputs, summarize
from modelkiln.errors import BuildError, InferenceError
from modelkiln.golden import load_golden

FRESH_DIMS = ({"batch": 2, "sequence": 23}, {"batch": 4, "sequence": 61})


def verify_artifact(
    path: str | Path, reference: str | None = None, allow_pickle: bool = False
) -> dict[str, Any]:
    """Run every check and return a report; `passed` is False if any check failed."""
    artifact = Artifact.open(path)
    report: dict[str, Any] = {"artifact": str(artifact.path), "checks": {}}
    checks = report["checks"]
    problems = verify_files(artifact.path, artifact.manifest.get("files", {}))
    checks["files"] = {
        "passed": not problems,
        "problems": problems,
        "count": len(artifact.manifest.get("files", {})),
    }
    if problems:
        report["passed"] = False
        return report  # a tampered artifact is not loaded

    from modelkiln.runtime import load

    try:
        session = load(artifact.path)
    except BuildError as exc:  # missing backends or providers propagate: exit 2, not a failure
        checks["load"] = {"passed": False, "problems": [str(exc)]}
        report["passed"] = False
        return report
    checks["load"] = {"passed": True}
    tolerance = artifact.manifest.get("validation", {}).get("tolerance") or {"atol": 1e-4}
    golden = artifact.path / GOLDEN
    skipped = artifact.manifest.get("validation", {}).get("skipped")
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
    elif skipped:
        checks["golden"] = {
            "passed": True,
            "skipped": "artifact has no golden.npz (exported with --no-validate)",
        }
    else:
        checks["golden"] = {
            "passed": False,
            "problems": [f"{GOLDEN} is missing, although the manifest records a validation"],
        }
    if reference is not None:
        checks["reference"] = _fresh_reference(artifact, session, reference, allow_pickle)
    report["passed"] = all(c["passed"] for c in checks.values())
    accuracy = artifact.manifest.get("accuracy")
    if accuracy:  # measured at build against fp32 PyTorch; shown, not re-measured
        report["accuracy"] = {
            k: accuracy[k]
            for k in ("metric", "cosine", "top1_agreement", "samples", "worst", "budget")
            if k in accuracy
        }
        report["precision"] = artifact.manifest.get("precision")
    return report


def _fresh_reference(
    artifact: Artifact, session: Any, checkpoint: str, allow_pickle: bool
) -> dict[str, Any]:
    """Re-run the PyTorch model on new inputs of shapes the export never checked."""
    from modelkiln.pipeline import reference_for

    source_kind = artifact.manifest.get("source", {}).get("kind")
    task = artifact.manifest["task"] if source_kind == "hf" else None
    spec, runner = reference_for(checkpoint, task, allow_pickle)
    from modelkiln.exporter.reference import compare_samples, reference_samples
    from modelkiln.exporter.specs import Tolerance

    named = {d for decl in spec.inputs for d in decl.axes if isinstance(d, str)}
    ranges = artifact.shape_ranges
    dims_list = [
        {
            d: min(max(v, ranges[d][0]), ranges[d][1]) if d in ranges else v
            for d, v in spec.fit(
                {d: v for d, v in dims.items() if d in named} | {d: 2 for d in named - set(dims)}
            ).items()
        }
        for dims in FRESH_DIMS
    ]  # inside the artifact's [shapes] ranges, which its sessions enforce
    # A quantized artifact differs from fp32 by design: it is held to the tolerance its
    # build measured (its accuracy against fp32 is the manifest's accuracy section).
    precision = str(artifact.manifest.get("precision", "fp32"))
    recorded = artifact.manifest.get("validation", {}).get("tolerance")
    if recorded and artifact.manifest.get("validation", {}).get("tolerance_source"):
        tolerance = Tolerance.from_json(recorded)
    else:
        tolerance = spec.tolerance_for(precision)
    samples = reference_samples(runner, spec, dims_list, seed=1000)
    return compare_samples(samples, session.run, tolerance, dims_list)
