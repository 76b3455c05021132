"""Backends: the contract (`base`), the entry-point registry, and the built-in backends."""

from modelkiln.backends.base import Backend, BuildRequest, Session
from modelkiln.backends.registry import backend_names, get_backend

__all__ = ["Backend", "BuildRequest", "Session", "backend_names", "get_backend"]
