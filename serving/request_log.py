"""The request log: every served record, for monitoring, written off the request's critical path.

`record()` only appends the arrays the model was given and its outputs to a deque. A writer thread wakes
every `flush_seconds` (sooner when `flush_rows` rows are waiting), takes what is there and writes it as
one Parquet file (the request log decodes and writes it `ROW_GROUP_REQUESTS` requests at a time), under
`<directory>/date=YYYY-MM-DD/part-<time>-<host>-<pid>-<n>.parquet`; each file is written under a temporary name
and renamed, so a reader never sees half a file. Columns: request_id, record (its index in the request),
served_at (UTC), model_version, every feature as the model saw it (numbers as float32), the schema's
time column when the schema has one (the event time a record sent, else null), prediction, and for
classification `proba_<class>`.

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
import time
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
ROW_GROUP_REQUESTS = 1_000
"""Requests per Parquet row group of the request log: the writer hands the GIL back between them."""


class ParquetWindows:
    """Items handed to a writer thread, written as one Parquet file per window (see the module doc).

    An item is a DataFrame here; subclasses hand over whatever is cheapest on the request path and turn a
    whole window of items into one frame in the writer thread (`_to_frame`)."""

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
        self._waiting_rows += self._rows(item)
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

    The request path hands over the arrays the model was given and its outputs; the writer thread decodes a
    whole window at once: numeric features as float32, categorical ones (and request ids, versions and
    predicted classes) dictionary-encoded with the schema's values as the categories."""

    def __init__(
        self, directory: Path, schema: FeatureSchema, flush_seconds: float = 5.0, flush_rows: int = 100_000
    ) -> None:
        self.schema = schema
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
        scored in shadow (version -> outputs); no I/O, no copying."""
        self.put(
            (
                request_id,
                model_version,
                np.datetime64(datetime.now(timezone.utc).replace(tzinfo=None), "us"),
                features,
                outputs,
                event_times,
                shadow or {},
            )
        )

    @staticmethod
    def _rows(item: Any) -> int:
        return len(item[3])

    def _write_file(self, pending: list[Any], path: Path) -> None:
        """Decoded and written ROW_GROUP_REQUESTS requests at a time, handing the GIL back to the request
        path between row groups: decoding a whole 5 s window at once held it for tens of milliseconds,
        the requests arriving meanwhile waited, and that was the service's p99."""
        shadow_versions = sorted({v for item in pending for v in item[6]})
        writer = None
        try:
            for start in range(0, len(pending), ROW_GROUP_REQUESTS):
                table = _arrow_table(self._to_frame(pending[start : start + ROW_GROUP_REQUESTS], shadow_versions))
                if writer is None:
                    writer = pq.ParquetWriter(path, table.schema)
                writer.write_table(table.cast(writer.schema))
                time.sleep(0)
        finally:
            if writer is not None:
                writer.close()

    def _to_frame(self, items: list[Any], shadow_versions: list[str] | None = None) -> pd.DataFrame:
        counts = [len(item[3]) for item in items]
        numeric = np.concatenate([item[3].numeric for item in items])
        categorical = np.concatenate([item[3].categorical for item in items])
        columns: dict[str, Any] = {
            "request_id": _repeated([item[0] for item in items], counts),
            "record": np.concatenate([np.arange(n) for n in counts]),
            "served_at": pd.DatetimeIndex(np.repeat(np.array([item[2] for item in items]), counts), tz="UTC"),
            "model_version": _repeated([item[1] for item in items], counts),
        }
        numeric_at = {c.name: j for j, c in enumerate(self.schema.numeric_features)}
        categorical_at = {c.name: j for j, c in enumerate(self.schema.categorical_features)}
        for col in self.schema.features:  # in the schema's order; a missing category (-1) becomes null
            columns[col.name] = (
                numeric[:, numeric_at[col.name]]
                if col.name in numeric_at
                else pd.Categorical.from_codes(
                    categorical[:, categorical_at[col.name]], categories=list(col.categories)
                )
            )
        time_column = self.schema.time_column
        if time_column is not None:  # the records' event times, null where a record sent none
            times = [t for item in items for t in (item[5] or [None] * len(item[3]))]
            columns[time_column] = (
                pd.to_datetime(pd.Series(times, dtype=object), errors="coerce").to_numpy(dtype="datetime64[us]")
                if self.schema.column(time_column).kind is Kind.DATETIME
                else np.array([np.nan if t is None else float(t) for t in times], dtype=np.float64)
            )
        columns.update(prediction_columns(np.concatenate([item[4] for item in items]), self.schema))
        if self.schema.task.is_classification:
            columns["prediction"] = pd.Categorical(columns["prediction"], categories=list(self.schema.classes))
        columns[MISSING_COLUMN] = _missing_masks(items, counts, len(self.schema.features))
        for version in shadow_versions if shadow_versions is not None else sorted({v for i in items for v in i[6]}):
            columns[SHADOW_PREFIX + version] = self._shadow_predictions(items, counts, version)
        return pd.DataFrame(columns)

    def _shadow_predictions(self, items: list[Any], counts: list[int], version: str) -> np.ndarray:
        """A shadow model's prediction per row (null on rows served before it was scored)."""
        parts = []
        for item, n in zip(items, counts):
            out = item[6].get(version)
            if out is None:
                parts.append(np.full(n, None if self.schema.task.is_classification else np.nan, dtype=object))
            else:
                parts.append(np.asarray(prediction_columns(out, self.schema)["prediction"], dtype=object))
        values = np.concatenate(parts)
        return values if self.schema.task.is_classification else values.astype(np.float64)


MISSING_COLUMN = "missing_features"
"""Per row, the features whose value was absent (and filled), as a bit mask in the schema's numeric then
categorical order (`missing_matrix` reads it)."""
SHADOW_PREFIX = "shadow_"
"""`shadow_<version>`: the prediction of a model scored in shadow beside production on the same record."""


def _missing_masks(items: list[Any], counts: list[int], features: int) -> list[bytes]:
    masks = [
        item[3].missing if item[3].missing is not None else np.zeros((n, features), dtype=bool)
        for item, n in zip(items, counts)
    ]
    return [row.tobytes() for row in np.packbits(np.concatenate(masks), axis=1)]


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


def _arrow_table(frame: pd.DataFrame) -> pa.Table:
    """The frame as written, every dictionary column with 32-bit indices: one schema for all row groups,
    whatever number of distinct values each holds."""
    table = pa.Table.from_pandas(_as_written(frame), preserve_index=False)
    fields = [
        pa.field(f.name, pa.dictionary(pa.int32(), f.type.value_type, f.type.ordered), f.nullable, f.metadata)
        if pa.types.is_dictionary(f.type)
        else f
        for f in table.schema
    ]
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def _repeated(values: list[str], counts: list[int]) -> pd.Categorical:
    """One value per request repeated for its records, dictionary-encoded (cheap to build and to store)."""
    codes, uniques = pd.factorize(np.array(values, dtype=object))
    return pd.Categorical.from_codes(np.repeat(codes, counts), categories=uniques)


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
