"""The server's knobs, as plain data (the command line builds them without loading the
server's HTTP stack)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class BatchingOptions:
    max_batch_size: int = 8  # rows per run; 1 turns dynamic batching off
    max_queue_delay_ms: float = 0.0  # how long a request may wait for others to join it
    max_queue_size: int = 64  # requests waiting per model before 503
    instances: int = 1  # worker threads (each with its own session) per model


@dataclass(frozen=True)
class AppOptions:
    max_request_bytes: int = 64 << 20
    request_timeout: float = 60.0  # seconds from the first byte to the answer
