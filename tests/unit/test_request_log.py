"""The request log keeps every served record, written off the request path in whole Parquet files."""

from __future__ import annotations

import threading

import numpy as np
import pandas as pd

from conftest import REPO
from loopline.features import RecordEncoder
from loopline.schema import load_schema
from serving.request_log import RequestLog

ACS = load_schema(REPO / "schemas/acs.yaml")


def test_records_from_many_threads_all_reach_parquet_files_and_close_flushes_the_rest(tmp_path) -> None:
    log = RequestLog(tmp_path, ACS, flush_seconds=0.05, flush_rows=7)
    encode = RecordEncoder(ACS)
    numeric, categorical = ACS.numeric_features[0], ACS.categorical_features[0]

    def serve(thread: int) -> None:
        for i in range(20):
            records = [
                {numeric.name: float(i), categorical.name: categorical.categories[1]},
                {numeric.name: float(i) + 0.5},
            ]  # the categorical field left out: null
            log.record(f"t{thread}-r{i}", "v1", encode(records), np.array([0.8, 0.1]))

    threads = [threading.Thread(target=serve, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log.close()

    files = sorted(tmp_path.rglob("*.parquet"))
    assert len(files) > 1 and all(f.parent.name.startswith("date=") for f in files)
    frame = pd.concat(pd.read_parquet(f) for f in files)
    assert len(frame) == 4 * 20 * 2
    assert all(sorted(records) == [0, 1] for _, records in frame.groupby("request_id")["record"])
    classes = [str(c) for c in ACS.classes]
    assert list(frame.columns) == [
        "request_id",
        "record",
        "served_at",
        "model_version",
        *[c.name for c in ACS.features],
        ACS.time_column,  # the records' event times: none sent here, so null
        "prediction",
        *[f"proba_{c}" for c in classes],
        "missing_features",  # which values were absent (and filled), a bit per feature
    ]
    first = frame[(frame["request_id"] == "t0-r3")].sort_values("record")
    assert first[numeric.name].tolist() == [3.0, 3.5]
    assert first[categorical.name].iloc[0] == categorical.categories[1] and pd.isna(first[categorical.name].iloc[1])
    assert first["prediction"].tolist() == [ACS.classes[1], ACS.classes[0]]
    assert first[f"proba_{classes[1]}"].tolist() == [0.8, 0.1]
    assert str(frame["served_at"].dtype) == "datetime64[us, UTC]"
    assert frame[ACS.time_column].isna().all()
    assert not list(tmp_path.rglob(".*.tmp"))


def test_a_window_larger_than_a_row_group_reads_back_as_one_table(tmp_path) -> None:
    """Written a row group at a time (the request path gets the interpreter back between them), a
    window reads back as if decoded at once: a shadow model scored for some requests only, and a model
    swap in the middle, included."""
    import pyarrow.parquet as pq

    from serving.request_log import ROW_GROUP_REQUESTS, _as_written, log_files

    log = RequestLog(tmp_path, ACS, flush_seconds=3600)
    encode = RecordEncoder(ACS)
    numeric, categorical = ACS.numeric_features[0], ACS.categorical_features[0]
    requests = 2 * ROW_GROUP_REQUESTS + 37
    for i in range(requests):
        records = [{numeric.name: float(i), categorical.name: categorical.categories[i % 2]}] * (1 + i % 3)
        outputs = np.tile([0.3, 0.7], (len(records), 1)) if len(ACS.classes) == 2 else np.full(len(records), 0.4)
        shadow = {"shadow1": outputs[::-1].copy()} if ROW_GROUP_REQUESTS <= i < ROW_GROUP_REQUESTS + 5 else None
        log.record(f"r{i}", "v1" if i < requests // 2 else "v2", encode(records), outputs, None, shadow)
    pending = log._take()
    expected = _as_written(log._to_frame(pending))
    log._write(pending)
    [written] = log_files(tmp_path)
    assert pq.ParquetFile(written).num_row_groups == 3
    got = pd.read_parquet(written)
    assert list(got.columns) == list(expected.columns) and len(got) == len(expected)
    for column in expected.columns:
        assert got[column].astype(object).where(got[column].notna(), None).tolist() == (
            expected[column].astype(object).where(expected[column].notna(), None).tolist()
        ), column
