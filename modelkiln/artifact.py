"""The artifact folder: its manifest, file hashes, and staged (all-or-nothing) writes.

Reading an artifact needs only the standard library and numpy, so the runtime stays light.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from modelkiln.errors import ArtifactError, OutputExistsError, UserInputError
from modelkiln.hf_config import position_limit
from modelkiln.manifest import MANIFEST, SCHEMA_VERSION, FileEntry, Manifest
from modelkiln.tensors import TensorSpec

GOLDEN = "golden.npz"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_entries(root: Path) -> dict[str, FileEntry]:
    """sha256 and size of every file under `root` except the manifest itself."""
    entries = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        entries[rel] = FileEntry(sha256_file(path), path.stat().st_size)
    return entries


def verify_files(root: Path, recorded: Mapping[str, FileEntry]) -> list[str]:
    """Problems found comparing the folder with the manifest's file list; empty when intact."""
    problems = []
    for rel, entry in recorded.items():
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
        elif path.stat().st_size != entry.size:
            problems.append(f"{rel}: size {path.stat().st_size} != recorded {entry.size}")
        elif sha256_file(path) != entry.sha256:
            problems.append(f"{rel}: sha256 differs from the manifest (file was modified)")
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    for rel in sorted(present - set(recorded) - {MANIFEST}):
        problems.append(f"{rel}: not listed in the manifest")
    return problems


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: Manifest

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Artifact:
        root = Path(path)
        manifest_path = root / MANIFEST
        if not root.exists():
            raise ArtifactError(f"no artifact at {root}: the path does not exist")
        if not manifest_path.is_file():
            raise ArtifactError(
                f"{root} is not a modelkiln artifact: it has no {MANIFEST} "
                "(create one with `kiln export`)"
            )
        try:
            data = json.loads(manifest_path.read_text())
        except (OSError, ValueError) as exc:
            raise ArtifactError(f"{manifest_path} is unreadable: {exc}") from None
        version = data.get("schema_version") if isinstance(data, dict) else None
        if version != SCHEMA_VERSION:
            raise ArtifactError(
                f"{manifest_path} has schema version {version!r}; this modelkiln reads "
                f"version {SCHEMA_VERSION}"
            )
        try:
            manifest = Manifest.from_json(data)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ArtifactError(
                f"{manifest_path} is malformed ({type(exc).__name__}: {exc}); re-export the "
                "artifact"
            ) from None
        if "limits" not in data:  # artifacts from before limits were recorded
            manifest.limits = _limits_from_config(root, manifest)
        return cls(root, manifest)

    @property
    def backend(self) -> str:
        return self.manifest.backend.name

    @property
    def inputs(self) -> dict[str, TensorSpec]:
        return self.manifest.inputs

    @property
    def outputs(self) -> dict[str, TensorSpec]:
        return self.manifest.outputs

    @property
    def shape_ranges(self) -> dict[str, tuple[int, int]]:
        return self.manifest.shape_ranges

    def file(self, role: str) -> Path:
        """Path of a backend file by role (e.g. "model"), as recorded at build time."""
        return self.path / self.manifest.backend.files[role]


def open_artifact_or_onnx(path: Path) -> Artifact | None:
    """The artifact at `path`, or None when `path` is an .onnx file (what `kiln inspect` and
    `kiln check` take); anything else is one ArtifactError line."""
    if path.is_dir() and (path / MANIFEST).is_file():
        return Artifact.open(path)
    if path.suffix == ".onnx" and path.is_file():
        return None
    if not path.exists():
        raise ArtifactError(f"{path} does not exist")
    raise ArtifactError(
        f"{path} is neither a modelkiln artifact (folder with {MANIFEST}) nor an .onnx file"
    )


def _limits_from_config(root: Path, manifest: Manifest) -> dict[str, int]:
    """The sequence limit from the config.json an older artifact copied, if any."""
    if manifest.source.kind != "hf" or not any(
        "sequence" in s.shape for s in manifest.inputs.values()
    ):
        return {}
    try:
        config = json.loads((root / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    limit = position_limit(config) if isinstance(config, dict) else None
    return {} if limit is None else {"sequence": limit}


def write_manifest(root: Path, manifest: Manifest) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2) + "\n")


def blocking_file(path: Path) -> Path | None:
    """The existing file among `path`'s parents that keeps `path` from being created, if any."""
    return next((p for p in path.parents if p.exists() and not p.is_dir()), None)


def check_side_path(path: Path, artifact: Path, flag: str, folder: bool) -> None:
    """Refuse a path for extra output (pass dumps, reports) that is unusable or inside
    the artifact, whose folder holds only what its manifest lists."""
    if folder and path.exists() and not path.is_dir():
        raise UserInputError(f"{flag} {path} is a file; give a folder")
    if not folder and path.is_dir():
        raise UserInputError(f"{flag} {path} is a folder; give a file path")
    blocker = blocking_file(path)
    if blocker is not None:
        raise UserInputError(f"cannot create {flag} {path}: {blocker} is a file")
    root, target = artifact.resolve(), path.resolve()
    if target == root or root in target.parents:
        raise UserInputError(
            f"{flag} {path} is inside the artifact {artifact}, which holds only what its "
            "manifest lists; write it elsewhere"
        )


def check_output_free(out: Path, force: bool, protected: Path | None = None) -> None:
    """Refuse output paths that cannot or must not be written, before any slow work.

    `protected` is the checkpoint being exported: an artifact never replaces its own source.
    """
    if out.exists() and not force:
        raise OutputExistsError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} exists and is not a folder; choose another output path")
    if protected is not None and protected.exists():
        source, target = protected.resolve(), out.resolve()
        if source == target or target in source.parents:
            raise OutputExistsError(
                f"{out} holds the checkpoint being exported ({protected}); "
                "choose an output path outside it"
            )
    resolved = out.resolve()
    if resolved.parent == resolved or resolved == Path.cwd() or resolved in Path.cwd().parents:
        raise OutputExistsError(
            f"{out} is the current folder or one of its parents; name a new folder for the artifact"
        )
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputExistsError(
            f"{out} holds files but is not a modelkiln artifact; --force replaces only an "
            f"earlier artifact (a folder with {MANIFEST}) or an empty folder"
        )
    blocker = blocking_file(out)
    if blocker is not None:
        raise OutputExistsError(f"cannot create {out}: {blocker} is a file, not a folder")


@contextlib.contextmanager
def staging(out: Path, force: bool = False, *, checked: bool = False) -> Iterator[Path]:
    """Yield an empty sibling folder of `out`; rename it to `out` only if the block succeeds.

    On any error the staging folder (and any parent folder created for it) is removed and
    `out` is left as it was, so a failed export never leaves a half-written artifact behind.
    `checked`: the caller has decided itself that `out` may be replaced (folders that are not
    artifacts, such as Triton repositories); otherwise `check_output_free` decides.
    """
    out = out.resolve()
    if not checked:
        check_output_free(out, force)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    os.chmod(stage, 0o755)  # mkdtemp makes it owner-only; the artifact is meant to be shared
    done = False
    try:
        yield stage
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, trash / out.name)
            try:
                os.replace(stage, out)
            except OSError:
                os.replace(trash / out.name, out)  # put the earlier artifact back
                raise
            finally:
                shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(stage, out)
        done = True
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
        if not done:
            for folder in created:  # innermost first
                with contextlib.suppress(OSError):
                    folder.rmdir()
