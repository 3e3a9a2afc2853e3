"""Fixes to BentoML 1.4.39, applied when the service module is imported.

1. The per-request timeout (below).
2. The OpenAPI document leaves every API's request body optional, though an API with a required field
   (/predict's `records`, /feedback's `labels`) answers 400 without one; clients generated from the
   document, and schemathesis's conformance checks, are told the truth: `requestBody.required: true`.
3. OpenTelemetry's ASGI middleware is installed whatever the tracing settings say. With tracing off
   (`tracing.sample_rate` unset or 0, BentoML's default: "no traces will be collected") it still opens
   and closes non-recording spans and swaps the context for every request and every message sent: 33 µs
   of CPU of a single-record request's 227 (benchmarks/serving_profile.py). The service leaves it out
   then; with a sample rate above 0 it stays. Without it BentoML's API answers carry no
   X-BentoML-Request-ID header (that id is the span's); Loopline's X-Request-ID is the request's id.
4. BentoML's traffic metrics middleware looks up four labelled Prometheus children per request with
   `metric.labels(endpoint=..., service_name=..., ...)`, and each lookup sorts and checks the label names,
   turns every value into a string and takes the metric's lock: 12 µs of CPU of a single-record
   request's 122 (benchmarks/serving_profile.py). The service keeps each child once found, by its label
   values; the children, and so `/metrics`, are the same.

`TimeoutMiddleware` schedules `loop.call_later(timeout, ...)` for every request and never cancels it, so
each finished request stays referenced (its future and a copy of its context, OpenTelemetry span
included) until the timeout has passed: at 900 requests/s and a 30 s timeout that is ~27,000 requests'
objects alive at any time, and Python's full garbage collections, which walk them all, grew to 200+ ms
pauses, the p99 latency. The replacement below behaves the same (504 when the app has not started its
response within the timeout) and cancels the timer as soon as the request is answered.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from _bentoml_impl.server.app import ServiceAppFactory
from _bentoml_sdk.method import APIMethod
from bentoml._internal.server.http import instruments, traffic
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from starlette.middleware import Middleware
from starlette.responses import JSONResponse


async def _call(self: traffic.TimeoutMiddleware, scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return await self.app(scope, receive, send)
    loop = asyncio.get_running_loop()
    waiter = loop.create_future()
    timer = loop.call_later(self.timeout, self._set_timer_out, waiter)

    async def _send(message: dict[str, Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)
        await send(message)

    fut = asyncio.ensure_future(self.app(scope, receive, _send), loop=loop)
    try:
        await waiter
    except asyncio.TimeoutError:
        if fut.cancel():
            response = JSONResponse(
                {"error": f"Not able to process the request in {self.timeout} seconds"}, status_code=504
            )
            await response(scope, receive, send)
    else:
        await fut
    finally:
        timer.cancel()


_ORIGINAL_OPENAPI_REQUEST = APIMethod.openapi_request


def _request_with_required_body(original: Any) -> Any:
    def openapi_request(self: Any) -> dict[str, Any]:
        spec = original(self)
        if any(field.is_required() for field in self.input_spec.model_fields.values()):
            spec["required"] = True
        return spec

    return openapi_request


def body_marked_required_upstream() -> bool:
    """Whether BentoML itself marks a required request body (the fix is then no longer needed)."""
    return (
        "required" in _ORIGINAL_OPENAPI_REQUEST.__code__.co_names
        or "required" in _ORIGINAL_OPENAPI_REQUEST.__code__.co_consts
    )


_ORIGINAL_MIDDLEWARES = ServiceAppFactory.middlewares


def tracing_collects() -> bool:
    """Whether BentoML's tracing settings would record any span."""
    from bentoml._internal.container import BentoMLContainer

    return bool(BentoMLContainer.config.tracing.sample_rate.get() or 0.0)


def _middlewares(self: ServiceAppFactory) -> list[Middleware]:
    middlewares = _ORIGINAL_MIDDLEWARES.fget(self)
    if tracing_collects():
        return middlewares
    return [m for m in middlewares if m.cls is not OpenTelemetryMiddleware]


def tracing_installed_unconditionally_upstream() -> bool:
    """Whether BentoML still installs the tracing middleware without looking at the sample rate (the
    fix is needed while it does)."""
    source = inspect.getsource(_ORIGINAL_MIDDLEWARES.fget)
    return "OpenTelemetryMiddleware" in source and "sample_rate" not in source


class LabelledOnce:
    """A Prometheus metric whose labelled children are looked up once per set of label values (fix 4)."""

    def __init__(self, metric: Any) -> None:
        self.metric = metric
        self._children: dict[tuple[Any, ...], Any] = {}

    def labels(self, **values: Any) -> Any:
        key = tuple(values.items())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.metric.labels(**values)
        return child


_ORIGINAL_METRICS_SETUP = instruments.RunnerTrafficMetricsMiddleware._setup


def _metrics_setup(self: instruments.RunnerTrafficMetricsMiddleware) -> None:
    _ORIGINAL_METRICS_SETUP(self)
    for name, metric in list(vars(self).items()):
        if name.startswith("metrics_") and hasattr(metric, "labels") and not isinstance(metric, LabelledOnce):
            setattr(self, name, LabelledOnce(metric))


def metrics_looked_up_per_request_upstream() -> bool:
    """Whether BentoML's metrics middleware still looks up labelled children on every request (the fix
    is needed while it does)."""
    source = inspect.getsource(instruments.RunnerTrafficMetricsMiddleware.__call__)
    return ".labels(" in source


def apply() -> None:
    traffic.TimeoutMiddleware.__call__ = _call  # type: ignore[method-assign]
    if instruments.RunnerTrafficMetricsMiddleware._setup is _ORIGINAL_METRICS_SETUP:
        instruments.RunnerTrafficMetricsMiddleware._setup = _metrics_setup  # type: ignore[method-assign]
    ServiceAppFactory.middlewares = property(_middlewares)  # type: ignore[method-assign]
    if APIMethod.openapi_request is _ORIGINAL_OPENAPI_REQUEST:
        APIMethod.openapi_request = _request_with_required_body(_ORIGINAL_OPENAPI_REQUEST)  # type: ignore[method-assign]
