"""What the routes share: the served models, the metrics, the limits, and whether the
server is draining; plus the request body reader that enforces the size limit."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from modelkiln.serve import MODEL_VERSION
from modelkiln.serve.metrics import Metrics
from modelkiln.serve.models import ServedModel
from modelkiln.serve.options import AppOptions
from modelkiln.serve.protocol import ProtocolError, decode_body


class ServerState:
    def __init__(self, models: dict[str, ServedModel], metrics: Metrics, options: AppOptions):
        self.models = models
        self.metrics = metrics
        self.options = options
        self.draining = False
        self.drain_started: float | None = None  # time.monotonic() of the stop signal

    def model(self, request: Request) -> ServedModel:
        name = request.path_params["model"]
        model = self.models.get(name)
        if model is None:
            served = ", ".join(sorted(self.models)) or "none"
            raise ProtocolError(f"unknown model '{name}'; this server serves: {served}", 404)
        version = request.path_params.get("version")
        if version is not None and version != MODEL_VERSION:
            raise ProtocolError(
                f"model '{name}' has no version '{version}'; it has version {MODEL_VERSION}", 404
            )
        return model

    async def body(self, request: Request) -> bytes:
        """The request body, refused with 413 as soon as it passes the size limit."""
        limit = self.options.max_request_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise ProtocolError(
                f"the request has {declared} bytes; this server takes at most {limit} "
                "(--max-request-bytes)",
                413,
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ProtocolError(
                    f"the request is over {limit} bytes, this server's limit (--max-request-bytes)",
                    413,
                )
            chunks.append(chunk)
        raw = b"".join(chunks)
        return decode_body(raw, request.headers.get("content-encoding"), limit)


def error(message: str, status: int) -> Response:
    return JSONResponse({"error": message}, status_code=status)
