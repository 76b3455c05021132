"""`kiln targets` and `kiln cache`: what this machine can build, and the build cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from modelkiln.cli_common import err, handle_errors, human_size, out, print_columns
from modelkiln.errors import ModelkilnError, UnknownBackendError


def target_status(name_or_path: str) -> dict[str, Any]:
    """A target's settings and whether this machine can build it (and if not, why)."""
    from modelkiln.backends import get_backend
    from modelkiln.precision import check_backend
    from modelkiln.targets import load_target

    target = load_target(name_or_path)
    row: dict[str, Any] = {**target.to_json(), "usable": True, "reason": None}
    try:
        check_backend(get_backend(target.backend), target)
    except UnknownBackendError:
        row.update(
            usable=False,
            reason=f"backend '{target.backend}' is not installed "
            f"(pip install 'modelkiln[{target.backend}]')",
        )
    except ModelkilnError as exc:
        row.update(usable=False, reason=str(exc))
    return row


@click.command()
@click.argument("files", nargs=-1, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
@handle_errors
def targets(files: tuple[Path, ...], as_json: bool) -> None:
    """List the built-in targets (and target FILES given) with whether this machine can
    build them and, if not, why."""
    from modelkiln.targets import preset_names

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


@click.group()
def cache() -> None:
    """Show or empty the build cache, where exports keep traced, simplified models so a
    repeated export skips tracing."""


def _cache_dir_option(fn: Any) -> Any:
    return click.option(
        "--cache-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Cache folder (default: $MODELKILN_CACHE_DIR or ~/.cache/modelkiln).",
    )(fn)


@cache.command()
@_cache_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON on stdout.")
@handle_errors
def info(cache_dir: Path | None, as_json: bool) -> None:
    """Where the cache is, its entries and their size."""
    from modelkiln.cache import BuildCache

    data = BuildCache(cache_dir).info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    count = len(data["entries"])
    out.print(
        f"{data['path']}: {count} entr{'y' if count == 1 else 'ies'}, "
        f"{human_size(data['size_bytes'])}",
        markup=False,
    )
    for entry in data["entries"]:
        out.print(
            f"  {entry['key']}  {human_size(entry['size_bytes']):>9}  {entry['task']}  "
            f"{entry['source']}",
            markup=False,
        )
    compiled = data["compiled"]
    if compiled["folders"]:
        out.print(
            f"{compiled['path']}: compiled OpenVINO blobs of {compiled['folders']} loaded "
            f"model(s), {human_size(compiled['size_bytes'])}",
            markup=False,
        )


@cache.command()
@_cache_dir_option
@handle_errors
def clear(cache_dir: Path | None) -> None:
    """Remove every cache entry and OpenVINO's compiled blobs."""
    from modelkiln.cache import BuildCache

    build_cache = BuildCache(cache_dir)
    removed = build_cache.clear()
    blobs = build_cache.clear_compiled()
    extra = f" and {blobs} compiled-blob folder(s)" if blobs else ""
    err.print(
        f"removed {removed} entr{'y' if removed == 1 else 'ies'}{extra} from {build_cache.root}",
        markup=False,
    )
