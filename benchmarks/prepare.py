"""Benchmark the prepare stage: wall time and peak memory on both bundled datasets, against the targets.

Each stage runs as its own process in a scratch copy of the project, exactly as `dvc repro` runs it,
so the figures include interpreter start-up and imports. Peak memory is the child's max RSS (wait4).

    .venv/bin/python benchmarks/prepare.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 15.0
TARGET_MIB = 2048.0


def run_stage(project: Path, module: str) -> tuple[float, float]:
    """(wall seconds, peak RSS MiB) of `python -m module` in the project."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", module], cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{module} failed: {proc.stderr.read().decode() if proc.stderr else ''}")
    return wall, usage.ru_maxrss / 1024


def scratch_project(source: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=f"loopline-bench-{source}-"))
    for name in ("params.yaml", "schemas"):
        src = REPO / name
        shutil.copytree(src, root / name) if src.is_dir() else shutil.copy2(src, root / name)
    (root / "data/external").mkdir(parents=True)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["source"] = source
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for source, n_rows in (("acs", 277_677), ("bike", 17_379)):
        project = scratch_project(source)
        try:
            run_stage(project, "dataprep.ingest")
            runs = [run_stage(project, "dataprep.prepare") for _ in range(args.repeat)]
        finally:
            shutil.rmtree(project, ignore_errors=True)
        wall = statistics.median(r[0] for r in runs)
        peak = max(r[1] for r in runs)
        rows.append((source, n_rows, wall, peak))

    print(f"prepare stage, median of {args.repeat} runs (process start to exit), on {os.cpu_count()} cores")
    print(
        f"| dataset | rows | wall s | share of {TARGET_SECONDS:g} s target | peak RSS MiB | share of {TARGET_MIB:g} MiB target |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for source, n_rows, wall, peak in rows:
        print(
            f"| {source} | {n_rows:,} | {wall:.2f} | {wall / TARGET_SECONDS:.2f}x | {peak:.0f} | {peak / TARGET_MIB:.2f}x |"
        )


if __name__ == "__main__":
    main()
