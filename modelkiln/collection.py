"""Python's cyclic garbage collector held back while an export builds its heap.

Importing torch and transformers, building the model and tracing it create millions of
long-lived objects and little garbage. CPython runs a full collection whenever the objects that
survived since the last one exceed a quarter of the old ones, so a heap that only grows is
scanned in full again and again: eight full collections, about 1 s of a 10 s cold export of
all-MiniLM-L6-v2, for nothing. `Deferred` turns automatic collection off for that part, then
freezes what it made (`gc.freeze`: later collections skip those objects, which live until the
export ends anyway) and turns collection back on for the builds, whose candidate models are
real garbage once measured. On leaving, the frozen objects go back to the collector, so an
export run inside a long-lived process leaks nothing.
"""

from __future__ import annotations

import gc
from types import TracebackType

__all__ = ["Deferred"]


class Deferred:
    """`with Deferred() as collection: ...; collection.resume(); ...`: no automatic cyclic
    collection until `resume()`, which freezes the surviving objects; leaving unfreezes them
    and restores the collector's state. A process that froze objects itself (e.g. a pre-fork
    server) keeps its own freeze untouched: then nothing is frozen here."""

    def __init__(self) -> None:
        self._enabled = False
        self._paused = False
        self._frozen = False

    def __enter__(self) -> Deferred:
        self._enabled = gc.isenabled()
        if self._enabled:
            gc.disable()
            self._paused = True
        return self

    def resume(self) -> None:
        """Collection back on; what exists now is frozen (skipped by every later collection
        until the block ends). Idempotent."""
        if not self._paused:
            return
        self._paused = False
        if gc.get_freeze_count() == 0:
            gc.freeze()
            self._frozen = True
        gc.enable()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._frozen:
            gc.unfreeze()
            self._frozen = False
        if self._enabled:
            gc.enable()
        self._paused = False
