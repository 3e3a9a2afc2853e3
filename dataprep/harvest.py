"""`loopline harvest`: served records whose labels have arrived become a labelled batch for `ingest`.

The service logs every served record (serving/request_log.py) and keeps every label posted to /feedback
(request id, record index, value, time received). A harvest joins the two on (request id, record) and
writes the labelled records as one batch in the source's raw columns, under data/external/batches/ where
`ingest` appends batches from, with provenance columns (`HARVEST_PROVENANCE`: request id, record, model
version, served at, label received at). A harvested row's time is the event time the record was sent
with (the schema's time column, optional in a request), else the time it was served.

- Idempotent: a ledger beside the labels (`<ground truth>/_harvest/ledger-*.parquet`) names every
  harvested record, and a second run adds nothing. A batch written without its ledger entry (a crash
  between the two) is found in the batches folder and entered, so no row is harvested twice.
- Repeated labels for one record: the latest received wins; the others are counted. A label received
  after its record was harvested (a correction) is quarantined with that reason, never applied silently.
- A label for a record the request log does not hold waits `harvest.unknown_label_grace_minutes` (the log
  may not be written yet), then is quarantined with the reason (`_harvest/quarantine-*.parquet`).
- Records with no label yet stay in the log for a later harvest.
- Harvested rows are validated like any source row (dataprep/validate.py); a row that fails goes to the
  harvest quarantine with its reason instead of the batch.
- Retention: after a harvest, request-log and label files older than `harvest.retention_days` that this
  harvest read are removed, so no file goes before a harvest has taken what was labelled in it.

`harvest()` is the core (no DVC, no Prefect); `loopline harvest` and the training flow add `dvc add` of the
new batch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dataprep.validate import HARVEST_PROVENANCE, quarantine_invalid_rows
from loopline.config import Params
from loopline.paths import ProjectPaths
from loopline.schema import FeatureSchema, Kind
from serving.request_log import log_files, plain_values, read_log_files, written_at

log = logging.getLogger(__name__)

BATCH_PREFIX = "harvest-"
KEY = ["request_id", "record"]


@dataclass
class HarvestSummary:
    batch: str | None = None
    """The batch written (relative to the project root), or None when nothing new was labelled."""
    rows: int = 0
    served_from: str | None = None
    served_to: str | None = None
    labels_read: int = 0
    repeated_labels: int = 0
    """Labels for a record that was labelled again later in the same harvest (the latest one counts)."""
    late_labels: int = 0
    """Labels received after their record was harvested: quarantined, not applied."""
    unknown_labels: int = 0
    """Labels for a record the request log does not hold, quarantined."""
    waiting_labels: int = 0
    """Labels for an unknown record received within the grace period: left for a later harvest."""
    invalid_rows: int = 0
    """Labelled records that failed the schema's validation, quarantined."""
    unlabelled_records: int = 0
    """Served records with no label yet (left in the log)."""
    removed_files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------------------- reading
def _read_keyed(files: list[Path]) -> pd.DataFrame:
    frame = read_log_files(files)
    if not frame.empty:
        frame["request_id"] = frame["request_id"].astype(str)
        frame["record"] = frame["record"].astype(np.int64)
    return frame


def harvested_keys(paths: ProjectPaths) -> pd.DataFrame:
    """Every harvested record: request_id, record, the label's received time, the batch."""
    ledger = _read_keyed(sorted(paths.harvest_dir.glob("ledger-*.parquet")) if paths.harvest_dir.is_dir() else [])
    return ledger if not ledger.empty else pd.DataFrame(columns=[*KEY, "label_received_at", "batch"])


# ------------------------------------------------------------------------------------- harvest
def harvest(paths: ProjectPaths, params: Params, schema: FeatureSchema, now: datetime | None = None) -> HarvestSummary:
    """Turn the labelled records not harvested yet into one batch; see the module doc."""
    now = now or datetime.now(timezone.utc)
    stamp = f"{now:%Y%m%dT%H%M%S%f}"
    summary = HarvestSummary()
    ledger = enter_orphan_batches(paths, harvested_keys(paths))
    request_files, label_files = log_files(paths.request_log_dir), log_files(paths.ground_truth_dir)
    labels = _read_keyed(label_files)
    summary.labels_read = len(labels)
    quarantine: list[pd.DataFrame] = []
    if not labels.empty:
        labels = labels.rename(columns={schema.target: "value"})
        labels = _without_quarantined(paths, labels)
        labels, late = _split_late(labels, ledger)
        summary.late_labels = len(late)
        if len(late):
            quarantine.append(late.assign(reason="a label for a record harvested already; corrections are not applied"))
        labels = labels.sort_values("received_at", kind="mergesort")
        latest = labels.drop_duplicates(KEY, keep="last")
        summary.repeated_labels = len(labels) - len(latest)
        labels = latest
    served = _served_records(request_files, set(labels["request_id"]) if not labels.empty else set())
    summary.unlabelled_records = _count_unlabelled(request_files, ledger, labels)
    if labels.empty:
        _quarantine(paths, quarantine, stamp)
        summary.removed_files = apply_retention(params, request_files + label_files, now)
        return summary

    joined = labels.merge(served, on=KEY, how="left", indicator=True)
    unknown = joined[joined["_merge"] == "left_only"]
    joined = joined[joined["_merge"] == "both"].drop(columns="_merge")
    if len(unknown):
        grace = timedelta(minutes=params.harvest.unknown_label_grace_minutes)
        waiting = pd.to_datetime(unknown["received_at"], utc=True) > pd.Timestamp(now - grace)
        summary.waiting_labels = int(waiting.sum())
        gone = unknown[~waiting.to_numpy()]
        summary.unknown_labels = len(gone)
        if len(gone):
            known_ids = set(served["request_id"])
            reasons = np.where(
                gone["request_id"].isin(known_ids),
                "the request log holds this request id but not this record index",
                "no request with this id is in the request log",
            )
            quarantine.append(gone[[*KEY, "value", "received_at"]].assign(reason=reasons))

    batch = raw_rows(joined, schema)  # positions 0..n-1: _source_row below
    checked = quarantine_invalid_rows(
        batch.assign(_source_file=f"harvest {stamp}", _source_row=np.arange(len(batch))), schema
    )
    if len(checked.quarantined):
        bad = checked.quarantined
        summary.invalid_rows = len(bad)
        quarantine.append(
            pd.DataFrame(
                {
                    "request_id": bad["_request_id"].astype(str),
                    "record": bad["_record"].astype(np.int64),
                    "value": bad[schema.target],
                    "received_at": bad["_label_received_at"],
                    "reason": "the harvested row fails validation: " + bad["_reason"],
                }
            )
        )
        batch = batch.drop(index=bad["_source_row"].to_numpy())

    _quarantine(paths, quarantine, stamp)
    if len(batch):
        target = paths.batches_dir / f"{BATCH_PREFIX}{stamp}.parquet"
        _write(batch.reset_index(drop=True), target)
        enter_in_ledger(paths, batch, target.name)
        summary.batch = str(target.relative_to(paths.root))
        summary.rows = len(batch)
        summary.served_from = str(batch["_served_at"].min())
        summary.served_to = str(batch["_served_at"].max())
    summary.removed_files = apply_retention(params, request_files + label_files, now)
    return summary


def _quarantine(paths: ProjectPaths, frames: list[pd.DataFrame], stamp: str) -> None:
    if frames:
        _write(pd.concat(frames, ignore_index=True), paths.harvest_dir / f"quarantine-{stamp}.parquet")


def _without_quarantined(paths: ProjectPaths, labels: pd.DataFrame) -> pd.DataFrame:
    files = sorted(paths.harvest_dir.glob("quarantine-*.parquet")) if paths.harvest_dir.is_dir() else []
    done = _read_keyed(files)
    if done.empty:
        return labels
    seen = done[[*KEY, "received_at"]].assign(_seen=True)
    marked = labels.merge(seen, on=[*KEY, "received_at"], how="left")
    return marked[marked["_seen"].isna()].drop(columns="_seen")


def _split_late(labels: pd.DataFrame, ledger: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Labels of records not harvested yet; and labels received after their record's harvested label.
    Labels at or before it were counted when the record was harvested and are dropped quietly."""
    if ledger.empty:
        return labels, labels.iloc[:0]
    marked = labels.merge(ledger[[*KEY, "label_received_at"]], on=KEY, how="left")
    pending = marked["label_received_at"].isna()
    received = pd.to_datetime(marked["received_at"], utc=True)
    harvested_at = pd.to_datetime(marked["label_received_at"], utc=True)
    late = ~pending & (received > harvested_at)
    columns = [*KEY, "value", "received_at"]
    return marked.loc[pending, labels.columns], marked.loc[late, columns]


def _served_records(files: list[Path], request_ids: set[str]) -> pd.DataFrame:
    """The logged records of these requests; a request id logged twice keeps its latest serving."""
    if not files or not request_ids:
        return pd.DataFrame(columns=[*KEY, "served_at", "model_version"])
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    dataset = ds.dataset([str(f) for f in files], format="parquet")
    wanted = pc.field("request_id").isin(sorted(request_ids))
    frames = []
    for fragment in dataset.get_fragments():  # per file: one dictionary each
        table = fragment.to_table(filter=wanted)
        if table.num_rows:
            frames.append(plain_values(table.to_pandas()))
    if not frames:
        return pd.DataFrame(columns=[*KEY, "served_at", "model_version"])
    served = pd.concat(frames, ignore_index=True)
    served["request_id"] = served["request_id"].astype(str)
    served["record"] = served["record"].astype(np.int64)
    return served.sort_values("served_at", kind="mergesort").drop_duplicates(KEY, keep="last")


def _count_unlabelled(files: list[Path], ledger: pd.DataFrame, labels: pd.DataFrame) -> int:
    """Served records with neither a label now nor a harvested one."""
    keys = read_log_files(files, columns=KEY)
    if keys.empty:
        return 0
    keys = keys.astype({"request_id": str, "record": np.int64}).drop_duplicates()
    labelled = pd.concat([ledger[KEY], labels[KEY] if not labels.empty else labels], ignore_index=True)
    if labelled.empty:
        return len(keys)
    labelled = labelled.astype({"request_id": str, "record": np.int64}).drop_duplicates().assign(_labelled=True)
    return int(keys.merge(labelled, on=KEY, how="left")["_labelled"].isna().sum())


def raw_rows(joined: pd.DataFrame, schema: FeatureSchema) -> pd.DataFrame:
    """Labelled served records in the source's raw columns (schema order), then provenance."""
    out: dict[str, Any] = {}
    served_at = pd.to_datetime(joined["served_at"], utc=True)
    for col in schema.columns:
        if col.name == schema.target:
            out[col.name] = joined["value"].to_numpy()
        elif col.name == schema.time_column:
            out[col.name] = _event_times(joined, col.name, col.kind, served_at)
        elif col.name == schema.group_column:  # not an input: the records of one request form a group
            out[col.name] = joined["request_id"].to_numpy()
        elif col.kind is Kind.NUMERIC:
            out[col.name] = float32_as_decimal(joined[col.name].to_numpy(dtype=np.float64, na_value=np.nan))
        else:
            values = pd.Categorical(joined[col.name])  # dictionary-encoded: cheap to validate and to store
            if all(isinstance(c, int) for c in col.categories):
                numbers = np.asarray(values.astype("float64"))
                out[col.name] = (
                    pd.array(numbers, dtype="Int64") if np.isnan(numbers).any() else numbers.astype(np.int64)
                )
            else:
                out[col.name] = values
    out["_request_id"] = joined["request_id"].to_numpy()
    out["_record"] = joined["record"].to_numpy(dtype=np.int64)
    out["_model_version"] = joined["model_version"].astype(str).to_numpy()
    out["_served_at"] = served_at.dt.tz_localize(None).to_numpy()
    out["_label_received_at"] = pd.to_datetime(joined["received_at"], utc=True).dt.tz_localize(None).to_numpy()
    frame = pd.DataFrame(out)
    return frame.sort_values(["_served_at", "_request_id", "_record"], kind="mergesort").reset_index(drop=True)


def float32_as_decimal(values: np.ndarray) -> np.ndarray:
    """Logged float32 values as the decimal they stood for: rounded to float32's 7 significant digits
    (27.3, not 27.299999237060547)."""
    finite = np.isfinite(values) & (values != 0)
    digits = np.zeros(len(values))
    digits[finite] = 6 - np.floor(np.log10(np.abs(values[finite])))
    scale = np.power(10.0, digits)
    return np.where(finite, np.round(values * scale) / scale, values)


def _event_times(joined: pd.DataFrame, name: str, kind: Kind, served_at: pd.Series) -> np.ndarray:
    """The event time a record was sent with, else the time it was served (for a numeric time column:
    in Unix seconds)."""
    sent = joined[name] if name in joined.columns else pd.Series(np.nan, index=joined.index)
    if kind is Kind.DATETIME:
        fallback = served_at.dt.tz_localize(None)
        return pd.to_datetime(sent).fillna(fallback).to_numpy(dtype="datetime64[us]")
    fallback_seconds = served_at.astype("int64").to_numpy() / 1e9
    return np.where(sent.isna(), fallback_seconds, pd.to_numeric(sent, errors="coerce"))


# ------------------------------------------------------------------------------------- bookkeeping
def enter_in_ledger(paths: ProjectPaths, batch: pd.DataFrame, name: str) -> pd.DataFrame:
    """Write the batch's records to the ledger; the entry."""
    ledger = pd.DataFrame(
        {
            "request_id": batch["_request_id"].astype(str).to_numpy(),
            "record": batch["_record"].to_numpy(dtype=np.int64),
            "label_received_at": pd.DatetimeIndex(batch["_label_received_at"]).tz_localize("UTC"),
            "batch": name,
        }
    )
    _write(ledger, paths.harvest_dir / f"ledger-{Path(name).stem.removeprefix(BATCH_PREFIX)}.parquet")
    return ledger


def enter_orphan_batches(paths: ProjectPaths, ledger: pd.DataFrame) -> pd.DataFrame:
    """The ledger with the entries of this project's batches it lacked (a crash between writing a batch
    and its entry), which are written too."""
    if not paths.batches_dir.is_dir():
        return ledger
    entered = set(ledger["batch"])
    orphans = [b for b in sorted(paths.batches_dir.glob(f"{BATCH_PREFIX}*.parquet")) if b.name not in entered]
    for batch in orphans:
        log.warning("%s: a harvested batch missing from the ledger; entering it", batch)
        entry = enter_in_ledger(paths, pd.read_parquet(batch, columns=HARVEST_PROVENANCE), batch.name)
        ledger = pd.concat([ledger, entry], ignore_index=True) if len(ledger) else entry
    return ledger


def apply_retention(params: Params, files: list[Path], now: datetime) -> list[str]:
    """Remove the request-log and label files this harvest read that were written more than
    harvest.retention_days before `now` (UTC); empty day folders go too."""
    days = params.harvest.retention_days
    if days is None:
        return []
    cutoff = now.astimezone(timezone.utc).replace(tzinfo=None) - timedelta(days=days)
    removed = []
    for file in files:
        written = written_at(file)
        if written is not None and written < cutoff:
            file.unlink(missing_ok=True)
            removed.append(str(file))
            try:
                file.parent.rmdir()
            except OSError:
                pass  # not empty yet
    return removed


def _write(frame: pd.DataFrame, target: Path) -> None:
    """Parquet under a temporary name, then renamed: a reader never sees half a file."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, target)


# ------------------------------------------------------------------------------------- command
def track_with_dvc(paths: ProjectPaths, batch: Path) -> Path | None:
    """`dvc add` the batch (its .dvc file is what git keeps); None when the project does not use DVC."""
    from loopline.env import run_dvc

    if not (paths.root / ".dvc").is_dir():
        return None
    run_dvc(paths.root, "add", "-q", str(batch.relative_to(paths.root)))
    return batch.with_name(batch.name + ".dvc")


def run_harvest(paths: ProjectPaths | None = None, now: datetime | None = None) -> HarvestSummary:
    """Harvest the project's request log and labels into a DVC-tracked batch (the command's body)."""
    from loopline.config import load_dataset_schema, load_params

    paths = paths or ProjectPaths.here()
    params = load_params(paths.params)
    summary = harvest(paths, params, load_dataset_schema(params, paths), now)
    if summary.batch:
        track_with_dvc(paths, paths.root / summary.batch)
        log.info(
            "%d labelled records (served %s to %s) -> %s",
            summary.rows,
            summary.served_from,
            summary.served_to,
            summary.batch,
        )
    else:
        log.info("nothing new was labelled")
    log.info(
        "labels read %d, repeated %d, late %d, unknown %d (quarantined), waiting %d; unlabelled records %d; "
        "files removed by retention %d",
        summary.labels_read,
        summary.repeated_labels,
        summary.late_labels,
        summary.unknown_labels,
        summary.waiting_labels,
        summary.unlabelled_records,
        len(summary.removed_files),
    )
    return summary


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    from loopline.stage import run_stage

    parser = argparse.ArgumentParser(
        prog="loopline harvest",
        description="Served records whose labels arrived become a labelled, DVC-tracked batch for ingest.",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {}
    status = run_stage("harvest", lambda: result.update(run_harvest().to_dict()))
    if args.json and result:
        print(json.dumps(result, indent=2))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
