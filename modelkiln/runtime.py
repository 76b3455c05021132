"""The runtime facade: load an artifact, check feeds, run. Never imports torch or transformers."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from modelkiln.artifact import Artifact
from modelkiln.feeds import check_feeds
from modelkiln.tensors import TensorSpec


class Session:
    """Base class for backend sessions: feed checking lives here, execution in `_run`."""

    def __init__(self, artifact: Artifact) -> None:
        self.artifact = artifact
        self.inputs: dict[str, TensorSpec] = artifact.inputs
        self.outputs: dict[str, TensorSpec] = artifact.outputs
        # Sizes each named dimension may take (min, max), from the target's [shapes].
        self.shape_ranges: dict[str, tuple[int, int]] = artifact.shape_ranges

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self._run(check_feeds(self.inputs, feeds, self.shape_ranges))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.artifact.path} inputs={list(self.inputs)}>"


def load(path: str | os.PathLike[str], **options: Any) -> Session:
    """Open an artifact with the backend it was built for.

    Options go to the backend (ONNX Runtime: `threads`, `providers`).
    """
    from modelkiln.backends import get_backend
    from modelkiln.errors import UnknownBackendError

    artifact = Artifact.open(path)
    try:
        backend = get_backend(artifact.backend)
    except UnknownBackendError as exc:
        raise UnknownBackendError(
            f"{artifact.path} was built with a backend missing here: {exc}"
        ) from None
    return backend.load(artifact, **options)
