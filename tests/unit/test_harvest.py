"""The harvest turns labelled served records into a labelled batch, once, with provenance and reasons."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest

from conftest import REPO
from dataprep.harvest import harvest, harvested_keys
from dataprep.validate import quarantine_invalid_rows
from loopline.config import Params
from loopline.features import RecordEncoder
from loopline.paths import ProjectPaths
from loopline.schema import load_schema
from serving.request_log import ParquetWindows, RequestLog

BIKE = load_schema(REPO / "schemas/bike.yaml")
RECORD = {
    "season": "summer",
    "hr": 8,
    "holiday": "No",
    "weekday": "Tue",
    "workingday": "Yes",
    "weathersit": None,
    "temp": 24.6,
    "atemp": 27.3,
    "hum": 61.0,
    "windspeed": 12.0,
}


@pytest.fixture
def project(tmp_path, monkeypatch) -> ProjectPaths:
    monkeypatch.delenv("LOOPLINE_REQUEST_LOG", raising=False)
    monkeypatch.delenv("LOOPLINE_GROUND_TRUTH", raising=False)
    return ProjectPaths(tmp_path)


def serve(paths: ProjectPaths, requests: dict[str, list[datetime | None]]) -> None:
    """Log each request's records as the service does; the value of `temp` says which record it is."""
    features = [c.name for c in BIKE.features]
    log = RequestLog(paths.request_log_dir, BIKE, flush_seconds=60)
    for request_id, times in requests.items():
        records = [{**{k: RECORD[k] for k in features}, "temp": float(i)} for i in range(len(times))]
        log.record(request_id, "v1", RecordEncoder(BIKE)(records), np.full(len(times), 100.0), times)
    log.close()


def label(paths: ProjectPaths, labels: list[tuple[str, int, int]], received_at: datetime | None = None) -> None:
    sink = ParquetWindows(paths.ground_truth_dir, flush_seconds=60)
    frame = pd.DataFrame(labels, columns=["request_id", "record", "cnt"])
    sink.put(frame.assign(received_at=pd.Timestamp(received_at or datetime.now(timezone.utc))))
    sink.close()


def test_labelled_records_become_one_batch_in_raw_columns_with_provenance_and_their_event_time(project) -> None:
    event = datetime(2011, 7, 5, 8)
    serve(project, {"a": [event, None], "b": [None]})
    label(project, [("a", 0, 140), ("a", 1, 90)])

    summary = harvest(project, Params(), BIKE)

    assert summary.rows == 2 and summary.unlabelled_records == 1
    batch = pd.read_parquet(project.root / summary.batch)
    assert summary.batch.startswith("data/external/batches/harvest-")
    assert list(batch.columns[: len(BIKE.column_names)]) == BIKE.column_names
    assert batch["cnt"].tolist() == [140, 90]
    assert batch["timestamp"].iloc[0] == pd.Timestamp(event)  # the event time it was sent with
    assert batch["timestamp"].iloc[1] == batch["_served_at"].iloc[1]  # none sent: the served time
    assert batch["temp"].tolist() == [0.0, 1.0] and batch["atemp"].iloc[0] == 27.3  # not 27.299999
    assert batch[["_request_id", "_record", "_model_version"]].values.tolist() == [["a", 0, "v1"], ["a", 1, "v1"]]
    assert batch["weathersit"].isna().all()
    rows = batch.assign(_source_file="x", _source_row=range(len(batch)))
    assert quarantine_invalid_rows(rows, BIKE).quarantined.empty  # the same checks as any source row


def test_a_second_harvest_adds_nothing_and_a_later_label_is_harvested_then(project) -> None:
    serve(project, {"a": [None, None]})
    label(project, [("a", 0, 140)])
    assert harvest(project, Params(), BIKE).rows == 1

    again = harvest(project, Params(), BIKE)
    assert again.batch is None and again.rows == 0 and again.unlabelled_records == 1

    label(project, [("a", 1, 90)])
    later = harvest(project, Params(), BIKE)
    assert later.rows == 1 and pd.read_parquet(project.root / later.batch)["_record"].tolist() == [1]
    assert len(harvested_keys(project)) == 2


def test_repeated_labels_keep_the_latest_and_a_correction_after_harvest_is_quarantined_not_applied(project) -> None:
    serve(project, {"a": [None]})
    now = datetime.now(timezone.utc)
    label(project, [("a", 0, 10)], now - timedelta(minutes=2))
    label(project, [("a", 0, 12)], now - timedelta(minutes=1))

    first = harvest(project, Params(), BIKE)
    assert first.repeated_labels == 1 and pd.read_parquet(project.root / first.batch)["cnt"].tolist() == [12]

    label(project, [("a", 0, 13)], now)
    second = harvest(project, Params(), BIKE)
    assert second.rows == 0 and second.late_labels == 1 and second.repeated_labels == 0
    quarantined = pd.read_parquet(next(project.harvest_dir.glob("quarantine-*.parquet")))
    assert quarantined["reason"].tolist() == ["a label for a record harvested already; corrections are not applied"]
    assert harvest(project, Params(), BIKE).late_labels == 0  # quarantined once


def test_a_label_for_an_unknown_record_waits_out_the_grace_period_then_is_quarantined_with_its_reason(project) -> None:
    serve(project, {"a": [None]})
    label(project, [("nope", 0, 5), ("a", 3, 7)])

    waiting = harvest(project, Params(), BIKE)
    assert waiting.waiting_labels == 2 and waiting.unknown_labels == 0

    later = datetime.now(timezone.utc) + timedelta(minutes=11)
    done = harvest(project, Params(), BIKE, now=later)
    assert done.unknown_labels == 2 and done.rows == 0
    reasons = pd.read_parquet(next(project.harvest_dir.glob("quarantine-*.parquet"))).set_index("request_id")["reason"]
    assert reasons["nope"] == "no request with this id is in the request log"
    assert reasons["a"] == "the request log holds this request id but not this record index"
    assert harvest(project, Params(), BIKE, now=later).unknown_labels == 0


def test_retention_removes_old_log_and_label_files_only_after_a_harvest_read_them(project) -> None:
    serve(project, {"a": [None, None]})
    label(project, [("a", 0, 1)])
    params = Params(harvest={"retention_days": 30})
    assert harvest(project, params, BIKE).removed_files == []

    summary = harvest(project, params, BIKE, now=datetime.now(timezone.utc) + timedelta(days=31))
    assert len(summary.removed_files) == 2
    assert not list(project.request_log_dir.rglob("*.parquet")) and not list(project.ground_truth_dir.glob("date=*"))
    assert len(harvested_keys(project)) == 1  # the ledger stays


def test_a_batch_written_without_its_ledger_entry_is_entered_and_not_harvested_twice(project) -> None:
    serve(project, {"a": [None]})
    label(project, [("a", 0, 1)])
    harvest(project, Params(), BIKE)
    for ledger in project.harvest_dir.glob("ledger-*.parquet"):
        ledger.unlink()  # as if the process died between writing the batch and its ledger entry

    assert harvest(project, Params(), BIKE).rows == 0
    assert len(list(project.batches_dir.glob("harvest-*.parquet"))) == 1
