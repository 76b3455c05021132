"""Backend protocol and the entry-point registry."""

from modelkiln.backends.base import Backend
from modelkiln.backends.registry import backend_names, get_backend

__all__ = ["Backend", "backend_names", "get_backend"]
