"""The CPU's int8 kernel class: what an int8 artifact's manifest records, and what `kiln
validate` says when an artifact built on another class fails its golden check."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import models
import numpy as np
from conftest import run_kiln

from modelkiln.cpu_kernels import int8_kernels, mismatch_note
from modelkiln.golden import load_golden, save_golden


def test_classes_from_flags() -> None:
    assert int8_kernels(["fpu", "sse2", "avx2", "fma"]) == "avx2"
    assert int8_kernels(["avx2", "avx512f", "avx512_vnni"]) == "vnni"
    assert int8_kernels(["avx2", "avx_vnni"]) == "vnni"
    assert int8_kernels(["avx2", "avx512_vnni", "amx_tile", "amx_int8"]) == "amx"
    assert int8_kernels(["fp", "asimd", "asimddp"]) == "other"


def test_this_cpu_matches_its_flags() -> None:
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next(
        (
            ln.split(":", 1)[1].split()
            for ln in text.splitlines()
            if ":" in ln and ln.split(":", 1)[0].strip() in ("flags", "Features")
        ),
        None,
    )
    assert int8_kernels() == (int8_kernels(flags) if flags is not None else "unknown")


def test_mismatch_note() -> None:
    note = mismatch_note("vnni", "avx2")
    assert note and "vnni" in note and "avx2" in note and "saturating int16" in note
    assert "re-export" in note
    assert mismatch_note("avx2", "vnni")  # the other way round too
    assert mismatch_note("vnni", "vnni") is None
    assert mismatch_note("amx", "vnni") is None  # both sum exactly in int32
    assert mismatch_note(None, "avx2") is None  # an artifact that records nothing
    assert mismatch_note("unknown", "avx2") is None
    assert mismatch_note("vnni", "other")


def _rehash(artifact: Path, name: str) -> None:
    manifest_file = artifact / "kiln.json"
    manifest = json.loads(manifest_file.read_text())
    data = (artifact / name).read_bytes()
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    manifest_file.write_text(json.dumps(manifest, indent=2))


def test_validate_names_another_cpu_class(tmp_path: Path, tiny_bert_dir: Path) -> None:
    words = [w for w in models.WORDS if w.isalpha()]
    texts = tmp_path / "eval.txt"
    texts.write_text("".join(" ".join(words[i : i + n]) + "\n" for n in (1, 3, 6) for i in (0, 2)))
    out = tmp_path / "bert-int8"
    result = run_kiln(
        "export", tiny_bert_dir, "-o", out, "--precision", "int8-dynamic", "--eval", texts
    )
    assert result.exit_code == 0, result.stderr
    manifest = json.loads((out / "kiln.json").read_text())
    recorded = manifest["backend"]["quantization"]["cpu_int8_kernels"]
    assert recorded == int8_kernels()
    assert run_kiln("validate", out).exit_code == 0

    # As if built on the other kind of CPU, and computing differently here.
    other = shutil.copytree(out, tmp_path / "from-elsewhere")
    manifest["backend"]["quantization"]["cpu_int8_kernels"] = (
        "avx2" if recorded != "avx2" else "vnni"
    )
    (other / "kiln.json").write_text(json.dumps(manifest, indent=2))
    samples = load_golden(other / "golden.npz")
    shifted = [(i, {k: v + np.float32(1.0) for k, v in o.items()}) for i, o in samples]
    save_golden(other / "golden.npz", shifted)
    _rehash(other, "golden.npz")
    result = run_kiln("validate", other)
    assert result.exit_code == 1, result.stderr
    assert "built and measured on a CPU with" in result.stderr
    assert f"this CPU has {recorded} ones" in result.stderr

    # The same failure on the CPU class it was built on: no such note.
    same = shutil.copytree(other, tmp_path / "from-here")
    manifest["backend"]["quantization"]["cpu_int8_kernels"] = recorded
    (same / "kiln.json").write_text(json.dumps(manifest, indent=2))
    _rehash(same, "golden.npz")
    result = run_kiln("validate", same)
    assert result.exit_code == 1
    assert "built and measured on a CPU with" not in result.stderr
