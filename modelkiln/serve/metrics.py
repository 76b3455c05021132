"""Prometheus metrics under Triton's names and labels, so existing Triton dashboards work.

Per model and version (labels `model`, `version`): requests that succeeded and failed
(failures also labelled with a `reason`, as Triton does: REJECTED for a full queue, CANCELED
for a timed-out request, BACKEND for a failing run, OTHER for a bad request), inferences
(rows of a batch), executions (session runs), and cumulative request, queue and compute
durations in microseconds.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from modelkiln.serve import MODEL_VERSION

_COUNTERS: tuple[tuple[str, str], ...] = (
    ("nv_inference_request_success", "Number of successful inference requests, all batch sizes"),
    ("nv_inference_request_failure", "Number of failed inference requests, all batch sizes"),
    ("nv_inference_count", "Number of inferences performed (does not include cached requests)"),
    ("nv_inference_exec_count", "Number of model executions performed"),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
    ),
    ("nv_inference_queue_duration_us", "Cumulative inference queuing duration in microseconds"),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds",
    ),
)
FAILURE_REASONS = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


class Metrics:
    """Thread-safe counters: workers add executions, the app adds requests."""

    def __init__(self, models: list[str]) -> None:
        self._lock = threading.Lock()
        self._models = list(models)
        self._values: dict[tuple[str, str, str], float] = defaultdict(float)

    def add(self, model: str, metric: str, value: float, reason: str = "") -> None:
        with self._lock:
            self._values[(metric, model, reason)] += value

    def value(self, model: str, metric: str, reason: str = "") -> float:
        with self._lock:
            if metric == "nv_inference_request_failure" and not reason:
                return sum(v for (m, n, _), v in self._values.items() if m == metric and n == model)
            return self._values.get((metric, model, reason), 0.0)

    def request_done(self, model: str, duration_us: float, failure: str | None = None) -> None:
        """Triton counts the duration of successful requests only (its count matches
        nv_inference_request_success)."""
        if failure is None:
            self.add(model, "nv_inference_request_success", 1)
            self.add(model, "nv_inference_request_duration_us", duration_us)
        else:
            self.add(model, "nv_inference_request_failure", 1, failure)

    def request_since(self, model: str, start: float, failure: str | None = None) -> None:
        """`request_done` for a request that began at `start` (time.perf_counter())."""
        self.request_done(model, (time.perf_counter() - start) * 1e6, failure)

    def execution(
        self, model: str, rows: int, requests: int, queue_us: float, compute_us: float
    ) -> None:
        """One session run of `requests` requests holding `rows` inferences; Triton counts
        the queue time of every request and the compute time once per request."""
        with self._lock:
            self._values[("nv_inference_exec_count", model, "")] += 1
            self._values[("nv_inference_count", model, "")] += rows
            self._values[("nv_inference_queue_duration_us", model, "")] += queue_us
            self._values[("nv_inference_compute_infer_duration_us", model, "")] += (
                compute_us * requests
            )

    def render(self) -> str:
        """The Prometheus text exposition format (version 0.0.4)."""
        lines: list[str] = []
        with self._lock:
            values = dict(self._values)
        for metric, help_text in _COUNTERS:
            lines.append(f"# HELP {metric} {help_text}")
            lines.append(f"# TYPE {metric} counter")
            for model in self._models:
                labels = f'model="{_escape(model)}",version="{MODEL_VERSION}"'
                if metric == "nv_inference_request_failure":
                    for reason in FAILURE_REASONS:
                        value = values.get((metric, model, reason), 0.0)
                        lines.append(f'{metric}{{{labels},reason="{reason}"}} {_number(value)}')
                else:
                    lines.append(
                        f"{metric}{{{labels}}} {_number(values.get((metric, model, ''), 0))}"
                    )
        return "\n".join(lines) + "\n"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(round(value)))  # Triton reports whole counts and microseconds
