"""`kiln validate`: re-check an artifact, for people (stderr), scripts (--json) and CI (--junit)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.markup import escape

from modelkiln.artifact import check_side_path
from modelkiln.cli.common import err, handle_errors, stock_architecture_option
from modelkiln.junit import write_junit
from modelkiln.manifest import Accuracy
from modelkiln.verify import verify_artifact


@click.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option(
    "--reference",
    default=None,
    help="Checkpoint to re-run in PyTorch on fresh inputs of new shapes.",
)
@click.option("--allow-pickle", is_flag=True, help="Allow pickle weights in --reference.")
@stock_architecture_option("--reference")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON on stdout.")
@click.option(
    "--junit",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the checks as JUnit XML for CI.",
)
@handle_errors
def validate(
    artifact: Path,
    reference: str | None,
    allow_pickle: bool,
    stock_architecture: bool,
    as_json: bool,
    junit: Path | None,
) -> None:
    """Re-check ARTIFACT: file hashes, golden outputs replayed through the runtime, and
    optionally a fresh PyTorch run. Exit code 0 when every check passes, 1 otherwise."""
    if junit is not None:
        check_side_path(junit, artifact, "--junit", folder=False)
    report = verify_artifact(
        artifact,
        reference=reference,
        allow_pickle=allow_pickle,
        stock_architecture=stock_architecture,
    )
    if junit is not None:
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
            elif name == "generation" and "prompts" in check:
                detail = (
                    f"{check['prompts']} prompts x {check['max_new_tokens']} greedy tokens "
                    f"{'equal to' if check['passed'] else 'differ from'} {check['reference']}"
                )
            err.print(f"{mark} {name} {escape(detail)}".rstrip())
            for problem in check.get("failures", []) + check.get("problems", []):
                err.print(f"    {problem}", markup=False)
        if report.get("accuracy"):
            accuracy = Accuracy.from_json({"task": "", **report["accuracy"]})
            err.print(
                f"  {report['precision']}: {accuracy.headline()} "
                "(measured against fp32 PyTorch at export)",
                markup=False,
            )
        verdict = "[green]passed[/]" if report["passed"] else "[red]FAILED[/]"
        err.print(f"{artifact}: {verdict}")
    sys.exit(0 if report["passed"] else 1)
