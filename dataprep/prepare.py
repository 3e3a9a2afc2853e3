"""`prepare` stage: validate, quarantine, de-duplicate, split, fill missing values, fit statistics, report.

`prepare()` is a pure function of the raw snapshot, the schema and the params; `run_prepare()` reads
and writes the files; `main()` is the DVC stage's entry point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd

from dataprep.report import build_data_report, metrics_of, render_html
from dataprep.split import split_rows
from dataprep.stats import apply_missing_policy, fit_missing_fills, fit_preprocessing_stats
from dataprep.validate import ValidationResult, provenance_columns, quarantine_invalid_rows
from loopline.atomic import StagedOutputs, write_json
from loopline.config import Params, load_dataset_schema, load_params
from loopline.errors import ConfigError, DataError
from loopline.paths import SPLITS, ProjectPaths
from loopline.schema import FeatureSchema, Kind
from loopline.stage import run_stage

log = logging.getLogger(__name__)
EXAMPLE_ROWS = 5


@dataclass
class PreparedData:
    schema: FeatureSchema
    """The dataset's schema with the fills learned on the training split."""
    splits: dict[str, pd.DataFrame]
    quarantined: pd.DataFrame
    stats: dict[str, Any]
    report: dict[str, Any]
    rows: pd.DataFrame
    """Per split row: provenance and training weight (paths.prepared_rows)."""


def prepare(raw: pd.DataFrame, schema: FeatureSchema, params: Params) -> PreparedData:
    checked = quarantine_invalid_rows(raw, schema)
    refuse_unusable_batches(raw, checked, params.prepare.max_invalid_share)

    valid = checked.valid
    provenance = provenance_columns(valid)
    deduped = valid.drop_duplicates(subset=[c for c in valid.columns if c not in provenance], keep="first")
    deduped = deduped.reset_index(drop=True)
    duplicates = len(valid) - len(deduped)
    window = params.prepare.window
    newest = newest_time(deduped, schema) if window.last_days or window.half_life_days else None
    deduped, outside_window = keep_window(deduped, schema.time_column, window.last_days, newest)

    splits = split_rows(deduped, schema, params.prepare.split, params.seed)
    fills = fit_missing_fills(splits["train"], schema)
    missing_dropped = 0
    for name in SPLITS:
        splits[name], dropped = apply_missing_policy(splits[name], schema, fills)
        missing_dropped += dropped
        if splits[name].empty:
            raise DataError(f"the {name} split is empty after the missing-value policy dropped {dropped} rows")
    rows = row_record(splits, schema.time_column, provenance, window.half_life_days, newest)
    splits = {name: frame.drop(columns=provenance) for name, frame in splits.items()}

    stats = fit_preprocessing_stats(splits["train"], schema, fills)
    schema = replace(schema, learned_fills=fills)  # frozen with the model: serving fills nulls the same way
    report = build_data_report(
        schema=schema,
        rows_raw=len(raw),
        rows_per_file={str(k): int(v) for k, v in raw["_source_file"].value_counts(sort=False).items()},
        quarantined=checked.quarantined,
        duplicates_dropped=duplicates,
        missing_dropped=missing_dropped,
        splits=splits,
        split_method=params.prepare.split.method,
        fills=fills,
    )
    report["rows"]["outside_window"] = outside_window
    report["rows"]["harvested"] = {
        name: int(frame["_request_id"].notna().sum()) if "_request_id" in frame.columns else 0
        for name, frame in rows.groupby("split", sort=False)
    }
    return PreparedData(
        schema=schema, splits=splits, quarantined=checked.quarantined, stats=stats, report=report, rows=rows
    )


def newest_time(frame: pd.DataFrame, schema: FeatureSchema) -> pd.Timestamp:
    """The newest known row's time, which the training window measures days back from."""
    if schema.time_column is None or schema.column(schema.time_column).kind is not Kind.DATETIME:
        raise ConfigError(
            "params.yaml: prepare.window needs a datetime time_column in the schema to measure days on "
            f"(schema {schema.name!r} has {schema.time_column or 'none'})"
        )
    return frame[schema.time_column].max()


def keep_window(
    frame: pd.DataFrame, time_column: str | None, last_days: float | None, newest: pd.Timestamp | None
) -> tuple[pd.DataFrame, int]:
    """The rows of the last `last_days` days before `newest` (all of them when unset), and how many were
    left out."""
    if last_days is None:
        return frame, 0
    keep = frame[time_column] >= newest - pd.Timedelta(days=last_days)
    return frame[keep].reset_index(drop=True), int((~keep).sum())


def recency_weights(times: pd.Series, newest: pd.Timestamp, half_life_days: float) -> np.ndarray:
    """0.5 ** (age in days / half-life): the newest row weighs 1, a row one half-life older 0.5."""
    age_days = (newest - times).dt.total_seconds().to_numpy(dtype=np.float64) / 86_400.0
    return np.power(0.5, np.clip(age_days, 0.0, None) / half_life_days)


def row_record(
    splits: dict[str, pd.DataFrame],
    time_column: str | None,
    provenance: list[str],
    half_life_days: float | None,
    newest: pd.Timestamp | None,
) -> pd.DataFrame:
    """One row per split row, in split order: the split, the row's position, its provenance columns and
    its recency weight (1 everywhere without a half-life): the loss weight of the training rows in the
    selection run, and of every row a refit learns."""
    parts = []
    for name in SPLITS:
        frame = splits[name]
        part = frame[provenance].reset_index(drop=True)
        part.insert(0, "row", np.arange(len(frame)))
        part.insert(0, "split", name)
        weight = np.ones(len(frame))
        if half_life_days is not None:
            weight = recency_weights(frame[time_column], newest, half_life_days)
        part["weight"] = weight
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def refuse_unusable_batches(raw: pd.DataFrame, checked: ValidationResult, max_invalid_share: float) -> None:
    """Stop when every row, every row of one file, or more than the allowed share of rows is invalid."""
    bad = checked.quarantined
    if bad.empty:
        return
    if checked.valid.empty:
        raise DataError(f"all {len(raw)} rows are invalid; {_describe(bad)}")
    per_file_bad = bad["_source_file"].value_counts()
    per_file_all = raw["_source_file"].value_counts()
    for file, n_bad in per_file_bad.items():
        if n_bad == per_file_all[file]:
            raise DataError(
                f"{file}: all {n_bad} rows of this file are invalid; {_describe(bad[bad['_source_file'] == file])}"
            )
    share = len(bad) / len(raw)
    if share > max_invalid_share:
        raise DataError(
            f"{len(bad)} of {len(raw)} rows ({share:.1%}) are invalid, more than prepare.max_invalid_share "
            f"({max_invalid_share:.1%}) in params.yaml; {_describe(bad)}"
        )


def _describe(bad: pd.DataFrame) -> str:
    """Which columns fail, and the first rows (file, row number, reason) so a person can look."""
    columns = bad["_reason"].str.split("; ").explode().str.partition(": ")[0].value_counts()
    by_column = ", ".join(f"column {name!r} in {count} rows" for name, count in columns.items())
    examples = "; ".join(
        f"{row['_source_file']} row {row['_source_row']}: {row['_reason']}"
        for row in bad.head(EXAMPLE_ROWS).to_dict("records")
    )
    return f"problems: {by_column}. First rows: {examples}"


def run_prepare(paths: ProjectPaths | None = None) -> PreparedData:
    paths = paths or ProjectPaths.here()
    params = load_params(paths.params)
    schema = load_dataset_schema(params, paths)
    if not paths.raw_snapshot.is_file():
        raise DataError(f"{paths.raw_snapshot}: raw snapshot not found; run the ingest stage first (dvc repro ingest)")
    raw = pd.read_parquet(paths.raw_snapshot)
    result = prepare(raw, schema, params)

    with StagedOutputs() as out:
        prepared = out.path(paths.prepared_dir, directory=True)
        for name, frame in result.splits.items():
            frame.to_parquet(prepared / paths.split(name).name, index=False)
        _text_safe(result.quarantined).to_parquet(prepared / paths.quarantine.name, index=False)
        _text_safe(result.rows).to_parquet(prepared / paths.prepared_rows.name, index=False)
        write_json(prepared / paths.preprocessing_stats.name, result.stats)
        write_json(prepared / paths.prepared_schema.name, result.schema.to_dict())
        write_json(out.path(paths.data_report_json), result.report)
        write_json(out.path(paths.data_metrics), metrics_of(result.report))
        out.path(paths.data_report_html).write_text(render_html(result.report))

    rows = result.report["rows"]
    log.info(
        "%d rows: %d quarantined, %d duplicates dropped; train %d, val %d, test %d",
        rows["raw"],
        rows["quarantined"],
        rows["duplicates_dropped"],
        rows["train"],
        rows["val"],
        rows["test"],
    )
    if rows["quarantined"]:
        log.info("quarantined rows and their reasons: %s", paths.quarantine.relative_to(paths.root))
    log.info("data report: %s", paths.data_report_html.relative_to(paths.root))
    return result


def _text_safe(df: pd.DataFrame) -> pd.DataFrame:
    """Quarantined values are kept as they came; mixed-type columns are stored as text."""
    df = df.copy()
    for name in df.columns:
        if df[name].dtype == object:
            df[name] = df[name].map(lambda v: None if v is None or (isinstance(v, float) and v != v) else str(v))
    return df


def main() -> int:
    return run_stage("prepare", run_prepare)


if __name__ == "__main__":
    raise SystemExit(main())
