"""Content-addressed build cache: a repeated export reuses the traced, simplified model.

An entry holds the simplified ONNX model, the task spec and pass log, and the reference
outputs at the validation shapes, so a cache hit needs neither tracing nor PyTorch. The key
covers everything that shapes those: weight hashes, config.json, task, opset, the exporter's
own code and the versions of torch, transformers, onnx, onnxscript and onnx-ir.

Entries are written into a private temporary folder and renamed into place, so concurrent
exports of the same model both succeed: the second rename finds the entry present and
discards its own copy. Readers only ever see complete entries.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import modelkiln.exporter
import modelkiln.generated_feeds
import modelkiln.hf_config
from modelkiln.cache_dir import default_cache_dir
from modelkiln.golden import GoldenSample, load_golden, save_golden
from modelkiln.versions import tool_versions

ENTRY_FORMAT = 1
MODEL = "model.onnx"
META = "meta.json"
REFERENCE = "reference.npz"
KEYED_TOOLS = ("torch", "transformers", "onnx", "onnxscript", "onnx-ir")


def code_digest() -> str:
    """Hash of the exporter's source, so a changed tracer or pass list misses the cache."""
    digest = hashlib.sha256()
    files = sorted(Path(modelkiln.exporter.__file__).parent.glob("*.py"))
    shared = [modelkiln.generated_feeds.__file__, modelkiln.hf_config.__file__]
    for path in [*files, *map(Path, shared)]:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


@dataclass
class CacheEntry:
    key: str
    path: Path
    meta: dict[str, Any]

    def load_model(self) -> Any:
        """The cached model, fully in memory: the entry may be cleared while we build."""
        import onnx_ir as ir

        model = ir.load(self.path / MODEL)
        ir.external_data.load_to_model(model)
        return model

    def samples(self) -> list[GoldenSample]:
        return load_golden(self.path / REFERENCE)


class BuildCache:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else default_cache_dir()
        self.models = self.root / "models"
        # OpenVINO's compiled blobs (modelkiln.backends.openvino.default_cache_dir)
        self.compiled = self.root / "openvino"

    def key(self, parts: dict[str, Any]) -> str:
        payload = {
            "format": ENTRY_FORMAT,
            "code": code_digest(),
            "versions": tool_versions(KEYED_TOOLS),
            **parts,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]

    def get(self, key: str) -> CacheEntry | None:
        path = self.models / key
        try:
            meta = json.loads((path / META).read_text())
        except (OSError, ValueError):
            return None
        if not (path / MODEL).is_file() or not (path / REFERENCE).is_file():
            return None
        return CacheEntry(key, path, meta)

    def put(self, key: str, model: Any, meta: dict[str, Any], samples: list[GoldenSample]) -> None:
        """Store an entry; never fails the export (a full disk just means no cache)."""
        import onnx_ir as ir

        try:
            self.models.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=self.models))
        except OSError:
            return
        try:
            ir.save(model, tmp / MODEL, external_data=f"{MODEL}.data", size_threshold_bytes=1024)
            save_golden(tmp / REFERENCE, samples)
            (tmp / META).write_text(json.dumps(meta, indent=2))
            os.replace(tmp, self.models / key)
        except OSError:
            pass  # another process stored the same entry first, or the disk is full
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def info(self) -> dict[str, Any]:
        entries = []
        if self.models.is_dir():
            for path in sorted(p for p in self.models.iterdir() if not p.name.startswith(".")):
                size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                meta = self.get(path.name)
                entries.append(
                    {
                        "key": path.name,
                        "size_bytes": size,
                        "source": (meta.meta.get("source") or {}).get("path") if meta else None,
                        "task": meta.meta.get("spec", {}).get("task") if meta else None,
                    }
                )
        blobs = [p for p in self.compiled.iterdir() if p.is_dir()] if self.compiled.is_dir() else []
        return {
            "path": str(self.root),
            "entries": entries,
            "size_bytes": sum(e["size_bytes"] for e in entries),
            # OpenVINO's compiled blobs of loaded artifacts (one folder per model and device)
            "compiled": {
                "path": str(self.compiled),
                "folders": len(blobs),
                "size_bytes": sum(
                    f.stat().st_size for p in blobs for f in p.rglob("*") if f.is_file()
                ),
            },
        }

    def clear(self) -> int:
        """Remove every entry; returns how many were removed."""
        count = len(self.info()["entries"])
        shutil.rmtree(self.models, ignore_errors=True)
        return count

    def clear_compiled(self) -> int:
        """Remove the compiled-blob folders; returns how many were removed (the next load
        of those artifacts compiles again)."""
        count = self.info()["compiled"]["folders"]
        shutil.rmtree(self.compiled, ignore_errors=True)
        return count
