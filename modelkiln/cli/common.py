"""Pieces every `kiln` command shares: consoles, error handling, plain-text columns.

Output is never wrapped by modelkiln: rich would wrap at 80 columns when stdout is not a
terminal (or at $COLUMNS), which breaks lines that scripts grep. Terminals wrap themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.markup import escape

from modelkiln.errors import ModelkilnError, ValidationError

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GB"


def handle_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """User errors become one line on stderr and an exit code; --debug shows the traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        ctx = click.get_current_context()
        try:
            return fn(*args, **kwargs)
        except ModelkilnError as exc:
            if ctx.find_root().params.get("debug"):
                raise
            if isinstance(exc, ValidationError) and exc.report.get("failures"):
                err.print(f"[red]error:[/] {escape(exc.headline)}", soft_wrap=True)
                for failure in exc.report["failures"]:
                    err.print(f"  ✗ {failure}", soft_wrap=True, markup=False)
            else:
                err.print(f"[red]error:[/] {escape(str(exc))}", soft_wrap=True)
            ctx.exit(exc.exit_code)

    return wrapper


def stock_architecture_option(checkpoint_option: str) -> Callable[[Any], Any]:
    """`--stock-architecture` for a command that loads the checkpoint of an artifact."""
    return click.option(
        "--stock-architecture",
        is_flag=True,
        help=f"Let the {checkpoint_option} checkpoint declare custom code (auto_map) and run "
        "the stock transformers class (artifacts exported with this flag record it and need "
        "no flag).",
    )


def print_columns(rows: list[dict[str, str]], console: Console) -> None:
    """Rows as aligned plain-text columns that never wrap (piped output stays greppable)."""
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    console.print(
        "  ".join(f"{c.upper():<{widths[c]}}" for c in columns).rstrip(),
        markup=False,
        soft_wrap=True,
    )
    for row in rows:
        console.print(
            "  ".join(f"{row[c]:<{widths[c]}}" for c in columns).rstrip(),
            markup=False,
            soft_wrap=True,
        )
