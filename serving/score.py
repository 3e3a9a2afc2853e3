"""Offline batch scoring: a table of records scored by a registered model, without the HTTP service.

    loopline score INPUT OUTPUT [--version V] [--chunk-rows 100000]
    python -m serving.score INPUT OUTPUT ...                      # the same; the `scoring` flow calls it

INPUT is a CSV or Parquet file, or a folder of them (read in name order). The records are read and
scored in chunks, so memory stays flat however long the input is. Each chunk is validated column by
column against the model's schema with the service's rules (loopline.columns); valid rows are encoded
exactly as training encoded them (loopline.features) and run through the model's ONNX file, invalid
ones go to the rejects file with their reasons. The model is the registry's production version, or
--version; its file must match its hash and reproduce its golden batch, as the service checks.

OUTPUT (.parquet or .csv) holds, per scored row, `source_file` and `source_row` (0-based within that
file), the input's columns that are not model features (ids and the like, carried through), and the
prediction (`prediction`; for classification also `proba_<class>`). Beside it:
`<OUTPUT>.rejects.<ext>` (the rejected rows as read, with `source_file`, `source_row` and `reasons`)
and `<OUTPUT>.lineage.json` (the model version, its hash and lineage, the inputs with their row counts,
what was scored and rejected, and when). All three appear whole at the end, or not at all.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from loopline.columns import validate_columns
from loopline.errors import LooplineError
from loopline.features import encode_features, prediction_columns
from loopline.paths import project_root
from loopline.registry import SCHEMA_FILE, Registry, Version, verify_model_file
from loopline.runtime import onnx_session, reproduces_golden, run_encoded
from loopline.schema import FeatureSchema, load_schema

SUFFIXES = (".csv", ".parquet")
DEFAULT_CHUNK_ROWS = 100_000


class ScoringError(LooplineError):
    pass


@dataclass
class ScoringModel:
    version: Version
    schema: FeatureSchema
    session: Any


def load_model(registry: Registry, version_id: str | None = None) -> ScoringModel:
    """The version (default: production), once its file matches its hash and reproduces its golden batch."""
    version_id = version_id or registry.production()
    if not version_id:
        raise ScoringError(f"no production model in {registry.root}: run `loopline promote`, or pass --version")
    version = registry.get(version_id)
    verify_model_file(version.model, version.id, version.metadata.get("sha256"))
    schema = load_schema(version.file(SCHEMA_FILE))
    session = onnx_session(version.model)
    if reproduces_golden(session, version.path, schema) is False:
        raise ScoringError(f"{version.model}: its predictions on the golden batch differ from the recorded ones")
    return ScoringModel(version, schema, session)


def input_files(path: Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        if path.suffix not in SUFFIXES:
            raise ScoringError(f"{path}: not a .csv or .parquet file")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise ScoringError(f"{path}: no .csv or .parquet file in the folder")
        return files
    raise ScoringError(f"{path}: no such file or folder")


def read_chunks(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    try:
        if path.suffix == ".parquet":
            for batch in pq.ParquetFile(path).iter_batches(batch_size=chunk_rows):
                yield batch.to_pandas()
        else:
            yield from pd.read_csv(path, chunksize=chunk_rows)
    except (OSError, ValueError, pa.ArrowException, pd.errors.ParserError) as exc:
        raise ScoringError(f"{path}: cannot be read as {path.suffix[1:]}: {exc}") from exc


def count_rows(path: Path) -> int | None:
    return pq.ParquetFile(path).metadata.num_rows if path.suffix == ".parquet" else None


class TableWriter:
    """Chunks appended to one CSV or Parquet file, written under a temporary name until `commit`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
        self.rows = 0
        self.parquet: pq.ParquetWriter | None = None
        self.schema: pa.Schema | None = None

    def write(self, frame: pd.DataFrame) -> None:
        if frame.empty and self.rows:
            return
        if self.path.suffix == ".parquet":
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if self.parquet is None:
                self.schema = table.schema
                self.parquet = pq.ParquetWriter(self.tmp, self.schema)
            elif table.schema != self.schema:
                try:
                    table = table.cast(self.schema)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                    raise ScoringError(
                        f"{self.path}: a later chunk's columns do not fit the first chunk's types: {exc}"
                    ) from exc
            self.parquet.write_table(table)
        else:
            frame.to_csv(self.tmp, mode="a", header=self.rows == 0 and not self.tmp.exists(), index=False)
        self.rows += len(frame)

    def commit(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        if not self.tmp.exists():  # nothing was written (no rejects): an empty file
            if self.path.suffix == ".parquet":
                pq.write_table(pa.table({}), self.tmp)
            else:
                self.tmp.write_text("")
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        if self.parquet is not None:
            self.parquet.close()
        self.tmp.unlink(missing_ok=True)


def sibling(output: Path, tag: str) -> Path:
    """OUTPUT.rejects.parquet, OUTPUT.lineage.json (beside the output, named after it)."""
    suffix = ".json" if tag == "lineage" else output.suffix
    return output.with_name(f"{output.stem}.{tag}{suffix}")


@dataclass
class ScoreResult:
    output: str
    rejects: str
    lineage: str
    model_version: str
    rows: int = 0
    scored: int = 0
    rejected: int = 0
    seconds: float = 0.0
    inputs: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_chunk(
    chunk: pd.DataFrame, model: ScoringModel, source: str, first_row: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(scored rows, rejected rows) of one chunk."""
    schema = model.schema
    checked = validate_columns(chunk, schema)
    rows = np.arange(first_row, first_row + len(chunk))
    good = chunk[checked.valid]
    outputs = run_encoded(model.session, encode_features(good, schema)) if len(good) else np.empty((0, 1))
    carried = list(checked.unknown)
    scored = pd.DataFrame({"source_file": source, "source_row": rows[checked.valid]})
    for c in carried:
        scored[c] = good[c].to_numpy()
    for name, values in prediction_columns(outputs, schema).items():
        scored[name] = values
    rejected = chunk[~checked.valid].copy()
    rejected.insert(0, "source_row", rows[~checked.valid])
    rejected.insert(0, "source_file", source)
    rejected["reasons"] = [r for r, ok in zip(checked.reasons, checked.valid) if not ok]
    return scored, rejected


def score(
    source: Path,
    output: Path,
    registry: Registry,
    version_id: str | None = None,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    progress: bool = False,
) -> ScoreResult:
    if output.suffix not in SUFFIXES:
        raise ScoringError(f"{output}: the output must be a .csv or .parquet file")
    if chunk_rows < 1:
        raise ScoringError(f"--chunk-rows must be at least 1, got {chunk_rows}")
    files = input_files(source)
    model = load_model(registry, version_id)
    output.parent.mkdir(parents=True, exist_ok=True)
    result = ScoreResult(
        str(output), str(sibling(output, "rejects")), str(sibling(output, "lineage")), model.version.id
    )
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    totals = [count_rows(f) for f in files]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(totals) if None not in totals else None, unit=" rows", file=sys.stderr)
    writers = TableWriter(output), TableWriter(sibling(output, "rejects"))
    try:
        for path in files:
            n = scored_here = 0
            for chunk in read_chunks(path, chunk_rows):
                scored, rejected = score_chunk(chunk, model, path.name, n)
                writers[0].write(scored)
                if len(rejected):
                    writers[1].write(rejected)
                n += len(chunk)
                scored_here += len(scored)
                if bar is not None:
                    bar.update(len(chunk))
            result.inputs.append({"file": str(path), "rows": n, "scored": scored_here, "rejected": n - scored_here})
            result.rows += n
            result.scored += scored_here
        result.rejected = result.rows - result.scored
        for writer in writers:
            writer.commit()
    except BaseException:
        for writer in writers:
            writer.discard()
        raise
    finally:
        if bar is not None:
            bar.close()
    result.seconds = round(time.perf_counter() - clock, 3)
    meta = model.version.metadata
    lineage = {
        **result.to_dict(),
        "model": {
            "version": model.version.id,
            "sha256": meta.get("sha256"),
            "registered_at": meta.get("registered_at"),
            "data": meta.get("data"),
            "git": meta.get("git"),
            "recalibration": meta.get("recalibration"),
        },
        "registry": str(registry.root),
        "chunk_rows": chunk_rows,
        "started_at": started.isoformat(),
        "finished_at": datetime.now(timezone.utc).isoformat(),
    }
    Path(result.lineage).write_text(json.dumps(lineage, indent=2, default=str) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="loopline score", description=__doc__.splitlines()[0])
    parser.add_argument("input", type=Path, help="a .csv or .parquet file, or a folder of them")
    parser.add_argument("output", type=Path, help="the predictions: a .csv or .parquet file")
    parser.add_argument("--version", help="a registered version (default: production)")
    parser.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)
    try:
        result = score(
            args.input,
            args.output,
            Registry.for_project(project_root()),
            args.version,
            args.chunk_rows,
            progress=not args.no_progress,
        )
    except LooplineError as exc:
        print(f"loopline score: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result.to_dict(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
