"""The request log: every served record, for monitoring, written off the request's critical path.

`record()` only keeps the arrays the model was given and its outputs, and every `CHUNK_REQUESTS` requests
(or `CHUNK_ROWS` records) turns them into one Arrow record batch on a deque. A writer thread wakes every
`flush_seconds` (sooner when `flush_rows` rows are waiting), takes what is there and writes it as one
Parquet file, under `<directory>/date=YYYY-MM-DD/part-<time>-<host>-<pid>-<n>.parquet`; each file is
written under a temporary name and renamed, so a reader never sees half a file. Columns: request_id,
record (its index in the request), served_at (UTC), model_version, every feature as the model saw it
(numbers as float32), the schema's time column when the schema has one (the event time a record sent,
else null), prediction, and for classification `proba_<class>`, the missing-value flags, and
`shadow_<version>` per shadow model.

Durability: a crash loses at most the rows of the open window (`flush_seconds`, 5 s by default); a clean
shutdown (`close()`) writes everything. Several worker processes, on one machine or several, write side
by side (the host and pid are in every file name).
"""

from __future__ import annotations

import collections
import logging
import os
import socket
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from loopline.features import EncodedFeatures, prediction_columns
from loopline.schema import FeatureSchema, Kind

log = logging.getLogger(__name__)
HOST = "".join(c if c.isalnum() or c in "-." else "-" for c in socket.gethostname()) or "host"
"""This machine in the request log's file names."""


class ParquetWindows:
    """Items handed to a writer thread, written as one Parquet file per window (see the module doc).

    An item is a DataFrame here, a window's items joined into one frame by `_to_frame`; a subclass hands
    over whatever is cheapest on the request path and says how a window of it is written (`_write_file`)."""

    def __init__(self, directory: Path, flush_seconds: float = 5.0, flush_rows: int = 100_000) -> None:
        self.directory = Path(directory)
        self.flush_seconds = flush_seconds
        self.flush_rows = flush_rows
        # The request path appends to a deque (atomic, no lock, no thread woken); the writer sleeps a
        # window and takes what is there. A queue that woke the writer for every item cost about 100 µs
        # of CPU per request on the service's 2 cores (benchmarks/serving_profile.py).
        self._items: collections.deque[Any] = collections.deque()
        self._waiting_rows = 0  # approximate across threads: it only decides an early write
        self._wake = threading.Event()
        self._stopping = False
        self._files = 0
        self._thread = threading.Thread(target=self._run, name=f"loopline-log-{self.directory.name}", daemon=True)
        self._thread.start()

    def put(self, item: Any) -> None:
        """Hand an item to the writer thread (no I/O, no copying, no thread woken unless a window is full)."""
        self._items.append(item)
        self._waiting(self._rows(item))

    def _waiting(self, rows: int) -> None:
        """Count rows handed over; wake the writer early when a window is full."""
        self._waiting_rows += rows
        if self._waiting_rows >= self.flush_rows:
            self._wake.set()

    @staticmethod
    def _rows(item: Any) -> int:
        return len(item)

    def _to_frame(self, items: list[Any]) -> pd.DataFrame:
        return pd.concat(items, ignore_index=True)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is waiting and stop the writer."""
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)

    # ------------------------------------------------------------------------------------ writer
    def _run(self) -> None:
        while True:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            stopping = self._stopping  # read before taking: whatever came before close() is written
            self._write(self._take())
            if stopping:
                self._write(self._take())
                return

    def _take(self) -> list[Any]:
        """What is waiting, oldest first (the request path may append meanwhile: those wait their turn)."""
        taken = [self._items.popleft() for _ in range(len(self._items))]
        self._waiting_rows = 0
        return taken

    def _write(self, pending: list[Any]) -> None:
        if not pending:
            return
        try:
            target, tmp = self._next_file()
            self._write_file(pending, tmp)
            os.replace(tmp, target)
        except Exception:  # the service keeps serving; the failure and the rows lost are logged
            log.exception("could not write %d rows to %s", sum(self._rows(p) for p in pending), self.directory)

    def _write_file(self, pending: list[Any], path: Path) -> None:
        """The window's items as one Parquet file at `path`."""
        _as_written(self._to_frame(pending)).to_parquet(path, index=False)

    def _next_file(self) -> tuple[Path, Path]:
        """(the file's name, the temporary name it is written under)."""
        now = datetime.now(timezone.utc)
        folder = self.directory / f"date={now:%Y-%m-%d}"
        folder.mkdir(parents=True, exist_ok=True)
        self._files += 1
        # The host too: replicas on several machines (or containers, where process ids repeat) share a folder.
        name = f"part-{now:%Y%m%dT%H%M%S%f}-{HOST}-{os.getpid()}-{self._files}.parquet"
        return folder / name, folder / f".{name}.tmp"


def _as_written(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({c: "string" for c in frame.columns if _text(frame[c])})


def _text(column: pd.Series) -> bool:
    """An object column of text (stored as Parquet strings); bytes stay binary."""
    return column.dtype == object and not (len(column) and isinstance(column.iloc[0], bytes))


class RequestLog(ParquetWindows):
    """Served records: request id, record index, time, model version, features, prediction, probabilities.

    The request path hands over the arrays the model was given and its outputs; every `CHUNK_REQUESTS`
    requests it turns them into one Arrow record batch (numeric features as float32; categorical ones,
    request ids, versions and predicted classes dictionary-encoded, the schema's values as the
    categories). The writer thread only joins a window's batches and writes them, which Arrow does with
    the interpreter released."""

    def __init__(
        self, directory: Path, schema: FeatureSchema, flush_seconds: float = 5.0, flush_rows: int = 100_000
    ) -> None:
        self.schema = schema
        self._fresh: list[Any] = []  # requests not yet in a batch (fewer than CHUNK_REQUESTS)
        self._fresh_rows = 0
        self._lock = threading.Lock()  # a chunk is batched and queued before the writer takes what is there
        self._numeric_at = {c.name: j for j, c in enumerate(schema.numeric_features)}
        self._categorical_at = {c.name: j for j, c in enumerate(schema.categorical_features)}
        self._categories = {c.name: pa.array(list(c.categories)) for c in schema.categorical_features}
        super().__init__(directory, flush_seconds, flush_rows)

    def record(
        self,
        request_id: str,
        model_version: str,
        features: EncodedFeatures,
        outputs: np.ndarray,
        event_times: list[Any] | None = None,
        shadow: dict[str, np.ndarray] | None = None,
    ) -> None:
        """Queue one request's encoded records, the model's outputs for them, the records' event times
        (the schema's time column, None where a record did not send it) and the outputs of the models
        scored in shadow (version -> outputs); no I/O, no copying, and every `CHUNK_REQUESTS` requests
        one record batch built (about 1 µs a request)."""
        served_at = np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "us")
        item = (request_id, model_version, served_at, features, outputs, event_times, shadow or {})
        with self._lock:
            self._fresh.append(item)
            self._fresh_rows += len(features)
            if len(self._fresh) >= CHUNK_REQUESTS or self._fresh_rows >= CHUNK_ROWS:
                chunk, self._fresh, self._fresh_rows = self._fresh, [], 0
                self._items.append(self._record_batch(chunk))
        self._waiting(len(features))

    @staticmethod
    def _rows(item: Any) -> int:
        return item.num_rows

    def _take(self) -> list[Any]:
        with self._lock:
            fresh, self._fresh, self._fresh_rows = self._fresh, [], 0
            taken = super()._take()
        return taken + [self._record_batch(fresh)] if fresh else taken

    def _write_file(self, pending: list[Any], path: Path) -> None:
        """The window's batches as one Parquet file; a shadow model scored for part of the window only
        is null on the other rows."""
        tables = [pa.Table.from_batches([batch]) for batch in pending]
        pq.write_table(pa.concat_tables(tables, promote_options="default"), path)

    def _record_batch(self, items: list[Any]) -> pa.RecordBatch:
        """The requests' rows as one record batch, in the columns of the module doc."""
        counts = np.fromiter((len(item[3]) for item in items), dtype=np.int64, count=len(items))
        numeric = np.concatenate([item[3].numeric for item in items])
        categorical = np.concatenate([item[3].categorical for item in items])
        served_at = np.array([item[2] for item in items], dtype="datetime64[us]")
        columns: dict[str, pa.Array] = {
            "request_id": _repeated([item[0] for item in items], counts),
            "record": pa.array(np.arange(len(numeric)) - np.repeat(np.cumsum(counts) - counts, counts)),
            "served_at": pa.array(np.repeat(served_at, counts), pa.timestamp("us", "UTC")),
            "model_version": _repeated([item[1] for item in items], counts),
        }
        for col in self.schema.features:  # in the schema's order; a missing category (-1) becomes null
            if col.name in self._numeric_at:
                columns[col.name] = pa.array(np.ascontiguousarray(numeric[:, self._numeric_at[col.name]]))
            else:
                codes = categorical[:, self._categorical_at[col.name]].astype(np.int32)
                columns[col.name] = pa.DictionaryArray.from_arrays(
                    pa.array(codes, mask=codes < 0), self._categories[col.name]
                )
        time_column = self.schema.time_column
        if time_column is not None:  # the records' event times, null where a record sent none
            columns[time_column] = self._event_times(items, counts)
        predictions = prediction_columns(np.concatenate([item[4] for item in items]), self.schema)
        for name, values in predictions.items():
            columns[name] = (
                pa.DictionaryArray.from_arrays(
                    pa.array(pd.Categorical(values, categories=list(self.schema.classes)).codes.astype(np.int32)),
                    pa.array(list(self.schema.classes)),
                )
                if values.dtype == object
                else pa.array(values)
            )
        columns[MISSING_COLUMN] = _missing_masks(items, counts, len(self.schema.features))
        for version in sorted({v for item in items for v in item[6]}):
            columns[SHADOW_PREFIX + version] = pa.array(self._shadow_predictions(items, counts, version))
        return pa.RecordBatch.from_pydict(columns)

    def _event_times(self, items: list[Any], counts: np.ndarray) -> pa.Array:
        """The time column: naive UTC timestamps for a datetime column (what the request model parses an
        event time to), numbers for a numeric one; null where a record sent none."""
        times = [t for item, n in zip(items, counts) for t in (item[5] or [None] * int(n))]
        if self.schema.column(self.schema.time_column).kind is not Kind.DATETIME:  # type: ignore[arg-type]
            return pa.array(np.array([np.nan if t is None else float(t) for t in times], dtype=np.float64))
        if all(t is None or (isinstance(t, datetime) and t.tzinfo is None) for t in times):
            return pa.array(times, pa.timestamp("us"))
        values = pd.to_datetime(pd.Series(times, dtype=object), errors="coerce", utc=True).dt.tz_convert(None)
        return pa.array(values.to_numpy(dtype="datetime64[us]"), pa.timestamp("us"))

    def _shadow_predictions(self, items: list[Any], counts: np.ndarray, version: str) -> np.ndarray:
        """A shadow model's prediction per row (null on rows served before it was scored)."""
        parts = []
        for item, n in zip(items, counts):
            out = item[6].get(version)
            if out is None:
                parts.append(np.full(n, None if self.schema.task.is_classification else np.nan, dtype=object))
            else:
                parts.append(np.asarray(prediction_columns(out, self.schema)["prediction"], dtype=object))
        values = np.concatenate(parts)
        if self.schema.task.is_classification:
            return np.array([None if v is None else str(v) for v in values], dtype=object)
        return values.astype(np.float64)


CHUNK_REQUESTS = 256
"""Requests the request path turns into one record batch at a time (sooner when they hold `CHUNK_ROWS`
records): the writer thread then holds the interpreter only to join batches; decoding a whole window in
it held the interpreter for hundreds of milliseconds under load, and the requests arriving meanwhile
waited (the service's p99)."""
CHUNK_ROWS = 4_096
MISSING_COLUMN = "missing_features"
"""Per row, the features whose value was absent (and filled), as a bit mask in the schema's numeric then
categorical order (`missing_matrix` reads it)."""
SHADOW_PREFIX = "shadow_"
"""`shadow_<version>`: the prediction of a model scored in shadow beside production on the same record."""


def _missing_masks(items: list[Any], counts: np.ndarray, features: int) -> pa.Array:
    masks = [
        item[3].missing if item[3].missing is not None else np.zeros((n, features), dtype=bool)
        for item, n in zip(items, counts)
    ]
    packed = np.packbits(np.concatenate(masks), axis=1)
    rows, width = packed.shape
    offsets = np.arange(0, (rows + 1) * width, width, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), rows, [None, pa.py_buffer(offsets), pa.py_buffer(packed.tobytes())])


def missing_matrix(frame: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """The logged rows' missing-value flags as one bool column per feature (numeric then categorical)."""
    names = [c.name for c in schema.numeric_features] + [c.name for c in schema.categorical_features]
    if MISSING_COLUMN not in frame.columns or frame.empty:
        return pd.DataFrame(False, index=frame.index, columns=names)
    packed = np.frombuffer(b"".join(frame[MISSING_COLUMN].fillna(b"").map(bytes)), dtype=np.uint8)
    width = (len(names) + 7) // 8
    if packed.size != width * len(frame):
        return pd.DataFrame(False, index=frame.index, columns=names)
    bits = np.unpackbits(packed.reshape(len(frame), width), axis=1)[:, : len(names)].astype(bool)
    return pd.DataFrame(bits, index=frame.index, columns=names)


def _repeated(values: list[str], counts: np.ndarray) -> pa.DictionaryArray:
    """One value per request repeated for its records, dictionary-encoded (cheap to build and to store)."""
    codes, uniques = pd.factorize(np.array(values, dtype=object))
    return pa.DictionaryArray.from_arrays(np.repeat(codes.astype(np.int32), counts), pa.array(uniques, pa.string()))


# ------------------------------------------------------------------------------------ reading
def log_files(directory: Path) -> list[Path]:
    """The written files of a request log or label folder, oldest first."""
    directory = Path(directory)
    return sorted(directory.glob("date=*/part-*.parquet")) if directory.is_dir() else []


def written_at(file: Path) -> datetime | None:
    """When a window's file was written (UTC, naive), from its name; None for a name not of the writer."""
    parts = file.name.split("-")
    try:
        return datetime.strptime(parts[1], "%Y%m%dT%H%M%S%f") if parts[0] == "part" else None
    except (IndexError, ValueError):
        return None


def plain_values(frame: pd.DataFrame) -> pd.DataFrame:
    """Categorical columns (one category set per file) back to plain values, so files concatenate."""
    for column in frame.columns:
        if isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype(object)
    return frame


def read_log_files(files: list[Path], columns: list[str] | None = None) -> pd.DataFrame:
    """Written files as one frame with plain values (empty, with `columns`, when there are none)."""
    frames = [plain_values(pd.read_parquet(f, columns=columns)) for f in files]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns or [])


def logged_request_ids(directory: Path, wanted: set[str]) -> set[str]:
    """Which of `wanted` request ids the request log under `directory` holds (written windows only)."""
    files = log_files(directory)
    if not files or not wanted:
        return set()
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    table = ds.dataset([str(f) for f in files], format="parquet").to_table(
        columns=["request_id"], filter=pc.field("request_id").isin(sorted(wanted))
    )
    return {str(v) for v in pc.unique(table.column("request_id").cast("string")).to_pylist()}
