"""The request log: every served record, for monitoring, written off the request's critical path.

`record()` only puts the request's rows on a queue. A writer thread collects them and writes one Parquet
file per window, when `flush_seconds` have passed since the window opened or `flush_rows` rows are
waiting, under `<directory>/date=YYYY-MM-DD/part-<time>-<pid>-<n>.parquet`; each file is written under
a temporary name and renamed, so a reader never sees half a file. Columns: request_id, record (its
index in the request), served_at (UTC), model_version, every feature as received, prediction, and for
classification `proba_<class>`.

Durability: a crash loses at most the rows of the open window (`flush_seconds`, 5 s by default); a clean
shutdown (`close()`) writes everything. Several worker processes write side by side (the pid is in
every file name).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

log = logging.getLogger(__name__)
_STOP = object()


class ParquetWindows:
    """Rows put on a queue, written by a thread as one Parquet file per window (see the module doc)."""

    def __init__(self, directory: Path, flush_seconds: float = 5.0, flush_rows: int = 10_000) -> None:
        self.directory = Path(directory)
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        self._queue: queue.Queue[Any] = queue.Queue()
        self._files = 0
        self._thread = threading.Thread(target=self._run, name=f"loopline-log-{self.directory.name}", daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        """Queue an item for the writer thread; `_frame` turns it into rows there."""
        self._queue.put(item)

    @staticmethod
    def _frame(item: Any) -> pd.DataFrame:
        return item

    def close(self, timeout: float = 30.0) -> None:
        """Write what is waiting and stop the writer."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------------ writer
    def _run(self) -> None:
        pending: list[pd.DataFrame] = []
        rows, opened = 0, time.monotonic()
        while True:
            timeout = max(0.0, self.flush_seconds - (time.monotonic() - opened)) if pending else None
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _STOP:
                self._write(pending)
                return
            if item is not None:
                if not pending:
                    opened = time.monotonic()
                frame = self._frame(item)
                pending.append(frame)
                rows += len(frame)
            if pending and (rows >= self.flush_rows or time.monotonic() - opened >= self.flush_seconds):
                self._write(pending)
                pending, rows = [], 0

    def _write(self, pending: list[pd.DataFrame]) -> None:
        if not pending:
            return
        try:
            frame = pd.concat(pending, ignore_index=True)
            now = datetime.now(timezone.utc)
            folder = self.directory / f"date={now:%Y-%m-%d}"
            folder.mkdir(parents=True, exist_ok=True)
            self._files += 1
            name = f"part-{now:%Y%m%dT%H%M%S%f}-{os.getpid()}-{self._files}.parquet"
            tmp = folder / f".{name}.tmp"
            frame.astype({c: "string" for c in frame.columns if frame[c].dtype == object}).to_parquet(tmp, index=False)
            os.replace(tmp, folder / name)
        except Exception:  # the service keeps serving; the failure and the rows lost are logged
            log.exception("could not write %d rows to %s", sum(len(p) for p in pending), self.directory)


class RequestLog(ParquetWindows):
    """Served records: request id, record index, time, model version, features, prediction, probabilities."""

    def record(self, request_id: str, model_version: str, features: pd.DataFrame, decoded: dict[str, list]) -> None:
        """Queue the request's rows (no I/O here); `decoded` is loopline.features.decode_predictions' output."""
        self.put((request_id, model_version, datetime.now(timezone.utc), features, decoded))

    @staticmethod
    def _frame(item: Any) -> pd.DataFrame:
        request_id, version, served_at, features, decoded = item
        frame = features.reset_index(drop=True).copy()
        frame.insert(0, "model_version", version)
        frame.insert(0, "served_at", pd.Timestamp(served_at))
        frame.insert(0, "record", range(len(frame)))
        frame.insert(0, "request_id", request_id)
        frame["prediction"] = decoded["predictions"]
        for row_index, probabilities in enumerate(decoded.get("probabilities", [])):
            for cls, p in probabilities.items():
                frame.loc[row_index, f"proba_{cls}"] = p
        return frame
