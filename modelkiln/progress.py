"""Stage-by-stage progress on stderr with elapsed times; silent with -q or --json."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass

from rich.console import Console

from modelkiln.errors import UserInputError


class Progress:
    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False)
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
