"""`kiln export`: trace, optimize, build and validate; the summary it prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from modelkiln.cli.common import err, handle_errors, human_size, print_columns
from modelkiln.errors import ValidationError
from modelkiln.manifest import Accuracy, Validation
from modelkiln.precision import Budget, PrecisionOptions
from modelkiln.precision.budget import check_bound
from modelkiln.precision.names import CHOICES
from modelkiln.progress import Progress

if TYPE_CHECKING:
    from modelkiln.pipeline import ExportResult


@click.command()
@click.argument("checkpoint")
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Artifact folder to create (refused if it exists, unless --force). With several "
    "--target options, a folder that receives one artifact per target: OUTPUT/NAME-TARGET.",
)
@click.option(
    "--task",
    default=None,
    help="Task to export for; inferred from config.json architectures when omitted. "
    "One of: feature-extraction, text-classification, token-classification, "
    "image-classification.",
)
@click.option(
    "--target",
    "targets",
    multiple=True,
    default=("cpu",),
    show_default=True,
    help="Built-in target name (see `kiln targets`) or path to a target .toml file. Repeat "
    "to build several targets from one trace.",
)
@click.option(
    "--name",
    default=None,
    help="Base name of the artifacts with several targets (default: the checkpoint's name).",
)
@click.option(
    "--cache-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Build cache folder (default: $MODELKILN_CACHE_DIR or ~/.cache/modelkiln).",
)
@click.option("--no-cache", is_flag=True, help="Neither read nor write the build cache.")
@click.option("--force", is_flag=True, help="Replace an existing output folder.")
@click.option(
    "--allow-pickle",
    is_flag=True,
    help="Load .bin/.pt weights with torch.load(weights_only=True). Off by default: "
    "pickle files can run code.",
)
@click.option(
    "--stock-architecture",
    is_flag=True,
    help="Export a checkpoint whose config.json declares custom code (auto_map) with the "
    "stock transformers class. modelkiln never runs a checkpoint's own code; without this "
    "flag such a checkpoint is refused, since the stock class may build another model.",
)
@click.option(
    "--no-validate",
    "no_validate",
    is_flag=True,
    help="Skip comparing against the PyTorch reference (recorded in the manifest).",
)
@click.option(
    "--dump-passes",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the model after each graph pass into this folder.",
)
@click.option(
    "--precision",
    type=click.Choice(CHOICES),
    default=None,
    help="Override the targets' precision. Reduced precisions are measured against fp32 "
    "PyTorch on evaluation data; 'auto' builds each precision the backend offers and keeps "
    "the fastest that meets --min-cosine / --min-top1-agreement.",
)
@click.option(
    "--calibration",
    type=click.Path(path_type=Path),
    default=None,
    help='Calibration data: .txt (one text per line), .jsonl ({"text": ...}) or .npz (one '
    "array per input, samples on the first axis). Needed by int8-static; a share is held "
    "back for evaluation unless --eval is given.",
)
@click.option(
    "--calibration-size",
    type=int,
    default=None,
    help="Use at most N calibration samples (spread over the file).",
)
@click.option(
    "--eval",
    "eval_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Evaluation data (same formats), kept apart from calibration.",
)
@click.option(
    "--min-cosine",
    type=float,
    default=None,
    help="Accuracy budget: lowest embedding cosine to fp32 on any evaluation sample.",
)
@click.option(
    "--min-top1-agreement",
    type=float,
    default=None,
    help="Accuracy budget for classifiers: share of top-1 decisions equal to fp32.",
)
@click.option(
    "--keep-best",
    is_flag=True,
    help="With --precision auto: when no candidate meets the budget, write the closest.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@handle_errors
def export(
    checkpoint: str,
    output: Path,
    task: str | None,
    targets: tuple[str, ...],
    name: str | None,
    cache_dir: Path | None,
    no_cache: bool,
    force: bool,
    allow_pickle: bool,
    stock_architecture: bool,
    no_validate: bool,
    dump_passes: Path | None,
    precision: str | None,
    calibration: Path | None,
    calibration_size: int | None,
    eval_file: Path | None,
    min_cosine: float | None,
    min_top1_agreement: float | None,
    keep_best: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    """Export CHECKPOINT to a validated artifact.

    CHECKPOINT is a Hugging Face checkpoint folder (config.json + safetensors), an .onnx
    file, or a module factory `path/to/file.py:make` / `pkg.mod:make` returning
    (module, example_inputs[, options]).

    The artifact appears at OUTPUT only once it has been built and its outputs match the
    PyTorch reference on two input shapes; any mismatch fails with exit code 1.
    """
    from modelkiln.pipeline import export_many, export_targets  # the exporter: torch

    bounds = {"--min-cosine": min_cosine, "--min-top1-agreement": min_top1_agreement}
    for flag, value in bounds.items():
        if value is not None:
            check_bound(value, flag)
    precision_options = PrecisionOptions(
        precision=precision,
        calibration=calibration,
        evaluation=eval_file,
        calibration_size=calibration_size,
        budget=Budget(min_cosine=min_cosine, min_top1_agreement=min_top1_agreement),
        keep_best=keep_best,
    )

    options: dict[str, Any] = {
        "task": task,
        "force": force,
        "allow_pickle": allow_pickle,
        "stock_architecture": stock_architecture,
        "validate": not no_validate,
        "dump_passes": dump_passes,
        "cache_dir": cache_dir,
        "use_cache": not no_cache,
        "precision": precision_options,
        "progress": Progress(quiet=quiet or as_json, console=err),
    }
    try:
        if len(targets) == 1:
            results = export_targets(checkpoint, [(output, targets[0])], **options)
        else:
            results = export_many(checkpoint, output, targets, name=name, **options)
    except ValidationError as exc:
        if as_json:
            click.echo(
                json.dumps({"passed": False, "error": str(exc), "validation": exc.report}, indent=2)
            )
        raise
    summaries = [_export_summary(r) for r in results]
    if as_json:
        click.echo(
            json.dumps(
                summaries[0] if len(summaries) == 1 else {"artifacts": summaries, "passed": True},
                indent=2,
            )
        )
        return
    if quiet:
        return
    if len(results) == 1:
        result, summary = results[0], summaries[0]
        times = "  ".join(f"{k} {v:.1f}s" for k, v in result.times.items())
        rows = {
            "artifact": f"{result.path}  ({human_size(result.size_bytes)})",
            "task": f"{summary['task']} on {summary['target']} ({summary['backend']})",
            "time": f"{times}  total {sum(result.times.values()):.1f}s",
            "validation": summary["validation"],
        }
        accuracy = result.manifest.accuracy
        if accuracy is not None:
            rows["precision"] = result.manifest.precision
            rows["accuracy"] = f"{accuracy.headline()} (vs fp32 PyTorch)"
        for key, value in rows.items():
            err.print(f"{key:<11}{value}", markup=False)
        return
    err.print(f"{len(results)} artifacts from one trace:", markup=False)
    lines = []
    for result, summary in zip(results, summaries, strict=True):
        report = result.manifest.validation
        assert report is not None
        lines.append(
            {
                "target": summary["target"],
                "backend": summary["backend"],
                "artifact": str(result.path),
                "size": human_size(result.size_bytes),
                "build": f"{result.times.get('build', 0.0):.1f}s",
                "max abs diff": "skipped" if report.skipped else f"{report.max_abs_diff:.2e}",
                "probe": "-" if result.probe_ms is None else f"{result.probe_ms:.2f} ms",
            }
        )
    print_columns(lines, err)


def _export_summary(result: ExportResult) -> dict[str, Any]:
    manifest = result.manifest
    assert manifest.validation is not None
    return {
        "artifact": str(result.path),
        "size_bytes": result.size_bytes,
        "task": manifest.task,
        "target": manifest.target.name,
        "backend": manifest.backend.name,
        "times": {k: round(v, 3) for k, v in result.times.items()},
        "validation": _validation_line(manifest.validation),
        "precision": manifest.precision,
        "accuracy": _accuracy_summary(manifest.accuracy),
        "probe_ms": None if result.probe_ms is None else round(result.probe_ms, 3),
        "cache": manifest.cache,
        "passed": True,
    }


def _accuracy_summary(accuracy: Accuracy | None) -> dict[str, Any] | None:
    if accuracy is None:
        return None
    section = accuracy.to_json()
    keys = (
        "metric",
        "cosine",
        "top1_agreement",
        "max_abs_diff",
        "samples",
        "worst",
        "misses",
        "kept_best",
        "missed",
    )
    summary = {k: section[k] for k in keys if k in section}
    if "search" in section:
        summary["chosen"] = section["search"]["chosen"]
        summary["candidates"] = [
            {
                "candidate": row["label"],
                "latency_ms": row["latency_ms"],
                "size_bytes": row["size_bytes"],
                "cosine_min": ((row.get("accuracy") or {}).get("cosine") or {}).get("min"),
                "top1_agreement": (row.get("accuracy") or {}).get("top1_agreement"),
                "passed": row["passed"],
            }
            for row in section["search"]["candidates"]
        ]
    return summary


def _validation_line(report: Validation) -> str:
    if report.skipped:
        return f"skipped ({report.reason})"
    text = f"passed on {len(report.checks)} shapes, max abs diff {report.max_abs_diff:.2e}"
    if report.min_cosine is not None:
        text += f", min cosine {report.min_cosine:.6f}"
    if report.generation is not None:
        check = report.generation
        text += (
            f"; {check['prompts']} prompts x {check['max_new_tokens']} greedy tokens equal to "
            f"{check['reference']}"
        )
    return text
