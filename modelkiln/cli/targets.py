"""`kiln targets`: the built-in targets (and target files) and whether this machine can
build them."""

from __future__ import annotations

import json
from pathlib import Path

import click

from modelkiln.cli.common import handle_errors, out, print_columns
from modelkiln.target_status import target_status
from modelkiln.targets import preset_names


@click.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
@handle_errors
def targets(files: tuple[Path, ...], as_json: bool) -> None:
    """List the built-in targets (and target FILES given) with whether this machine can
    build them and, if not, why."""
    rows = [target_status(n) for n in [*preset_names(), *(str(f) for f in files)]]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    print_columns(
        [
            {
                "target": row["name"],
                "backend": row["backend"],
                "device": row["device"],
                "precision": row["precision"],
                "usable": "yes" if row["usable"] else "no",
                "notes": row["description"] if row["usable"] else row["reason"],
            }
            for row in rows
        ],
        out,
    )
