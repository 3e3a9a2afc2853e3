"""Adaptive batching for the service: concurrent /predict requests run through the model in one call.

With LOOPLINE_BATCHING on, a request's encoded rows wait for the other requests that arrive in the same
turn of the event loop (or, with LOOPLINE_BATCH_MAX_WAIT_MS, up to that long), and all of them go through
the ONNX Runtime session together; each request gets its own rows' outputs back. Under light traffic a
request waits for nothing (a batch of one, run at the end of the loop turn it arrived in); under heavy
traffic batches grow on their own with the number of requests in flight, up to `max_rows` rows. That is
what pays on a GPU, where one call of many rows costs about what one call of one row does; on a CPU the
graph's cost grows with the rows and only the per-call overhead is saved (benchmarks/README.md).

Requests that a model swap puts on different models are batched per model: each session runs its own.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from loopline.features import EncodedFeatures
from loopline.runtime import run_encoded


@dataclass
class _Pending:
    session: Any
    features: EncodedFeatures
    future: asyncio.Future = field(repr=False)


class MicroBatcher:
    def __init__(self, max_rows: int = 1024, max_wait_ms: float | None = None) -> None:
        self.max_rows = max_rows
        self.max_wait = None if max_wait_ms is None else max_wait_ms / 1000
        self._pending: list[_Pending] = []
        self._rows = 0
        self._handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self.batches = 0
        """How many model calls ran."""
        self.requests = 0
        """How many requests they answered (requests / batches: the mean batch, in requests)."""

    async def run(self, session: Any, features: EncodedFeatures) -> np.ndarray:
        """The session's output for these rows, computed together with what other requests sent meanwhile."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append(_Pending(session, features, future))
        self.requests += 1
        self._rows += len(features)
        if self._rows >= self.max_rows:
            self._flush()
        elif self._handle is None:
            self._handle = (
                loop.call_soon(self._flush) if self.max_wait is None else loop.call_later(self.max_wait, self._flush)
            )
        return await future

    def _flush(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        pending, self._pending, self._rows = self._pending, [], 0
        by_session: dict[int, list[_Pending]] = {}
        for item in pending:
            by_session.setdefault(id(item.session), []).append(item)
        for group in by_session.values():
            self.batches += 1
            try:
                outputs = run_encoded(group[0].session, _concatenate([item.features for item in group]))
            except Exception as exc:  # every request of the batch gets the error its own call would have had
                for item in group:
                    if not item.future.done():
                        item.future.set_exception(exc)
                continue
            start = 0
            for item in group:
                rows = len(item.features)
                if not item.future.done():  # a client that went away cancelled its request
                    item.future.set_result(outputs[start : start + rows])
                start += rows


def _concatenate(parts: list[EncodedFeatures]) -> EncodedFeatures:
    if len(parts) == 1:
        return parts[0]
    return EncodedFeatures(
        numeric=np.concatenate([p.numeric for p in parts]),
        categorical=np.concatenate([p.categorical for p in parts]),
        missing=None if any(p.missing is None for p in parts) else np.concatenate([p.missing for p in parts]),
    )
