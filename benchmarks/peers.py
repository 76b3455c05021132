"""The strongest peers of a kiln artifact, built where their tools are installed.

Each peer graph is built in its own subprocess, timed by wall clock (what its user waits
for), then checked against PyTorch on one feed (`peer_export.py check`); a peer that does
not build, or whose outputs differ from PyTorch's by more than `MAX_DIFF`, is listed with
the reason and left out of the bench, so a broken graph is never counted.

- `optimum-O2`: `optimum-cli export onnx --model CKPT --task feature-extraction OUT`, then
  `optimum-cli onnxruntime optimize --onnx_model OUT -o OUT-O2 -O2` (its ORT optimizer at
  O2: extended fusions, attention, skip layer norms, bias GELU), with the Python given as
  `--optimum-python` (optimum may need its own venv: it pins transformers < 5) or this one.
  The export's wall time is the cold-export yardstick for `kiln export`.
- `onnxscript-ort`: `torch.onnx.export(..., dynamo=True)` + onnxscript's `optimize_for_ort`.
- `transformers-ort`: `transformers.exporters` ONNX export with `ort_fusions="cpu"`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from _common import timed

HERE = Path(__file__).resolve().parent
WORKER = HERE / "peer_export.py"
MAX_DIFF = 1e-3  # largest |peer - PyTorch| on last_hidden_state accepted as the same model
VERSIONS = ("optimum", "optimum-onnx", "transformers", "torch", "onnxruntime")


def optimum_versions(python: str) -> dict[str, str | None] | None:
    """Versions in `python`'s environment, or None when optimum is not installed there."""
    code = (
        "import json, importlib.metadata as m\n"
        "def v(n):\n"
        "    try:\n"
        "        return m.version(n)\n"
        "    except m.PackageNotFoundError:\n"
        "        return None\n"
        f"print(json.dumps({{n: v(n) for n in {VERSIONS!r}}}))"
    )
    try:
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    versions: dict[str, str | None] = json.loads(done.stdout)
    return versions if versions.get("optimum") else None


def _failure(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    return (lines or [f"exit code {done.returncode}"])[-1][:300]


def find_optimum(python: str) -> tuple[Path, dict[str, str | None]] | str:
    """(optimum-cli of `python`'s environment, the versions there), or why there is none."""
    versions = optimum_versions(python)
    if versions is None:
        return (
            f"optimum is not installed for {python} (pass --optimum-python PYTHON "
            "of a venv with optimum-onnx[onnxruntime])"
        )
    cli = Path(python).parent / "optimum-cli"
    if not cli.exists():
        return f"optimum is installed for {python}, but {cli} does not exist"
    return cli, versions


def build_optimum(checkpoint: str, folder: Path, python: str | None) -> dict[str, Any]:
    found = find_optimum(python or sys.executable)
    if isinstance(found, str):
        return {"skipped": found}
    cli, versions = found
    exported, optimized = folder / "optimum", folder / "optimum-O2"
    export = [str(cli), "export", "onnx", "--model", checkpoint, "--task", "feature-extraction"]
    wall, done = timed([*export, str(exported)])
    if done.returncode != 0:
        return {"error": f"optimum-cli export onnx failed: {_failure(done)}", "versions": versions}
    optimize = [str(cli), "onnxruntime", "optimize", "--onnx_model", str(exported)]
    wall_o2, done = timed([*optimize, "-o", str(optimized), "-O2"])
    if done.returncode != 0:
        return {"error": f"optimum-cli onnxruntime optimize failed: {_failure(done)}"}
    return {
        "path": str(optimized / "model_optimized.onnx"),
        "tool": f"optimum {versions['optimum']} (optimum-onnx {versions['optimum-onnx']}, "
        f"transformers {versions['transformers']})",
        "commands": [
            " ".join([*export[1:], "OUT"]).replace(checkpoint, "CHECKPOINT"),
            " ".join([*optimize[1:3], "--onnx_model", "OUT", "-o", "OUT-O2", "-O2"]),
        ],
        "stages": {"optimum-cli export onnx": round(wall, 3), "optimize -O2": round(wall_o2, 3)},
        "export_wall_s": round(wall, 3),
        "wall_s": round(wall + wall_o2, 3),
        "versions": versions,
    }


def build_in_this_env(kind: str, checkpoint: str, folder: Path) -> dict[str, Any]:
    """`onnxscript` or `transformers`, by `peer_export.py` in this interpreter."""
    out = folder / f"{kind}-ort" / "model.onnx"
    wall, done = timed([sys.executable, str(WORKER), kind, checkpoint, str(out)])
    if done.returncode == 3:
        return {"skipped": _failure(done)}
    if done.returncode != 0:
        return {"error": f"peer_export.py {kind} failed: {_failure(done)}"}
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    tool = {
        "onnxscript": "torch.onnx.export(dynamo=True) + onnxscript optimize_for_ort",
        "transformers": "transformers.exporters OnnxExporter, OnnxConfig(dynamic=True, "
        "ort_fusions='cpu')",
    }[kind]
    return {"path": str(out), "tool": tool, "wall_s": round(wall, 3), **summary}


def check_against_pytorch(checkpoint: str, built: dict[str, dict[str, Any]]) -> None:
    """Adds `max_abs_diff` to every built peer; one over `MAX_DIFF` becomes an error."""
    paths = {name: p["path"] for name, p in built.items() if "path" in p}
    if not paths:
        return
    args = [f"{name}={path}" for name, path in paths.items()]
    done = subprocess.run(
        [sys.executable, str(WORKER), "check", checkpoint, *args], capture_output=True, text=True
    )
    if done.returncode != 0:
        for name in paths:
            built[name]["error"] = f"check against PyTorch failed: {_failure(done)}"
        return
    checked = json.loads(done.stdout.strip().splitlines()[-1])
    for name, result in checked.items():
        if "error" in result:
            built[name]["error"] = f"check against PyTorch: {result['error']}"
            continue
        built[name]["max_abs_diff"] = result["max_abs_diff"]
        if result["max_abs_diff"] > MAX_DIFF:
            built[name]["error"] = (
                f"outputs differ from PyTorch by {result['max_abs_diff']:g} (> {MAX_DIFF:g}) "
                "on batch 2 × 16 tokens; not benchmarked"
            )


def build_peers(
    checkpoint: str,
    folder: Path,
    optimum_python: str | None = None,
    only: list[str] | None = None,
    say: Any = print,
) -> dict[str, dict[str, Any]]:
    """name -> {"path", "tool", "wall_s", ...} for peers to bench, or {"skipped"/"error"}."""
    builders = {
        "optimum-O2": lambda: build_optimum(checkpoint, folder, optimum_python),
        "onnxscript-ort": lambda: build_in_this_env("onnxscript", checkpoint, folder),
        "transformers-ort": lambda: build_in_this_env("transformers", checkpoint, folder),
    }
    peers: dict[str, dict[str, Any]] = {}
    for name, build in builders.items():
        if only is not None and name not in only:
            continue
        say(f"peer {name}…")
        peers[name] = build()
        result = peers[name]
        say(
            f"  {result['wall_s']:.1f}s"
            if "path" in result
            else f"  {'skipped' if 'skipped' in result else 'failed'}: "
            f"{result.get('skipped') or result.get('error')}"
        )
    check_against_pytorch(checkpoint, peers)
    for name, result in peers.items():
        if "max_abs_diff" in result:
            say(f"peer {name}: max abs diff vs PyTorch {result['max_abs_diff']:g}")
    return peers


def usable(peers: dict[str, dict[str, Any]]) -> dict[str, str]:
    """name -> path of the peers that built and match PyTorch."""
    return {n: p["path"] for n, p in peers.items() if "path" in p and "error" not in p}
