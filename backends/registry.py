"""Backends are found through the `modelkiln.backends` entry-point group, loaded on first use.

The built-ins register the same way a third-party package would, so the registry has no
special cases and importing modelkiln imports no backend.
"""

from __future__ import annotations

import functools
from importlib.metadata import EntryPoint, entry_points

from modelkiln.backends.base import Backend
from modelkiln.errors import BackendUnavailable, UnknownBackendError

GROUP = "modelkiln.backends"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def backend_names() -> list[str]:
    return sorted(_entry_points())


@functools.cache
def get_backend(name: str) -> Backend:
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        raise UnknownBackendError(f"unknown backend '{name}'; installed backends: {known}")
    try:
        factory = eps[name].load()
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend '{name}' cannot be imported ({exc}); "
            f"install it with: pip install 'modelkiln[{name}]'"
        ) from None
    backend = factory()
    if not isinstance(backend, Backend):
        raise UnknownBackendError(
            f"entry point '{name}' ({eps[name].value}) does not provide a modelkiln Backend"
        )
    return backend
