"""`ingest` stage: the configured source, plus any appended batches, cut at `as_of`, to a raw snapshot.

The snapshot keeps the source's values as they are (validation is `prepare`'s job) but has the schema's
columns only: columns the schema drops for a reason (e.g. target leakage) are removed here, and a
source that lacks a schema column is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dataprep import sources
from dataprep.validate import HARVEST_PROVENANCE, PROVENANCE, parse_datetimes, provenance_columns
from loopline.atomic import StagedOutputs, write_json
from loopline.config import Params, load_dataset_schema, load_params, schema_path
from loopline.errors import ConfigError, DataError
from loopline.paths import ProjectPaths
from loopline.schema import FeatureSchema, Kind
from loopline.stage import run_stage

log = logging.getLogger(__name__)


@dataclass
class IngestSummary:
    files: dict[str, int] = field(default_factory=dict)
    rows_read: int = 0
    rows_after_as_of: int = 0
    as_of: str | None = None
    dropped_columns: dict[str, str] = field(default_factory=dict)
    ignored_columns: list[str] = field(default_factory=list)


def load_source(params: Params, paths: ProjectPaths) -> pd.DataFrame:
    source = params.data.source
    if source == "bike":
        return sources.load_bike()
    if source == "acs":
        return sources.load_acs()
    if source == "penguins":
        return sources.load_penguins()
    assert params.data.path is not None  # guaranteed by DataParams
    return sources.read_table(paths.root / params.data.path, label=params.data.path)


def load_batches(paths: ProjectPaths) -> list[pd.DataFrame]:
    """New labeled rows dropped into data/external/batches/, read in file-name order."""
    if not paths.batches_dir.is_dir():
        return []
    files = sorted(p for p in paths.batches_dir.iterdir() if p.suffix.lower() in (".csv", ".parquet", ".pq"))
    return [sources.read_table(p, label=str(p.relative_to(paths.root))) for p in files]


def conform_to_schema(df: pd.DataFrame, schema: FeatureSchema, summary: IngestSummary, *, where: str) -> pd.DataFrame:
    """Keep the schema's columns (plus provenance); refuse a frame that lacks one."""
    missing = [c for c in schema.column_names if c not in df.columns]
    if missing:
        raise DataError(
            f"{where}: missing column(s) {', '.join(repr(c) for c in missing)} required by schema "
            f"{schema.name!r} (found: {', '.join(c for c in df.columns if c not in provenance_columns(df))})"
        )
    for name, reason in schema.drop_columns.items():
        if name in df.columns:
            summary.dropped_columns[name] = reason
    known = schema.column_names + PROVENANCE + HARVEST_PROVENANCE + list(schema.drop_columns)
    for name in [c for c in df.columns if c not in known]:
        if name not in summary.ignored_columns:
            summary.ignored_columns.append(name)
    return df[schema.column_names + provenance_columns(df)]


def parse_as_of(value: str | int | None, schema: FeatureSchema) -> tuple[object, bool] | None:
    """The cut-off in the time column's type; a date without a time covers that whole day."""
    if value is None:
        return None
    if schema.time_column is None:
        raise ConfigError("params.yaml: data.as_of is set but the schema has no time_column to cut on")
    kind = schema.column(schema.time_column).kind
    if kind is Kind.NUMERIC:
        try:
            return float(value), True
        except ValueError:
            raise ConfigError(
                f"params.yaml: data.as_of: {value!r} is not a number (time column {schema.time_column!r} is numeric)"
            ) from None
    try:
        stamp = pd.Timestamp(str(value))
    except ValueError:
        raise ConfigError(f"params.yaml: data.as_of: {value!r} is not a date or date-time") from None
    if stamp.tzinfo is not None:  # times are compared in UTC (dataprep.validate.parse_datetimes)
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    date_only = len(str(value).strip()) <= 10
    return (stamp + pd.Timedelta(days=1), False) if date_only else (stamp, True)


def time_values(series: pd.Series, kind: Kind) -> pd.Series:
    if kind is Kind.DATETIME:
        return parse_datetimes(series)
    return pd.to_numeric(series, errors="coerce")


def cut_at(df: pd.DataFrame, schema: FeatureSchema, as_of: str | int | None) -> pd.DataFrame:
    """Rows known at `as_of`. Rows whose time cannot be read are kept, so prepare can quarantine them."""
    cut = parse_as_of(as_of, schema)
    if cut is None:
        return df
    bound, inclusive = cut
    assert schema.time_column is not None
    times = time_values(df[schema.time_column], schema.column(schema.time_column).kind)
    known = (times <= bound) if inclusive else (times < bound)
    return df[known | times.isna()]


def snapshot_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Object columns holding mixed types become text, so Parquet can store them as they came."""
    df = df.copy()
    for name in df.columns:
        col = df[name]
        if col.dtype == object:
            kinds = {type(v) for v in col.dropna().head(100_000)}
            if len(kinds) > 1:
                df[name] = col.map(lambda v: v if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return df


def ingest(params: Params, paths: ProjectPaths) -> tuple[pd.DataFrame, IngestSummary]:
    schema = load_dataset_schema(params, paths)
    summary = IngestSummary(as_of=None if params.data.as_of is None else str(params.data.as_of))
    frames = []
    for frame in [load_source(params, paths), *load_batches(paths)]:
        where = str(frame["_source_file"].iloc[0])
        frames.append(conform_to_schema(frame, schema, summary, where=where))
        for file, rows in frame["_source_file"].value_counts(sort=False).items():
            summary.files[str(file)] = int(rows)
    raw = pd.concat(frames, ignore_index=True)
    summary.rows_read = len(raw)
    raw = cut_at(raw, schema, params.data.as_of).reset_index(drop=True)
    summary.rows_after_as_of = len(raw)
    if raw.empty:
        raise DataError(
            f"no rows are left after the cut-off data.as_of={params.data.as_of!r} on column "
            f"{schema.time_column!r} ({summary.rows_read} rows read from {', '.join(summary.files)})"
        )
    log.info(
        "%d rows read from %d file(s), %d known at as_of=%s; schema %s",
        summary.rows_read,
        len(summary.files),
        summary.rows_after_as_of,
        summary.as_of,
        schema_path(params, paths).relative_to(paths.root),
    )
    for name, reason in summary.dropped_columns.items():
        log.info("dropped column %r: %s", name, reason)
    if summary.ignored_columns:
        log.info("ignored columns not in the schema: %s", ", ".join(summary.ignored_columns))
    return raw, summary


def run_ingest(paths: ProjectPaths | None = None) -> IngestSummary:
    paths = paths or ProjectPaths.here()
    params = load_params(paths.params)
    raw, summary = ingest(params, paths)
    with StagedOutputs() as out:
        raw_dir = out.path(paths.raw_snapshot.parent, directory=True)
        snapshot_safe(raw).to_parquet(raw_dir / paths.raw_snapshot.name, index=False)
        write_json(raw_dir / "manifest.json", summary.__dict__)
    log.info("wrote %s", paths.raw_snapshot.relative_to(paths.root))
    return summary


def main() -> int:
    return run_stage("ingest", run_ingest)


if __name__ == "__main__":
    raise SystemExit(main())
