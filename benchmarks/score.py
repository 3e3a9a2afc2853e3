"""Offline batch scoring: `loopline score` against a bare in-process loop over the same file.

Both score the same Parquet file of `--rows` records (the production model's test rows, repeated) with
the registry's production model, in chunks of `--chunk-rows`, and write the predictions to Parquet:

- loopline score: serving.score as shipped: the model's hash and golden batch checked, every chunk
  validated column by column (rejects written with reasons), encoded, run, written with the source row
  and the lineage file;
- bare loop: pyarrow's batches, `encode_features`, the ONNX session, a ParquetWriter: no validation,
  no rejects, no lineage (what a careful engineer writes for a one-off job that trusts its input).

Each arm runs in its own process, one after the other, so that its peak RSS is its own. Run after
`make pipeline`:

    .venv/bin/python benchmarks/score.py [--rows 10000000] [--chunk-rows 100000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def make_input(path: Path, rows: int, model_dir: Path) -> None:
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loopline.schema import load_schema

    schema = load_schema(model_dir / "schema.json")
    test = pd.read_parquet(model_dir / "test.parquet")[[c.name for c in schema.features]]
    source = pa.Table.from_pandas(test, preserve_index=False)
    rng = np.random.default_rng(0)
    step = 1_000_000
    with pq.ParquetWriter(path, source.schema) as writer:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            writer.write_table(source.take(pa.array(rng.integers(0, source.num_rows, n))))


def arm_loopline(source: Path, out: Path, chunk_rows: int) -> dict:
    from loopline.paths import project_root
    from loopline.registry import Registry
    from serving.score import score

    result = score(source, out, Registry.for_project(project_root()), chunk_rows=chunk_rows)
    return {"rows": result.rows, "scored": result.scored, "rejected": result.rejected}


def arm_bare(source: Path, out: Path, chunk_rows: int) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from loopline.features import encode_features
    from loopline.paths import project_root
    from loopline.registry import Registry
    from loopline.runtime import onnx_session, run_encoded
    from loopline.schema import load_schema

    registry = Registry.for_project(project_root())
    version = registry.get(registry.production())
    schema = load_schema(version.file("schema.json"))
    session = onnx_session(version.model)
    rows, writer = 0, None
    for batch in pq.ParquetFile(source).iter_batches(batch_size=chunk_rows):
        frame = batch.to_pandas()
        outputs = run_encoded(session, encode_features(frame, schema)).ravel()
        table = pa.table({"prediction": outputs})
        writer = writer or pq.ParquetWriter(out, table.schema)
        writer.write_table(table)
        rows += len(frame)
    if writer is not None:
        writer.close()
    return {"rows": rows, "scored": rows, "rejected": 0}


def run_arm(name: str, source: Path, out: Path, chunk_rows: int) -> dict:
    """In a fresh process: the arm's wall time and its peak RSS."""
    done = subprocess.run(
        [
            sys.executable,
            __file__,
            "--arm",
            name,
            "--input",
            str(source),
            "--output",
            str(out),
            "--chunk-rows",
            str(chunk_rows),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--arm", choices=["loopline", "bare"], help=argparse.SUPPRESS)
    parser.add_argument("--input", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        clock = time.perf_counter()
        counts = (arm_loopline if args.arm == "loopline" else arm_bare)(args.input, args.output, args.chunk_rows)
        seconds = time.perf_counter() - clock
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        print(json.dumps({**counts, "seconds": round(seconds, 2), "peak_rss_mib": round(peak)}))
        return 0

    from loopline.paths import project_root
    from loopline.registry import Registry

    registry = Registry.for_project(project_root())
    if not registry.production():
        sys.exit("no production model: run `make pipeline` first")
    model_dir = registry.get(registry.production()).path
    with tempfile.TemporaryDirectory(prefix="loopline-score-bench-") as tmp:
        source = Path(tmp) / "input.parquet"
        clock = time.perf_counter()
        make_input(source, args.rows, model_dir)
        print(
            f"input: {args.rows:,} rows, {source.stat().st_size / 2**20:,.0f} MiB Parquet, "
            f"made in {time.perf_counter() - clock:.0f} s",
            file=sys.stderr,
        )
        results = {
            name: run_arm(name, source, Path(tmp) / f"{name}.parquet", args.chunk_rows) for name in ("bare", "loopline")
        }
    print(f"\nbatch scoring, {args.rows:,} rows in chunks of {args.chunk_rows:,}, model {model_dir.name}\n")
    print("| scorer | rows/s | seconds | peak RSS MiB | rows/s vs bare loop |")
    print("|---|---:|---:|---:|---:|")
    bare = results["bare"]["rows"] / results["bare"]["seconds"]
    for name, r in results.items():
        rate = r["rows"] / r["seconds"]
        label = "loopline score" if name == "loopline" else "bare in-process loop"
        print(f"| {label} | {rate:,.0f} | {r['seconds']:.1f} | {r['peak_rss_mib']:,} | {rate / bare:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
