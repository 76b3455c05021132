"""OpenVINO's compiled blobs, cached outside the artifact (`~/.cache/modelkiln/openvino`, or
`$MODELKILN_CACHE_DIR/openvino`), so the second load of an artifact skips compilation."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from modelkiln.artifact import Artifact
from modelkiln.cache_dir import default_cache_dir as cache_root
from modelkiln.errors import UserInputError
from modelkiln.manifest import BackendSection


def default_cache_dir() -> Path:
    return cache_root() / "openvino"


def cache_key(artifact: Artifact, section: BackendSection) -> str | None:
    """A folder name for this artifact's compiled blobs, or None if it cannot be keyed.

    OpenVINO keys CPU blobs on the model path and the device name only, not on the compile
    properties, so without a folder per (model content, device, precision hint) a blob
    compiled for f32 could be reused for bf16 or for a rebuilt artifact at the same path.
    An artifact still being exported (no file hashes in its manifest yet) is not cached:
    its staging path disappears when it is published.
    """
    files = artifact.manifest.files
    entries = [files.get(section.files[role]) for role in ("model", "weights")]
    hashes = [e.sha256 for e in entries if e is not None]
    if len(hashes) != len(entries):
        return None
    material = json.dumps(
        [hashes, section.get("device"), section.get("inference_precision_hint")], sort_keys=True
    )
    return hashlib.sha256(material.encode()).hexdigest()[:20]


DEFAULT: Any = object()  # "no cache_dir given": the default folder


def resolve_cache_dir(artifact: Artifact, section: BackendSection, cache_dir: Any) -> Path | None:
    """Where this load keeps compiled blobs; None disables the cache.

    An explicit folder that cannot be created is an error; the default folder silently
    falls back to no cache (read-only home directories in containers are common).
    """
    if cache_dir is None or cache_dir is False:
        return None
    explicit = cache_dir is not DEFAULT
    root = Path(cache_dir).expanduser() if explicit else default_cache_dir()
    art, resolved = artifact.path.resolve(), root.resolve()
    if resolved == art or art in resolved.parents:
        raise UserInputError(
            f"cache_dir {root} is inside the artifact {artifact.path}, which holds only what "
            "its manifest lists; choose a folder outside it"
        )
    key = cache_key(artifact, section)
    if key is None:
        return None
    folder = root / key
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        if explicit:
            raise UserInputError(
                f"cannot create cache_dir {folder}: {exc.strerror or exc}; pass another "
                "cache_dir, or cache_dir=None to compile without a cache"
            ) from None
        return None
    return folder
