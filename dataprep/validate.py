"""Check every row against the feature schema; rows that fail are quarantined with their reasons.

The checks are vectorised per column; only rows that fail get a reason string, built as
"<column>: <problem>" and joined with "; " when a row has several problems.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from loopline.schema import Column, FeatureSchema, Kind

PROVENANCE = ["_source_file", "_source_row"]
"""Where a raw row came from: its file (or packaged dataset) and its row number there."""
HARVEST_PROVENANCE = ["_request_id", "_record", "_model_version", "_served_at", "_label_received_at"]
"""Where a harvested row came from (dataprep/harvest.py): the served record and its label; null for rows
of the source and of other batches."""


def provenance_columns(frame: pd.DataFrame) -> list[str]:
    """The provenance columns `frame` carries, in their fixed order."""
    return [c for c in PROVENANCE + HARVEST_PROVENANCE if c in frame.columns]


@dataclass
class ValidationResult:
    valid: pd.DataFrame
    """Rows that passed, with each column in its schema type."""
    quarantined: pd.DataFrame
    """Rows that failed, values as they came, plus `_reason` and provenance."""
    problems_by_column: dict[str, int]


@dataclass
class _ColumnCheck:
    typed: pd.Series
    failures: list[tuple[np.ndarray, str, bool]]
    """(rows that fail, problem template with {v} for the value, show the parsed value instead of the raw one)"""


def quarantine_invalid_rows(raw: pd.DataFrame, schema: FeatureSchema) -> ValidationResult:
    n = len(raw)
    reasons: dict[int, list[str]] = {}
    problems_by_column: Counter[str] = Counter()
    typed_columns = {}
    for col in schema.columns:
        check = check_column(raw[col.name], col)
        typed_columns[col.name] = check.typed
        for mask, template, show_parsed in check.failures:
            rows = np.flatnonzero(mask)
            if rows.size == 0:
                continue
            problems_by_column[col.name] += int(rows.size)
            values = (check.typed if show_parsed else raw[col.name]).to_numpy()[rows]
            for row, value in zip(rows.tolist(), values.tolist()):
                reasons.setdefault(row, []).append(f"{col.name}: {template.format(v=_show(value))}")

    bad = np.zeros(n, dtype=bool)
    bad[list(reasons)] = True
    typed = pd.DataFrame(typed_columns, index=raw.index)
    for name in provenance_columns(raw):
        typed[name] = raw[name].to_numpy()
    valid = typed[~bad].reset_index(drop=True)
    valid = _narrow_types(valid, schema)

    quarantined = raw[bad].copy()
    quarantined["_reason"] = ["; ".join(reasons[i]) for i in np.flatnonzero(bad).tolist()]
    quarantined = quarantined.reset_index(drop=True)
    return ValidationResult(valid=valid, quarantined=quarantined, problems_by_column=dict(problems_by_column))


def check_column(values: pd.Series, col: Column) -> _ColumnCheck:
    present = values.notna().to_numpy()
    if col.kind is Kind.NUMERIC:
        check = _check_numeric(values, col, present)
    elif col.kind is Kind.CATEGORICAL:
        check = _check_categorical(values, col, present)
    elif col.kind is Kind.DATETIME:
        typed = parse_datetimes(values)
        check = _ColumnCheck(
            typed,
            [
                (
                    present & typed.isna().to_numpy(),
                    "{v} is not an ISO 8601 date/time (e.g. 2012-12-31 23:00 or 2012-12-31T23:00:00Z)",
                    False,
                )
            ],
        )
    else:
        check = _ColumnCheck(values, [])
    if not col.nullable:
        check.failures.insert(0, (~present, "missing value (the column is not nullable)", False))
    return check


def parse_datetimes(values: pd.Series) -> pd.Series:
    """Each value parsed on its own as ISO 8601 (date, date and time, 'T' or space, seconds optional,
    'Z' or an offset), never by a format guessed from the first value. Times with an offset are
    converted to UTC; times without one are taken as they are (read as UTC). The result is naive
    datetime64, NaT where a value is not a date/time."""
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC").dt.tz_localize(None)
    if pd.api.types.is_datetime64_dtype(values.dtype):
        return values.astype("datetime64[ns]")
    if pd.api.types.is_bool_dtype(values.dtype) or pd.api.types.is_numeric_dtype(values.dtype):
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")  # numbers are not times
    values = values.map(lambda v: None if isinstance(v, (bool, np.bool_, int, float, np.number)) else v)
    return pd.to_datetime(values, errors="coerce", format="ISO8601", utc=True).dt.tz_localize(None)


def _without_booleans(values: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """The values with booleans taken out (True/False would otherwise read as 1/0), and the rows that held
    one: a Parquet or pandas boolean column, or True/False among other values."""
    if pd.api.types.is_bool_dtype(values.dtype):
        booleans = values.notna().to_numpy()
    elif values.dtype == object:
        booleans = values.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy(dtype=bool)
    else:
        return values, np.zeros(len(values), dtype=bool)
    return (values.astype(object).where(~booleans, None) if booleans.any() else values), booleans


def _check_numeric(values: pd.Series, col: Column, present: np.ndarray) -> _ColumnCheck:
    values, booleans = _without_booleans(values)
    typed = pd.to_numeric(values, errors="coerce").astype("float64")
    num = typed.to_numpy()
    parsed = ~np.isnan(num)
    failures = [
        (booleans, "{v} is a boolean, not a number", False),
        (present & ~parsed & ~booleans, "{v} is not a number", False),
    ]
    finite = np.isfinite(num)
    failures.append((parsed & ~finite, "{v} is not a finite number", True))
    with np.errstate(invalid="ignore"):
        if col.min is not None:
            failures.append((finite & (num < col.min), f"{{v}} is below the minimum {col.min:g}", True))
        if col.max is not None:
            failures.append((finite & (num > col.max), f"{{v}} is above the maximum {col.max:g}", True))
        if col.integer:
            failures.append((finite & (num != np.round(num)), "{v} is not a whole number", True))
    return _ColumnCheck(typed, failures)


def _check_categorical(values: pd.Series, col: Column, present: np.ndarray) -> _ColumnCheck:
    listed = _category_preview(col)
    if isinstance(col.categories[0], int):
        numbers, _ = _without_booleans(values)
        num = pd.to_numeric(numbers, errors="coerce").to_numpy(dtype="float64")
        whole = ~np.isnan(num) & (num == np.round(num))
        known = whole & np.isin(num, np.asarray(col.categories, dtype="float64"))
        typed = pd.Series(np.where(known, num, np.nan), index=values.index)
        return _ColumnCheck(typed, [(present & ~known, f"{{v}} is not one of the categories {listed}", False)])
    as_text = values.map(_category_text, na_action="ignore")
    known = as_text.isin(col.categories).to_numpy()
    typed = as_text.where(known, None)
    return _ColumnCheck(typed, [(present & ~known, f"{{v}} is not one of the categories {listed}", False)])


def _category_text(value: object) -> str:
    """Codes read from CSV may arrive as 3 or 3.0; categories listed as text compare as '3'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _category_preview(col: Column, limit: int = 8) -> str:
    shown = ", ".join(repr(c) for c in col.categories[:limit])
    more = f", ... ({len(col.categories)} in all)" if len(col.categories) > limit else ""
    return f"[{shown}{more}]"


def _narrow_types(valid: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Integer-valued columns (integer numerics, integer categories) become int64, or Int64 with nulls."""
    for col in schema.columns:
        integral = (col.kind is Kind.NUMERIC and col.integer) or (
            col.kind is Kind.CATEGORICAL and isinstance(col.categories[0], int)
        )
        if integral:
            series = valid[col.name]
            valid[col.name] = series.astype("Int64") if series.isna().any() else series.astype("int64")
        elif col.kind is Kind.CATEGORICAL:
            valid[col.name] = valid[col.name].astype(object)
    return valid


def _show(value: object) -> str:
    if isinstance(value, float) and np.isnan(value):
        return "null"
    return repr(value.item() if hasattr(value, "item") else value)
