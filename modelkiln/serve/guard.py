"""The outermost layer of the server: bearer-token access control and one structured
access-log line per request (JSON, on stderr).

With an API key, every route needs `Authorization: Bearer <key>` (compared in constant
time) except the health routes when they are opened (`--open-health`, for probes).
"""

from __future__ import annotations

import hmac
import json
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from modelkiln.errors import UserInputError

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


def read_api_key(path: Path) -> bytes:
    """The key in `path` (surrounding whitespace dropped); one line of error if unusable."""
    try:
        text = path.read_bytes().strip()
    except FileNotFoundError:
        raise UserInputError(f"--api-key-file {path} does not exist") from None
    except OSError as exc:
        raise UserInputError(f"--api-key-file {path} cannot be read: {exc.strerror}") from None
    if not text:
        raise UserInputError(f"--api-key-file {path} is empty; put the key in it")
    if b"\n" in text or b" " in text:
        raise UserInputError(
            f"--api-key-file {path} holds more than one word; it must hold the key alone"
        )
    return text


class Guard:
    def __init__(
        self,
        app: App,
        api_key: bytes | None,
        open_paths: frozenset[str],
        log: TextIO | None = sys.stderr,
    ) -> None:
        self.app = app
        self.api_key = api_key
        self.open_paths = open_paths
        self.log = log

    def allowed(self, scope: Scope) -> bool:
        if self.api_key is None or scope["path"] in self.open_paths:
            return True
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    token.strip(), self.api_key
                )
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        seen = {"status": 0, "out": 0, "in": 0}

        async def counting_receive() -> Message:
            message = await receive()
            seen["in"] += len(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif message["type"] == "http.response.body":
                seen["out"] += len(message.get("body", b""))
            await send(message)

        try:
            if self.allowed(scope):
                await self.app(scope, counting_receive, recording_send)
            else:
                await _unauthorized(recording_send)
        finally:
            if self.log is not None:
                self._log(scope, seen, time.perf_counter() - start)

    def _log(self, scope: Scope, seen: dict[str, int], seconds: float) -> None:
        client = scope.get("client")
        line = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "client": f"{client[0]}:{client[1]}" if client else None,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "status": seen["status"],
            "ms": round(seconds * 1000, 3),
            "bytes_in": seen["in"],
            "bytes_out": seen["out"],
        }
        assert self.log is not None
        self.log.write(json.dumps(line) + "\n")
        self.log.flush()


async def _unauthorized(send: Send) -> None:
    body = json.dumps(
        {"error": "this server needs an API key: send 'Authorization: Bearer <key>'"}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 401,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"www-authenticate", b'Bearer realm="modelkiln"'),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
