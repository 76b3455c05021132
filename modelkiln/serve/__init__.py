"""Serving artifacts: `kiln serve` speaks the Open Inference Protocol (KServe v2) over HTTP,
and `kiln triton` writes Triton model repositories.

Nothing here imports torch or transformers. The routes a probe or client relies on are named
once below (the KServe sample and the tests read them from here).
"""

from __future__ import annotations

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
METRICS_PATH = "/metrics"
MODEL_VERSION = "1"  # an artifact is one version of one model

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "LIVE_PATH",
    "METRICS_PATH",
    "MODEL_VERSION",
    "READY_PATH",
]
