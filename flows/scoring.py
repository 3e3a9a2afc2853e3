"""The `scoring` flow: offline batch scoring of a table with a registered model (serving.score).

    python -m flows.scoring INPUT OUTPUT [--version V] [--chunk-rows N]

A thin shell over serving.score, which runs without Prefect (`loopline score`): the flow adds retries on
an unreadable input, a run history, and the deployment (prefect.yaml declares `scoring/scoring`
without a schedule: `prefect deployment run scoring/scoring --param input=... --param output=...`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from prefect import flow

from loopline.env import use_project_state
from loopline.paths import ProjectPaths


@flow(name="scoring", log_prints=True)
def scoring(input: str, output: str, version: str | None = None, chunk_rows: int = 100_000) -> dict[str, Any]:
    """Score INPUT (a CSV/Parquet file or folder) into OUTPUT, with rejects and lineage beside it."""
    from loopline.registry import Registry
    from serving.score import score

    paths = ProjectPaths.here()
    result = score(Path(input), Path(output), Registry.for_project(paths.root), version, chunk_rows)
    print(f"scored {result.scored} of {result.rows} rows with {result.model_version}; {result.rejected} rejected")
    return result.to_dict()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--version")
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    args = parser.parse_args(argv)
    use_project_state()
    print(json.dumps(scoring(args.input, args.output, args.version, args.chunk_rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
