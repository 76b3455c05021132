"""The HTTP application: Open Inference Protocol v2 routes over the served models.

Every error is a non-200 status with `{"error": "..."}` naming what was wrong. Inference
runs in the models' worker threads (`batcher.py`), never on the event loop; the event loop
only parses, checks and encodes.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from modelkiln.errors import UserInputError
from modelkiln.serve import LIVE_PATH, METRICS_PATH, MODEL_VERSION, READY_PATH
from modelkiln.serve.batcher import QueueFull
from modelkiln.serve.generate_routes import generate_routes
from modelkiln.serve.protocol import ProtocolError, encode_infer, parse_infer
from modelkiln.serve.state import ServerState, error
from modelkiln.versions import tool_versions

# Bodies and answers above this size are parsed and encoded in a worker thread, so one big
# request does not hold up every other route (health probes included) for its parse time.
OFF_LOOP_BYTES = 256 << 10


def handled(
    route: Callable[[ServerState, Request], Awaitable[Response]], state: ServerState
) -> Callable[[Request], Awaitable[Response]]:
    """A route whose errors become `{"error": ...}` answers: user errors with their status,
    anything else 500 (and one line on stderr), never a bare traceback page."""

    async def endpoint(request: Request) -> Response:
        try:
            return await route(state, request)
        except ProtocolError as exc:
            return error(str(exc), exc.status)
        except UserInputError as exc:
            return error(str(exc), 400)
        except Exception as exc:  # noqa: BLE001 - a server bug must still answer
            where = f"{request.method} {request.url.path}"
            print(f"error: {where}: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return error(f"the server failed on this request ({type(exc).__name__}: {exc})", 500)

    return endpoint


async def live(state: ServerState, request: Request) -> Response:
    return JSONResponse({"live": True})


async def ready(state: ServerState, request: Request) -> Response:
    if state.draining:
        return JSONResponse({"ready": False, "error": "the server is shutting down"}, 503)
    return JSONResponse({"ready": True})


async def server_metadata(state: ServerState, request: Request) -> Response:
    extensions = ["binary_tensor_data"]
    if any(m.is_decoder for m in state.models.values()):
        extensions.append("generate")
    return JSONResponse(
        {
            "name": "modelkiln",
            "version": tool_versions(("modelkiln",))["modelkiln"] or "0",
            "extensions": extensions,
        }
    )


async def model_metadata(state: ServerState, request: Request) -> Response:
    return JSONResponse(state.model(request).metadata())


async def model_ready(state: ServerState, request: Request) -> Response:
    model = state.model(request)
    if state.draining:
        return JSONResponse({"name": model.name, "ready": False}, 503)
    return JSONResponse({"name": model.name, "ready": True})


async def metrics(state: ServerState, request: Request) -> Response:
    return PlainTextResponse(
        state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
    )


async def infer(state: ServerState, request: Request) -> Response:
    start = time.perf_counter()
    model = state.model(request)
    timeout = state.options.request_timeout
    failure = "OTHER"  # the metrics' reason if this request fails from here
    try:
        async with asyncio.timeout(timeout):
            body = await state.body(request)
            json_length = request.headers.get("inference-header-content-length")
            if len(body) > OFF_LOOP_BYTES:  # large bodies are parsed off the event loop
                parsed = await asyncio.to_thread(parse_infer, body, json_length)
            else:
                parsed = parse_infer(body, json_length)
            feeds = model.check(parsed.inputs, parsed.outputs)
            try:
                future = model.batcher.submit(feeds)
            except QueueFull as exc:
                failure = "REJECTED"
                raise ProtocolError(str(exc), 503) from None
            failure = "CANCELED"
            try:
                outputs = await future
            except UserInputError:
                failure = "OTHER"
                raise
            except (TimeoutError, asyncio.CancelledError):
                raise
            except Exception as exc:  # noqa: BLE001 - the backend's own error, in one line
                failure = "BACKEND"
                text = str(exc).strip()
                message = text.splitlines()[0] if text else type(exc).__name__
                raise ProtocolError(
                    f"model '{model.name}' failed on this request: {message}", 500
                ) from None
        failure = "OTHER"
        if sum(v.nbytes for v in outputs.values()) > OFF_LOOP_BYTES:
            content, header_length = await asyncio.to_thread(
                encode_infer, model.name, MODEL_VERSION, parsed, outputs
            )
        else:
            content, header_length = encode_infer(model.name, MODEL_VERSION, parsed, outputs)
    except TimeoutError:
        state.metrics.request_since(model.name, start, "CANCELED")
        if failure == "CANCELED":
            return error(
                f"model '{model.name}' did not answer within {timeout:g} s (--request-timeout)",
                504,
            )
        return error(f"the request did not arrive within {timeout:g} s (--request-timeout)", 408)
    except Exception:
        state.metrics.request_since(model.name, start, failure)
        raise
    headers = {}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    media = "application/octet-stream" if header_length is not None else "application/json"
    state.metrics.request_since(model.name, start)
    return Response(content, headers=headers, media_type=media)


def model_routes(path: str, endpoint: Any, methods: list[str]) -> list[Route]:
    """A model route and its /versions/{version} twin."""
    return [
        Route(f"/v2/models/{{model}}{path}", endpoint, methods=methods),
        Route(f"/v2/models/{{model}}/versions/{{version}}{path}", endpoint, methods=methods),
    ]


def build_app(state: ServerState) -> Starlette:
    def h(route: Callable[[ServerState, Request], Awaitable[Response]]) -> Any:
        return handled(route, state)

    routes = [
        Route(LIVE_PATH, h(live), methods=["GET"]),
        Route(READY_PATH, h(ready), methods=["GET"]),
        Route("/v2", h(server_metadata), methods=["GET"]),
        Route(METRICS_PATH, h(metrics), methods=["GET"]),
        *model_routes("", h(model_metadata), ["GET"]),
        *model_routes("/ready", h(model_ready), ["GET"]),
        *model_routes("/infer", h(infer), ["POST"]),
    ]
    for path, route in generate_routes():
        routes.extend(model_routes(path, h(route), ["POST"]))
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


async def _http_error(request: Request, exc: Exception) -> Response:
    """Unknown routes and wrong methods answer in the protocol's error shape too."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error(f"no route {request.method} {request.url.path}; see GET /v2", 404)
    if exc.status_code == 405:
        return error(f"{request.url.path} does not take {request.method}", 405)
    return error(str(exc.detail), exc.status_code)
