"""Starting and stopping `kiln serve`: fail fast, then serve until SIGTERM/SIGINT, drain.

Startup checks what can be checked before serving, in order of cost: the API key file, the
port (bound here, then handed to uvicorn, so "in use" is one line and not a traceback), then
every artifact (opened with its backend). On SIGTERM or SIGINT the server stops accepting
connections, reports not-ready, finishes requests in flight for up to `drain_seconds`,
stops the workers and returns 0.
"""

from __future__ import annotations

import contextlib
import errno
import math
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

import uvicorn

from modelkiln.errors import ModelkilnError, UserInputError
from modelkiln.serve import DEFAULT_HOST, DEFAULT_PORT, LIVE_PATH, READY_PATH
from modelkiln.serve.app import build_app
from modelkiln.serve.guard import Guard, read_api_key
from modelkiln.serve.metrics import Metrics
from modelkiln.serve.models import ServedModel, model_name, open_models
from modelkiln.serve.options import AppOptions, BatchingOptions
from modelkiln.serve.state import ServerState


@dataclass(frozen=True)
class ServeConfig:
    artifacts: Sequence[Path]
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    api_key_file: Path | None = None
    open_health: bool = False
    drain_seconds: float = 30.0
    threads: int | None = None
    access_log: bool = True
    max_connections: int = 1024
    batching: BatchingOptions = field(default_factory=BatchingOptions)
    app: AppOptions = field(default_factory=AppOptions)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one line saying why not."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise UserInputError(f"--host {host} does not resolve: {exc.strerror}") from None
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserInputError(
                f"port {port} on {host} is in use by another process; choose another with --port"
            ) from None
        raise UserInputError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    return sock


class _Server(uvicorn.Server):
    """uvicorn's server with our own signal handling: a signal starts the drain (and marks
    the server not ready) and the process then exits 0 instead of re-raising the signal."""

    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.models_state = state

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handled = (signal.SIGINT, signal.SIGTERM)
        originals = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
        try:
            yield
        finally:
            for sig, handler in originals.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        state = self.models_state
        if not state.draining:
            state.draining = True
            state.drain_started = time.monotonic()
        super().handle_exit(sig, frame)


def start(
    config: ServeConfig, log: TextIO = sys.stderr
) -> tuple[_Server, socket.socket, dict[str, ServedModel]]:
    """Everything up to serving: checks, the socket, the models, the app."""
    api_key = read_api_key(config.api_key_file) if config.api_key_file is not None else None
    if not config.artifacts:
        raise UserInputError("give at least one artifact to serve")
    sock = bind(config.host, config.port)
    try:
        metrics = Metrics([model_name(Path(p)) for p in config.artifacts])
        models = open_models(config.artifacts, config.batching, metrics, config.threads)
    except ModelkilnError as exc:
        sock.close()
        if isinstance(exc, UserInputError):
            raise
        # an artifact whose model does not load (corrupt, or built for another backend
        # version) is a bad artifact given on the command line: a usage error, exit 2
        raise UserInputError(str(exc)) from None
    except BaseException:
        sock.close()
        raise
    state = ServerState(models, metrics, config.app)
    open_paths = frozenset({LIVE_PATH, READY_PATH}) if config.open_health else frozenset()
    app = Guard(build_app(state), api_key, open_paths, log if config.access_log else None)
    uv_config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=math.ceil(config.drain_seconds),
        timeout_keep_alive=5,
        # connections (and so requests in the making) at once; beyond it uvicorn answers 503
        limit_concurrency=config.max_connections,
        server_header=False,
    )
    return _Server(uv_config, state), sock, models


def serve(config: ServeConfig, log: TextIO = sys.stderr) -> int:
    """Serve until a signal; the exit code (0 after a clean drain)."""
    server, sock, models = start(config, log)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    for model in models.values():
        manifest = model.artifact.manifest
        batching = (
            f"batches up to {model.max_batch} on '{model.batch_dim}'"
            if model.batch_dim and model.max_batch > 1
            else "no batching"
        )
        log.write(
            f"serving {model.name}: {manifest.task}, {manifest.backend.name} "
            f"{manifest.precision}, {batching}\n"
        )
    log.write(f"listening on http://{shown}:{port} (Open Inference Protocol v2); Ctrl-C stops\n")
    log.flush()
    state = server.models_state
    try:
        server.run(sockets=[sock])
    finally:
        # one drain budget for both stages: uvicorn's (requests in flight) and the workers'
        began = state.drain_started or time.monotonic()
        for model in models.values():
            model.batcher.stop(timeout=max(0.0, config.drain_seconds - (time.monotonic() - began)))
        sock.close()
    log.write("stopped\n")
    log.flush()
    return 0
