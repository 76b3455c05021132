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
from modelkiln.errors import FeedError, UserInputError
from modelkiln.feed_checks import check_feeds
from modelkiln.generation import ArrayCacheStepper, CacheStepper, Generated, Streamer, generate
from modelkiln.manifest import BackendSection, DecoderSection
from modelkiln.precision.names import Precision
from modelkiln.sampling import Sampling
from modelkiln.tensors import TensorSpec
from modelkiln.text import TextCodec

if TYPE_CHECKING:
    import onnx_ir as ir

    from modelkiln.targets import Target

Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class BuildRequest:
    """What `Backend.build` gets: the simplified model (shared by every target: a backend
    that changes it works on a copy), the target with the precision to build, the staging
    folder (every file left there becomes part of the artifact), calibration samples for
    the precisions in `calibrated`, ONNX node names to leave in floating point (mixed
    precision), and the build cache folder, where a backend may keep what later builds
    reuse (TensorRT's timing cache; None with --no-cache: keep nothing)."""

    model: ir.Model
    target: Target
    out: Path
    calibration: Sequence[Feeds] = ()
    keep_float: frozenset[str] = frozenset()
    cache_dir: Path | None = None

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


@runtime_checkable
class StaticCheck(Protocol):
    """Optional for a backend: a check of the graph itself, run at export before anything is
    built (for an .onnx source before tracing), also on a machine that cannot build the
    target. Returns one line per problem found (empty: none)."""

    def lint(self, model: ir.Model, target: Target) -> list[str]: ...


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
        indexes = {"token_ids": "token", "token_types": "token type", "positions": "position"}
        self._id_bounds = {
            name: (values.high, indexes[values.kind])
            for name, values in manifest.input_values.items()
            if values.kind in indexes and values.high > 0
        }

    def check(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """The feeds as arrays, or FeedError naming the first thing wrong with them."""
        checked = check_feeds(
            self.inputs,
            feeds,
            self.shape_ranges,
            limits=self._limits,
            id_bounds=self._id_bounds,
        )
        decoder = self.artifact.manifest.decoder
        if decoder is not None and decoder.layers:
            new = checked["input_ids"].shape[1]
            past = checked[decoder.layers[0].past_key].shape[2]
            covered = checked["attention_mask"].shape[1]
            if covered != past + new:
                raise FeedError(
                    f"input 'attention_mask' covers {covered} tokens, but the past holds {past} "
                    f"and input_ids {new}: the mask covers both ({past + new})"
                )
        return checked

    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        return self._run(self.check(feeds))

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def generate(
        self,
        prompts: str | Sequence[str] | Sequence[Sequence[int]] | np.ndarray,
        attention_mask: np.ndarray | None = None,
        *,
        max_new_tokens: int,
        sampling: Sampling | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        streamer: Streamer | None = None,
    ) -> Generated:
        """Tokens generated by a text-generation artifact (`modelkiln.generation`) after
        `prompts`: token-id lists, or text (one string or a list), which the artifact's own
        tokenizer.json encodes; then `Generated.text` holds each row's new text."""
        texts = [prompts] if isinstance(prompts, str) else None
        if texts is None and isinstance(prompts, Sequence) and prompts:
            kinds = {isinstance(p, str) for p in prompts}
            if kinds == {True, False}:
                raise UserInputError("give the prompts as texts or as token-id lists, not both")
            if kinds == {True}:
                texts = [str(p) for p in prompts]
        codec = TextCodec.open(self.artifact.path) if texts is not None else None
        ids = [codec.encode(t) for t in texts] if codec is not None and texts else prompts
        result = generate(
            self,
            ids,  # type: ignore[arg-type]
            attention_mask,
            max_new_tokens=max_new_tokens,
            sampling=sampling,
            eos_token_id=eos_token_id,
            streamer=streamer,
        )
        if codec is not None:
            result.text = [codec.decode(row.tolist()) for row in result.new_tokens]
        return result

    def cache_stepper(self, decoder: DecoderSection) -> CacheStepper:
        """Steps for generation; backends may keep the cache in their own buffers instead."""
        return ArrayCacheStepper(self.inputs, self.run, decoder)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.artifact.path} inputs={list(self.inputs)}>"
