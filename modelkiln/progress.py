"""Stage-by-stage progress on stderr with elapsed times; silent with -q or --json."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console

from modelkiln.errors import UserInputError


class Progress:
    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self.console = console or Console(stderr=True, highlight=False)
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, key: str, label: str) -> Iterator[None]:
        start = time.perf_counter()
        live = self.console.is_terminal and not self.quiet
        status = self.console.status(f"{label}…") if live else contextlib.nullcontext()
        try:
            with status:
                yield
        except BaseException as exc:
            if not self.quiet and not isinstance(exc, UserInputError):
                self.console.print(f"[red]✗[/] {label} [dim]{time.perf_counter() - start:.1f}s[/]")
            raise
        finally:
            self.times[key] = self.times.get(key, 0.0) + time.perf_counter() - start
        if not self.quiet:
            self.console.print(f"[green]✓[/] {label} [dim]{self.times[key]:.1f}s[/]")
