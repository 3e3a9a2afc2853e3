"""Benchmark the harvest on a large request log: Loopline's harvest against a plain pandas join.

A synthetic request log of `--records` bike records (written by the service's own RequestLog writer, as
Parquet windows of 100,000 rows, requests of 100 records) and labels for `--labelled` of them, 1% of
those labelled twice. Each contender runs in a fresh process on the same files:

- loopline: `dataprep.harvest.harvest` (ledger, dedupe, unknown labels, validation, raw columns, batch
  file, ledger file).
- pandas join: what a careful engineer writes by hand for the same result without the bookkeeping: read
  every log and label file, keep the latest label per record, inner-join on (request id, record), write
  the joined rows to one Parquet file.

Reported: wall seconds of the work (imports excluded), peak RSS of the process, and the ratios.

    .venv/bin/python benchmarks/harvest.py [--records 1000000] [--labelled 0.8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_log(root: Path, records: int, labelled: float) -> None:
    from datetime import datetime, timezone

    import numpy as np
    import pandas as pd

    from loopline.features import RecordEncoder
    from loopline.paths import ProjectPaths
    from loopline.schema import load_schema
    from serving.request_log import ParquetWindows, RequestLog

    schema = load_schema(REPO / "schemas" / "bike.yaml")
    paths = ProjectPaths(root)
    rng = np.random.default_rng(0)
    per_request = 100
    encoder = RecordEncoder(schema)
    base = {
        "season": "summer",
        "holiday": "No",
        "weekday": "Tue",
        "workingday": "Yes",
        "weathersit": "Clear",
        "atemp": 27.3,
        "hum": 61.0,
        "windspeed": 12.0,
    }
    log = RequestLog(paths.request_log_dir, schema, flush_seconds=3600, flush_rows=100_000)
    start = datetime(2012, 1, 1)
    requests = records // per_request
    for r in range(requests):
        records_ = [{**base, "hr": int(i % 24), "temp": float(rng.uniform(-5, 35))} for i in range(per_request)]
        when = pd.Timestamp(start) + pd.Timedelta(hours=r)
        log.record(
            f"req-{r}",
            "v1",
            encoder(records_),
            rng.uniform(0, 500, per_request),
            [when.to_pydatetime()] * per_request,
        )
    log.close(timeout=600)
    n_labels = int(records * labelled)
    picked = rng.choice(records, size=n_labels, replace=False)
    again = picked[: n_labels // 100]
    keys = np.concatenate([picked, again])
    labels = pd.DataFrame(
        {
            "request_id": [f"req-{k // per_request}" for k in keys],
            "record": (keys % per_request).astype(np.int64),
            "cnt": rng.integers(0, 900, len(keys)),
        }
    )
    labels["received_at"] = pd.Timestamp(datetime.now(timezone.utc))
    sink = ParquetWindows(paths.ground_truth_dir, flush_seconds=3600, flush_rows=100_000)
    for i in range(0, len(labels), 100_000):
        sink.put(labels.iloc[i : i + 100_000].reset_index(drop=True))
    sink.close(timeout=600)


def run_loopline(root: Path) -> dict[str, float]:
    from dataprep.harvest import harvest
    from loopline.config import Params
    from loopline.paths import ProjectPaths
    from loopline.schema import load_schema

    schema = load_schema(REPO / "schemas" / "bike.yaml")
    params = Params(harvest={"retention_days": None})
    begin = time.perf_counter()
    summary = harvest(ProjectPaths(root), params, schema)
    return {"seconds": time.perf_counter() - begin, "rows": summary.rows}


def run_pandas(root: Path) -> dict[str, float]:
    import pandas as pd

    begin = time.perf_counter()
    log = pd.concat(
        [pd.read_parquet(f) for f in sorted((root / "data/requests").glob("date=*/*.parquet"))], ignore_index=True
    )
    labels = pd.concat(
        [pd.read_parquet(f) for f in sorted((root / "data/ground_truth").glob("date=*/*.parquet"))],
        ignore_index=True,
    )
    for frame in (log, labels):
        frame["request_id"] = frame["request_id"].astype(str)
    labels = labels.sort_values("received_at").drop_duplicates(["request_id", "record"], keep="last")
    joined = log.merge(labels, on=["request_id", "record"], how="inner")
    for column in joined.columns:
        if isinstance(joined[column].dtype, pd.CategoricalDtype):
            joined[column] = joined[column].astype(object)
    joined.to_parquet(root / "joined.parquet", index=False)
    return {"seconds": time.perf_counter() - begin, "rows": len(joined)}


def child(kind: str, root: Path) -> None:
    import resource

    result = run_loopline(root) if kind == "loopline" else run_pandas(root)
    result["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def measure(kind: str, template: Path) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "project"
        shutil.copytree(template, root)
        out = subprocess.run(
            [sys.executable, __file__, "--child", kind, str(root)], capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--labelled", type=float, default=0.8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], Path(args.child[1]))
        return 0
    with tempfile.TemporaryDirectory() as scratch:
        template = Path(scratch) / "template"
        made = time.perf_counter()
        make_log(template, args.records, args.labelled)
        print(f"request log of {args.records:,} records written in {time.perf_counter() - made:.0f} s", file=sys.stderr)
        runs: dict[str, list[dict[str, float]]] = {"loopline": [], "pandas join": []}
        for _ in range(args.repeat):  # interleaved
            for kind in runs:
                runs[kind].append(measure("loopline" if kind == "loopline" else "pandas", template))
    median = {
        k: {m: statistics.median(r[m] for r in v) for m in ("seconds", "peak_rss_mib", "rows")} for k, v in runs.items()
    }
    base = median["pandas join"]
    print(
        f"\nharvest of {args.records:,} logged records, {args.labelled:.0%} labelled (1% of them twice), "
        f"median of {args.repeat}, on this machine\n"
    )
    print("| contender | rows out | wall s | vs pandas join | peak RSS MiB | vs pandas join |")
    print("|---|---:|---:|---:|---:|---:|")
    for kind, m in median.items():
        print(
            f"| {kind} | {m['rows']:,.0f} | {m['seconds']:.2f} | {m['seconds'] / base['seconds']:.2f}x "
            f"| {m['peak_rss_mib']:,.0f} | {m['peak_rss_mib'] / base['peak_rss_mib']:.2f}x |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
