"""The runtime facade: open an artifact with the backend it was built for.

Never imports torch or transformers, nor a backend other than the artifact's own.
"""

from __future__ import annotations

import os
from typing import Any

from modelkiln.artifact import Artifact
from modelkiln.backends.base import Session
from modelkiln.backends.registry import get_backend
from modelkiln.errors import UnknownBackendError

__all__ = ["Session", "load"]


def load(path: str | os.PathLike[str], **options: Any) -> Session:
    """Open an artifact with the backend it was built for.

    Options go to the backend (ONNX Runtime: `threads`, `providers`; OpenVINO: `threads`,
    `cache_dir`).
    """
    artifact = Artifact.open(path)
    try:
        backend = get_backend(artifact.backend)
    except UnknownBackendError as exc:
        raise UnknownBackendError(
            f"{artifact.path} was built with a backend missing here: {exc}"
        ) from None
    return backend.load(artifact, **options)
