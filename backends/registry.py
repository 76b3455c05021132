"""Backends are found through the `modelkiln.backends` entry-point group, loaded on first use.

The built-ins register the same way a third-party package would, so the registry has no
special cases and importing modelkiln imports no backend.
"""

from __future__ import annotations

import functools
import inspect
from importlib.metadata import EntryPoint, entry_points

from modelkiln.backends.base import Backend
from modelkiln.errors import BackendUnavailable, UnknownBackendError

GROUP = "modelkiln.backends"


def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def backend_names() -> list[str]:
    return sorted(_entry_points())


# What installs a built-in backend's runtime (onnxruntime is a dependency of modelkiln itself).
BUILT_IN = {
    "onnxruntime": "pip install onnxruntime",
    "openvino": "pip install 'modelkiln[openvino]'",
    "tensorrt": "pip install 'modelkiln[tensorrt]'",
}


def install_hint(name: str, device: str | None = None, ep: EntryPoint | None = None) -> str:
    """What to install so this machine runs backend `name` (on `device`): the one place
    every refusal takes its advice from."""
    if name == "onnxruntime" and device == "cuda":
        return "install onnxruntime-gpu instead of onnxruntime (pip install onnxruntime-gpu)"
    if name in BUILT_IN:
        return BUILT_IN[name]
    dist = getattr(ep, "dist", None) if ep is not None else None
    return (
        f"reinstall {dist.name}" if dist is not None else f"install the package providing '{name}'"
    )


@functools.cache
def get_backend(name: str) -> Backend:
    eps = _entry_points()
    if name not in eps:
        known = ", ".join(sorted(eps)) or "none"
        hint = f" ({install_hint(name)})" if name in BUILT_IN else ""
        raise UnknownBackendError(f"unknown backend '{name}'{hint}; installed backends: {known}")
    ep = eps[name]
    try:
        factory = ep.load()
        backend = factory()
    except ImportError as exc:
        raise BackendUnavailable(
            f"backend '{name}' cannot be imported ({exc}); {install_hint(name, ep=ep)}"
        ) from None
    except Exception as exc:
        raise BackendUnavailable(
            f"backend '{name}' ({ep.value}) failed to start: {type(exc).__name__}: {exc}"
        ) from None
    if not isinstance(backend, Backend) or getattr(backend, "name", None) != name:
        raise UnknownBackendError(
            f"entry point '{name}' ({ep.value}) does not provide a modelkiln Backend named "
            f"'{name}' (it needs name, precisions, calibrated, check, build and load)"
        )
    if _positional(backend.build) != 1:
        raise UnknownBackendError(
            f"backend '{name}' ({ep.value}) has build{inspect.signature(backend.build)}; this "
            "modelkiln calls build(request) with one modelkiln.backends.base.BuildRequest "
            f"({install_hint(name, ep=ep)}, or update it to that contract)"
        )
    return backend


def _positional(method: object) -> int:
    """How many positional arguments a bound method requires (1 when it takes *args)."""
    try:
        params = inspect.signature(method).parameters.values()  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1  # a builtin or C method: cannot tell, trust the protocol
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return 1
    return sum(1 for p in params if p.kind in kinds and p.default is inspect.Parameter.empty)
