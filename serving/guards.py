"""ASGI guards in front of the service: an optional API key and a request-size limit.

Both answer before BentoML reads or parses the body, with a JSON error that says what to change.
Health, readiness, metrics and the OpenAPI document stay open, so probes and scrapers need no key.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

OPEN_PATHS = frozenset({"/readyz", "/livez", "/healthz", "/metrics", "/docs.json", "/"})


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    def __init__(self, app: Callable[..., Awaitable[None]], api_key: str | None, max_body_bytes: int) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith("/static"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and not self._authorised(headers):
            return await send_json(send, 401, {"error": "missing or wrong API key: send the header "
                                                        "'Authorization: Bearer <key>' (or 'X-API-Key: <key>')"},
                                   [(b"www-authenticate", b"Bearer")])
        declared = headers.get(b"content-length")
        if declared is not None:
            if not declared.isdigit() or int(declared) > self.max_body_bytes:
                return await self._too_large(send)
            return await self.app(scope, receive, send)
        # No declared length (chunked): read up to the limit, then hand the body on.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return await self._too_large(send)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        supplied = headers.get(b"authorization", b"")
        supplied = supplied[7:].strip() if supplied[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        return hmac.compare_digest(supplied, self.api_key or b"")

    async def _too_large(self, send: Send) -> None:
        await send_json(send, 413, {"error": f"request body over {self.max_body_bytes} bytes: send fewer records "
                                             "per request (LOOPLINE_MAX_BODY_BYTES sets the limit)"})
