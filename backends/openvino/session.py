"""The OpenVINO session: `run` (synchronous) and `run_many` (a pool of async requests)."""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from modelkiln.artifact import Artifact
from modelkiln.backends.base import Session
from modelkiln.backends.openvino.blob_cache import DEFAULT, resolve_cache_dir
from modelkiln.backends.openvino.common import (
    compile_config,
    import_openvino,
    ov_message,
    port_names,
    reported_properties,
)
from modelkiln.backends.openvino.stateful import StatefulDecoder, make_stateful
from modelkiln.errors import BackendUnavailable, BuildError, InferenceError, UserInputError
from modelkiln.manifest import DecoderSection


class OpenVinoSession(Session):
    """An artifact compiled by OpenVINO.

    Options: `threads` (INFERENCE_NUM_THREADS; default: OpenVINO's choice) and `cache_dir`
    (compiled-blob cache; default `~/.cache/modelkiln/openvino` or
    `$MODELKILN_CACHE_DIR/openvino`; None disables it).

    `run(feeds)` is synchronous, like every session. `run_many(list_of_feeds)` runs many
    feeds on a pool of asynchronous infer requests and returns the results in order; with
    a `THROUGHPUT` target the pool holds as many requests as OpenVINO finds optimal (the
    device runs them in parallel streams), with `LATENCY` it holds one.

    After loading, `inference_precision` is what the compiled model reports (`f32` on a CPU
    without bf16 even for a bf16 target), `cache_dir` the blob folder used (or None) and
    `properties` the compiled model's reported properties.
    """

    def __init__(
        self,
        artifact: Artifact,
        threads: int | None = None,
        cache_dir: Any = DEFAULT,
    ) -> None:
        super().__init__(artifact)
        ov = import_openvino()
        section = artifact.manifest.backend
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise UserInputError(f"threads must be a whole number >= 1, got {threads!r}")
        device = section.get("device", "CPU")
        core = ov.Core()
        if device not in core.available_devices:
            raise BackendUnavailable(
                f"{artifact.path} was built for OpenVINO device {device}, which this machine "
                f"lacks (it has {', '.join(core.available_devices) or 'none'})"
            )
        self.cache_dir = resolve_cache_dir(artifact, section, cache_dir)
        config = compile_config(
            section.get("performance_hint", "LATENCY"),
            section.get("inference_precision_hint", "f32"),
            threads,
        )
        if self.cache_dir is not None:
            config["CACHE_DIR"] = str(self.cache_dir)
        xml = artifact.file("model")
        decoder = artifact.manifest.decoder
        try:
            if decoder is None:
                # From the path (not a read Model) a cache hit skips reading the IR.
                self._compiled = core.compile_model(str(xml), device, config)
            else:  # the cache as the model's state: OpenVINO's fast path for decoders
                model = make_stateful(ov, core.read_model(str(xml)), decoder)
                self._compiled = core.compile_model(model, device, config)
        except Exception as exc:  # OpenVINO raises its own exception types
            raise BuildError(f"openvino cannot load {xml}: {ov_message(exc)}") from None
        self.stateful = decoder is not None
        self.properties = reported_properties(self._compiled)
        self.inference_precision = self.properties["inference_precision"]
        self.performance_hint = config["PERFORMANCE_HINT"]
        where = f"openvino load of {artifact.path}"
        cache = (
            {n for layer in decoder.layers for n in (layer.past_key, layer.past_value)}
            if decoder
            else set()
        )
        present = (
            {n for layer in decoder.layers for n in (layer.present_key, layer.present_value)}
            if decoder
            else set()
        )
        wanted_outputs = [n for n in self.outputs if n not in present]
        self._outputs = port_names(self._compiled.outputs, wanted_outputs, "output", where)
        self._inputs = port_names(
            self._compiled.inputs, [n for n in self.inputs if n not in cache], "input", where
        )
        extra = [
            sorted(p.get_names())
            for p in self._compiled.inputs
            if not set(p.get_names()) & set(self._inputs)
        ]
        if extra:
            raise BuildError(f"{where}: the model has input(s) {extra} the manifest does not list")
        self._lock = threading.Lock()
        self._pool: list[Any] = []  # run_many's infer requests, made on first use
        self._stateful = None if decoder is None else self.cache_stepper(decoder)
        if self._stateful is None:
            self._request = self._compiled.create_infer_request()

    # ---------------------------------------------------------------- running

    def _ov_feeds(self, feeds: Mapping[str, np.ndarray]) -> dict[int, np.ndarray]:
        """Feeds keyed by input port index; manifest inputs the compiled model dropped (an
        unused input OpenVINO optimized away) are checked but not passed."""
        return {self._inputs[name]: value for name, value in feeds.items() if name in self._inputs}

    def _collect(self, request: Any) -> dict[str, np.ndarray]:
        """The outputs keyed by manifest name, copied out of the request's buffers."""
        result = {}
        for name, index in self._outputs.items():
            data = request.get_output_tensor(index).data
            result[name] = np.array(data, dtype=self.outputs[name].dtype, copy=True)
        return result

    def _fail(self, exc: BaseException, feeds: Mapping[str, np.ndarray]) -> InferenceError:
        shapes = ", ".join(f"{k}{list(v.shape)}" for k, v in feeds.items())
        return InferenceError(
            f"openvino failed running {self.artifact.path} on {shapes}: {ov_message(exc)}"
        )

    def _run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            try:
                if self._stateful is not None:
                    return self._stateful.run(feeds)
                self._request.infer(self._ov_feeds(feeds))
                return self._collect(self._request)
            except Exception as exc:  # OpenVINO raises its own exception types
                raise self._fail(exc, feeds) from None

    def cache_stepper(self, decoder: DecoderSection) -> StatefulDecoder:
        """Generation steps on a request of its own, the cache kept in its state."""
        ov = import_openvino()
        return StatefulDecoder(ov, self._compiled, decoder, self.inputs, self.check, self._fail)

    def run_many(self, many: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
        """Run every feed dict on a pool of infer requests; results come back in order.

        Each feed dict is checked like `run`'s (a bad one raises `FeedError` before any
        runs). With a THROUGHPUT target, requests run in parallel on the device's streams.

        Feed i goes to request i mod k; before a request takes a new feed, the caller's
        thread waits for it and copies its outputs out. No Python callback runs on an
        OpenVINO thread (AsyncInferQueue's would): a callback can trigger Python's cyclic
        garbage collector there, and a session freed on its own device thread aborts the
        process ("Resource deadlock avoided").
        """
        checked = [self.check(feeds) for feeds in many]
        if not checked:
            return []
        if self._stateful is not None:  # one request keeps one cache: in order
            return [self._run(feeds) for feeds in checked]
        with self._lock:
            jobs = int(self.properties.get("optimal_number_of_infer_requests") or 1)
            requests = self._request_pool(min(jobs, len(checked)))
            results: list[dict[str, np.ndarray]] = []
            pending: deque[tuple[int, Any]] = deque()  # (feed index, request), oldest first
            current = 0  # the feed an OpenVINO error belongs to
            try:
                for index, feeds in enumerate(checked):
                    if len(pending) == len(requests):  # all busy: the oldest is reused next
                        current, request = pending.popleft()
                        request.wait()
                        results.append(self._collect(request))
                    current, request = index, requests[index % len(requests)]
                    request.start_async(self._ov_feeds(feeds))
                    pending.append((index, request))
                while pending:
                    current, request = pending.popleft()
                    request.wait()
                    results.append(self._collect(request))
            except Exception as exc:  # OpenVINO raises its own exception types
                for _, request in pending:  # none may still run once the error leaves
                    try:
                        request.wait()
                    except Exception:  # noqa: S112 - the first error is the one reported
                        continue
                raise self._fail(exc, checked[current]) from None
        return results

    def _request_pool(self, jobs: int) -> list[Any]:
        """`jobs` infer requests kept for later calls (creating one allocates its buffers)."""
        while len(self._pool) < jobs:
            self._pool.append(self._compiled.create_infer_request())
        return self._pool[:jobs]
