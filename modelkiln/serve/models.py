"""The models a server holds: each artifact opened once per worker, its v2 metadata, and
whether requests to it can be batched (every input and output has the same named first
dimension)."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.artifact import Artifact
from modelkiln.backends.base import Session
from modelkiln.errors import UserInputError
from modelkiln.runtime import load
from modelkiln.serve import MODEL_VERSION
from modelkiln.serve.batcher import Batcher
from modelkiln.serve.metrics import Metrics
from modelkiln.serve.options import BatchingOptions
from modelkiln.serve.protocol import ProtocolError, datatype_of
from modelkiln.tensors import TensorSpec
from modelkiln.text import TOKENIZER, TextCodec

TEXT_INPUT = "text"
PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "openvino": "openvino"}


@dataclass
class ServedModel:
    name: str
    artifact: Artifact
    checker: Session  # checks feeds against the manifest (never runs)
    batcher: Batcher
    batch_dim: str | None
    max_batch: int
    _codec: TextCodec | None = field(default=None, repr=False)

    @property
    def is_decoder(self) -> bool:
        return self.artifact.manifest.decoder is not None

    def metadata(self) -> dict[str, Any]:
        manifest = self.artifact.manifest
        return {
            "name": self.name,
            "versions": [MODEL_VERSION],
            "platform": PLATFORMS.get(manifest.backend.name, manifest.backend.name),
            "inputs": [_tensor_metadata(n, s) for n, s in manifest.inputs.items()],
            "outputs": [_tensor_metadata(n, s) for n, s in manifest.outputs.items()],
            "parameters": {
                "task": manifest.task,
                "target": manifest.target.name,
                "precision": manifest.precision,
                # rows the dynamic batcher joins into one run (a larger request runs alone)
                "batch_rows": self.max_batch if self.batch_dim else 0,
                # sentences may come as this BYTES input instead of token ids
                "text_input": TEXT_INPUT if self.takes_text else None,
            },
        }

    @property
    def takes_text(self) -> bool:
        """An encoder with its tokenizer: requests may send sentences as a BYTES input
        `text` [batch] instead of token ids (a convenience beside the model's own inputs)."""
        manifest = self.artifact.manifest
        return (
            manifest.decoder is None
            and "input_ids" in manifest.inputs
            and TEXT_INPUT not in manifest.inputs
            and (self.artifact.path / TOKENIZER).is_file()
        )

    def text_feeds(self, text: np.ndarray) -> dict[str, np.ndarray]:
        """The model's inputs for a BYTES tensor of sentences, tokenized and padded."""
        if (
            text.dtype != object
            or text.ndim not in (1, 2)
            or (text.ndim == 2 and text.shape[1] != 1)
        ):
            raise ProtocolError(
                f"input '{TEXT_INPUT}' must be BYTES of shape [batch] (one sentence per row), "
                f"got {text.dtype} {list(text.shape)}"
            )
        try:
            sentences = [item.decode() for item in text.reshape(-1)]
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"input '{TEXT_INPUT}' is not UTF-8 text ({exc})") from None
        if not sentences:
            raise ProtocolError(f"input '{TEXT_INPUT}' holds no sentences")
        encoded = self.codec().encode_batch(sentences)
        specs = self.artifact.manifest.inputs
        return {name: encoded[name].astype(spec.dtype) for name, spec in specs.items()}

    def check(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None
    ) -> dict[str, np.ndarray]:
        """Feeds checked against the manifest (names, dtypes, ranks, sizes, id ranges); a
        lone `text` input is tokenized first where the model takes text."""
        if set(feeds) == {TEXT_INPUT} and self.takes_text:
            feeds = self.text_feeds(feeds[TEXT_INPUT])
        for name in outputs or ():
            if name not in self.artifact.manifest.outputs:
                raise ProtocolError(
                    f"model '{self.name}' has no output '{name}'; it has "
                    f"{', '.join(self.artifact.manifest.outputs)}"
                )
        return self.checker.check(feeds)

    def codec(self) -> TextCodec:
        if self._codec is None:
            self._codec = TextCodec.open(self.artifact.path)
        return self._codec


def _tensor_metadata(name: str, spec: TensorSpec) -> dict[str, Any]:
    return {
        "name": name,
        "datatype": datatype_of(spec.dtype),
        "shape": [d if isinstance(d, int) else -1 for d in spec.shape],
    }


def model_name(path: Path) -> str:
    """A model's name: the artifact folder's name."""
    return path.resolve().name


def batch_dimension(artifact: Artifact) -> str | None:
    """The named first dimension every input and output shares, if there is one."""
    specs = [*artifact.manifest.inputs.values(), *artifact.manifest.outputs.values()]
    firsts = {spec.shape[0] if spec.shape else None for spec in specs}
    if len(firsts) != 1:
        return None
    first = firsts.pop()
    return first if isinstance(first, str) else None


def open_models(
    paths: Sequence[str | os.PathLike[str]],
    batching: BatchingOptions,
    metrics: Metrics,
    threads: int | None = None,
) -> dict[str, ServedModel]:
    """Open every artifact (failing on the first that does not open); names must differ."""
    names: dict[str, Path] = {}
    for raw in paths:
        path = Path(raw)
        name = model_name(path)
        if name in names:
            raise UserInputError(
                f"two artifacts are named '{name}' ({names[name]} and {path}): models are served "
                "under their folder's name, so rename one folder"
            )
        names[name] = path
    models: dict[str, ServedModel] = {}
    options = {"threads": threads} if threads else {}
    for name, path in names.items():
        artifact = Artifact.open(path)
        sessions = [load(path, **options) for _ in range(max(1, batching.instances))]
        batch_dim = batch_dimension(artifact)
        max_batch = max(1, batching.max_batch_size) if batch_dim else 1
        if batch_dim and batch_dim in artifact.manifest.shape_ranges:
            max_batch = min(max_batch, artifact.manifest.shape_ranges[batch_dim][1])
        models[name] = ServedModel(
            name=name,
            artifact=artifact,
            checker=sessions[0],
            batcher=Batcher(
                name,
                sessions,
                batch_axis=batch_dim is not None,
                max_batch=max_batch,
                delay=batching.max_queue_delay_ms / 1000,
                max_queue=batching.max_queue_size,
                metrics=metrics,
            ),
            batch_dim=batch_dim,
            max_batch=max_batch,
        )
    return models
