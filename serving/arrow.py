"""Apache Arrow IPC bodies for /predict: a table of records as columns instead of JSON objects.

A client sends `Content-Type: application/vnd.apache.arrow.stream` and an Arrow IPC stream whose columns
are the schema's features (and optionally its time column). The body is checked column by column:
that it is an Arrow stream at all (a truncated one is not), that every feature is there and nothing
else, that each column's Arrow type fits (numbers for numeric features; the categories' own type,
plain or dictionary-encoded, for categorical ones), then the values with the JSON path's rules
(loopline.columns). A problem answers 400 naming the column and its first bad rows. The answer is
JSON like the JSON path's, or an Arrow stream of the prediction columns when the client's Accept
header asks for Arrow (the model version and request id in the schema's metadata).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.types as pat

from loopline.columns import Validation, collect, not_a_category, number_problems
from loopline.features import UNKNOWN, EncodedFeatures, _fill_numeric, category_indexes, numeric_fill_values
from loopline.request_model import accepts_null
from loopline.schema import FeatureSchema, Kind

ARROW_STREAM = "application/vnd.apache.arrow.stream"


class ArrowBodyError(ValueError):
    """A body that cannot be read as records: its message is the 400's error."""

    def __init__(self, message: str, problems: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or []


def is_arrow(content_type: bytes | str | None) -> bool:
    if content_type is None:
        return False
    text = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    return text.split(";")[0].strip().lower() == ARROW_STREAM


def read_table(body: bytes) -> pa.Table:
    try:
        return pa.ipc.open_stream(pa.py_buffer(body)).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise ArrowBodyError(f"invalid request: the body is not a whole Arrow IPC stream ({exc})") from None


def _fits(arrow_type: pa.DataType, kind: Kind, categories: tuple[Any, ...]) -> str | None:
    """None when a column of this Arrow type can hold the feature's values, else what was expected."""
    if pat.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if pat.is_null(arrow_type):
        return None  # all nulls: the value check says whether nulls are allowed
    if kind is Kind.CATEGORICAL:
        if all(isinstance(c, int) for c in categories):
            return None if pat.is_integer(arrow_type) else "integer categories"
        return None if (pat.is_string(arrow_type) or pat.is_large_string(arrow_type)) else "string categories"
    if kind is Kind.DATETIME:
        return None if (pat.is_timestamp(arrow_type) or pat.is_string(arrow_type)) else "a timestamp or ISO string"
    return None if (pat.is_integer(arrow_type) or pat.is_floating(arrow_type)) else "a number"


@dataclass(frozen=True)
class _Plan:
    """What validating and encoding a body needs from a schema, worked out once per schema."""

    columns: dict[str, Any]
    """The features, then the time column when the schema has one: what a body may hold."""
    fits: dict[tuple[str, pa.DataType], str]
    """(column, Arrow type) -> '' when it fits, else what was expected; filled as bodies arrive."""
    fills: np.ndarray
    null_ok: dict[str, bool]
    categories: dict[str, pa.Array]
    fill_codes: dict[str, int]
    not_a_category: dict[str, str]


_PLANS: dict[int, tuple[FeatureSchema, _Plan]] = {}


def _plan(schema: FeatureSchema) -> _Plan:
    cached = _PLANS.get(id(schema))
    if cached is not None and cached[0] is schema:
        return cached[1]
    cols = schema.categorical_features
    columns = {c.name: c for c in schema.features}
    if schema.time_column:
        columns[schema.time_column] = schema.column(schema.time_column)
    plan = _Plan(
        columns=columns,
        fits={},
        fills=numeric_fill_values(schema),
        null_ok={c.name: accepts_null(c) for c in schema.features},
        categories={c.name: pa.array(list(c.categories)) for c in cols},
        fill_codes={c.name: index.get(None, UNKNOWN) for c, index in zip(cols, category_indexes(schema))},
        not_a_category={c.name: not_a_category(c) for c in cols},
    )
    _PLANS[id(schema)] = (schema, plan)
    return plan


def type_problems(table: pa.Table, schema: FeatureSchema) -> list[dict[str, Any]]:
    """Missing, unknown and mistyped columns, each named."""
    plan = _plan(schema)
    problems = []
    names = set(table.column_names)
    for name in plan.columns:
        if name not in names and name != schema.time_column:
            problems.append({"field": name, "problem": "missing column"})
    for field in table.schema:
        col = plan.columns.get(field.name)
        if col is None:
            problems.append({"field": field.name, "problem": "not a feature of the model (unknown column)"})
            continue
        expected = plan.fits.get((field.name, field.type))
        if expected is None:
            expected = plan.fits[(field.name, field.type)] = _fits(field.type, col.kind, tuple(col.categories)) or ""
        if expected:
            problems.append({"field": field.name, "problem": f"wrong type: {field.type} where {expected} is expected"})
    return problems


def _plain(column: pa.ChunkedArray) -> pa.Array:
    array = column.combine_chunks()
    return array.dictionary_decode() if pat.is_dictionary(array.type) else array


def _numbers_pass(array: pa.Array, col: Any) -> np.ndarray | None:
    """A column with no nulls whose numbers all pass, as an array; None when the full check must run."""
    if array.null_count or not (pat.is_floating(array.type) or pat.is_integer(array.type)) or not len(array):
        return None
    x = array.to_numpy(zero_copy_only=False)
    low, high = x.min(), x.max()  # NaN and infinities show here
    if not (np.isfinite(low) and np.isfinite(high)):
        return None
    if (col.min is not None and low < col.min) or (col.max is not None and high > col.max):
        return None
    if col.integer and pat.is_floating(array.type) and not np.array_equal(x, np.floor(x)):
        return None
    return x


def validate_and_encode(table: pa.Table, schema: FeatureSchema) -> tuple[Validation, EncodedFeatures, list[Any] | None]:
    """The values checked with loopline.columns' rules and encoded as loopline.features encodes them,
    straight from the Arrow arrays (no DataFrame): a body whose columns passed `type_problems`. Also the
    time column's values as naive UTC datetimes for the request log (None without one). A column with no
    nulls whose values all pass takes a short path (a few array-wide checks)."""
    n = table.num_rows
    plan = _plan(schema)
    bad: dict[tuple[str, str], np.ndarray] = {}
    numeric_cols, categorical_cols = schema.numeric_features, schema.categorical_features
    numeric = np.empty((n, len(numeric_cols)), dtype=np.float32)
    missing = np.zeros((n, len(numeric_cols) + len(categorical_cols)), dtype=bool)
    for j, col in enumerate(numeric_cols):
        array = _plain(table.column(col.name))
        passed = _numbers_pass(array, col)
        if passed is not None:
            numeric[:, j] = passed
            continue
        present = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        x = np.asarray(pc.cast(array, pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)
        if not plan.null_ok[col.name]:
            bad[(col.name, "null where a value is required")] = ~present
        for problem, rows in number_problems(x, present, col).items():
            bad[(col.name, problem)] = rows
        numeric[:, j] = x
        missing[:, j] = ~present
    _fill_numeric(numeric, plan.fills)
    categorical = np.empty((n, len(categorical_cols)), dtype=np.int64)
    for j, col in enumerate(categorical_cols):
        array = _plain(table.column(col.name))
        values = plan.categories[col.name]
        if not pat.is_null(array.type) and array.type != values.type:
            array = pc.cast(array, values.type)
        found = pc.index_in(array, value_set=values)
        if not found.null_count:  # every value one of the categories (so none null either)
            categorical[:, j] = found.to_numpy(zero_copy_only=False)
            continue
        present = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        codes = np.asarray(found.to_numpy(zero_copy_only=False), dtype=np.float64)
        known = ~np.isnan(codes)
        if not plan.null_ok[col.name]:
            bad[(col.name, "null where a value is required")] = ~present
        bad[(col.name, plan.not_a_category[col.name])] = present & ~known
        fill = plan.fill_codes[col.name]
        categorical[:, j] = np.where(known, np.nan_to_num(codes), np.where(present, UNKNOWN, fill)).astype(np.int64)
        missing[:, len(numeric_cols) + j] = ~present
    times = None
    time = schema.time_column
    if time and time in table.column_names:  # parsed once: checked here, logged by the caller
        array = _plain(table.column(time))
        present = ~np.asarray(array.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        parsed = pd.to_datetime(pd.Series(array.to_pylist()), errors="coerce", utc=True, format="ISO8601")
        bad[(time, "not an ISO 8601 date/time")] = present & parsed.isna().to_numpy()
        times = [None if pd.isna(t) else t.to_pydatetime() for t in parsed.dt.tz_convert(None)]
    return collect(bad, n, []), EncodedFeatures(numeric, categorical, missing), times


def _stream(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def arrow_answer(columns: dict[str, np.ndarray], model_version: str, request_id: str) -> bytes:
    table = pa.table({k: pa.array(v) for k, v in columns.items()})
    return _stream(table.replace_schema_metadata({"model_version": model_version, "request_id": request_id}))


def encode_table(frame: pd.DataFrame) -> bytes:
    """A DataFrame as an Arrow IPC stream body (what a client sends)."""
    return _stream(pa.Table.from_pandas(frame, preserve_index=False))
