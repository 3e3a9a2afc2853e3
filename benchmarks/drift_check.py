"""Benchmark the monitoring check: Evidently drift (and performance) on 10k- and 100k-row windows.

The reference is the bike data's first year (8,645 rows, the size a model trained on a year would
have), the windows are rows of the second year resampled to the size, with predictions and labels, so
the check does its whole work: data drift on every feature and the prediction, and the regression
performance report. Each size runs in a fresh process (imports excluded from the figure, reported
apart); median of `--repeat`.

    .venv/bin/python benchmarks/drift_check.py [--sizes 10000 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one_run(rows: int) -> dict[str, float]:
    started = time.perf_counter()
    from datetime import datetime, timezone

    import numpy as np

    from dataprep.sources import load_bike
    from loopline.config import MonitorParams
    from loopline.schema import load_schema
    from monitoring.drift import check_window, reference_frame

    imported = time.perf_counter()
    schema = load_schema(REPO / "schemas" / "bike.yaml")
    data = load_bike().sort_values("timestamp")
    rng = np.random.default_rng(0)
    first = data[data["timestamp"] < "2012-01-01"]
    reference = reference_frame(first, schema, first["cnt"].to_numpy(np.float64) + rng.normal(0, 40, len(first)))
    window = data[data["timestamp"] >= "2012-01-01"].sample(rows, replace=True, random_state=0).reset_index(drop=True)
    window["prediction"] = window["cnt"] * 0.8
    t = datetime.now(timezone.utc)
    begin = time.perf_counter()
    result, snapshots = check_window(
        window,
        reference,
        schema,
        MonitorParams(),
        model_version="bench",
        window_start=t,
        window_end=t,
    )
    checked = time.perf_counter()
    return {
        "rows": rows,
        "import_s": imported - started,
        "check_s": checked - begin,
        "verdict": result.verdict,
        "reports": len(snapshots),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one)))
        return
    print(
        "\nmonitoring check on the bike data, reference 8,645 rows (2011), window rows resampled from 2012;"
        f" median of {args.repeat} fresh processes\n"
    )
    print("| window rows | check s | rows/s | imports s (once per process) | verdict | reports |")
    print("|---:|---:|---:|---:|---|---:|")
    for rows in args.sizes:
        runs = [
            json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--one", str(rows)], capture_output=True, text=True, check=True, cwd=REPO
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            for _ in range(args.repeat)
        ]
        check = statistics.median(r["check_s"] for r in runs)
        imports = statistics.median(r["import_s"] for r in runs)
        print(
            f"| {rows:,} | {check:.2f} | {rows / check:,.0f} | {imports:.1f} | {runs[0]['verdict']} | {runs[0]['reports']} |"
        )


if __name__ == "__main__":
    main()
