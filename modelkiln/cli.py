"""The `kiln` command line."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import click

from modelkiln.cli_bench import bench
from modelkiln.cli_common import err, handle_errors, human_size, out, print_columns
from modelkiln.cli_targets import cache, targets
from modelkiln.errors import ValidationError
from modelkiln.targets.target import PRECISIONS as PRECISION_CHOICES


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors.")
@click.version_option(package_name="modelkiln")
def main(debug: bool) -> None:
    """modelkiln: export neural networks to validated, deployable artifacts.

    \b
    kiln export CHECKPOINT -o OUT   trace, optimize, build and validate an artifact
    kiln validate ARTIFACT          re-check an artifact (files, golden outputs, reference)
    kiln inspect PATH               show what an artifact or .onnx file holds
    kiln bench ARTIFACT...          measure latency and throughput (optionally vs PyTorch)
    kiln targets                    list the targets and whether this machine can build them
    kiln cache info|clear           show or empty the build cache
    """


@main.command()
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
    type=click.Choice(PRECISION_CHOICES),
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
    from modelkiln.exporter.accuracy import Budget
    from modelkiln.pipeline import export_many, export_targets
    from modelkiln.precision import PrecisionOptions
    from modelkiln.progress import Progress

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
        accuracy = result.manifest.get("accuracy")
        if accuracy:
            from modelkiln.exporter.accuracy import summary as accuracy_text

            rows["precision"] = str(result.manifest.get("precision"))
            rows["accuracy"] = f"{accuracy_text(accuracy)} (vs fp32 PyTorch)"
        for key, value in rows.items():
            err.print(f"{key:<11}{value}", soft_wrap=True, markup=False)
        return
    err.print(f"{len(results)} artifacts from one trace:", markup=False)
    lines = []
    for result, summary in zip(results, summaries, strict=True):
        report = result.manifest["validation"]
        lines.append(
            {
                "target": summary["target"],
                "backend": summary["backend"],
                "artifact": str(result.path),
                "size": human_size(result.size_bytes),
                "build": f"{result.times.get('build', 0.0):.1f}s",
                "max abs diff": "skipped"
                if report.get("skipped")
                else f"{report['max_abs_diff']:.2e}",
                "probe": "-" if result.probe_ms is None else f"{result.probe_ms:.2f} ms",
            }
        )
    print_columns(lines, err)


def _export_summary(result: Any) -> dict[str, Any]:
    return {
        "artifact": str(result.path),
        "size_bytes": result.size_bytes,
        "task": result.manifest["task"],
        "target": result.manifest["target"]["name"],
        "backend": result.manifest["backend"]["name"],
        "times": {k: round(v, 3) for k, v in result.times.items()},
        "validation": _validation_line(result.manifest["validation"]),
        "precision": result.manifest.get("precision"),
        "accuracy": _accuracy_summary(result.manifest.get("accuracy")),
        "probe_ms": None if result.probe_ms is None else round(result.probe_ms, 3),
        "cache": result.manifest.get("cache", {}),
        "passed": True,
    }


def _accuracy_summary(section: dict[str, Any] | None) -> dict[str, Any] | None:
    if not section:
        return None
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


def _validation_line(report: dict[str, Any]) -> str:
    if report.get("skipped"):
        return f"skipped ({report.get('reason')})"
    cosines = [
        r["cosine_min"]
        for c in report["checks"]
        for r in c["outputs"].values()
        if "cosine_min" in r
    ]
    text = f"passed on {len(report['checks'])} shapes, max abs diff {report['max_abs_diff']:.2e}"
    if cosines:
        text += f", min cosine {min(cosines):.6f}"
    return text


@main.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--reference",
    default=None,
    help="Checkpoint to re-run in PyTorch on fresh inputs of new shapes.",
)
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights in --reference.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@click.option(
    "--junit",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the checks as JUnit XML for CI.",
)
@handle_errors
def validate(
    artifact: Path, reference: str | None, allow_pickle: bool, as_json: bool, junit: Path | None
) -> None:
    """Re-check ARTIFACT: file hashes, golden outputs replayed through the runtime, and
    optionally a fresh PyTorch run. Exit code 0 when every check passes, 1 otherwise."""
    from modelkiln.verify import verify_artifact

    if junit is not None:
        from modelkiln.artifact import check_side_path

        check_side_path(junit, artifact, "--junit", folder=False)
    report = verify_artifact(artifact, reference=reference, allow_pickle=allow_pickle)
    if junit is not None:
        from modelkiln.junit import write_junit

        write_junit(report, junit)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        for name, check in report["checks"].items():
            mark = "[green]✓[/]" if check["passed"] else "[red]✗[/]"
            detail = ""
            if name == "files":
                detail = f"{check['count']} files" if check["passed"] else ""
            elif check.get("skipped"):
                detail = f"skipped: {check['skipped']}"
            elif "max_abs_diff" in check:
                detail = f"{len(check['checks'])} shapes, max abs diff {check['max_abs_diff']:.2e}"
            err.print(f"{mark} {name} {detail}".rstrip())
            for problem in check.get("problems", []) + check.get("failures", []):
                err.print(f"    {problem}", soft_wrap=True)
        if report.get("accuracy"):
            from modelkiln.exporter.accuracy import summary as accuracy_text

            err.print(
                f"  {report['precision']}: {accuracy_text(report['accuracy'])} "
                "(measured against fp32 PyTorch at export)",
                soft_wrap=True,
                markup=False,
            )
        verdict = "[green]passed[/]" if report["passed"] else "[red]FAILED[/]"
        err.print(f"{artifact}: {verdict}")
    sys.exit(0 if report["passed"] else 1)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
@handle_errors
def inspect(path: Path, as_json: bool) -> None:
    """Show inputs, outputs, op histogram, parameters, size and passes of an artifact or
    an .onnx file."""
    from modelkiln.describe import describe

    info = describe(path)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    out.print(f"[bold]{info['path']}[/]  {info['kind']}, {human_size(info['size_bytes'])}")
    if info["kind"] == "artifact":
        out.print(
            f"task {info['task']}, target {info['target']} ({info['backend']}, "
            f"{info['precision']}), source {info['source']}"
        )
    for title in ("inputs", "outputs"):
        out.print(f"{title}:")
        for name, spec in info[title].items():
            shape = spec["shape"]
            dims = "unknown rank" if shape is None else ", ".join(str(d) for d in shape)
            out.print(f"  {name}: {spec['dtype']}[{dims}]", markup=False)
    graph = info.get("graph")
    if graph:
        out.print(
            f"graph: {graph['nodes']} nodes, {graph['parameters']:,} parameters, opset "
            + ", ".join(f"{k} {v}" for k, v in graph["opset"].items())
        )
        out.print("ops: " + ", ".join(f"{op} {n}" for op, n in graph["ops"].items()))
    if info.get("passes"):
        out.print("passes:")
        for p in info["passes"]:
            out.print(
                f"  {p['name']}: {p['nodes_before']} -> {p['nodes_after']} nodes, "
                f"{p['seconds'] * 1000:.0f} ms"
            )
    if "validation" in info:
        out.print(f"validation: {info['validation']}", markup=False)
    accuracy = info.get("accuracy")
    if accuracy:
        from modelkiln.exporter.accuracy import summary as accuracy_text

        out.print(f"accuracy vs fp32 PyTorch: {accuracy_text(accuracy)}", markup=False)
        search = accuracy.get("search") or {}
        for row in search.get("candidates", []):
            verdict = "pass" if row["passed"] else "fail"
            if row["label"] == search.get("chosen"):
                verdict = "chosen" + (" (--keep-best)" if search.get("kept_best") else "")
            latency = "-" if row["latency_ms"] is None else f"{row['latency_ms']:.2f} ms"
            out.print(f"  {row['label']}: {latency}, {verdict}", markup=False)


def run() -> None:
    """Console-script entry point: `main`, then a fast exit once torch has been loaded.

    Tearing down torch and transformers at interpreter exit takes over a second and does
    nothing useful here: every file is closed by then, so flush the streams and leave.
    """
    try:
        main()
    except SystemExit as exc:
        code = exc.code
    else:
        code = 0
    if "torch" not in sys.modules:
        sys.exit(code)
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


main.add_command(bench)
main.add_command(targets)
main.add_command(cache)

if __name__ == "__main__":
    run()
