"""`kiln cache`: where the build cache is, what it holds, and emptying it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from modelkiln.cache import BuildCache
from modelkiln.cli.common import err, handle_errors, human_size, out


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
    build_cache = BuildCache(cache_dir)
    removed = build_cache.clear()
    blobs = build_cache.clear_compiled()
    extra = f" and {blobs} compiled-blob folder(s)" if blobs else ""
    err.print(
        f"removed {removed} entr{'y' if removed == 1 else 'ies'}{extra} from {build_cache.root}",
        markup=False,
    )
