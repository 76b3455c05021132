"""Stage-by-stage progress on stderr with elapsed times; silent with -q or --json."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

from rich.console import Console

from modelkiln.errors import UserInputError

T = TypeVar("T")


class Progress:
    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False, soft_wrap=True)
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, key: str, label: str) -> Iterator[Stage]:
        """Time a stage; the yielded handle may reword its closing line (`.label`)."""
        start = time.perf_counter()
        handle = Stage(label)
        live = self.console.is_terminal and not self.quiet
        status = self.console.status(f"{label}…") if live else contextlib.nullcontext()
        try:
            with status:
                yield handle
        except BaseException as exc:
            if not self.quiet and not isinstance(exc, UserInputError):
                elapsed = time.perf_counter() - start
                self.console.print(f"[red]✗[/] {handle.label} [dim]{elapsed:.1f}s[/]")
            raise
        finally:
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - start
        if not self.quiet:
            self.console.print(f"[green]✓[/] {handle.label} [dim]{self.times[key]:.1f}s[/]")


@dataclass
class Stage:
    label: str


def iter_with_progress(
    items: Sequence[T], progress: Progress | None, label: str = "calibrating"
) -> Iterator[T]:
    """`items`, with a transient `label  37/200` bar on a terminal (nothing when quiet or
    logging to a file: the enclosing stage prints the closing line)."""
    if progress is None or progress.quiet or not progress.console.is_terminal:
        yield from items
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as Bar

    with Bar(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=progress.console,
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=len(items))
        for item in items:
            yield item
            bar.advance(task)
