"""`prepare` stage: validate, quarantine, de-duplicate, split, fill missing values, fit statistics, report.

`prepare()` is a pure function of the raw snapshot, the schema and the params; `run_prepare()` reads
and writes the files; `main()` is the DVC stage's entry point.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import pandas as pd

from dataprep.report import build_data_report, metrics_of, render_html
from dataprep.split import split_rows
from dataprep.stats import apply_missing_policy, fit_missing_fills, fit_preprocessing_stats
from dataprep.validate import PROVENANCE, ValidationResult, quarantine_invalid_rows
from loopline.atomic import StagedOutputs, write_json
from loopline.config import Params, load_dataset_schema, load_params
from loopline.errors import DataError
from loopline.paths import SPLITS, ProjectPaths
from loopline.schema import FeatureSchema
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


def prepare(raw: pd.DataFrame, schema: FeatureSchema, params: Params) -> PreparedData:
    checked = quarantine_invalid_rows(raw, schema)
    refuse_unusable_batches(raw, checked, params.prepare.max_invalid_share)

    valid = checked.valid.drop(columns=PROVENANCE)
    deduped = valid.drop_duplicates(keep="first").reset_index(drop=True)
    duplicates = len(valid) - len(deduped)

    splits = split_rows(deduped, schema, params.prepare.split, params.seed)
    fills = fit_missing_fills(splits["train"], schema)
    missing_dropped = 0
    for name in SPLITS:
        splits[name], dropped = apply_missing_policy(splits[name], schema, fills)
        missing_dropped += dropped
        if splits[name].empty:
            raise DataError(f"the {name} split is empty after the missing-value policy dropped {dropped} rows")

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
    return PreparedData(schema=schema, splits=splits, quarantined=checked.quarantined, stats=stats, report=report)


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
