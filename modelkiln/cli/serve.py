"""`kiln serve`: serve artifacts over the Open Inference Protocol (KServe v2) on HTTP."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from modelkiln.cli.common import handle_errors
from modelkiln.errors import UserInputError
from modelkiln.serve import DEFAULT_HOST, DEFAULT_PORT
from modelkiln.serve.options import AppOptions, BatchingOptions


@click.command()
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--host",
    default=DEFAULT_HOST,
    show_default=True,
    help="Address to listen on; 0.0.0.0 exposes the server to the network.",
)
@click.option(
    "--port",
    default=DEFAULT_PORT,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="TCP port (0: any free port, printed at startup).",
)
@click.option(
    "--max-batch-size",
    default=8,
    show_default=True,
    type=click.IntRange(1),
    help="Rows per run when requests are batched together; 1 turns batching off.",
)
@click.option(
    "--max-queue-delay-ms",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0),
    help="How long a request may wait for others to join its batch (0: batch only "
    "what is already queued, as Triton's default).",
)
@click.option(
    "--max-queue-size",
    default=64,
    show_default=True,
    type=click.IntRange(1),
    help="Requests that may wait per model; more are answered 503.",
)
@click.option(
    "--instances",
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Worker threads per model, each with its own session.",
)
@click.option(
    "--threads",
    type=click.IntRange(1),
    default=None,
    help="Inference threads per session (default: the artifact's target).",
)
@click.option(
    "--api-key-file",
    type=click.Path(path_type=Path),
    default=None,
    help="File holding an API key; requests must send 'Authorization: Bearer KEY'.",
)
@click.option(
    "--open-health",
    is_flag=True,
    help="With --api-key-file: leave the health routes open (for probes).",
)
@click.option(
    "--max-request-bytes",
    default=64 << 20,
    show_default=True,
    type=click.IntRange(1),
    help="Larger request bodies are answered 413.",
)
@click.option(
    "--request-timeout",
    default=60.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="Seconds a request may take, from its first byte to its answer (504 after).",
)
@click.option(
    "--max-connections",
    default=1024,
    show_default=True,
    type=click.IntRange(1),
    help="Open connections at once; more are answered 503.",
)
@click.option(
    "--drain-seconds",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0),
    help="On SIGTERM/SIGINT, how long requests in flight (and queued work) may take to finish.",
)
@click.option("--no-access-log", is_flag=True, help="Do not log a JSON line per request.")
@handle_errors
def serve(
    artifacts: tuple[Path, ...],
    host: str,
    port: int,
    max_batch_size: int,
    max_queue_delay_ms: float,
    max_queue_size: int,
    instances: int,
    threads: int | None,
    api_key_file: Path | None,
    open_health: bool,
    max_request_bytes: int,
    request_timeout: float,
    max_connections: int,
    drain_seconds: float,
    no_access_log: bool,
) -> None:
    """Serve ARTIFACTS over HTTP with the Open Inference Protocol (KServe v2).

    Each artifact is served under its folder's name, version 1, at
    /v2/models/NAME/infer (JSON tensors, or tritonclient's binary tensor extension);
    text-generation artifacts also at /v2/models/NAME/generate and generate_stream.
    Requests with the same shapes are batched together (--max-batch-size) and run off the
    event loop. /metrics has Triton's metric names; /v2/health/live and ready are the probes.

    \b
    kiln serve out/minilm-cpu
    kiln serve out/a out/b --host 0.0.0.0 --port 8080 --api-key-file key.txt --open-health
    curl localhost:8000/v2/models/minilm-cpu

    Binds 127.0.0.1 unless told otherwise. SIGTERM or Ctrl-C drains and exits 0.
    """
    try:  # the HTTP stack is the `serve` extra; other commands never load it
        from modelkiln.serve.server import ServeConfig
        from modelkiln.serve.server import serve as run_server
    except ImportError as exc:
        raise UserInputError(
            f"kiln serve needs {exc.name or 'its HTTP stack'}: pip install 'modelkiln[serve]'"
        ) from None
    if open_health and api_key_file is None:
        raise UserInputError("--open-health only matters with --api-key-file (health is open)")
    config = ServeConfig(
        artifacts=list(artifacts),
        host=host,
        port=port,
        api_key_file=api_key_file,
        open_health=open_health,
        drain_seconds=drain_seconds,
        threads=threads,
        access_log=not no_access_log,
        max_connections=max_connections,
        batching=BatchingOptions(
            max_batch_size=max_batch_size,
            max_queue_delay_ms=max_queue_delay_ms,
            max_queue_size=max_queue_size,
            instances=instances,
        ),
        app=AppOptions(max_request_bytes=max_request_bytes, request_timeout=request_timeout),
    )
    sys.exit(run_server(config))
