"""Column-wise validation of a table of records against the feature schema: the columnar twin of the
request model (loopline.request_model), with the same rules, for bodies and files that arrive as
columns (Apache Arrow, Parquet, CSV).

Every feature column must be present; a value must be a finite number within the schema's range (a
whole number where the column is an integer) or one of the column's categories, and may be null only
where a served record may leave it empty (`accepts_null`). The time column is optional; when present
its values must read as date/times. `validate_columns` says, per row, why it is invalid (all its
problems, one per column), and per column how many rows are bad and which come first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from loopline.request_model import accepts_null
from loopline.schema import Column, FeatureSchema, Kind

FIRST_ROWS = 5


@dataclass
class ColumnProblem:
    column: str
    problem: str
    rows: int
    """How many rows have it."""
    first: list[int] = field(default_factory=list)
    """The first few of those rows (0-based, in the table's order)."""

    def describe(self) -> str:
        more = ", ..." if self.rows > len(self.first) else ""
        where = f" (rows {', '.join(map(str, self.first))}{more})" if self.first else ""
        return f"`{self.column}`: {self.problem} in {self.rows} row{'s' if self.rows != 1 else ''}{where}"

    def to_dict(self) -> dict[str, object]:
        return {"field": self.column, "problem": self.problem, "rows": self.rows, "first_rows": self.first}


@dataclass
class Validation:
    valid: np.ndarray
    """Per row: True when every feature is acceptable."""
    reasons: list[str]
    """Per row: '' or its problems, '; '-separated, each naming the column."""
    problems: list[ColumnProblem]
    """Per column and kind of problem, the rows that have it."""
    unknown: list[str]
    """Columns that are not features (nor the time column): a request may not carry them; a file may."""


def _numeric(values: pd.Series, col: Column) -> dict[str, np.ndarray]:
    """Text that reads as a number counts as that number (a CSV column with one bad cell is all text);
    an Arrow body is held to its column types before this (`arrow_type_problems`)."""
    present = values.notna().to_numpy()
    if pd.api.types.is_bool_dtype(values):
        return {"not a number (a boolean)": present}
    flags = np.zeros(len(values), dtype=bool)
    if values.dtype == object:
        flags = np.array([isinstance(v, (bool, np.bool_)) for v in values.tolist()], dtype=bool)
    x = pd.to_numeric(values.where(~flags), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return number_problems(x, present, col)


def number_problems(x: np.ndarray, present: np.ndarray, col: Column) -> dict[str, np.ndarray]:
    """Per problem, the rows of `x` (float64, NaN where absent or unreadable) that have it."""
    unread = present & np.isnan(x)
    finite = np.isfinite(x)
    out = {"not a number": unread, "not a finite number": present & ~unread & ~finite}
    if col.integer:
        out["not a whole number"] = finite & (np.mod(x, 1) != 0)
    if col.min is not None:
        out[f"below the minimum {col.min:g}"] = finite & (x < col.min)
    if col.max is not None:
        out[f"above the maximum {col.max:g}"] = finite & (x > col.max)
    return out


def _as_int(value: object) -> object:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return value
    return int(number) if number.is_integer() else value


def _categorical(values: pd.Series, col: Column) -> dict[str, np.ndarray]:
    categories = list(col.categories)
    if all(isinstance(c, int) for c in categories) and values.dtype == object:  # "7" read from a CSV is 7
        values = values.map(lambda v: _as_int(v) if isinstance(v, str) else v)
    unknown = values.notna().to_numpy() & ~values.isin(categories).to_numpy()
    return {not_a_category(col): unknown}


def not_a_category(col: Column) -> str:
    categories = list(col.categories)
    shown = ", ".join(map(str, categories[:6])) + (", ..." if len(categories) > 6 else "")
    return f"not one of the categories ({shown})"


def _time(values: pd.Series, col: Column) -> dict[str, np.ndarray]:
    present = values.notna().to_numpy()
    if col.kind is Kind.DATETIME:
        if pd.api.types.is_datetime64_any_dtype(values):
            return {}
        parsed = pd.to_datetime(values, errors="coerce", utc=True, format="ISO8601")
        return {"not an ISO 8601 date/time": present & parsed.isna().to_numpy()}
    number = pd.to_numeric(values, errors="coerce")
    return {"not a number": present & ~np.isfinite(number.to_numpy(dtype=np.float64, na_value=np.nan))}


def validate_columns(frame: pd.DataFrame, schema: FeatureSchema) -> Validation:
    n = len(frame)
    bad: dict[tuple[str, str], np.ndarray] = {}
    for col in schema.features:
        if col.name not in frame.columns:
            bad[(col.name, "missing column")] = np.ones(n, dtype=bool)
            continue
        values = frame[col.name]
        if not accepts_null(col):
            bad[(col.name, "null where a value is required")] = values.isna().to_numpy()
        checks = _categorical(values, col) if col.kind is Kind.CATEGORICAL else _numeric(values, col)
        for problem, rows in checks.items():
            bad[(col.name, problem)] = rows
    if schema.time_column and schema.time_column in frame.columns:
        for problem, rows in _time(frame[schema.time_column], schema.column(schema.time_column)).items():
            bad[(schema.time_column, problem)] = rows
    known = {c.name for c in schema.features} | ({schema.time_column} if schema.time_column else set())
    return collect(bad, n, [c for c in frame.columns if c not in known])


def collect(bad: dict[tuple[str, str], np.ndarray], n: int, unknown: list[str]) -> Validation:
    """Per (column, problem) row masks as a Validation."""
    valid = np.ones(n, dtype=bool)
    reasons = [""] * n
    problems = []
    for (column, problem), rows in bad.items():
        if not rows.any():
            continue
        idx = np.flatnonzero(rows)
        valid[idx] = False
        problems.append(ColumnProblem(column, problem, int(idx.size), idx[:FIRST_ROWS].tolist()))
        for i in idx:
            reasons[i] = f"{reasons[i]}; {column}: {problem}" if reasons[i] else f"{column}: {problem}"
    return Validation(valid, reasons, problems, unknown)
