"""The contract every backend (built-in or third-party) implements."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import onnx_ir as ir

    from modelkiln.artifact import Artifact
    from modelkiln.runtime import Session
    from modelkiln.targets import Target


@runtime_checkable
class Backend(Protocol):
    name: str

    def check(self, target: Target) -> None:
        """Raise BackendUnavailable within seconds if this machine cannot build for `target`."""

    def build(self, model: ir.Model, target: Target, out: Path) -> dict[str, Any]:
        """Write the deployable files into `out`.

        Returns the manifest's `backend` section: at least `files` (role -> relative path);
        anything else recorded there (options, versions) is the backend's own.
        """

    def load(self, artifact: Artifact, **options: Any) -> Session:
        """Open a built artifact for inference."""
