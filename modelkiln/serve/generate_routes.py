"""Triton's generate extension for text-generation artifacts:
`POST /v2/models/{m}/generate` answers once, `.../generate_stream` streams server-sent events.

Request: `{"text_input": "...", "parameters": {"max_tokens": 32, "do_sample": false,
"temperature": 1.0, "top_k": 50, "top_p": 1.0, "repetition_penalty": 1.0, "seed": 0}}`
(or `"input_ids": [1, 2, 3]` instead of text). Answer: `{"model_name", "model_version",
"text_output", "output_ids"}`; each streamed event carries the new `text_output` piece and
the last one `"finished": true` with all `output_ids`. Generation runs on a worker's
session (one request at a time per session).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from modelkiln.backends.base import Session
from modelkiln.errors import UserInputError
from modelkiln.sampling import Sampling
from modelkiln.serve import MODEL_VERSION
from modelkiln.serve.batcher import QueueFull
from modelkiln.serve.models import ServedModel
from modelkiln.serve.protocol import ProtocolError, load_json
from modelkiln.serve.state import ServerState
from modelkiln.text import TextCodec

_SAMPLING = {"do_sample": bool, "temperature": float, "top_k": int, "top_p": float}
_SAMPLING_MORE = {"repetition_penalty": float, "seed": int}
_DONE = object()


def generate_routes() -> list[tuple[str, Callable[[ServerState, Request], Awaitable[Response]]]]:
    return [("/generate", generate), ("/generate_stream", generate_stream)]


class Cancelled(Exception):
    """Generation stopped because nobody waits for it any more."""


class _Plan:
    """A parsed generate request."""

    def __init__(self, model: ServedModel, document: Any) -> None:
        if not model.is_decoder:
            raise ProtocolError(
                f"model '{model.name}' is a {model.artifact.manifest.task} model; generate needs "
                "a text-generation artifact (use /infer)"
            )
        if not isinstance(document, dict):
            raise ProtocolError("the request must be a JSON object with 'text_input'")
        params = document.get("parameters") or {}
        if not isinstance(params, dict):
            raise ProtocolError("'parameters' must be a JSON object")
        self.codec: TextCodec | None = None
        text = document.get("text_input")
        ids = document.get("input_ids")
        if isinstance(text, str) and ids is None:
            self.codec = model.codec()
            self.ids = self.codec.encode(text)
        elif text is None and isinstance(ids, list) and ids:
            if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
                raise ProtocolError("'input_ids' must be a list of token ids (integers)")
            self.ids = ids
        else:
            raise ProtocolError("give the prompt as 'text_input' (a string) or 'input_ids'")
        tokens = params.get("max_tokens", params.get("max_new_tokens", 16))
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            raise ProtocolError(f"'max_tokens' must be an integer of at least 1, got {tokens!r}")
        self.max_new_tokens = tokens
        chosen: dict[str, Any] = {}
        for key, kind in {**_SAMPLING, **_SAMPLING_MORE}.items():
            if key in params and params[key] is not None:
                value = params[key]
                if kind is not bool and (
                    isinstance(value, bool) or not isinstance(value, int | float)
                ):
                    raise ProtocolError(f"parameter '{key}' must be a number, got {value!r}")
                if kind is int and not float(value).is_integer():
                    raise ProtocolError(f"parameter '{key}' must be an integer, got {value!r}")
                chosen[key] = kind(value)
        eos = params.get("stop_token_ids")
        if eos is not None and not (
            isinstance(eos, list) and all(type(i) is int and i >= 0 for i in eos)
        ):
            raise ProtocolError(f"'stop_token_ids' must be a list of token ids, got {eos!r}")
        self.eos = eos
        # set when the client has gone or timed out: generation stops at the next token
        self.cancelled = threading.Event()
        self.sampling = Sampling(**chosen)

    def run(self, session: Session, stream: Callable[[np.ndarray], None] | None) -> list[int]:
        def each(token: np.ndarray) -> None:
            if self.cancelled.is_set():
                raise Cancelled("the client is gone")
            if stream is not None:
                stream(token)

        result = session.generate(
            [self.ids],
            max_new_tokens=self.max_new_tokens,
            sampling=self.sampling,
            eos_token_id=self.eos,
            streamer=each,
        )
        return [int(t) for t in result.new_tokens[0].tolist()]

    def text(self, ids: list[int]) -> str | None:
        return self.codec.decode(ids) if self.codec is not None else None


async def _plan(state: ServerState, request: Request) -> tuple[ServedModel, _Plan]:
    model = state.model(request)
    timeout = state.options.request_timeout
    try:
        body = await asyncio.wait_for(state.body(request), timeout)
    except TimeoutError:
        raise ProtocolError(
            f"the request did not arrive within {timeout:g} s (--request-timeout)", 408
        ) from None
    return model, _Plan(model, load_json(body))


def _submit(model: ServedModel, call: Callable[[Session], Any]) -> asyncio.Future[Any]:
    try:
        return model.batcher.submit_call(call)
    except QueueFull as exc:
        raise ProtocolError(str(exc), 503) from None


def _timed_out(
    state: ServerState, model: ServedModel, plan: _Plan, start: float, what: str
) -> ProtocolError:
    """Stop the generation, count the request as CANCELED, and the 504 to answer."""
    plan.cancelled.set()
    state.metrics.request_since(model.name, start, "CANCELED")
    timeout = state.options.request_timeout
    return ProtocolError(
        f"model '{model.name}' did not {what} within {timeout:g} s (--request-timeout)", 504
    )


def _backend_error(model: ServedModel, exc: Exception) -> ProtocolError:
    if isinstance(exc, UserInputError):
        return ProtocolError(str(exc))
    return ProtocolError(f"model '{model.name}' failed on this request: {exc}", 500)


async def generate(state: ServerState, request: Request) -> Response:
    start = time.perf_counter()
    model, plan = await _plan(state, request)
    future = _submit(model, lambda session: plan.run(session, None))
    try:
        ids = await asyncio.wait_for(future, state.options.request_timeout)
    except TimeoutError:
        raise _timed_out(state, model, plan, start, "answer") from None
    except Exception as exc:  # noqa: BLE001 - reported as one line
        state.metrics.request_since(model.name, start, "BACKEND")
        raise _backend_error(model, exc) from None
    state.metrics.request_since(model.name, start)
    return JSONResponse(
        {
            "model_name": model.name,
            "model_version": MODEL_VERSION,
            "text_output": plan.text(ids),
            "output_ids": ids,
        }
    )


async def generate_stream(state: ServerState, request: Request) -> Response:
    start = time.perf_counter()
    model, plan = await _plan(state, request)
    loop = asyncio.get_running_loop()
    tokens: asyncio.Queue[Any] = asyncio.Queue()
    timeout = state.options.request_timeout

    def stream(token: np.ndarray) -> None:
        loop.call_soon_threadsafe(tokens.put_nowait, int(token[0]))

    future = _submit(model, lambda session: plan.run(session, stream))
    future.add_done_callback(lambda _: tokens.put_nowait(_DONE))

    async def next_token() -> Any:
        """The next token, or TimeoutError when none came within the request timeout."""
        return await asyncio.wait_for(tokens.get(), timeout)

    try:
        first = await next_token()
    except TimeoutError:
        raise _timed_out(state, model, plan, start, "start answering") from None
    if first is _DONE and future.exception() is not None:
        state.metrics.request_since(model.name, start, "BACKEND")
        raise _backend_error(model, future.exception())  # type: ignore[arg-type]

    async def events() -> AsyncIterator[bytes]:
        new: list[int] = []
        shown = ""
        item = first
        header: dict[str, Any] = {"model_name": model.name, "model_version": MODEL_VERSION}
        try:
            while item is not _DONE:
                new.append(item)
                text = plan.text(new)
                piece = dict(header)
                if text is None:
                    piece["output_ids"] = [item]
                elif not text.endswith("\ufffd"):  # a character still incomplete: wait for it
                    piece["text_output"] = text[len(shown) :]
                    shown = text
                else:
                    piece["text_output"] = ""
                yield f"data: {json.dumps(piece)}\n\n".encode()
                try:
                    item = await next_token()
                except TimeoutError:
                    plan.cancelled.set()
                    state.metrics.request_since(model.name, start, "CANCELED")
                    stalled = {**header, "error": f"no token for {timeout:g} s (--request-timeout)"}
                    yield f"data: {json.dumps(stalled)}\n\n".encode()
                    return
            error = future.exception()
            last = dict(header)
            if error is not None:
                last["error"] = str(_backend_error(model, error))  # type: ignore[arg-type]
                state.metrics.request_since(model.name, start, "BACKEND")
            else:
                text = plan.text(new)
                last.update(
                    text_output="" if text is None else text[len(shown) :],
                    output_ids=future.result(),
                    finished=True,
                )
                state.metrics.request_since(model.name, start)
            yield f"data: {json.dumps(last)}\n\n".encode()
        finally:  # the client went away (the response is cancelled) or the stream ended
            plan.cancelled.set()

    return StreamingResponse(events(), media_type="text/event-stream")
