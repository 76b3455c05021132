"""This machine's arithmetic peak: fp32 FMA and int8 multiply-add throughput on N threads.

Compiles `peak.c` (beside this file) with `cc -O2 -mavx2 -mfma -pthread` into a temporary
folder and runs its kernels: independent accumulator chains of one instruction sequence
each, one pinned thread per core, so the figure is the instruction throughput the cores
sustain, the ceiling any fp32 or int8 GEMM on this CPU can approach:

- fp32: `vfmadd231ps` on 256-bit registers, 16 FLOP per instruction (8 lanes × mul + add);
- int8: `vpmaddubsw` (u8 × s8, pairs summed) + `vpmaddwd` with ones + `vpaddd`, the AVX2
  dot-product sequence of int8 GEMM kernels, 64 OP per sequence (32 multiply-adds × 2);
- int8-vnni (where the CPU has AVX512-VNNI, informative): `vpdpbusd` on 512-bit registers,
  128 OP per instruction. ONNX Runtime's int8 GEMM uses this instruction where it exists;
- bf16 (where the CPU has AVX512-BF16): `vdpbf16ps` on 512-bit registers, 64 FLOP per
  instruction: OpenVINO runs bf16 by default on such CPUs.

Each kind runs `--trials` times for `--seconds` each; the peak is the best trial (noise only
ever slows a throughput kernel down), the median is reported beside it.

    .venv/bin/python benchmarks/peak.py [--threads N] [--seconds 1] [--trials 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).resolve().parent / "peak.c"
FLAGS = ["-O2", "-mavx2", "-mfma", "-pthread"]
KINDS = ("fp32", "int8", "int8-vnni", "bf16")
UNITS = {"fp32": "GFLOP/s", "int8": "GOP/s", "int8-vnni": "GOP/s", "bf16": "GFLOP/s"}
NEEDS = {"int8-vnni": "avx512_vnni", "bf16": "avx512_bf16"}


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def compile_kernel(folder: Path) -> Path:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    binary = folder / "peak"
    done = subprocess.run(
        [compiler, *FLAGS, str(SOURCE), "-o", str(binary)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"{compiler} failed: {done.stderr.strip().splitlines()[-1:]}")
    return binary


def run_kind(binary: Path, kind: str, threads: int, seconds: float) -> dict[str, Any]:
    done = subprocess.run(
        [str(binary), kind, str(threads), str(seconds)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr.strip() or f"exit code {done.returncode}")
    return json.loads(done.stdout)


def measure_peak(
    threads: int | None = None, seconds: float = 1.0, trials: int = 3
) -> dict[str, Any]:
    """{"threads", "seconds", "trials", "kinds": {kind: {"peak", "median", "unit", ...}}}
    or {"error": reason} where the kernel cannot be built or run here."""
    threads = threads or len(os.sched_getaffinity(0))
    flags = cpu_flags()
    missing = [f for f in ("avx2", "fma") if flags and f not in flags]
    if missing:
        return {"error": f"this CPU lacks {', '.join(missing)}; the kernels need AVX2 and FMA"}
    kinds: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kiln-peak-") as tmp:
        try:
            binary = compile_kernel(Path(tmp))
        except RuntimeError as exc:
            return {"error": str(exc)}
        for kind in KINDS:
            if kind in NEEDS and NEEDS[kind] not in flags:
                kinds[kind] = {"skipped": f"no {NEEDS[kind]} on this CPU"}
                continue
            try:
                runs = [run_kind(binary, kind, threads, seconds) for _ in range(trials)]
            except RuntimeError as exc:
                kinds[kind] = {"skipped": str(exc)}
                continue
            rates = [r["gops"] for r in runs]
            kinds[kind] = {
                "peak": max(rates),
                "median": round(statistics.median(rates), 3),
                "trials": rates,
                "unit": UNITS[kind],
            }
    return {
        "threads": threads,
        "seconds": seconds,
        "trials": trials,
        "compiler_flags": " ".join(FLAGS),
        "kinds": kinds,
    }


def describe(peak: dict[str, Any]) -> str:
    if "error" in peak:
        return f"peak not measured: {peak['error']}"
    parts = []
    for kind, k in peak["kinds"].items():
        if "peak" in k:
            parts.append(f"{kind} {k['peak']:.0f} {k['unit']} (median {k['median']:.0f})")
        else:
            parts.append(f"{kind} not measured ({k['skipped']})")
    return f"peak on {peak['threads']} threads: " + "; ".join(parts)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=None, help="default: usable cores")
    parser.add_argument("--seconds", type=float, default=1.0, help="per trial")
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = parser.parse_args()
    if args.seconds <= 0 or args.trials < 1 or (args.threads is not None and args.threads < 1):
        parser.error("give --seconds > 0, --trials >= 1 and --threads >= 1")
    peak = measure_peak(args.threads, args.seconds, args.trials)
    if args.json:
        args.json.write_text(json.dumps(peak, indent=2) + "\n")
    print(describe(peak))
    return 1 if "error" in peak else 0


if __name__ == "__main__":
    sys.exit(main())
