"""The contract every backend (built-in or third-party) implements, written down in types.

A backend is a class with a `name`, the precisions it builds (`precisions`, in the order
`--precision auto` tries them) and those that need calibration samples (`calibrated`), and
three methods: `check(target)` refuses within seconds what this machine cannot build, before
anything is traced; `build(request)` writes the deployable files into the staging folder and
returns the manifest's backend section; `load(artifact, **options)` opens a built artifact as
a `Session`. The base `Session` checks feeds against the manifest, so a backend's own session
only runs them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from modelkiln.artifact import Artifact
from modelkiln.feed_checks import check_feeds
from modelkiln.manifest import BackendSection
from modelkiln.precision.names import Precision
from modelkiln.tensors import TensorSpec

if TYPE_CHECKING:
    import onnx_ir as ir

    from modelkiln.targets import Target

Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class BuildRequest:
    """What `Backend.build` gets: the simplified model (shared by every target: a backend
    that changes it works on a copy), the target with the precision to build, the staging
    folder (every file left there becomes part of the artifact), calibration samples for
    the precisions in `calibrated`, and ONNX node names to leave in floating point (mixed
    precision)."""

    model: ir.Model
    target: Target
    out: Path
    calibration: Sequence[Feeds] = ()
    keep_float: frozenset[str] = frozenset()

    @property
    def precision(self) -> Precision:
        return Precision(self.target.precision)


@runtime_checkable
class Backend(Protocol):
    name: str
    precisions: tuple[Precision, ...]  # what it builds, in the order `auto` tries them
    calibrated: frozenset[Precision]  # which of them need calibration samples

    def check(self, target: Target) -> None:
        """Raise BackendUnavailable (or UserInputError) within seconds if this machine cannot
        build `target`; called before any slow work, for `auto` once per precision."""

    def build(self, request: BuildRequest) -> BackendSection:
        """Write the deployable files into `request.out`; returns the manifest's backend
        section (`files` by role: at least "model")."""

    def load(self, artifact: Artifact, **options: Any) -> Session:
        """Open a built artifact for inference."""


class Session:
    """An artifact opened for inference. `run` checks feeds against the manifest (names,
    dtypes, ranks, fixed sizes, the target's shape ranges, the model's length limits, token
    ids inside the vocabulary), then calls the backend's `_run`."""

    def __init__(self, artifact: Artifact) -> None:
        manifest = artifact.manifest
        self.artifact = artifact
        self.inputs: dict[str, TensorSpec] = manifest.inputs
        self.outputs: dict[str, TensorSpec] = manifest.outputs
        # Sizes each named dimension may take (min, max), from the target's [shapes].
        self.shape_ranges: dict[str, tuple[int, int]] = manifest.shape_ranges
        self._limits = dict(manifest.limits)
        self._id_bounds = {
            name: values.high
            for name, values in manifest.input_values.items()
            if values.kind == "token_ids"
        }

    def check(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The feeds as arrays, or FeedError naming the first thing wrong with them."""
        return check_feeds(
            self.inputs,
            feeds,
            self.shape_ranges,
            limits=self._limits,
            id_bounds=self._id_bounds,
        )

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self._run(self.check(feeds))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.artifact.path} inputs={list(self.inputs)}>"
