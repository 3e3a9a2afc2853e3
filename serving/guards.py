"""ASGI guards in front of the service: an optional API key, a request-size limit, and Loopline's own
wording for invalid requests.

The key, the body's media type (JSON, or an Apache Arrow IPC stream to /predict: 415 otherwise) and its
size are checked before BentoML reads or parses the body, with a JSON error that says what to change.
An Arrow body is answered by the service's own handler (serving.arrow), past BentoML's JSON parsing, and
so is a JSON body to /predict that validates (the fast path: BentoML's middleware, metrics included, still
sees the request; its API machinery does not); a JSON body that does not validate goes on to BentoML's
API, which answers it as always. Health, readiness, metrics and the OpenAPI document stay open, so probes
and scrapers need no key. A 400 from BentoML's input validation (pydantic's error list) is rewritten on
its way out into `{"error": "<summary>", "problems": [{"field": "records[0].temp", "problem": "..."}]}`, and
`quiet_validation_errors` turns BentoML's traceback for each of them into one log line.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from loopline.request_model import MAX_REQUEST_ID_LENGTH, describe_errors, error_body, valid_request_id
from serving.arrow import is_arrow

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

PREDICT_PATH = "/predict"
"""Where an Arrow body, and a JSON body the service's fast path answers, may go."""
ArrowHandler = Callable[[bytes, dict[bytes, bytes]], tuple[int, bytes, str, list[tuple[bytes, bytes]]]]
"""(body, headers) -> (status, payload, content type, extra headers): the service's Arrow answer."""
FastJsonHandler = Callable[
    [bytes, dict[bytes, bytes]], Awaitable[tuple[int, bytes, str, list[tuple[bytes, bytes]]] | None]
]
"""(body, headers) -> the answer to a JSON body that validates, or None to let BentoML's API answer it."""

OPEN_PATHS = frozenset({"/readyz", "/livez", "/healthz", "/metrics", "/docs.json", "/"})


async def send_json(send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    def __init__(
        self,
        app: Callable[..., Awaitable[None]],
        api_key: str | None,
        max_body_bytes: int,
        on_refused: Callable[[str, dict[str, Any]], None] | None = None,
        arrow: ArrowHandler | None = None,
        fast_json: FastJsonHandler | None = None,
    ) -> None:
        """`on_refused(path, body)` sees every request answered 400 for invalid input, with the error
        body the client got (the service logs them: monitoring watches the share of refused requests)."""
        self.app = app
        self.on_refused = on_refused
        self.api_key = api_key.encode() if api_key else None
        self.max_body_bytes = max_body_bytes
        self.arrow = arrow
        self.fast_json = fast_json

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["path"].startswith("/static"):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        if self.api_key is not None and not self._authorised(headers):
            return await send_json(
                send,
                401,
                {
                    "error": "missing or wrong API key: send the header "
                    "'Authorization: Bearer <key>' (or 'X-API-Key: <key>')"
                },
                [(b"www-authenticate", b"Bearer")],
            )
        arrow = self.arrow is not None and scope["path"] == PREDICT_PATH and is_arrow(headers.get(b"content-type"))
        if scope["method"] == "POST" and not arrow and not _is_json(headers.get(b"content-type")):
            return await send_json(send, 415, {"error": "the body must be JSON: send 'Content-Type: application/json'"})
        request_id = headers.get(b"x-request-id")
        if request_id is not None and not valid_request_id(request_id):
            return await send_json(
                send,
                400,
                {
                    "error": f"invalid request: header X-Request-ID: at most "
                    f"{MAX_REQUEST_ID_LENGTH} printable ASCII characters "
                    f"(got {len(request_id)} bytes)"
                },
            )
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return await self._too_large(send)
        # The body is read here, up to the limit, and handed on whole: a client that goes away mid-body is
        # one INFO line, not an error from the framework's body reader.
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                log.info("%s %s: the client disconnected before sending the whole body", scope["method"], scope["path"])
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body_bytes:
                return await self._too_large(send)
            if not message.get("more_body"):
                break
        body = b"".join(chunks)
        if arrow and scope["method"] == "POST":
            return await self._answer_arrow(scope, body, headers, send)
        if self.fast_json is not None and scope["method"] == "POST" and scope["path"] == PREDICT_PATH:
            answer = await self.fast_json(body, headers)
            if answer is not None:  # a valid body, answered; anything else goes on to BentoML's API
                return await self._send(send, *answer)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        refused = None if self.on_refused is None else (lambda body: self.on_refused(scope["path"], body))
        return await self.app(scope, replay, reword_client_errors(send, refused))

    async def _answer_arrow(self, scope: Scope, body: bytes, headers: dict[bytes, bytes], send: Send) -> None:
        """An Arrow IPC body, answered by the service's handler (serving.arrow) without BentoML's JSON
        parsing; a 400 is recorded as refused like a JSON one."""
        status, payload, content_type, extra = self.arrow(body, headers)  # type: ignore[misc]
        if status == 400 and self.on_refused is not None:
            try:
                self.on_refused(scope["path"], json.loads(payload))
            except Exception:  # recording a refusal never changes the answer
                log.warning("could not record a refused request", exc_info=True)
        if status == 400:
            log.info("%s: invalid Arrow body, answered 400", scope["path"])
        await self._send(send, status, payload, content_type, extra)

    @staticmethod
    async def _send(send: Send, status: int, payload: bytes, content_type: str, extra: list) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", content_type.encode()),
                    (b"content-length", str(len(payload)).encode()),
                    *extra,
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})

    def _authorised(self, headers: dict[bytes, bytes]) -> bool:
        supplied = headers.get(b"authorization", b"")
        supplied = supplied[7:].strip() if supplied[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        return hmac.compare_digest(supplied, self.api_key or b"")

    async def _too_large(self, send: Send) -> None:
        await send_json(
            send,
            413,
            {
                "error": f"request body over {self.max_body_bytes} bytes: send fewer records "
                "per request (LOOPLINE_MAX_BODY_BYTES sets the limit)"
            },
        )


def _is_json(content_type: bytes | None) -> bool:
    """No Content-Type (BentoML then reads JSON) or application/json, with or without parameters."""
    return content_type is None or content_type.split(b";")[0].strip().lower() == b"application/json"


def reword_client_errors(send: Send, on_refused: Callable[[dict[str, Any]], None] | None = None) -> Send:
    """`send`, except that a JSON 400 body from BentoML becomes Loopline's error body (see the module doc),
    which `on_refused` also sees."""
    held: dict[str, Any] | None = None
    chunks: list[bytes] = []

    async def wrapped(message: dict[str, Any]) -> None:
        nonlocal held
        if message["type"] == "http.response.start":
            if message["status"] == 400:
                held = message
                return
            return await send(message)
        if held is None or message["type"] != "http.response.body":
            return await send(message)
        chunks.append(message.get("body", b""))
        if message.get("more_body"):
            return
        body = reword(b"".join(chunks))
        if on_refused is not None:
            try:
                on_refused(json.loads(body))
            except Exception:  # recording a refusal never changes the answer
                log.warning("could not record a refused request", exc_info=True)
        headers = [(k, v) for k, v in held["headers"] if k.lower() not in (b"content-length", b"content-type")]
        await send(
            {
                **held,
                "headers": [
                    *headers,
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return wrapped


def reword(body: bytes) -> bytes:
    try:
        parsed = json.loads(body)
    except ValueError:
        return json.dumps({"error": body.decode(errors="replace")}).encode()
    if isinstance(parsed, list) and len(parsed) == 1:  # BentoML wraps some client errors in a list
        parsed = parsed[0]
    if isinstance(parsed, dict) and isinstance(parsed.get("detail"), list):
        return json.dumps(error_body(describe_errors(parsed["detail"]))).encode()
    if isinstance(parsed, dict) and "error" in parsed:
        return json.dumps({"error": str(parsed["error"])}).encode()
    return body


class _QuietValidationErrors(logging.Filter):
    """BentoML logs every invalid request as an ERROR with the pydantic traceback; that is the client's
    mistake, answered with a 400 that names it, so it becomes one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "ValidationError":
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = (
                "%s: %d invalid field(s), answered 400",
                (record.args[0] if record.args else "request", exc.error_count()),
            )
            record.exc_info = record.exc_text = None
        return True


def quiet_validation_errors() -> None:
    logging.getLogger("bentoml._internal.server.http_app").addFilter(_QuietValidationErrors())
