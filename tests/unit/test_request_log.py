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


def test_a_window_of_many_batches_reads_back_as_recorded(tmp_path) -> None:
    """The request path batches every CHUNK_REQUESTS requests; a window of several batches and a rest
    reads back as recorded: requests of several records, a shadow model scored for some requests only
    (null on the others), and a model swap in the middle."""
    from serving.request_log import CHUNK_REQUESTS, SHADOW_PREFIX, log_files

    log = RequestLog(tmp_path, ACS, flush_seconds=3600)
    encode = RecordEncoder(ACS)
    numeric, categorical = ACS.numeric_features[0], ACS.categorical_features[0]
    requests = 2 * CHUNK_REQUESTS + 37
    shadowed = range(CHUNK_REQUESTS - 2, CHUNK_REQUESTS + 3)  # across a batch boundary
    expected = []
    for i in range(requests):
        size = 1 + i % 3
        records = [{numeric.name: float(i), categorical.name: categorical.categories[i % 2]}] * size
        outputs = np.full(size, 0.25 + 0.5 * (i % 2))  # probability of the second class
        shadow = {"s1": 1 - outputs} if i in shadowed else None
        version = "v1" if i < requests // 2 else "v2"
        log.record(f"r{i}", version, encode(records), outputs, None, shadow)
        for record in range(size):
            expected.append(
                (f"r{i}", record, version, float(i), categorical.categories[i % 2], ACS.classes[i % 2])
                + ((str(ACS.classes[1 - i % 2]),) if i in shadowed else (None,))
            )
    log.close()

    [written] = log_files(tmp_path)
    got = pd.read_parquet(written)
    columns = [
        "request_id",
        "record",
        "model_version",
        numeric.name,
        categorical.name,
        "prediction",
        SHADOW_PREFIX + "s1",
    ]
    rows = got[columns].astype(object).where(got[columns].notna(), None)
    assert [tuple(row) for row in rows.itertuples(index=False)] == expected
    assert str(got["served_at"].dtype) == "datetime64[us, UTC]" and got["served_at"].is_monotonic_increasing
