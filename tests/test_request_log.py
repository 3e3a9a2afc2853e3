"""The request log keeps every served record, written off the request path in whole Parquet files."""

from __future__ import annotations

import threading

import pandas as pd

from serving.request_log import RequestLog


def test_records_from_many_threads_all_reach_parquet_files_and_close_flushes_the_rest(tmp_path) -> None:
    log = RequestLog(tmp_path, flush_seconds=0.05, flush_rows=7)

    def serve(thread: int) -> None:
        for i in range(20):
            features = pd.DataFrame({"temp": [float(i), float(i) + 0.5], "site": ["north", None]})
            decoded = {"predictions": ["yes", "no"], "probabilities": [{"no": 0.2, "yes": 0.8}, {"no": 0.9, "yes": 0.1}]}
            log.record(f"t{thread}-r{i}", "v1", features, decoded)

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
    assert set(frame.columns) >= {"request_id", "record", "served_at", "model_version", "temp", "site",
                                  "prediction", "proba_no", "proba_yes"}
    first = frame[(frame["request_id"] == "t0-r3")].sort_values("record")
    assert first["temp"].tolist() == [3.0, 3.5] and first["prediction"].tolist() == ["yes", "no"]
    assert first["proba_yes"].tolist() == [0.8, 0.1]
    assert not list(tmp_path.rglob(".*.tmp"))
