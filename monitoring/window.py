"""A window of served traffic: request-log rows served in [start, end), with the labels that arrived.

The request log and the ground truth are the service's Parquet files (serving/request_log.py), one
folder per day; only the days the window touches are read. A label joins its record by request id and
record index; when a record was labelled twice, the later label counts.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd

from loopline.schema import FeatureSchema
from serving.request_log import read_log_files


def day_files(directory: Path, start: datetime, end: datetime) -> list[Path]:
    """The written files of the day folders [start, end) touches."""
    if not directory.is_dir():
        return []
    days = {f"date={(start + timedelta(days=i)):%Y-%m-%d}" for i in range((end.date() - start.date()).days + 1)}
    return sorted(f for folder in directory.iterdir() if folder.name in days for f in folder.glob("*.parquet"))


def served_window(
    request_log: Path, ground_truth: Path, schema: FeatureSchema, start: datetime, end: datetime
) -> pd.DataFrame:
    """Rows served in [start, end) (timezone-aware UTC datetimes), with `schema.target` where labelled."""
    rows = read_log_files(day_files(request_log, start, end))
    if rows.empty:
        return pd.DataFrame(
            columns=[
                "request_id",
                "record",
                "served_at",
                "model_version",
                *(c.name for c in schema.features),
                "prediction",
                schema.target,
            ]
        )
    rows = rows[(rows["served_at"] >= pd.Timestamp(start)) & (rows["served_at"] < pd.Timestamp(end))]
    labels = read_log_files(day_files(ground_truth, start, datetime.now(start.tzinfo) + timedelta(days=1)))
    if labels.empty:
        return rows.assign(**{schema.target: pd.NA}).reset_index(drop=True)
    labels = labels.sort_values("received_at").drop_duplicates(["request_id", "record"], keep="last")[
        ["request_id", "record", schema.target]
    ]
    rows = rows.astype({"request_id": str})
    return rows.merge(labels.astype({"request_id": str}), on=["request_id", "record"], how="left").reset_index(
        drop=True
    )
