"""Where modelkiln keeps what it can rebuild: the build cache and OpenVINO's compiled blobs."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """`$MODELKILN_CACHE_DIR`, else `~/.cache/modelkiln`."""
    env = os.environ.get("MODELKILN_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "modelkiln"
