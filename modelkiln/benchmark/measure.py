"""Timing and memory for `kiln bench`: interleaved rounds, percentiles, resident memory.

Timing. Every configuration (subject × sizes) is a `Config` whose `run()` does one
inference on feeds made beforehand. After warm-up, `measure` runs `rounds` rounds; each
round visits every configuration once, in an order shuffled per round (seeded), and runs it
for one *block*: repeated runs until the block has lasted `min_time / rounds` seconds, at
least one run. Each run is timed on its own with `time.perf_counter`, with the garbage
collector off inside a block and a 20 ms pause between blocks, so threads still spinning
from the previous block (ONNX Runtime's and OpenMP's) have gone idle. Because the rounds
interleave, a burst of noise on the machine (another process, frequency changes) hits every
configuration instead of whichever happened to run then, and the spread of the per-round
medians shows how much the figures moved.

Memory (Linux). `rss()` and `hwm()` read VmRSS and VmHWM (the peak) from
/proc/self/status; `reset_peak()` writes 5 to /proc/self/clear_refs, which sets the peak
back to the current RSS. The caller resets the peak before loading a subject and before the
first run of each configuration, so each figure is the highest resident memory of the process
during that step, minus the RSS before the subject was loaded: the memory that subject added
(weights, session, runtime buffers, activations, outputs). Where the peak cannot be reset,
the RSS after the step is used instead (a lower bound) and `peak_method` says so.
"""

from __future__ import annotations

import gc
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelkiln.versions import tool_versions

STATUS = Path("/proc/self/status")
CLEAR_REFS = Path("/proc/self/clear_refs")
PAUSE_S = 0.02
MIB = 1 << 20


@dataclass
class Config:
    subject: str
    dims: dict[str, int]
    items: int  # rows per run, for throughput
    run: Callable[[], Any]
    rounds: list[list[float]] = field(default_factory=list)  # seconds per run, per round
    peak_rss: int | None = None  # bytes above the subject's starting RSS
    first_outputs: Any = None  # outputs of the first run, kept only when asked for


def _status(key: str) -> int | None:
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def rss() -> int | None:
    """Resident set size of this process in bytes (None where /proc is missing)."""
    return _status("VmRSS")


def hwm() -> int | None:
    """Peak resident set size since start or the last `reset_peak()`."""
    return _status("VmHWM")


def reset_peak() -> bool:
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


class PeakMeter:
    """The peak RSS of a step, relative to a base RSS; a lower bound if peaks can't be reset."""

    def __init__(self) -> None:
        self.resettable = reset_peak()
        self.method = (
            "VmHWM (peak reset per step)"
            if self.resettable and hwm() is not None
            else ("VmRSS after the step (lower bound)" if rss() is not None else "unavailable")
        )

    def start(self) -> None:
        if self.resettable:
            reset_peak()

    def peak_since_start(self) -> int | None:
        return hwm() if self.resettable else rss()


class OtherLoad:
    """CPU time other processes used while we measured, in cores (Linux /proc/stat).

    Busy time of the whole machine minus this process's own CPU time (all its threads),
    divided by the wall time: 0 on a quiet machine, about 1 when another process kept a
    core busy throughout. Competing processes slow OpenMP-based runtimes (PyTorch) far more
    than their share, so a reader needs this number to trust a figure.
    """

    def __init__(self) -> None:
        self._start: tuple[float, float, float] | None = None

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
            ticks = [int(x) for x in fields]
        except (OSError, ValueError, IndexError):
            return None
        idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
        busy = (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")
        own = os.times()
        return time.perf_counter(), busy, own.user + own.system

    def start(self) -> None:
        self._start = self._sample()

    def stop(self) -> float | None:
        end = self._sample()
        if self._start is None or end is None or end[0] <= self._start[0]:
            return None
        wall = end[0] - self._start[0]
        others = (end[1] - self._start[1]) - (end[2] - self._start[2])
        return round(max(others, 0.0) / wall, 2)


def warm_up(
    configs: list[Config], runs: int, progress: Callable[[str], None] | None = None
) -> None:
    """`runs` untimed runs of every configuration, interleaved like the measured rounds."""
    for i in range(runs):
        for config in configs:
            config.run()
        time.sleep(PAUSE_S)
        if progress:
            progress(f"warm-up {i + 1}/{runs}")


def measure(
    configs: list[Config],
    rounds: int,
    min_time: float,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> float:
    """Run the interleaved rounds, appending each block's run times to its config.

    Returns the wall time spent.
    """
    budget = min_time / rounds
    order = list(range(len(configs)))
    shuffle = random.Random(seed)
    start = time.perf_counter()
    for r in range(rounds):
        shuffle.shuffle(order)
        for i in order:
            configs[i].rounds.append(_block(configs[i].run, budget))
            time.sleep(PAUSE_S)
        if progress:
            elapsed = time.perf_counter() - start
            left = elapsed / (r + 1) * (rounds - r - 1)
            progress(f"round {r + 1}/{rounds}  {elapsed:.1f}s elapsed, about {left:.0f}s left")
    return time.perf_counter() - start


def _block(run: Callable[[], Any], budget: float) -> list[float]:
    times: list[float] = []
    gc.collect()
    gc.disable()
    try:
        begin = time.perf_counter()
        while True:
            t0 = time.perf_counter()
            run()
            t1 = time.perf_counter()
            times.append(t1 - t0)
            if t1 - begin >= budget:
                return times
    finally:
        gc.enable()


def summarize(config: Config) -> dict[str, Any]:
    """Percentiles over every timed run, throughput, and per round the median, the minimum
    and the spread of the medians."""
    seconds = np.array([t for block in config.rounds for t in block], dtype=np.float64)
    ms = seconds * 1000.0
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    round_p50 = [float(np.median(block)) * 1000.0 for block in config.rounds]
    mid = float(np.median(round_p50))
    spread = (max(round_p50) - min(round_p50)) / mid * 100.0 if mid > 0 else 0.0
    return {
        "runs": int(seconds.size),
        "latency_ms": {
            "p50": _r(p50),
            "p90": _r(p90),
            "p99": _r(p99),
            "mean": _r(ms.mean()),
            "min": _r(ms.min()),
            "max": _r(ms.max()),
        },
        "throughput_items_per_s": _r(config.items * seconds.size / seconds.sum()),
        "rounds": {
            "p50_ms": [_r(v) for v in round_p50],
            "min_ms": [_r(min(block) * 1000.0) for block in config.rounds],
            "runs": [len(block) for block in config.rounds],
            "spread_pct": round(spread, 1),
        },
        "peak_rss_mb": None if config.peak_rss is None else round(config.peak_rss / MIB, 1),
    }


def mb(n: int | None) -> float | None:
    return None if n is None else round(n / MIB, 1)


def _r(x: Any) -> float:
    value = float(x)
    return round(value, 4 if abs(value) < 10 else 2)


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = tool_versions(("modelkiln", "numpy", "onnxruntime", "torch", "transformers"))
    return {
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions,
    }


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
